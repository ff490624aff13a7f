//! Per-message and per-instance limits of the sandbox.

use std::time::Duration;

use serde::Deserialize;

/// What one message may cost a plugin instance. Running out of any of these is an ordinary
/// handler error (retry, poison queue) and the instance is replaced by a fresh one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Fuel per message (roughly, wasm instructions).
    pub fuel: u64,
    /// Wall-clock deadline per message (epoch interruption; host calls bound themselves).
    #[serde(with = "crate::config::duration")]
    pub timeout: Duration,
    /// Linear memory cap per instance, in bytes.
    #[serde(deserialize_with = "crate::config::size::deserialize")]
    pub memory: u64,
    /// Total payload bytes a handler may return for one message.
    #[serde(deserialize_with = "crate::config::size::deserialize")]
    pub max_output_bytes: u64,
    /// Number of messages a handler may return for one message.
    pub max_output_messages: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 100_000_000,
            timeout: Duration::from_secs(1),
            memory: 64 << 20,
            max_output_bytes: 16 << 20,
            max_output_messages: 10_000,
        }
    }
}
