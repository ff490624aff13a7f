//! Pull requests of one subscription on one inbox, kept ahead of the reader.
//!
//! JetStream shares a consumer's messages out among its waiting pull requests one by one.
//! Requests that each have their own inbox (async-nats's `batch()`) therefore split the
//! stream between them, so a subscription could only keep one at a time and paid a round
//! trip per batch. Here every request of a subscription names the same inbox: the server
//! still interleaves them, but they all arrive, in the stream's order, on one subscription,
//! and the next request can wait on the server while the last one is being delivered.
//!
//! The inbox counts what it asked for and what arrived: a request ends when it is filled,
//! when the server says it expired (status 408 with the count it did not deliver), or, if
//! that word never comes (the server restarted), once its expiry has passed by
//! [`LOST_AFTER`]. [`PullInbox::drain`] uses that count to read everything still due
//! before the inbox goes, so a subscription that ends leaves no message in flight to it.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::StatusCode;
use async_nats::jetstream;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::BatchConfig;
use futures::{FutureExt, StreamExt};
use tokio::time::Instant;

/// How long after its expiry a request whose end the server never reported counts as gone.
pub(super) const LOST_AFTER: Duration = Duration::from_secs(1);

/// One pull request still open, in the order they were sent.
#[derive(Debug, Clone, Copy)]
struct Request {
    sent: Instant,
    /// Messages counted against it (the oldest request first) still to come.
    due: usize,
}

/// What [`PullInbox::next`] read.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per message, moved once: a box would cost more
pub(super) enum Pulled {
    /// A message, with the time its pull request was sent (the server delivered it later).
    Message(Instant, async_nats::Message),
    /// Nothing came before the open requests ran out; new ones may be sent.
    Idle,
    /// The server refused a request or the inbox's subscription ended.
    Failed(String),
}

/// The inbox of one subscription and the count of what its open pull requests still bring.
pub(super) struct PullInbox {
    consumer: PullConsumer,
    inbox: async_nats::Subject,
    subscriber: async_nats::Subscriber,
    batch: usize,
    requests: OpenRequests,
}

impl PullInbox {
    /// Subscribes to a fresh inbox of the client of `context`; requests to `consumer` ask
    /// for `batch` messages and wait on the server at most `expires`.
    pub(super) async fn open(
        consumer: PullConsumer,
        context: &jetstream::Context,
        batch: usize,
        expires: Duration,
    ) -> Result<Self, String> {
        let client = context.client();
        let inbox = async_nats::Subject::from(client.new_inbox());
        let subscriber = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| format!("subscribe to the pull inbox: {e}"))?;
        Ok(PullInbox {
            consumer,
            inbox,
            subscriber,
            batch,
            requests: OpenRequests::new(expires),
        })
    }

    /// Replaces the consumer the requests go to (after it was looked up again).
    pub(super) fn set_consumer(&mut self, consumer: PullConsumer) {
        self.consumer = consumer;
    }

    /// Messages the open requests may still bring.
    pub(super) fn due(&self) -> usize {
        self.requests.due()
    }

    /// Sends a request when less than one batch is due, so that one waits on the server
    /// while the other is delivered.
    pub(super) async fn top_up(&mut self) -> Result<(), String> {
        self.requests.forget_lost(Instant::now());
        if self.due() > self.batch {
            return Ok(());
        }
        let config = BatchConfig {
            batch: self.batch,
            expires: Some(self.requests.expires),
            ..Default::default()
        };
        let sent = Instant::now();
        self.consumer
            .request_batch(config, self.inbox.clone())
            .await
            .map_err(|e| format!("pull request failed: {e}"))?;
        self.requests.sent(sent, self.batch);
        Ok(())
    }

    /// Waits for the next message, or until every open request is over.
    pub(super) async fn next(&mut self) -> Pulled {
        loop {
            let Some(deadline) = self.requests.last_deadline() else {
                return Pulled::Idle;
            };
            match tokio::time::timeout_at(deadline, self.subscriber.next()).await {
                Ok(Some(m)) => {
                    if let Some(pulled) = self.read(m) {
                        return pulled;
                    }
                }
                Ok(None) => return Pulled::Failed("the pull inbox was closed".into()),
                Err(_) => self.requests.forget_lost(Instant::now()),
            }
        }
    }

    /// The next message if one already arrived.
    pub(super) fn try_next(&mut self) -> Option<Pulled> {
        loop {
            let m = self.subscriber.next().now_or_never()??;
            if let Some(pulled) = self.read(m) {
                return Some(pulled);
            }
        }
    }

    /// Sends no more requests and hands `f` every message still due to this inbox, until the
    /// open requests are filled, expired or lost; then the inbox goes.
    pub(super) async fn drain<F, Fut>(mut self, mut f: F)
    where
        F: FnMut(async_nats::Message) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        while self.due() > 0 {
            match self.next().await {
                Pulled::Message(_, m) => f(m).await,
                Pulled::Idle | Pulled::Failed(_) => break,
            }
        }
    }

    /// Accounts for one message of the inbox: a delivery, or a status ending a request.
    fn read(&mut self, m: async_nats::Message) -> Option<Pulled> {
        match m.status.unwrap_or(StatusCode::OK) {
            StatusCode::OK => {
                let sent = self.requests.delivered(Instant::now());
                Some(Pulled::Message(sent, m))
            }
            StatusCode::IDLE_HEARTBEAT => None,
            // A request expired (408) or was ended early (409: max waiting, leadership
            // change) with what it did not deliver in a header; without one, a whole batch.
            StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED => {
                let description = m.description.clone().unwrap_or_default();
                let undelivered = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Pending-Messages"))
                    .and_then(|v| v.as_str().parse().ok())
                    .unwrap_or(self.batch);
                self.requests.release(undelivered);
                if description.contains("Consumer Deleted") || description.contains("push based") {
                    return Some(Pulled::Failed(format!(
                        "pull request refused: {}",
                        description
                    )));
                }
                None
            }
            status => Some(Pulled::Failed(format!(
                "pull request refused: {status} {}",
                m.description.unwrap_or_default()
            ))),
        }
    }
}

/// The open pull requests of an inbox, oldest first, and what they may still bring.
#[derive(Debug)]
struct OpenRequests {
    requests: VecDeque<Request>,
    expires: Duration,
}

impl OpenRequests {
    fn new(expires: Duration) -> Self {
        OpenRequests {
            requests: VecDeque::new(),
            expires,
        }
    }

    /// Counts a request for `batch` messages sent at `at`.
    fn sent(&mut self, at: Instant, batch: usize) {
        self.requests.push_back(Request {
            sent: at,
            due: batch,
        });
    }

    /// Messages the open requests may still bring.
    fn due(&self) -> usize {
        self.requests.iter().map(|r| r.due).sum()
    }

    /// Counts one delivered message against the oldest open request; returns when that
    /// request was sent (the message was delivered after it).
    fn delivered(&mut self, now: Instant) -> Instant {
        let Some(front) = self.requests.front_mut() else {
            // Only a request already counted as lost can have brought it: one sent at
            // least its expiry and `LOST_AFTER` ago.
            return now.checked_sub(self.expires + LOST_AFTER).unwrap_or(now);
        };
        let sent = front.sent;
        self.release(1);
        sent
    }

    /// Takes `count` messages that will not come off the open requests, the oldest first:
    /// deliveries are counted against the oldest request too, so the count of all open
    /// requests stays exact and the newest request, whose expiry bounds a drain, stays open.
    fn release(&mut self, mut count: usize) {
        while count > 0
            && let Some(front) = self.requests.front_mut()
        {
            let taken = count.min(front.due);
            front.due -= taken;
            count -= taken;
            if front.due == 0 {
                self.requests.pop_front();
            }
        }
    }

    /// Drops the requests whose expiry passed [`LOST_AFTER`] ago with no word from the server.
    fn forget_lost(&mut self, now: Instant) {
        while let Some(front) = self.requests.front() {
            if front.sent + self.expires + LOST_AFTER > now {
                break;
            }
            self.requests.pop_front();
        }
    }

    /// When the newest open request counts as lost, if any is open.
    fn last_deadline(&self) -> Option<Instant> {
        self.requests
            .back()
            .map(|r| r.sent + self.expires + LOST_AFTER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPIRES: Duration = Duration::from_secs(1);

    #[test]
    fn deliveries_count_against_the_oldest_request() {
        let t0 = Instant::now();
        let mut open = OpenRequests::new(EXPIRES);
        open.sent(t0, 2);
        open.sent(t0 + Duration::from_millis(10), 2);
        assert_eq!(open.due(), 4);
        assert_eq!(open.delivered(t0), t0);
        assert_eq!(open.delivered(t0), t0);
        assert_eq!(open.delivered(t0), t0 + Duration::from_millis(10));
        assert_eq!(open.due(), 1);
    }

    #[test]
    fn an_expired_request_releases_what_it_did_not_deliver_and_keeps_the_newest_open() {
        let t0 = Instant::now();
        let mut open = OpenRequests::new(EXPIRES);
        open.sent(t0, 4);
        let t1 = t0 + Duration::from_millis(500);
        open.sent(t1, 4);
        // The server shared 4 deliveries out between both; the first then expired with 2
        // undelivered. 2 remain due, to the newest request, which bounds a drain.
        for _ in 0..4 {
            open.delivered(t1);
        }
        open.release(2);
        assert_eq!(open.due(), 2);
        assert_eq!(open.last_deadline(), Some(t1 + EXPIRES + LOST_AFTER));
    }

    #[test]
    fn requests_the_server_never_answered_count_as_lost_after_their_expiry() {
        let t0 = Instant::now();
        let mut open = OpenRequests::new(EXPIRES);
        open.sent(t0, 8);
        open.forget_lost(t0 + EXPIRES);
        assert_eq!(open.due(), 8, "not yet lost at its expiry");
        open.forget_lost(t0 + EXPIRES + LOST_AFTER);
        assert_eq!(open.due(), 0);
        assert_eq!(open.last_deadline(), None);
        // A late delivery is still dated no later than the lost request's time.
        let now = t0 + EXPIRES + LOST_AFTER;
        assert!(open.delivered(now) <= t0);
    }

    #[test]
    fn releasing_more_than_is_due_empties_the_count() {
        let mut open = OpenRequests::new(EXPIRES);
        open.sent(Instant::now(), 3);
        open.release(10);
        assert_eq!(open.due(), 0);
    }
}
