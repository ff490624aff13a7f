//! `[cqrs]`, `[[commands]]` and `[[events]]`: a command or event name bound to a WASM handler.
//! Each entry becomes a `[[handlers]]` entry (same keys, but `name` is the command's or
//! event's name and `subscribe` is generated): it subscribes to the topic of the name and gets
//! a `{ cqrs = … }` middleware first in its chain, which lets through its name only (another
//! name: a command is acked and ignored; an event fails, unless `ack_unknown = true`). The
//! named messages a command handler returns are published on the event bus (events, to the
//! topic of their name); an event handler's outputs go to its `publish` topic, if any.

use serde::Deserialize;

use super::HandlerConfig;
use crate::error::{Error, Result};

/// `[cqrs]`: where commands and events go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CqrsConfig {
    /// The topic of a command, `{name}` replaced by its name.
    pub commands: String,
    /// The topic of an event, `{name}` replaced by its name.
    pub events: String,
    /// The backend of both buses (default: the host's default pub/sub).
    pub pubsub: Option<String>,
}

impl Default for CqrsConfig {
    fn default() -> Self {
        CqrsConfig {
            commands: "commands.{name}".into(),
            events: "events.{name}".into(),
            pubsub: None,
        }
    }
}

/// Which kind of entry.
#[derive(Clone, Copy)]
pub enum Entry {
    /// `[[commands]]`.
    Command,
    /// `[[events]]`.
    Event,
}

/// The `[[handlers]]` entry of `commands[i]` / `events[i]` (`table`), errors naming the key.
pub fn handler_for(
    file: &str,
    cqrs: &CqrsConfig,
    kind: Entry,
    i: usize,
    table: &toml::Table,
) -> Result<HandlerConfig> {
    let (list, template, ack_default) = match kind {
        Entry::Command => ("commands", &cqrs.commands, true),
        Entry::Event => ("events", &cqrs.events, false),
    };
    let at = |key: &str, why: &str| Error::Config(format!("{file}: {list}[{i}].{key}: {why}"));
    let mut t = table.clone();
    let name = match t.remove("name") {
        Some(toml::Value::String(n)) if !n.is_empty() => n,
        Some(_) => return Err(at("name", "expected a non-empty string")),
        None => return Err(at("name", "missing (the command's or event's name)")),
    };
    if t.contains_key("subscribe") {
        return Err(at(
            "subscribe",
            "not allowed: the topic comes from the name ([cqrs] commands / events)",
        ));
    }
    let ack_unknown = match t.remove("ack_unknown") {
        None => ack_default,
        Some(toml::Value::Boolean(b)) => b,
        Some(_) => return Err(at("ack_unknown", "expected true or false")),
    };
    let handler = match t.remove("handler") {
        Some(toml::Value::String(h)) if !h.is_empty() => h,
        Some(_) => return Err(at("handler", "expected a non-empty string")),
        None => {
            let stem = t
                .get("plugin")
                .and_then(|p| p.as_str())
                .and_then(|p| std::path::Path::new(p).file_stem())
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            match kind {
                Entry::Command => format!("command.{name}"),
                Entry::Event => format!("event.{name}.{stem}"),
            }
        }
    };
    let topic = super::super::components::cqrs::bus::topic_for(template, &name);
    let mut subscribe = toml::Table::new();
    subscribe.insert("topic".into(), topic.into());
    let mut options = toml::Table::new();
    options.insert("name".into(), name.clone().into());
    options.insert("ack_unknown".into(), ack_unknown.into());
    // A command handler's named outputs are events, published on the event bus. An event
    // handler's go to its own publish topic: one that returned its input would otherwise
    // publish the same event again, for ever.
    if matches!(kind, Entry::Command) {
        options.insert("events".into(), cqrs.events.clone().into());
    }
    if let Some(p) = &cqrs.pubsub {
        subscribe.insert("pubsub".into(), p.clone().into());
        options.insert("pubsub".into(), p.clone().into());
    }
    let mut filter = toml::Table::new();
    filter.insert("cqrs".into(), options.into());
    let mut middleware = vec![toml::Value::Table(filter)];
    match t.remove("middleware") {
        Some(toml::Value::Array(rest)) => middleware.extend(rest),
        Some(_) => return Err(at("middleware", "expected an array")),
        None => {}
    }
    t.insert("name".into(), handler.into());
    t.insert("subscribe".into(), subscribe.into());
    t.insert("middleware".into(), middleware.into());
    toml::Value::Table(t)
        .try_into()
        .map_err(|e: toml::de::Error| {
            Error::Config(format!("{file}: {list}[{i}]: {}", e.message().trim_end()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_command_becomes_a_handler_on_its_topic_with_the_cqrs_filter_first() {
        let h = handler_for(
            "w.toml",
            &CqrsConfig::default(),
            Entry::Command,
            0,
            &entry("name = \"PlaceOrder\"\nplugin = \"place.wasm\"\nmiddleware = [\"recoverer\"]\nfuel = 5"),
        )
        .unwrap();
        assert_eq!(h.name.as_deref(), Some("command.PlaceOrder"));
        assert_eq!(h.subscribe.resolve("memory").1, "commands.PlaceOrder");
        assert_eq!(h.fuel, Some(5));
        assert_eq!(h.middleware.len(), 2);
        let filter = h.middleware[0]["cqrs"].as_table().unwrap();
        assert_eq!(filter["name"].as_str(), Some("PlaceOrder"));
        assert_eq!(filter["ack_unknown"].as_bool(), Some(true));
        assert_eq!(h.middleware[1].as_str(), Some("recoverer"));
    }

    #[test]
    fn an_event_nacks_unknown_names_by_default_and_is_named_after_its_plugin() {
        let cqrs = CqrsConfig {
            pubsub: Some("bus".into()),
            ..CqrsConfig::default()
        };
        let h = handler_for(
            "w.toml",
            &cqrs,
            Entry::Event,
            2,
            &entry("name = \"OrderPlaced\"\nplugin = \"notify.wasm\""),
        )
        .unwrap();
        assert_eq!(h.name.as_deref(), Some("event.OrderPlaced.notify"));
        assert_eq!(
            h.subscribe.resolve("memory"),
            ("bus".into(), "events.OrderPlaced".into())
        );
        assert_eq!(
            h.middleware[0]["cqrs"]["ack_unknown"].as_bool(),
            Some(false)
        );
        assert!(h.middleware[0]["cqrs"].get("events").is_none());
    }

    #[test]
    fn mistakes_name_the_list_the_index_and_the_key() {
        let c = CqrsConfig::default();
        let err = |kind, text: &str| {
            handler_for("w.toml", &c, kind, 3, &entry(text))
                .unwrap_err()
                .to_string()
        };
        assert!(
            err(Entry::Command, "plugin = \"a.wasm\"")
                .contains("w.toml: commands[3].name: missing")
        );
        assert!(
            err(Entry::Event, "name = \"E\"\nsubscribe = \"x\"")
                .contains("events[3].subscribe: not allowed")
        );
        assert!(
            err(Entry::Event, "name = \"E\"\nack_unknown = 1").contains("events[3].ack_unknown")
        );
        assert!(err(Entry::Command, "name = \"C\"\nfuel = \"lots\"").contains("commands[3]"));
    }
}
