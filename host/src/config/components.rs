//! `[[requeue]]`, `[[forwarders]]`, `[[fan_in]]` and `[[fan_out]]`: Watermill's requeuer,
//! forwarder, FanIn and FanOut run by the host (`components::requeue`, `components::forwarder`,
//! `components::fan`), on any configured backend.

use std::time::Duration;

use serde::Deserialize;

use super::TopicSpec;

/// `[[requeue]]`: a poison topic whose messages go back to their topic after a delay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequeueEntry {
    /// The poison topic read (a topic, or `{ pubsub, topic }`).
    pub from: TopicSpec,
    /// The delay when a message names none (`_watermill_delayed_until`). Default 10s.
    #[serde(default = "default_delay", with = "super::duration")]
    pub delay: Duration,
    /// How many times one message may be requeued (then `<from>.dead`); unlimited if unset.
    #[serde(default)]
    pub max_requeues: Option<u32>,
}

fn default_delay() -> Duration {
    Duration::from_secs(10)
}

/// `[[forwarders]]`: a forwarder topic (the outbox) whose messages go to their destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwarderEntry {
    /// The forwarder topic read (default `forwarder_topic` on the default pub/sub).
    #[serde(default = "default_forwarder_topic")]
    pub from: TopicSpec,
    /// The backend the messages are published to (default: the host's default pub/sub).
    #[serde(default)]
    pub to: Option<String>,
}

fn default_forwarder_topic() -> TopicSpec {
    TopicSpec::Topic(crate::components::forwarder::DEFAULT_TOPIC.into())
}

/// `[[fan_in]]`: several topics whose messages are all moved to one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FanInEntry {
    /// The topics read (each a topic, or `{ pubsub, topic }`).
    pub from: Vec<TopicSpec>,
    /// The topic they are published to.
    pub to: TopicSpec,
}

/// `[[fan_out]]`: a topic read once from its backend and handed to every handler subscribed
/// to it there, each of which gets every message.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FanOutEntry {
    /// The topic (or `{ pubsub, topic }`).
    pub topic: TopicSpec,
}
