//! Poison replay: messages of a poison queue are sent back to the topic they failed on (the
//! `topic_poisoned` metadata the PoisonQueue middleware set, or an explicit destination), with
//! the poison keys removed and their uuid and other metadata kept, then acked on the poison
//! topic. A message with no destination is left on the poison topic (nacked) and reported.

use std::time::Duration;

use serde::Serialize;

use crate::error::Result;
use crate::message::Message;
use crate::pubsub::{Publisher, Subscription};
use crate::router::middleware::poison_queue::{
    HANDLER_POISONED, REASON_POISONED, SUBSCRIBER_POISONED, TOPIC_POISONED,
};

/// The metadata keys the PoisonQueue middleware adds, removed on replay.
pub const POISON_KEYS: [&str; 4] = [
    REASON_POISONED,
    TOPIC_POISONED,
    HANDLER_POISONED,
    SUBSCRIBER_POISONED,
];

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Messages published back to their topic.
    pub replayed: usize,
    /// Uuids of messages left on the poison topic, each with why.
    pub skipped: Vec<String>,
}

/// The message to publish for the poisoned `msg`, and where: `to`, else its `topic_poisoned`.
/// The uuid, payload and every other metadata key are kept. `Err` says why it cannot be
/// replayed.
pub fn unpoison(msg: &Message, to: Option<&str>) -> std::result::Result<(String, Message), String> {
    let topic = match to.filter(|t| !t.is_empty()) {
        Some(t) => t.to_string(),
        None => match msg.metadata.get_opt(TOPIC_POISONED) {
            Some(t) if !t.is_empty() => t.to_string(),
            _ => {
                return Err(format!(
                    "{}: no `{TOPIC_POISONED}` metadata and no destination given",
                    msg.uuid
                ));
            }
        },
    };
    let mut out = Message::with_uuid(msg.uuid.clone(), msg.payload.clone());
    for (k, v) in msg.metadata.iter() {
        if !POISON_KEYS.contains(&k) {
            out.metadata.set(k, v);
        }
    }
    Ok((topic, out))
}

/// Replays `messages` (already taken off the poison topic) to `publisher`: each one is
/// published before the next is looked at. Returns the report and the messages that could not
/// be replayed (the caller decides where they stay).
pub async fn replay_messages(
    messages: Vec<Message>,
    to: Option<&str>,
    publisher: &dyn Publisher,
) -> Result<(ReplayReport, Vec<Message>)> {
    let mut report = ReplayReport::default();
    let mut left = Vec::new();
    let mut pending = messages.into_iter();
    for msg in pending.by_ref() {
        match unpoison(&msg, to) {
            Ok((topic, out)) => {
                if let Err(e) = publisher.publish(&topic, vec![out]).await {
                    left.push(msg);
                    left.extend(pending);
                    return Err(e);
                }
                report.replayed += 1;
            }
            Err(why) => {
                report.skipped.push(why);
                left.push(msg);
            }
        }
    }
    Ok((report, left))
}

/// Drains `sub` (a subscription to a poison topic): every message is replayed and acked, until
/// `limit` messages were taken or none arrived for `idle`. A message that cannot be replayed is
/// nacked (it stays on the poison topic) and reported; seeing it again ends the drain. A
/// failed publish nacks the message and ends the drain with the error: nothing is lost.
pub async fn drain(
    sub: &mut Subscription,
    to: Option<&str>,
    publisher: &dyn Publisher,
    limit: Option<usize>,
    idle: Duration,
) -> Result<ReplayReport> {
    let mut report = ReplayReport::default();
    let mut skipped_uuids = std::collections::HashSet::new();
    while limit.is_none_or(|l| report.replayed + report.skipped.len() < l) {
        let Ok(Some(msg)) = tokio::time::timeout(idle, sub.recv()).await else {
            break;
        };
        if skipped_uuids.contains(&msg.uuid) {
            msg.nack();
            break;
        }
        match unpoison(&msg, to) {
            Ok((topic, out)) => match publisher.publish(&topic, vec![out]).await {
                Ok(()) => {
                    msg.ack();
                    report.replayed += 1;
                }
                Err(e) => {
                    msg.nack();
                    return Err(e);
                }
            },
            Err(why) => {
                skipped_uuids.insert(msg.uuid.clone());
                msg.nack();
                report.skipped.push(why);
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::pubsub::Subscriber;
    use crate::pubsub::memory::{MemoryConfig, MemoryPubSub};

    fn poisoned(uuid: &str, topic: Option<&str>) -> Message {
        let mut m = Message::with_uuid(uuid, "body")
            .with_metadata("trace", "t-1")
            .with_metadata(REASON_POISONED, "boom")
            .with_metadata(HANDLER_POISONED, "h")
            .with_metadata(SUBSCRIBER_POISONED, "memory");
        if let Some(t) = topic {
            m.metadata.set(TOPIC_POISONED, t);
        }
        m
    }

    #[test]
    fn unpoison_keeps_uuid_payload_and_metadata_and_drops_the_poison_keys() {
        let (topic, out) = unpoison(&poisoned("u1", Some("orders")), None).unwrap();
        assert_eq!(topic, "orders");
        assert_eq!(out.uuid, "u1");
        assert_eq!(&out.payload[..], b"body");
        assert_eq!(out.metadata.get("trace"), "t-1");
        for k in POISON_KEYS {
            assert!(!out.metadata.contains(k), "{k} kept");
        }
        let (topic, _) = unpoison(&poisoned("u1", Some("orders")), Some("elsewhere")).unwrap();
        assert_eq!(topic, "elsewhere");
        let e = unpoison(&poisoned("u2", None), None).unwrap_err();
        assert!(e.contains("u2") && e.contains(TOPIC_POISONED), "{e}");
    }

    #[tokio::test]
    async fn drain_replays_acks_and_stops_when_idle_or_at_the_limit() {
        let ps = Arc::new(MemoryPubSub::new(MemoryConfig {
            persistent: true,
            ..MemoryConfig::default()
        }));
        let mut back = ps.subscribe("orders").await.unwrap();
        for i in 0..3 {
            ps.publish(
                "orders.poison",
                vec![poisoned(&format!("u{i}"), Some("orders"))],
            )
            .await
            .unwrap();
        }
        let mut sub = ps.subscribe("orders.poison").await.unwrap();
        let idle = Duration::from_millis(100);
        let r = drain(&mut sub, None, ps.as_ref(), Some(2), idle)
            .await
            .unwrap();
        assert_eq!(r.replayed, 2);
        let r = drain(&mut sub, None, ps.as_ref(), None, idle)
            .await
            .unwrap();
        assert_eq!(
            r,
            ReplayReport {
                replayed: 1,
                skipped: vec![]
            }
        );
        for i in 0..3 {
            let m = back.recv().await.unwrap();
            assert_eq!(m.uuid, format!("u{i}"));
            assert!(!m.metadata.contains(REASON_POISONED));
            m.ack();
        }
    }

    #[tokio::test]
    async fn a_message_without_destination_stays_and_is_reported_once() {
        let ps = Arc::new(MemoryPubSub::new(MemoryConfig {
            persistent: true,
            ..MemoryConfig::default()
        }));
        ps.publish("p", vec![poisoned("lost", None)]).await.unwrap();
        let mut sub = ps.subscribe("p").await.unwrap();
        let r = drain(
            &mut sub,
            None,
            ps.as_ref(),
            None,
            Duration::from_millis(100),
        )
        .await
        .unwrap();
        assert_eq!(r.replayed, 0);
        assert_eq!(r.skipped.len(), 1, "{r:?}");
        // Still there: nacked, delivered again.
        let again = sub.recv().await.unwrap();
        assert_eq!(again.uuid, "lost");
    }

    #[tokio::test]
    async fn replay_messages_returns_what_it_could_not_send() {
        let ps = Arc::new(MemoryPubSub::default());
        let mut back = ps.subscribe("orders").await.unwrap();
        let (r, left) = replay_messages(
            vec![poisoned("a", Some("orders")), poisoned("b", None)],
            None,
            ps.as_ref(),
        )
        .await
        .unwrap();
        assert_eq!(r.replayed, 1);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].uuid, "b");
        assert_eq!(back.recv().await.unwrap().uuid, "a");
    }

    /// On a real broker: the poison topic's queue made when the handler starts (as the host
    /// does), messages poisoned before the replay subscribes are all replayed and acked.
    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn drain_replays_from_a_redis_stream() {
        use crate::pubsub::conformance::unique_topic;
        let mut settings = toml::Table::new();
        settings.insert(
            "url".into(),
            std::env::var("WASMILL_TEST_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
                .into(),
        );
        let b = crate::pubsub::registry::connect("r", "redis", &settings)
            .await
            .unwrap();
        let topic = unique_topic("orders");
        let poison = format!("{topic}.poison");
        b.subscriber.subscribe_initialize(&poison).await.unwrap();
        b.subscriber.subscribe_initialize(&topic).await.unwrap();
        for i in 0..3 {
            b.publisher
                .publish(&poison, vec![poisoned(&format!("r{i}"), Some(&topic))])
                .await
                .unwrap();
        }
        let mut sub = b.subscriber.subscribe(&poison).await.unwrap();
        let r = drain(
            &mut sub,
            None,
            b.publisher.as_ref(),
            None,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        drop(sub);
        assert_eq!(r.replayed, 3, "{r:?}");
        let mut back = b.subscriber.subscribe(&topic).await.unwrap();
        for i in 0..3 {
            let m = back.recv().await.unwrap();
            assert_eq!(m.uuid, format!("r{i}"));
            assert!(!m.metadata.contains(TOPIC_POISONED));
            m.ack();
        }
        drop(back);
        // Acked on the poison topic: a second replay finds nothing.
        let mut sub = b.subscriber.subscribe(&poison).await.unwrap();
        let r = drain(
            &mut sub,
            None,
            b.publisher.as_ref(),
            None,
            Duration::from_millis(500),
        )
        .await
        .unwrap();
        assert_eq!(r.replayed, 0);
        drop(sub);
        let _ = b.subscriber.remove_topic(&poison).await;
        let _ = b.subscriber.remove_topic(&topic).await;
    }
}
