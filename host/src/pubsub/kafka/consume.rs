//! One subscription: a Kafka consumer of its own in the group, whose messages go to the
//! subscription `max_in_flight` at a time. An ack stores the offset its partition may commit
//! ([`Offsets`]: never past an unacked message of that partition); librdkafka commits the
//! stored offsets every `commit_interval` and at each rebalance. A nack delivers the same
//! message again from memory, before anything later of the subscription, so a partition keeps
//! its order. A partition revoked by a rebalance is forgotten: acks of its in-flight messages
//! commit nothing, and its next owner reads them again from the last commit.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::Semaphore;

use super::offsets::Offsets;
use super::{NAME, UUID_HEADER};
use crate::message::Message;
use crate::pubsub::{SubscriptionSender, settle_redelivering};

/// The consumer's context: forgets revoked partitions.
pub struct Context {
    offsets: Arc<Mutex<Offsets>>,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let mut offsets = self.offsets.lock().unwrap_or_else(|p| p.into_inner());
            for e in list.elements() {
                offsets.revoked(e.partition());
            }
        }
    }
}

/// A subscription's consumer, with the offsets it tracks.
pub struct TopicConsumer {
    consumer: Arc<StreamConsumer<Context>>,
    offsets: Arc<Mutex<Offsets>>,
    topic: String,
}

impl TopicConsumer {
    /// A consumer made from `config`, subscribed to `topic`.
    pub fn subscribe(config: &rdkafka::ClientConfig, topic: &str) -> crate::Result<TopicConsumer> {
        let offsets = Arc::new(Mutex::new(Offsets::default()));
        let context = Context {
            offsets: offsets.clone(),
        };
        let consumer: StreamConsumer<Context> = config
            .create_with_context(context)
            .map_err(|e| super::kerr(format!("consumer for {topic}"), e))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| super::kerr(format!("subscribe to {topic}"), e))?;
        Ok(TopicConsumer {
            consumer: Arc::new(consumer),
            offsets,
            topic: topic.to_string(),
        })
    }

    /// Delivers to `sender` until the subscription ends, `max_in_flight` unacked at a time.
    /// Ends by committing what was acked and leaving the group.
    pub async fn run(self, sender: SubscriptionSender, max_in_flight: usize, redelivery: Duration) {
        let permits = Arc::new(Semaphore::new(max_in_flight.max(1)));
        let settling = tokio_util::task::TaskTracker::new();
        loop {
            let permit = tokio::select! {
                biased;
                _ = sender.closed() => break,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let received = tokio::select! {
                biased;
                _ = sender.closed() => break,
                m = self.consumer.recv() => m,
            };
            let (msg, partition, offset) = match received {
                Ok(m) => (to_message(&m), m.partition(), m.offset()),
                Err(e) => {
                    // librdkafka reconnects by itself; the error is worth a line, not an end.
                    tracing::warn!(backend = NAME, topic = %self.topic, error = %e, "consume");
                    tokio::select! {
                        _ = sender.closed() => break,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    }
                }
            };
            self.offsets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .delivered(partition, offset);
            if sender.send(msg.clone()).await.is_err() {
                break;
            }
            let (sender, consumer) = (sender.clone(), self.consumer.clone());
            let (offsets, topic) = (self.offsets.clone(), self.topic.clone());
            settling.spawn(async move {
                let acked = settle_redelivering(msg, &sender, redelivery, || async {}).await;
                drop(permit);
                if !acked {
                    return;
                }
                let commit = offsets
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .acked(partition, offset);
                if let Some(next) = commit {
                    store(&consumer, &topic, partition, next);
                }
            });
        }
        settling.close();
        settling.wait().await;
        // Leave the group; librdkafka commits the stored offsets (what was acked) on the way
        // out. Not `commit_consumer_state`: that commits the position, past messages fetched
        // but never acked (seen here: a later subscription of the group got nothing).
        let consumer = self.consumer;
        let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    }
}

/// Stores `next` as the offset to commit for `partition` (librdkafka commits it with the next
/// batch). A partition revoked meanwhile refuses it: its next owner reads from the last
/// commit, so at worst the message comes again.
fn store(consumer: &StreamConsumer<Context>, topic: &str, partition: i32, next: i64) {
    let mut list = TopicPartitionList::new();
    if list
        .add_partition_offset(topic, partition, Offset::Offset(next))
        .is_ok()
        && let Err(e) = consumer.store_offsets(&list)
    {
        tracing::debug!(backend = NAME, topic, partition, error = %e, "offset not stored");
    }
}

/// A Kafka message as a Wasmill message: the uuid from its header (a fresh one for a foreign
/// producer's message), every other header as metadata.
pub fn to_message(m: &BorrowedMessage<'_>) -> Message {
    let mut uuid = None;
    let mut metadata = Vec::new();
    if let Some(headers) = m.headers() {
        for h in headers.iter() {
            let value = String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
            if h.key == UUID_HEADER {
                uuid = Some(value);
            } else {
                metadata.push((h.key.to_string(), value));
            }
        }
    }
    let payload = bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default());
    let mut msg = match uuid {
        Some(u) => Message::with_uuid(u, payload),
        None => Message::new(payload),
    };
    for (k, v) in metadata {
        msg.metadata.set(k, v);
    }
    msg
}
