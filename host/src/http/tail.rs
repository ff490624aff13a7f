//! `GET /topics/{topic}/messages`: a topic's messages as Server-Sent Events, read by a tail
//! subscriber of the client's own that is ended (its consumer group deleted) when the client
//! leaves, and that never holds a producer back.
//!
//! A task of the tail's own reads the subscription and acks every message at once; what it
//! read waits for the client in a bounded queue. When the client reads slower than the topic
//! is written and the queue is full, messages are dropped for this client only, counted in
//! `/metrics` (`wasmill_sse_dropped_total`), and the client gets an `event: lagged` with how
//! many it missed before the next message. The producer, and every handler on the topic, keep
//! their pace.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Mutex, OnceLock};

use axum::response::sse::Event;
use futures::Stream;
use tokio::sync::mpsc;

use super::envelope::Envelope;
use crate::pubsub::{DynSubscriber, Subscription};

/// Messages a client may be behind before it starts missing some.
pub const CLIENT_QUEUE: usize = 1024;

/// What the reader task hands the client's stream.
enum Item {
    Message(String),
    Lagged(u64),
}

/// Messages dropped for slow SSE clients, by topic, since the host started.
pub fn dropped_by_topic() -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = dropped()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(t, n)| (t.clone(), *n))
        .collect();
    out.sort();
    out
}

fn dropped() -> &'static Mutex<HashMap<String, u64>> {
    static DROPPED: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();
    DROPPED.get_or_init(Default::default)
}

/// The SSE events of `subscription` (made by `tail`, a tail subscriber of `topic`). When the
/// stream is dropped (the client left), the reader stops and `tail` is ended
/// ([`crate::pubsub::Subscriber::end_tail`]).
pub fn events(
    tail: DynSubscriber,
    topic: String,
    subscription: Subscription,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<Item>(CLIENT_QUEUE);
    tokio::spawn(read(tail, topic, subscription, tx));
    futures::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await? {
            Item::Message(data) => Event::default().data(data),
            Item::Lagged(n) => Event::default()
                .event("lagged")
                .data(format!("{{\"dropped\":{n}}}")),
        };
        Some((Ok(event), rx))
    })
}

/// Reads `subscription` until the client's stream is gone, then ends the tail.
async fn read(
    tail: DynSubscriber,
    topic: String,
    mut subscription: Subscription,
    tx: mpsc::Sender<Item>,
) {
    let mut missed = 0u64;
    loop {
        let msg = tokio::select! {
            m = subscription.recv() => m,
            _ = tx.closed() => break,
        };
        let Some(msg) = msg else { break };
        msg.ack();
        if missed > 0 {
            match tx.try_send(Item::Lagged(missed)) {
                Ok(()) => missed = 0,
                Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
        let data = serde_json::to_string(&Envelope::from(&msg)).unwrap_or_default();
        match tx.try_send(Item::Message(data)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                missed += 1;
                *dropped()
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(topic.clone())
                    .or_default() += 1;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => break,
        }
    }
    drop(subscription);
    if let Err(e) = tail.end_tail(&topic).await {
        tracing::warn!(%topic, "could not remove an SSE client's consumer group: {e}");
    }
}
