//! The `wasmill.toml` configuration: parsing, defaults and validation with errors that name
//! the file, the key and what was expected.

mod file;
mod units;

pub use file::{Config, Defaults, HandlerConfig, HostConfig, PubSubEntry, TopicSpec};
pub use units::{duration, size};
