//! `{ cqrs = { name = "PlaceOrder", … } }`: the middleware that makes any handler — a WASM
//! plugin bound by a `[[commands]]` or `[[events]]` entry — a command or event handler. It
//! lets through the messages named `name` (metadata `name`); another name is acked and ignored
//! (`ack_unknown`, a command processor's way) or fails permanently (an event processor's way:
//! not acked by this handler; the failure policy poisons it). What the handler returns that
//! carries a name is published on the event bus (`events`, topic from the name); the rest goes
//! to the handler's own publish topic, if any.
//!
//! A request (`wasmill request`, `POST ?reply=1`) is answered with the events the command
//! emitted, or, for a message of another name that is acked and ignored, with an error reply
//! that says so (reply-only messages, [`REPLY_ONLY`]), instead of an empty reply.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use super::bus::Bus;
use super::marshal::name_of;
use crate::components::reply::{REPLY_ERROR, REPLY_ONLY, REPLY_TO};
use crate::error::HandlerError;
use crate::message::Message;
use crate::pubsub::Publisher;
use crate::router::{BoxHandler, Handler, HandlerResult, Middleware};

/// The options of `{ cqrs = { … } }`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CqrsOptions {
    /// The command or event name handled.
    pub name: String,
    /// Whether a message of another name is acked and ignored (else it fails permanently).
    #[serde(default)]
    pub ack_unknown: bool,
    /// The event bus's topic template for named outputs (`events.{name}`); none: outputs go
    /// to the handler's publish topic.
    #[serde(default)]
    pub events: Option<String>,
    /// The backend of the event bus (default: the host's default pub/sub).
    #[serde(default)]
    pub pubsub: Option<String>,
}

impl CqrsOptions {
    /// Checks the name and the template; an error names the option.
    pub fn check(&self) -> std::result::Result<(), crate::config::OptionError> {
        use crate::config::OptionError;
        if self.name.is_empty() {
            return Err(OptionError::new("name", "must not be empty"));
        }
        if self.events.as_deref().is_some_and(str::is_empty) {
            return Err(OptionError::new("events", "must not be empty"));
        }
        Ok(())
    }
}

/// The built middleware.
#[derive(Clone)]
pub struct Cqrs {
    options: CqrsOptions,
    bus: Option<Bus>,
}

impl Cqrs {
    /// With `publisher` for the event bus (used when `options.events` is set).
    pub fn new(options: CqrsOptions, publisher: Arc<dyn Publisher>) -> Cqrs {
        let bus = options
            .events
            .as_ref()
            .map(|t| Bus::new(publisher, t.clone()));
        Cqrs { options, bus }
    }
}

struct Filtering {
    cqrs: Cqrs,
    next: BoxHandler,
}

#[async_trait]
impl Handler for Filtering {
    async fn handle(&self, msg: Message) -> HandlerResult {
        let opts = &self.cqrs.options;
        let request = msg.metadata.contains(REPLY_TO);
        if name_of(&msg) != Some(opts.name.as_str()) {
            let got = name_of(&msg).unwrap_or("(no name)");
            if opts.ack_unknown {
                tracing::debug!(uuid = %msg.uuid, "{got}: not {}, ignored", opts.name);
                if !request {
                    return Ok(vec![]);
                }
                let why = format!(
                    "ignored: metadata name is {got}, this handler takes {} (send it with \
                     metadata name={})",
                    opts.name, opts.name
                );
                return Ok(vec![
                    reply_only(Message::new(why.clone())).with_metadata(REPLY_ERROR, why),
                ]);
            }
            return Err(HandlerError::permanent(format!(
                "unknown {got}: this handler takes {}",
                opts.name
            )));
        }
        let outputs = self.next.handle(msg).await?;
        let Some(bus) = &self.cqrs.bus else {
            return Ok(outputs);
        };
        let mut rest = Vec::new();
        let mut emitted = Vec::new();
        for mut out in outputs {
            if name_of(&out).is_some() {
                // An event is not the request: its handlers must not answer it again.
                out.metadata.remove(REPLY_TO);
                if request {
                    emitted.push(reply_only(out.copy()));
                }
                bus.publish(out)
                    .await
                    .map_err(|e| HandlerError::new(format!("publish event: {e}")))?;
            } else {
                rest.push(out);
            }
        }
        // A request's reply carries the events the command emitted.
        emitted.extend(rest);
        Ok(emitted)
    }
}

/// `msg` marked for the reply only.
fn reply_only(msg: Message) -> Message {
    msg.with_metadata(REPLY_ONLY, "1")
}

impl Middleware for Cqrs {
    fn wrap(&self, next: BoxHandler) -> BoxHandler {
        Arc::new(Filtering {
            cqrs: self.clone(),
            next,
        })
    }

    fn name(&self) -> &str {
        "cqrs"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::cqrs::marshal::marshal;
    use crate::pubsub::Subscriber;
    use crate::pubsub::memory::MemoryPubSub;
    use crate::router::handler_fn;

    #[tokio::test]
    async fn named_messages_pass_others_are_ignored_or_refused_and_events_go_on_the_bus() {
        let ps = MemoryPubSub::default();
        let mut placed = ps.subscribe("events.OrderPlaced").await.unwrap();
        let handler = handler_fn(|_m: Message| async {
            Ok(vec![
                marshal("OrderPlaced", &1).unwrap(),
                Message::new("plain"),
            ])
        });
        let opts = CqrsOptions {
            name: "PlaceOrder".into(),
            ack_unknown: true,
            events: Some("events.{name}".into()),
            pubsub: None,
        };
        let h = Cqrs::new(opts.clone(), Arc::new(ps.clone())).wrap(handler.clone());
        let out = h.handle(marshal("PlaceOrder", &1).unwrap()).await.unwrap();
        assert_eq!(out.len(), 1, "the unnamed output stays with the handler");
        assert_eq!(&out[0].payload[..], b"plain");
        let ev = placed.recv().await.unwrap();
        assert_eq!(name_of(&ev), Some("OrderPlaced"));
        ev.ack();

        assert!(
            h.handle(marshal("Other", &1).unwrap())
                .await
                .unwrap()
                .is_empty()
        );
        let strict = Cqrs::new(
            CqrsOptions {
                ack_unknown: false,
                ..opts
            },
            Arc::new(ps.clone()),
        )
        .wrap(handler);
        let e = strict.handle(Message::new("x")).await.unwrap_err();
        assert!(e.to_string().contains("unknown (no name)"), "{e}");
    }

    #[tokio::test]
    async fn a_request_is_answered_with_the_events_or_why_it_was_ignored() {
        let ps = MemoryPubSub::default();
        let mut placed = ps.subscribe("events.OrderPlaced").await.unwrap();
        let handler = handler_fn(|m: Message| async move {
            // A plugin that copies the request's metadata into its event.
            let mut ev = marshal("OrderPlaced", &1).unwrap();
            ev.metadata.set(REPLY_TO, m.metadata.get(REPLY_TO));
            Ok(vec![ev])
        });
        let opts = CqrsOptions {
            name: "PlaceOrder".into(),
            ack_unknown: true,
            events: Some("events.{name}".into()),
            pubsub: None,
        };
        let h = Cqrs::new(opts, Arc::new(ps.clone())).wrap(handler);
        let req = marshal("PlaceOrder", &1)
            .unwrap()
            .with_metadata(REPLY_TO, "r");
        let out = h.handle(req).await.unwrap();
        assert_eq!(out.len(), 1);
        assert!(
            out[0].metadata.contains(REPLY_ONLY),
            "the event, for the reply"
        );
        assert_eq!(name_of(&out[0]), Some("OrderPlaced"));
        let ev = placed.recv().await.unwrap();
        assert!(
            !ev.metadata.contains(REPLY_TO),
            "the event's handlers would answer the request again"
        );
        ev.ack();

        let ignored = Message::new("x").with_metadata(REPLY_TO, "r");
        let out = h.handle(ignored).await.unwrap();
        assert!(out[0].metadata.contains(REPLY_ONLY));
        let why = out[0].metadata.get(REPLY_ERROR);
        assert!(why.contains("name=PlaceOrder"), "{why}");
        // Not a request: ignored without a word.
        assert!(h.handle(Message::new("x")).await.unwrap().is_empty());
    }
}
