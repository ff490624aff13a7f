//! Reading a stream: bounded pull requests kept ahead of delivery, acks and naks in the background.

use super::*;

/// How long one pull request waits on the server for messages. Requests are bounded rather
/// than endless so that one the server lost (a restart) is known to be gone soon, and a
/// subscription that ends waits at most this long for what its requests still bring.
pub(super) const PULL_EXPIRY: Duration = Duration::from_secs(1);

/// How many messages one pull request asks for (or `max_in_flight`, if larger). Up to two
/// requests are open at once, and the consumer's `max_ack_pending` is four times this: the
/// next request waits on the server while the last one is delivered and its acks travel. A
/// subscription hands them over `max_in_flight` at a time, from memory, with no round trip
/// each, and delivers a nacked one again itself, so one in flight keeps the stream's order.
pub(super) const READ_AHEAD: usize = 128;

/// Most acks one background batch carries.
pub(super) const ACK_BATCH: usize = 256;

/// How long a flush of the connection may take (the server may be away).
pub(super) const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the server keeps a tail's consumer that nobody reads (its host was killed before
/// `end_tail`).
pub(super) const TAIL_INACTIVE_THRESHOLD: Duration = Duration::from_secs(600);

/// How a subscription reads its durable consumer: pull requests of `READ_AHEAD` messages
/// (or `max_in_flight`, if larger) on one inbox ([`pull::PullInbox`]), the next one sent
/// while the last is delivered. Acks, progress and naks go out in the background.
pub(super) struct NatsFetch {
    pub(super) pubsub: NatsPubSub,
    pub(super) topic: String,
    pub(super) consumer: jetstream::consumer::PullConsumer,
    pub(super) max_in_flight: usize,
    /// The subscription's inbox, once opened.
    pub(super) inbox: Option<PullInbox>,
    pub(super) reconnect: Reconnect,
    pub(super) acks: AckBatcher<(Receipt, AckKind)>,
}

/// What a subscription keeps of a delivered message to settle it: the reply subject its
/// ack, nak or progress goes to (the client itself is the subscription's). Cheaper than a
/// `jetstream::Message`, which carries a clone of the JetStream context.
pub(super) type Receipt = Option<async_nats::Subject>;

/// Sends `kind` for the delivery whose reply subject is `reply` (what
/// `jetstream::Message::ack_with` does, without a context per message).
pub(super) async fn settle(
    client: &async_nats::Client,
    reply: Receipt,
    kind: AckKind,
) -> std::result::Result<(), String> {
    let Some(reply) = reply else {
        return Err("no reply subject, not a JetStream message".into());
    };
    client
        .publish(reply, kind.into())
        .await
        .map_err(|e| e.to_string())
}

impl NatsFetch {
    pub(super) fn new(
        pubsub: NatsPubSub,
        topic: &str,
        consumer: jetstream::consumer::PullConsumer,
        max_in_flight: usize,
    ) -> Self {
        let client = pubsub.js.client();
        let acks = AckBatcher::spawn(ACK_BATCH, move |batch: Vec<(Receipt, AckKind)>| {
            let client = client.clone();
            async move {
                for (reply, kind) in batch {
                    settle_or_warn(&client, reply, kind).await;
                }
            }
        });
        NatsFetch {
            pubsub,
            topic: topic.to_string(),
            consumer,
            max_in_flight,
            inbox: None,
            reconnect: Reconnect::default(),
            acks,
        }
    }

    /// The open inbox with a request waiting on the server, or the error that prevented it.
    pub(super) async fn ready_inbox(&mut self) -> std::result::Result<&mut PullInbox, String> {
        if self.inbox.is_none() {
            let size = READ_AHEAD.max(self.max_in_flight);
            let inbox =
                PullInbox::open(self.consumer.clone(), &self.pubsub.js, size, PULL_EXPIRY).await?;
            self.inbox = Some(inbox);
        }
        let inbox = self.inbox.as_mut().expect("opened above");
        inbox.top_up().await?;
        Ok(inbox)
    }

    /// Logs `error`, waits the backoff (doubling it) and looks the consumer up again.
    pub(super) async fn recover(&mut self, error: impl std::fmt::Display) {
        let delay = self.reconnect.next_delay();
        tracing::warn!(topic = %self.topic, url = %redacted(&self.pubsub.config.url), "nats: {error}; retrying in {delay:?}");
        tokio::time::sleep(delay).await;
        if let Ok(c) = self.pubsub.consumer(&self.topic, self.max_in_flight).await {
            if let Some(inbox) = &mut self.inbox {
                inbox.set_consumer(c.clone());
            }
            self.consumer = c;
        }
    }
}

#[async_trait]
impl Fetcher for NatsFetch {
    type Receipt = Receipt;

    async fn fetch(&mut self, max: usize) -> Fetched<Receipt> {
        let mut messages = Vec::new();
        let mut since = tokio::time::Instant::now();
        let inbox = match self.ready_inbox().await {
            Ok(inbox) => inbox,
            Err(e) => {
                self.recover(e).await;
                return Fetched { since, messages };
            }
        };
        // Wait for the first message, then take what already arrived.
        let mut next = Some(inbox.next().await);
        let mut failed = None;
        let mut not_due = Vec::new();
        while let Some(pulled) = next.take() {
            match pulled {
                Pulled::Message(sent, m) => {
                    since = since.min(sent);
                    let msg = to_message(&m);
                    // Not due yet (`_watermill_delayed_until` ahead): the server delivers it
                    // again once it is, and the messages behind it are not held up.
                    if let Some(wait) = crate::pubsub::delay::wait(&msg) {
                        not_due.push((m.reply, AckKind::Nak(Some(wait))));
                    } else {
                        messages.push((msg, m.reply));
                    }
                    if messages.len() < max {
                        next = inbox.try_next();
                    }
                }
                Pulled::Idle => {}
                Pulled::Failed(e) => failed = Some(e),
            }
        }
        // The next request waits on the server while this batch is handed out.
        if failed.is_none()
            && let Err(e) = inbox.top_up().await
        {
            failed = Some(e);
        }
        for settlement in not_due {
            self.acks.push(settlement);
        }
        match failed {
            Some(e) => self.recover(e).await,
            None => self.reconnect.reset(),
        }
        Fetched { since, messages }
    }

    fn ack(&mut self, receipts: Vec<Receipt>) {
        for m in receipts {
            self.acks.push((m, AckKind::Ack));
        }
    }

    fn nacked(&mut self, receipt: &Receipt) {
        // Redelivered from here: restart the server's ack_wait instead of giving it back.
        self.acks.push((receipt.clone(), AckKind::Progress));
    }

    fn give_back(&mut self, receipts: Vec<Receipt>) {
        for m in receipts {
            self.acks.push((m, AckKind::Nak(None)));
        }
    }

    fn finish(mut self, unsettled: Vec<Receipt>) {
        self.give_back(unsettled);
        let client = self.pubsub.js.client();
        let NatsFetch {
            pubsub,
            inbox,
            acks,
            ..
        } = self;
        let flushed = client.clone();
        pubsub.tasks.spawn(async move {
            acks.finish().await;
            // The last acks must reach the server before the connection may go, or the
            // consumer stays blocked on them until `ack_wait`.
            flush(&flushed).await;
        });
        // What the open requests still bring goes back at once.
        if let Some(inbox) = inbox {
            tokio::spawn(async move {
                inbox
                    .drain(|m: async_nats::Message| {
                        let client = client.clone();
                        async move { settle_or_warn(&client, m.reply, AckKind::Nak(None)).await }
                    })
                    .await;
                flush(&client).await;
            });
        }
    }
}

/// Waits until everything the connection has queued (acks, naks) was written to the server.
pub(super) async fn flush(client: &async_nats::Client) {
    match tokio::time::timeout(FLUSH_TIMEOUT, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!("nats: flush failed (unsent acks come back after ack_wait): {e}")
        }
        Err(_) => tracing::warn!("nats: flush timed out (unsent acks come back after ack_wait)"),
    }
}

/// [`settle`], a failure logged: JetStream then redelivers the message after `ack_wait`.
pub(super) async fn settle_or_warn(client: &async_nats::Client, reply: Receipt, kind: AckKind) {
    if let Err(e) = settle(client, reply, kind).await {
        tracing::warn!("nats: {kind:?} failed (the message is redelivered after ack_wait): {e}");
    }
}
