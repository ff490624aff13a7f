//! docs/CONFIG.md lists every key the configuration accepts: each struct's fields appear (as
//! `` `key` `` or `key =`) in the section that documents that struct, so the documentation
//! cannot fall behind the code.

use super::options::field_names;
use super::{Defaults, HandlerConfig, HostConfig, WasmMiddlewareEntry};
use crate::router::middleware::spec::{NAMES, option_names};

const DOC: &str = include_str!("../../../docs/CONFIG.md");

/// The text of the section whose heading contains `title`, up to the next `## ` heading.
fn section(title: &str) -> &'static str {
    let start = DOC
        .lines()
        .find(|l| l.starts_with('#') && l.contains(title))
        .and_then(|l| DOC.find(l))
        .unwrap_or_else(|| panic!("docs/CONFIG.md has no section {title:?}"));
    let rest = &DOC[start + 1..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

fn documented(section: &str, key: &str) -> bool {
    section.contains(&format!("`{key}`")) || section.contains(&format!("{key} ="))
}

#[test]
fn every_key_is_documented_in_its_section() {
    let mut missing = Vec::new();
    let mut expect = |title: &str, keys: &[&str]| {
        let text = section(title);
        assert!(!keys.is_empty(), "no keys for {title}");
        for k in keys {
            if !documented(text, k) {
                missing.push(format!("{title}: {k}"));
            }
        }
    };
    expect("`[host]`", field_names::<HostConfig>());
    expect("`[defaults]`", field_names::<Defaults>());
    expect("`[[handlers]]`", field_names::<HandlerConfig>());
    expect("`{ wasm = ", field_names::<WasmMiddlewareEntry>());
    expect("`[cqrs]`", field_names::<super::cqrs::CqrsConfig>());
    expect("`[cqrs]`", &["name", "handler", "ack_unknown"]);
    use super::components::{FanInEntry, FanOutEntry, ForwarderEntry, RequeueEntry};
    for keys in [
        field_names::<RequeueEntry>(),
        field_names::<ForwarderEntry>(),
        field_names::<FanInEntry>(),
        field_names::<FanOutEntry>(),
    ] {
        expect("`[[requeue]]`", keys);
    }
    expect("## Middleware", NAMES);
    for name in NAMES {
        let options = option_names(name);
        if !options.is_empty() {
            expect("## Middleware", options);
        }
    }
    use crate::pubsub::memory::MemoryConfig;
    expect("kind = \"memory\"", field_names::<MemoryConfig>());
    #[cfg(feature = "sqlite")]
    expect(
        "kind = \"sqlite\"",
        field_names::<crate::pubsub::sqlite::SqliteConfig>(),
    );
    #[cfg(feature = "redis")]
    expect(
        "kind = \"redis\"",
        field_names::<crate::pubsub::redis::RedisConfig>(),
    );
    #[cfg(feature = "nats")]
    expect(
        "kind = \"nats\"",
        field_names::<crate::pubsub::nats::NatsConfig>(),
    );
    #[cfg(feature = "postgres")]
    expect(
        "kind = \"postgres\"",
        field_names::<crate::pubsub::postgres::PostgresConfig>(),
    );
    #[cfg(feature = "mysql")]
    expect(
        "kind = \"mysql\"",
        field_names::<crate::pubsub::mysql::MysqlConfig>(),
    );
    #[cfg(feature = "amqp")]
    expect(
        "kind = \"amqp\"",
        field_names::<crate::pubsub::amqp::AmqpConfig>(),
    );
    #[cfg(feature = "mqtt")]
    expect(
        "kind = \"mqtt\"",
        field_names::<crate::pubsub::mqtt::MqttConfig>(),
    );
    assert!(
        missing.is_empty(),
        "docs/CONFIG.md does not document:\n{}",
        missing.join("\n")
    );
}
