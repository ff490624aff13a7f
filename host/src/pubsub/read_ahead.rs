//! Read-ahead subscriptions for broker backends, driven by the consumer's own task.
//!
//! A broker hands out messages in batches (Redis `XREADGROUP COUNT n`, a JetStream pull of
//! n). [`ReadAhead`] keeps such a batch in memory and gives the consumer one message after the
//! other from its own call to `recv`: no task of the backend's sits between the broker and
//! the handler, so a message costs no wake-up of another task and no channel hop (profiled:
//! those hand-offs were the largest cost of the consume path).
//!
//! The contract is that of every subscription (see [`super::Subscriber`]):
//! - at most `max_in_flight` delivered messages are unsettled at once;
//! - an acked message is acked on the broker ([`Fetcher::ack`]);
//! - a nacked message is delivered again by this subscription after its redelivery delay, and
//!   with one in flight before anything read after it (given back to the broker, it would
//!   come behind the messages already read ahead);
//! - a message read ahead that waited `max_wait` for its first delivery is given back
//!   instead (the broker would soon hand it to someone else while it is still held here);
//! - when the subscription ends, what it read and did not deliver, and what it delivered and
//!   nobody settled, goes back to the broker ([`Fetcher::finish`]).
//!
//! The backend supplies a [`Fetcher`]: how to read a batch, ack, and give back.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::message::{AckState, Message};

/// A batch read from the broker.
#[derive(Debug)]
pub struct Fetched<R> {
    /// When the broker started holding these messages for this consumer (the time of the
    /// read, or of the pull request that brought them): `max_wait` counts from here.
    pub since: Instant,
    /// The messages, each with what the broker needs to ack or give it back.
    pub messages: Vec<(Message, R)>,
}

/// What a broker backend does for a [`ReadAhead`] subscription. Only [`Fetcher::fetch`]
/// waits; the others queue work (acks go out in the background, e.g. through an
/// [`super::ack_batcher::AckBatcher`]), so no message is lost when the consumer stops waiting.
#[async_trait]
pub trait Fetcher: Send + 'static {
    /// What the broker needs to ack or give back one message (an entry id, a JetStream
    /// message).
    type Receipt: Send + 'static;

    /// Reads up to `max` messages. Waits on the broker a bounded time (its block or pull
    /// timeout) and returns an empty batch when nothing came. Failures are handled here:
    /// logged, and the connection retried with backoff; the caller simply fetches again.
    ///
    /// If the consumer stops waiting mid-fetch, the messages of that read are neither
    /// delivered nor given back: the broker hands them out again after its own timeout.
    async fn fetch(&mut self, max: usize) -> Fetched<Self::Receipt>;

    /// The consumer acked these deliveries: queue their acks to the broker.
    fn ack(&mut self, receipts: Vec<Self::Receipt>);

    /// A delivery was nacked; this subscription delivers it again itself after its delay
    /// (NATS tells the server the message is still in progress, so it does not time out).
    fn nacked(&mut self, _receipt: &Self::Receipt) {}

    /// Messages read that this subscription will not deliver: back to the broker.
    fn give_back(&mut self, receipts: Vec<Self::Receipt>);

    /// The subscription ended: `give_back` goes back to the broker and the queued acks must
    /// reach it. Called from `Drop`: it must not block (spawn what takes time).
    fn finish(self, give_back: Vec<Self::Receipt>);
}

/// How a [`ReadAhead`] subscription behaves.
#[derive(Debug, Clone, Copy)]
pub struct ReadAheadOptions {
    /// Delivered and unsettled messages at most.
    pub max_in_flight: usize,
    /// Messages one fetch asks for (at least `max_in_flight`).
    pub read_count: usize,
    /// How long a message read may wait for its first delivery before it is given back.
    pub max_wait: Duration,
    /// Redelivery delay of a nacked message that did not ask for one.
    pub redelivery_delay: Duration,
}

/// A subscription's delivery state over a [`Fetcher`]; a [`super::MessageSource`].
pub struct ReadAhead<F: Fetcher> {
    /// `None` only while dropping.
    fetcher: Option<F>,
    /// Read and not delivered yet, oldest first, with the time the broker started holding
    /// them for this consumer.
    buffer: VecDeque<(Instant, Message, F::Receipt)>,
    /// Delivered and not settled yet.
    in_flight: Vec<(Message, F::Receipt)>,
    /// Nacked, waiting for their redelivery time, oldest first.
    redeliver: VecDeque<(Instant, Message, F::Receipt)>,
    /// Told whenever a delivery of this subscription is settled.
    settled: Arc<Notify>,
    options: ReadAheadOptions,
}

impl<F: Fetcher> ReadAhead<F> {
    /// A source over `fetcher`.
    pub fn new(fetcher: F, options: ReadAheadOptions) -> Self {
        let options = ReadAheadOptions {
            max_in_flight: options.max_in_flight.max(1),
            read_count: options.read_count.max(options.max_in_flight).max(1),
            ..options
        };
        ReadAhead {
            fetcher: Some(fetcher),
            buffer: VecDeque::with_capacity(options.read_count),
            in_flight: Vec::with_capacity(options.max_in_flight),
            redeliver: VecDeque::new(),
            settled: Arc::new(Notify::new()),
            options,
        }
    }

    fn fetcher(&mut self) -> &mut F {
        self.fetcher
            .as_mut()
            .expect("fetcher is only taken on drop")
    }

    /// Moves settled deliveries out of `in_flight`: acks are queued to the broker, nacked
    /// messages wait for their redelivery.
    fn reap(&mut self) {
        let mut acked = Vec::new();
        let mut i = 0;
        while i < self.in_flight.len() {
            match self.in_flight[i].0.ack_state() {
                AckState::Pending => i += 1,
                AckState::Acked => {
                    let (_, receipt) = self.in_flight.swap_remove(i);
                    acked.push(receipt);
                }
                AckState::Nacked => {
                    let (msg, receipt) = self.in_flight.swap_remove(i);
                    self.fetcher().nacked(&receipt);
                    let delay = msg
                        .redelivery_delay()
                        .unwrap_or(self.options.redelivery_delay);
                    self.redeliver
                        .push_back((Instant::now() + delay, msg, receipt));
                }
            }
        }
        if !acked.is_empty() {
            self.fetcher().ack(acked);
        }
    }

    /// Gives back the messages at the front of the buffer that waited too long.
    fn give_back_stale(&mut self) {
        let now = Instant::now();
        let mut stale = Vec::new();
        while let Some((since, _, _)) = self.buffer.front() {
            if now.duration_since(*since) < self.options.max_wait {
                break;
            }
            if let Some((_, _, receipt)) = self.buffer.pop_front() {
                stale.push(receipt);
            }
        }
        if !stale.is_empty() {
            tracing::debug!(
                count = stale.len(),
                "messages read ahead waited too long for delivery; given back to the broker"
            );
            self.fetcher().give_back(stale);
        }
    }

    fn hand_out(&mut self, msg: Message, receipt: F::Receipt) -> Message {
        msg.notify_settled(&self.settled);
        self.in_flight.push((msg.clone(), receipt));
        msg
    }
}

impl<F: Fetcher> ReadAhead<F> {
    /// A message that can be handed out now without a fetch, if any (and if in-flight room).
    fn take_ready(&mut self) -> Option<Message> {
        self.reap();
        if self.in_flight.len() >= self.options.max_in_flight {
            return None;
        }
        if let Some((due, _, _)) = self.redeliver.front()
            && *due <= Instant::now()
            && let Some((_, msg, receipt)) = self.redeliver.pop_front()
        {
            return Some(self.hand_out(msg.copy(), receipt));
        }
        // With one in flight, a waiting redelivery goes before anything newer (order).
        if !(self.redeliver.is_empty() || self.options.max_in_flight > 1) {
            return None;
        }
        self.give_back_stale();
        let (_, msg, receipt) = self.buffer.pop_front()?;
        Some(self.hand_out(msg, receipt))
    }
}

#[async_trait]
impl<F: Fetcher> super::MessageSource for ReadAhead<F> {
    fn try_next(&mut self) -> Option<Message> {
        self.take_ready()
    }

    async fn next(&mut self) -> Option<Message> {
        // Messages are often ready without waiting: take part in tokio's cooperative budget.
        tokio::task::consume_budget().await;
        loop {
            if let Some(msg) = self.take_ready() {
                return Some(msg);
            }
            // Nothing at hand: fetch when there is room and no redelivery waits its turn.
            if self.in_flight.len() < self.options.max_in_flight && self.redeliver.is_empty() {
                let max = self.options.read_count;
                let batch = self.fetcher().fetch(max).await;
                let since = batch.since;
                self.buffer
                    .extend(batch.messages.into_iter().map(|(m, r)| (since, m, r)));
                continue;
            }
            // Nothing to hand out now: wait for a settlement or the next redelivery time.
            let due = self.redeliver.front().map(|(due, _, _)| *due);
            tokio::select! {
                _ = self.settled.notified() => {}
                _ = sleep_until_opt(due) => {}
            }
        }
    }
}

impl<F: Fetcher> Drop for ReadAhead<F> {
    fn drop(&mut self) {
        if self.fetcher.is_none() {
            return;
        }
        self.reap();
        let mut back: Vec<F::Receipt> = Vec::new();
        back.extend(self.in_flight.drain(..).map(|(_, r)| r));
        back.extend(self.redeliver.drain(..).map(|(_, _, r)| r));
        back.extend(self.buffer.drain(..).map(|(_, _, r)| r));
        if let Some(fetcher) = self.fetcher.take() {
            fetcher.finish(back);
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::MessageSource;
    use std::sync::Mutex;

    /// A broker in memory: numbered messages, what was acked and given back.
    #[derive(Default)]
    struct Log {
        acked: Vec<u32>,
        nacked: Vec<u32>,
        given_back: Vec<u32>,
        finished: bool,
        fetches: usize,
    }

    struct TestFetcher {
        next: u32,
        end: u32,
        per_fetch: usize,
        since_offset: Duration,
        log: Arc<Mutex<Log>>,
    }

    #[async_trait]
    impl Fetcher for TestFetcher {
        type Receipt = u32;
        async fn fetch(&mut self, max: usize) -> Fetched<u32> {
            self.log.lock().unwrap().fetches += 1;
            let mut messages = Vec::new();
            while messages.len() < max.min(self.per_fetch) && self.next < self.end {
                messages.push((Message::new(self.next.to_string()), self.next));
                self.next += 1;
            }
            if messages.is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Fetched {
                since: Instant::now() - self.since_offset,
                messages,
            }
        }
        fn ack(&mut self, receipts: Vec<u32>) {
            self.log.lock().unwrap().acked.extend(receipts);
        }
        fn nacked(&mut self, receipt: &u32) {
            self.log.lock().unwrap().nacked.push(*receipt);
        }
        fn give_back(&mut self, receipts: Vec<u32>) {
            self.log.lock().unwrap().given_back.extend(receipts);
        }
        fn finish(self, give_back: Vec<u32>) {
            let mut log = self.log.lock().unwrap();
            log.given_back.extend(give_back);
            log.finished = true;
        }
    }

    fn source(
        end: u32,
        max_in_flight: usize,
        read_count: usize,
    ) -> (ReadAhead<TestFetcher>, Arc<Mutex<Log>>) {
        let log = Arc::new(Mutex::new(Log::default()));
        let fetcher = TestFetcher {
            next: 0,
            end,
            per_fetch: usize::MAX,
            since_offset: Duration::ZERO,
            log: log.clone(),
        };
        let options = ReadAheadOptions {
            max_in_flight,
            read_count,
            max_wait: Duration::from_secs(30),
            redelivery_delay: Duration::ZERO,
        };
        (ReadAhead::new(fetcher, options), log)
    }

    #[tokio::test]
    async fn delivers_a_batch_from_memory_and_acks_what_was_acked() {
        let (mut src, log) = source(10, 1, 4);
        for i in 0..10 {
            let m = src.next().await.unwrap();
            assert_eq!(m.payload, i.to_string());
            m.ack();
        }
        assert_eq!(log.lock().unwrap().fetches, 3, "10 messages in reads of 4");
        let _ = tokio::time::timeout(Duration::from_millis(20), src.next()).await;
        let log = log.lock().unwrap();
        assert_eq!(log.acked, (0..10).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_nacked_message_comes_back_before_later_ones() {
        let (mut src, log) = source(5, 1, 5);
        let first = src.next().await.unwrap();
        first.nack();
        let again = src.next().await.unwrap();
        assert_eq!(again.payload, "0");
        assert!(!again.same_delivery(&first), "a new delivery");
        again.ack();
        assert_eq!(src.next().await.unwrap().payload, "1");
        assert_eq!(log.lock().unwrap().nacked, vec![0]);
    }

    #[tokio::test]
    async fn no_more_than_max_in_flight_are_unsettled() {
        let (mut src, _log) = source(10, 2, 10);
        let a = src.next().await.unwrap();
        let _b = src.next().await.unwrap();
        let third = tokio::time::timeout(Duration::from_millis(50), src.next()).await;
        assert!(third.is_err(), "a third waits while two are unsettled");
        a.ack();
        let c = tokio::time::timeout(Duration::from_secs(1), src.next())
            .await
            .expect("an ack makes room");
        assert_eq!(c.unwrap().payload, "2");
    }

    #[tokio::test]
    async fn a_settlement_elsewhere_wakes_a_waiting_consumer() {
        let (mut src, _log) = source(3, 1, 3);
        let a = src.next().await.unwrap();
        let acker = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            a.ack();
        });
        let b = tokio::time::timeout(Duration::from_secs(1), src.next())
            .await
            .expect("woken by the ack");
        assert_eq!(b.unwrap().payload, "1");
        acker.await.unwrap();
    }

    #[tokio::test]
    async fn messages_that_waited_too_long_are_given_back_not_delivered() {
        let log = Arc::new(Mutex::new(Log::default()));
        let fetcher = TestFetcher {
            next: 0,
            end: 3,
            per_fetch: usize::MAX,
            since_offset: Duration::from_secs(60),
            log: log.clone(),
        };
        let options = ReadAheadOptions {
            max_in_flight: 1,
            read_count: 10,
            max_wait: Duration::from_secs(30),
            redelivery_delay: Duration::ZERO,
        };
        let mut src = ReadAhead::new(fetcher, options);
        let got = tokio::time::timeout(Duration::from_millis(50), src.next()).await;
        assert!(got.is_err(), "nothing fresh to deliver");
        assert_eq!(log.lock().unwrap().given_back, vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn dropping_gives_back_what_was_read_and_unsettled_and_keeps_acks() {
        let (mut src, log) = source(10, 2, 10);
        let a = src.next().await.unwrap();
        let _b = src.next().await.unwrap();
        a.ack();
        drop(src);
        let log = log.lock().unwrap();
        assert!(log.finished);
        assert_eq!(log.acked, vec![0]);
        let mut back = log.given_back.clone();
        back.sort_unstable();
        assert_eq!(back, (1..10).collect::<Vec<_>>());
    }
}
