//! The `wasmill.toml` configuration: parsing, defaults and validation with errors that name
//! the file, the key and what was expected.

pub mod components;
pub mod cqrs;
mod file;
pub mod options;
mod units;
mod wasm_middleware;

pub use file::{Config, Defaults, HandlerConfig, HostConfig, PubSubEntry, TopicSpec};
pub use options::OptionError;
pub use units::{duration, size};
pub use wasm_middleware::WasmMiddlewareEntry;

#[cfg(test)]
mod doc_tests;
