//! The command bus and the event bus: a named message published to the topic generated from
//! its name, after the bus's hooks ran on it.

use std::sync::Arc;

use serde::Serialize;

use super::marshal::{NAME, marshal, name_of};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::pubsub::Publisher;

/// A hook run on every message before it is sent (for example to set a correlation id).
pub type Hook = Arc<dyn Fn(&mut Message) + Send + Sync>;

/// The topic of a name: `template` with `{name}` replaced (`commands.{name}`; a template
/// without `{name}` puts every name on one topic, as an event group wants).
pub fn topic_for(template: &str, name: &str) -> String {
    template.replace("{name}", name)
}

/// A command bus or an event bus.
#[derive(Clone)]
pub struct Bus {
    publisher: Arc<dyn Publisher>,
    template: String,
    hooks: Vec<Hook>,
}

impl Bus {
    /// The command bus on `publisher`: topics `commands.{name}`.
    pub fn commands(publisher: Arc<dyn Publisher>) -> Bus {
        Bus::new(publisher, "commands.{name}")
    }

    /// The event bus on `publisher`: topics `events.{name}`.
    pub fn events(publisher: Arc<dyn Publisher>) -> Bus {
        Bus::new(publisher, "events.{name}")
    }

    /// A bus publishing a name to `topic_for(template, name)`.
    pub fn new(publisher: Arc<dyn Publisher>, template: impl Into<String>) -> Bus {
        Bus {
            publisher,
            template: template.into(),
            hooks: Vec::new(),
        }
    }

    /// Runs `hook` on every message before it is published (OnSend / OnPublish).
    pub fn with_hook(mut self, hook: impl Fn(&mut Message) + Send + Sync + 'static) -> Bus {
        self.hooks.push(Arc::new(hook));
        self
    }

    /// The topic a name goes to.
    pub fn topic(&self, name: &str) -> String {
        topic_for(&self.template, name)
    }

    /// Marshals `value` as `name` and publishes it.
    pub async fn send<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let msg = marshal(name, value).map_err(Error::Config)?;
        self.publish(msg).await
    }

    /// Publishes an already named message (metadata `name`), after the hooks.
    pub async fn publish(&self, mut msg: Message) -> Result<()> {
        let Some(name) = name_of(&msg).map(str::to_string) else {
            return Err(Error::Config(format!(
                "message {} has no `{NAME}` metadata: not a command or event",
                msg.uuid
            )));
        };
        for hook in &self.hooks {
            hook(&mut msg);
        }
        self.publisher.publish(&self.topic(&name), vec![msg]).await
    }
}
