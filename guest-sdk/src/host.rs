//! What the host offers every plugin: logging, publishing and a monotonic clock.
//!
//! These call the `wasmill:plugin/host` imports, so they only work inside a plugin running in
//! Wasmill; on any other target they panic.

use std::time::Duration;

use crate::Message;
use crate::bindings::handler::wasmill::plugin::host as imports;

/// Publishes `msg` to `topic` right away, outside the handler's return value.
///
/// It fails unless the handler's configuration grants `topic`; the error is the host's reason
/// (for example that the topic is not allowed), for the handler to log, ignore or turn into an
/// [`Error`](crate::Error).
pub fn publish(topic: &str, msg: Message) -> Result<(), String> {
    imports::publish(topic, msg.into_wit())
}

/// A monotonic clock, for measuring durations: the time since an arbitrary point fixed by the
/// host. It is not wall-clock time.
pub fn now() -> Duration {
    Duration::from_nanos(imports::monotonic_now())
}

/// Structured logging to the host's log, tagged with the plugin's name.
///
/// The functions take a plain message; the crate-root macros ([`info!`](crate::info) and
/// friends) take `format!` arguments.
pub mod log {
    use super::imports;

    /// Severity of a log record.
    pub use imports::Level;

    /// Writes a record at `level` with key/value `fields`.
    pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        imports::log(level, message, &fields);
    }

    /// Writes a trace record.
    pub fn trace(message: &str) {
        log(Level::Trace, message, &[]);
    }

    /// Writes a debug record.
    pub fn debug(message: &str) {
        log(Level::Debug, message, &[]);
    }

    /// Writes an info record.
    pub fn info(message: &str) {
        log(Level::Info, message, &[]);
    }

    /// Writes a warning record.
    pub fn warn(message: &str) {
        log(Level::Warn, message, &[]);
    }

    /// Writes an error record.
    pub fn error(message: &str) {
        log(Level::Error, message, &[]);
    }
}

/// Logs at trace level with `format!` arguments: `wasmill_guest::trace!("x = {x}")`.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Trace, &::std::format!($($arg)+), &[]) };
}

/// Logs at debug level with `format!` arguments: `wasmill_guest::debug!("x = {x}")`.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Debug, &::std::format!($($arg)+), &[]) };
}

/// Logs at info level with `format!` arguments: `wasmill_guest::info!("x = {x}")`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Info, &::std::format!($($arg)+), &[]) };
}

/// Logs at warn level with `format!` arguments: `wasmill_guest::warn!("x = {x}")`.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Warn, &::std::format!($($arg)+), &[]) };
}

/// Logs at error level with `format!` arguments: `wasmill_guest::error!("x = {x}")`.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Error, &::std::format!($($arg)+), &[]) };
}
