//! The command and event processors: subscriptions whose messages are dispatched to a
//! handler by their name (metadata `name`).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::bus::{Bus, topic_for};
use super::marshal::name_of;
use crate::error::Result;
use crate::message::Message;
use crate::pubsub::{Subscriber, Subscription};
use crate::router::BoxHandler;

/// Dispatches the named messages of one or more topics to their handlers.
pub struct Processor {
    template: String,
    /// Topic -> name -> handler. Several names on one topic: an event group.
    topics: HashMap<String, HashMap<String, BoxHandler>>,
    ack_unknown: bool,
    ack_errors: bool,
    outputs: Option<Bus>,
    what: &'static str,
}

impl Processor {
    /// The command processor: topics from `template` (`commands.{name}`); an unknown command
    /// is acked and ignored; a handler error nacks the command.
    pub fn commands(template: impl Into<String>) -> Processor {
        Processor::new(template, true, "command")
    }

    /// The event processor: topics from `template` (`events.{name}`); an unknown event is
    /// nacked (another handler of the topic's consumer group may know it).
    pub fn events(template: impl Into<String>) -> Processor {
        Processor::new(template, false, "event")
    }

    fn new(template: impl Into<String>, ack_unknown: bool, what: &'static str) -> Processor {
        Processor {
            template: template.into(),
            topics: HashMap::new(),
            ack_unknown,
            ack_errors: false,
            outputs: None,
            what,
        }
    }

    /// `handler` handles the messages named `name`, on the topic of the name.
    pub fn handle(self, name: &str, handler: BoxHandler) -> Processor {
        let topic = topic_for(&self.template, name);
        self.handle_on(&topic, name, handler)
    }

    /// An event group: `handlers` share one subscription to `topic`, each getting the
    /// messages of its name.
    pub fn group(mut self, topic: &str, handlers: Vec<(String, BoxHandler)>) -> Processor {
        for (name, h) in handlers {
            self = self.handle_on(topic, &name, h);
        }
        self
    }

    fn handle_on(mut self, topic: &str, name: &str, handler: BoxHandler) -> Processor {
        self.topics
            .entry(topic.to_string())
            .or_default()
            .insert(name.to_string(), handler);
        self
    }

    /// Whether a message nobody handles is acked (ignored) or nacked.
    pub fn ack_unknown(mut self, ack: bool) -> Processor {
        self.ack_unknown = ack;
        self
    }

    /// Whether a handler's error acks the message (logged) instead of nacking it.
    pub fn ack_errors(mut self, ack: bool) -> Processor {
        self.ack_errors = ack;
        self
    }

    /// Publishes what handlers return (named events) on `bus`.
    pub fn publish_outputs(mut self, bus: Bus) -> Processor {
        self.outputs = Some(bus);
        self
    }

    /// The topics this processor subscribes to.
    pub fn topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self.topics.keys().cloned().collect();
        t.sort();
        t
    }

    /// Subscribes to every topic (before it returns, so nothing published afterwards is
    /// missed) and dispatches until `stop` is cancelled, in the returned tasks.
    pub async fn run(
        self,
        subscriber: &dyn Subscriber,
        stop: CancellationToken,
    ) -> Result<JoinSet<()>> {
        let mut subs = Vec::new();
        for topic in self.topics() {
            subs.push((topic.clone(), subscriber.subscribe(&topic).await?));
        }
        let shared = Arc::new(self);
        let mut tasks = JoinSet::new();
        for (topic, sub) in subs {
            let (p, stop) = (shared.clone(), stop.clone());
            tasks.spawn(async move { p.dispatch_all(&topic, sub, stop).await });
        }
        Ok(tasks)
    }

    async fn dispatch_all(&self, topic: &str, mut sub: Subscription, stop: CancellationToken) {
        let handlers = &self.topics[topic];
        loop {
            let Some(msg) = crate::components::recv_until(&mut sub, &stop).await else {
                return;
            };
            let handler = name_of(&msg).and_then(|n| handlers.get(n));
            let Some(handler) = handler else {
                let name = name_of(&msg).unwrap_or("(no name)").to_string();
                if self.ack_unknown {
                    tracing::debug!(topic, uuid = %msg.uuid, "unknown {} {name}: ignored", self.what);
                    msg.ack();
                } else {
                    tracing::debug!(topic, uuid = %msg.uuid, "unknown {} {name}: nacked", self.what);
                    msg.nack();
                }
                continue;
            };
            let acked = match handler.handle(msg.copy()).await {
                Ok(outputs) => self.publish(outputs).await,
                Err(e) => Err(e.to_string()),
            };
            match acked {
                Ok(()) => {
                    msg.ack();
                }
                Err(e) if self.ack_errors => {
                    tracing::warn!(topic, uuid = %msg.uuid, "{} failed, acked: {e}", self.what);
                    msg.ack();
                }
                Err(e) => {
                    tracing::warn!(topic, uuid = %msg.uuid, "{} failed, nacked: {e}", self.what);
                    msg.nack();
                }
            }
        }
    }

    async fn publish(&self, outputs: Vec<Message>) -> std::result::Result<(), String> {
        let Some(bus) = &self.outputs else {
            return Ok(());
        };
        for out in outputs {
            bus.publish(out).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::components::cqrs::marshal::{marshal, unmarshal};
    use crate::components::test_util::{Both, redis};
    use crate::error::HandlerError;
    use crate::pubsub::Publisher;
    use crate::pubsub::memory::{MemoryConfig, MemoryPubSub};
    use crate::router::handler_fn;

    #[derive(Serialize, Deserialize)]
    struct PlaceOrder {
        id: u32,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct OrderPlaced {
        id: u32,
    }

    /// A command handled, its event published on the event bus and handled by an event
    /// group; an unknown command ignored; a failing command retried (nacked) until it
    /// succeeds.
    async fn commands_and_events_on(ps: Arc<dyn Both>) {
        let prefix = crate::pubsub::conformance::unique_topic("cqrs");
        let commands = Bus::new(
            ps.clone().publisher(),
            format!("{prefix}.commands.{{name}}"),
        );
        // Every event on one topic, for the group.
        let events_topic = format!("{prefix}.events");
        let events = Bus::new(ps.clone().publisher(), events_topic.clone());
        for t in [
            commands.topic("PlaceOrder"),
            commands.topic("Fail"),
            events_topic.clone(),
        ] {
            ps.subscribe_initialize(&t).await.unwrap();
        }
        let attempts = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let cmd = Processor::commands(format!("{prefix}.commands.{{name}}"))
            .handle(
                "PlaceOrder",
                handler_fn(|m: Message| async move {
                    let c: PlaceOrder = unmarshal(&m).map_err(HandlerError::permanent)?;
                    Ok(vec![
                        marshal("OrderPlaced", &OrderPlaced { id: c.id }).unwrap(),
                    ])
                }),
            )
            .handle("Fail", {
                let attempts = attempts.clone();
                handler_fn(move |_m: Message| {
                    let n = attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async move {
                        if n < 2 {
                            Err(HandlerError::new("not yet"))
                        } else {
                            Ok(vec![])
                        }
                    }
                })
            })
            .publish_outputs(events.clone());
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<(String, u32)>();
        let ev = Processor::events(format!("{prefix}.events.{{name}}"))
            .group(
                &events_topic,
                vec![(
                    "OrderPlaced".to_string(),
                    handler_fn(move |m: Message| {
                        let tx = seen_tx.clone();
                        async move {
                            let e: OrderPlaced = unmarshal(&m).map_err(HandlerError::permanent)?;
                            let _ = tx.send(("OrderPlaced".into(), e.id));
                            Ok(vec![])
                        }
                    }),
                )],
            )
            .ack_unknown(true);
        let stop = CancellationToken::new();
        let t1 = cmd.run(ps.subscriber(), stop.clone()).await.unwrap();
        let t2 = ev.run(ps.subscriber(), stop.clone()).await.unwrap();

        // An unknown command on a known topic is acked and ignored.
        let mut stray = marshal("Unknown", &1).unwrap();
        stray.uuid = "stray".into();
        ps.clone()
            .publisher()
            .publish(&commands.topic("PlaceOrder"), vec![stray])
            .await
            .unwrap();
        commands
            .send("PlaceOrder", &PlaceOrder { id: 42 })
            .await
            .unwrap();
        commands.send("Fail", &()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, ("OrderPlaced".to_string(), 42));
        // The failing command is redelivered until its third attempt succeeds.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while attempts.load(std::sync::atomic::Ordering::SeqCst) < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the failed command was not redelivered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        t1.join_all().await;
        t2.join_all().await;
    }

    #[tokio::test]
    async fn commands_and_events_in_memory() {
        commands_and_events_on(Arc::new(MemoryPubSub::new(MemoryConfig {
            redelivery_delay: Duration::from_millis(10),
            ..MemoryConfig::default()
        })))
        .await;
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn commands_and_events_on_redis() {
        let ps = redis().await;
        commands_and_events_on(Arc::new(ps)).await;
    }

    /// With `block_publish_until_acked`, a publish returns only once the processor acked:
    /// an unknown event is never acked by default, and acked when told to.
    #[tokio::test]
    async fn an_unknown_event_is_nacked_unless_told_otherwise() {
        for ack_unknown in [false, true] {
            let ps = MemoryPubSub::new(MemoryConfig {
                redelivery_delay: Duration::from_millis(10),
                block_publish_until_acked: true,
                ..MemoryConfig::default()
            });
            let ev = Processor::events("ev.{name}")
                .group(
                    "ev",
                    vec![(
                        "Known".to_string(),
                        handler_fn(|_m: Message| async { Ok(vec![]) }),
                    )],
                )
                .ack_unknown(ack_unknown);
            let stop = CancellationToken::new();
            let tasks = ev.run(&ps, stop.clone()).await.unwrap();
            let publish = ps.publish("ev", vec![marshal("Other", &1).unwrap()]);
            let acked = tokio::time::timeout(Duration::from_millis(500), publish)
                .await
                .is_ok();
            assert_eq!(acked, ack_unknown, "ack_unknown = {ack_unknown}");
            let known = ps.publish("ev", vec![marshal("Known", &1).unwrap()]);
            if ack_unknown {
                tokio::time::timeout(Duration::from_secs(5), known)
                    .await
                    .unwrap()
                    .unwrap();
            }
            stop.cancel();
            tasks.join_all().await;
        }
    }
}
