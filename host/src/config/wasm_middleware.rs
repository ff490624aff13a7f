//! The `{ wasm = "FILE.wasm", … }` entry of a middleware list: a middleware component with its
//! own sandbox limits and grants.

use std::time::Duration;

use serde::Deserialize;

use super::{OptionError, TopicSpec};
use crate::error::{Error, Result};

/// A `{ wasm = "FILE.wasm", fuel = …, timeout = …, memory = …, allow_publish = […] }` entry.
/// Limits not given come from `[defaults]`; nothing is granted unless listed.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WasmMiddlewareEntry {
    /// The component's file inside the plugins folder.
    pub wasm: String,
    /// Fuel per message (the time the middleware spends inside `next` is not charged).
    pub fuel: Option<u64>,
    /// Wall-clock deadline per message, not counting the time spent inside `next`.
    #[serde(default, deserialize_with = "super::file::opt_duration")]
    pub timeout: Option<Duration>,
    /// Memory cap per instance.
    #[serde(default, deserialize_with = "super::file::opt_size")]
    pub memory: Option<u64>,
    /// Topics the middleware may publish to itself through the host's `publish`.
    #[serde(default)]
    pub allow_publish: Vec<TopicSpec>,
}

impl WasmMiddlewareEntry {
    /// The entry if `entry` is a `{ wasm = … }` table, `None` for any other middleware entry;
    /// an error names the key that is wrong.
    pub fn parse(entry: &toml::Value) -> Result<Option<WasmMiddlewareEntry>> {
        Self::parse_checked(entry).map_err(|e| Error::Config(format!("middleware {{ wasm }}: {e}")))
    }

    /// As [`WasmMiddlewareEntry::parse`], with an error that names the option: an unknown key
    /// lists the known ones.
    pub fn parse_checked(
        entry: &toml::Value,
    ) -> std::result::Result<Option<WasmMiddlewareEntry>, OptionError> {
        let toml::Value::Table(t) = entry else {
            return Ok(None);
        };
        if !t.contains_key("wasm") {
            return Ok(None);
        }
        crate::config::options::parse(entry).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> toml::Value {
        let t: toml::Table = toml::from_str(&format!("m = {text}")).unwrap();
        t["m"].clone()
    }

    #[test]
    fn a_wasm_entry_takes_limits_and_grants() {
        let e = WasmMiddlewareEntry::parse(&value(
            r#"{ wasm = "audit.wasm", fuel = 5, timeout = "2s", memory = "1MiB", allow_publish = ["audit"] }"#,
        ))
        .unwrap()
        .unwrap();
        assert_eq!(e.wasm, "audit.wasm");
        assert_eq!(e.fuel, Some(5));
        assert_eq!(e.timeout, Some(Duration::from_secs(2)));
        assert_eq!(e.memory, Some(1 << 20));
        assert_eq!(e.allow_publish, vec![TopicSpec::Topic("audit".into())]);
    }

    #[test]
    fn other_entries_are_not_wasm_and_unknown_keys_are_named() {
        assert_eq!(
            WasmMiddlewareEntry::parse(&value(r#""retry""#)).unwrap(),
            None
        );
        assert_eq!(
            WasmMiddlewareEntry::parse(&value(r#"{ retry = { max_retries = 1 } }"#)).unwrap(),
            None
        );
        let e = WasmMiddlewareEntry::parse(&value(r#"{ wasm = "a.wasm", fuell = 1 }"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("fuell"), "{e}");
    }
}
