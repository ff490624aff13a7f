//! The plugins folder: watch it, compile what changed off the message path, swap versions.

pub mod confine;
mod info;
pub mod manager;
mod queue;
mod reload;
pub mod watch;
