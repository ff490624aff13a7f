//! The requeuer (Watermill's `requeuer`): failed messages, taken from a poison topic, are sent
//! back to the topic they failed on after a delay, with the number of times that happened
//! counted in metadata [`REQUEUED`]. Past `max_requeues` a message goes to
//! `<poison topic>.dead` instead, with the reason: a message that keeps failing does not
//! circle for ever.
//!
//! The delay is the message's own (`_watermill_delayed_until`, set by `delay_on_error`) or the
//! requeuer's; the message is held, unacked, until it is due, so a host that stops meanwhile
//! loses nothing (the broker delivers it again). Messages are handled in the order they come,
//! so with one delay for all they leave in the order they failed.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::replay::unpoison;
use crate::message::Message;
use crate::pubsub::delay::DELAYED_UNTIL;
use crate::pubsub::{Publisher, Subscription};
use crate::router::middleware::poison_queue::REASON_POISONED;

/// The metadata key counting how many times a message was requeued.
pub const REQUEUED: &str = "_wasmill_requeued";

/// Sends poisoned messages back to their topic after a delay.
pub struct Requeuer {
    /// The poison topic read (for the `.dead` topic's name).
    pub source_topic: String,
    /// Where messages go back to (their topic) or, past the limit, to `.dead`.
    pub publisher: Arc<dyn Publisher>,
    /// The delay when the message names none.
    pub delay: Duration,
    /// How many times a message may be requeued; unlimited when `None`.
    pub max_requeues: Option<u32>,
}

impl Requeuer {
    /// Requeues what `source` (a subscription to the poison topic) receives until `stop`.
    pub async fn run(&self, mut source: Subscription, stop: CancellationToken) {
        loop {
            let Some(msg) = crate::components::recv_until(&mut source, &stop).await else {
                return;
            };
            let wait = due(&msg, self.delay)
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => {
                    msg.nack();
                    return;
                }
            }
            match self.requeue(&msg).await {
                Ok(()) => msg.ack(),
                Err(e) => {
                    tracing::warn!(uuid = %msg.uuid, "requeue failed, redelivered later: {e}");
                    msg.nack()
                }
            };
        }
    }

    async fn requeue(&self, msg: &Message) -> crate::error::Result<()> {
        let count = msg
            .metadata
            .get_opt(REQUEUED)
            .and_then(|c| c.parse::<u32>().ok())
            .unwrap_or(0);
        let dead = self.max_requeues.is_some_and(|max| count >= max);
        match unpoison(msg, None) {
            Ok((topic, mut out)) if !dead => {
                out.metadata.set(REQUEUED, (count + 1).to_string());
                out.metadata.remove(DELAYED_UNTIL);
                self.publisher.publish(&topic, vec![out]).await
            }
            result => {
                let why = match result {
                    Err(why) => why,
                    Ok(_) => format!("requeued {count} times already (max_requeues)"),
                };
                let mut out = msg.copy();
                out.metadata.set(REASON_POISONED, why.as_str());
                let dead_topic = format!("{}.dead", self.source_topic);
                tracing::error!(uuid = %msg.uuid, dead_topic, "not requeued: {why}");
                self.publisher.publish(&dead_topic, vec![out]).await
            }
        }
    }
}

/// When `msg` may go back: its `_watermill_delayed_until`, else `delay` from now.
fn due(msg: &Message, delay: Duration) -> SystemTime {
    crate::pubsub::delay::due(msg).unwrap_or_else(|| SystemTime::now() + delay)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::components::test_util::{Both, next, redis};
    use crate::pubsub::memory::MemoryPubSub;
    use crate::router::middleware::poison_queue::TOPIC_POISONED;

    fn poisoned(uuid: &str, topic: &str, requeued: Option<u32>) -> Message {
        let mut m = Message::with_uuid(uuid, "body");
        m.metadata.set(TOPIC_POISONED, topic);
        m.metadata.set(REASON_POISONED, "boom");
        if let Some(n) = requeued {
            m.metadata.set(REQUEUED, n.to_string());
        }
        m
    }

    async fn requeue_on(ps: Arc<dyn Both>) {
        let topic = crate::pubsub::conformance::unique_topic("orders");
        let (poison, dead_topic) = (format!("{topic}.poison"), format!("{topic}.poison.dead"));
        for t in [&topic, &poison, &dead_topic] {
            ps.subscribe_initialize(t).await.unwrap();
        }
        let mut orders = ps.subscribe(&topic).await.unwrap();
        let mut dead = ps.subscribe(&dead_topic).await.unwrap();
        let source = ps.subscribe(&poison).await.unwrap();
        let requeuer = Requeuer {
            source_topic: poison.clone(),
            publisher: ps.clone().publisher(),
            delay: Duration::from_millis(300),
            max_requeues: Some(2),
        };
        let stop = CancellationToken::new();
        let run = {
            let stop = stop.clone();
            tokio::spawn(async move { requeuer.run(source, stop).await })
        };
        let started = Instant::now();
        let batch = vec![poisoned("a", &topic, None), poisoned("b", &topic, Some(2))];
        ps.clone()
            .publisher()
            .publish(&poison, batch)
            .await
            .unwrap();
        let back = next(&mut orders).await;
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "requeued before the delay"
        );
        assert_eq!(back.uuid, "a");
        assert_eq!(back.metadata.get(REQUEUED), "1");
        assert!(
            !back.metadata.contains(REASON_POISONED) && !back.metadata.contains(TOPIC_POISONED)
        );
        let gone = next(&mut dead).await;
        assert_eq!(gone.uuid, "b");
        assert!(
            gone.metadata.get(REASON_POISONED).contains("max_requeues"),
            "{:?}",
            gone.metadata
        );
        stop.cancel();
        run.await.unwrap();
    }

    #[tokio::test]
    async fn failed_messages_go_back_after_the_delay_and_die_past_the_limit_in_memory() {
        requeue_on(Arc::new(MemoryPubSub::default())).await;
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn failed_messages_go_back_after_the_delay_and_die_past_the_limit_on_redis() {
        requeue_on(Arc::new(redis().await)).await;
    }

    #[test]
    fn a_message_s_own_delay_wins() {
        let mut m = Message::new("x");
        let at = SystemTime::now() + Duration::from_secs(60);
        m.metadata.set(
            DELAYED_UNTIL,
            humantime::format_rfc3339_millis(at).to_string(),
        );
        let due = due(&m, Duration::ZERO);
        assert!(due > SystemTime::now() + Duration::from_secs(59));
    }
}
