//! The plugins folder: watch it, compile what changed off the message path, swap versions.

pub mod manager;
pub mod watch;
