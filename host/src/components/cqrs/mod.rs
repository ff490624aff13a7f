//! CQRS (Watermill's `components/cqrs`), on the [`Publisher`](crate::Publisher) /
//! [`Subscriber`](crate::Subscriber) traits, so on any backend, with any [`Handler`]
//! (crate::router::Handler) as a command or event handler — a WASM plugin included.
//!
//! - [`marshal`]: the JSON marshaler: a command or event is a JSON payload whose type name is
//!   in metadata [`marshal::NAME`] (`name`, as Watermill's marshalers store it).
//! - [`bus`]: [`bus::Bus`], the command bus and the event bus: the topic is generated from the
//!   name (`commands.{name}` / `events.{name}` unless chosen), hooks run on every message
//!   before it is sent or published.
//! - [`processor`]: [`processor::Processor`], the command processor (one handler per command
//!   name; an unknown command is acked and ignored; a handler's error nacks the command, or
//!   acks it when configured), the event processor (an unknown event is nacked unless
//!   configured otherwise) and event groups (one subscription for a group of handlers,
//!   matched by event name). What a command handler returns is published on the event bus.

pub mod bus;
pub mod marshal;
pub mod middleware;
pub mod processor;
