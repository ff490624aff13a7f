//! Delivery: the state the session task and its consumers share (what was received, what is in flight, the acks due), and each consumer's message source.

use super::*;

// ---------------------------------------------------------------------------------------------
// Delivery: the state the session task and its consumers share

/// Where a received message stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum EntryState {
    /// To deliver (not before the instant, after a nack with a delay).
    Waiting(Option<Instant>),
    InFlight,
    Acked,
}

/// A message received on the current connection, not PUBACKed yet.
pub(super) struct Entry {
    /// As received: a nacked message is opened from it again.
    pub(super) publish: Publish,
    /// The uuid given to a message that came without one (it keeps it when redelivered).
    pub(super) foreign_uuid: Option<String>,
    /// The message to deliver next (`None` while a delivery of it is out).
    pub(super) msg: Option<Message>,
    pub(super) state: EntryState,
}

impl Entry {
    /// A fresh delivery of the message, as first received.
    pub(super) fn reopen(&self) -> Message {
        let mut msg = open_envelope(&self.publish);
        if let Some(uuid) = &self.foreign_uuid {
            msg.uuid = uuid.clone();
        }
        msg
    }
}

/// The messages a session received on its current connection and where each stands; the
/// consumers take them from here in order, and PUBACKs leave in the order they came.
#[derive(Default)]
pub(super) struct Delivery {
    pub(super) state: Mutex<DeliveryState>,
    /// Told whenever messages arrive or come back for delivery.
    pub(super) arrived: Notify,
    /// Told when a consumer starts holding PUBACKs back: the session sends them within
    /// [`ACK_HOLD`] unless the consumer did first.
    pub(super) acks_held: Notify,
}

/// How many acked messages a busy consumer lets wait before it queues their PUBACKs: each
/// queueing wakes the session's thread, a system call for the consumer.
pub(super) const ACK_BATCH: usize = 32;

/// How long the PUBACK of a handled message may wait for more to go with it.
pub(super) const ACK_HOLD: Duration = Duration::from_millis(1);

#[derive(Default)]
pub(super) struct DeliveryState {
    /// Received and not PUBACKed, oldest first; the front's sequence number is `front_seq`.
    pub(super) entries: VecDeque<Entry>,
    pub(super) front_seq: u64,
    /// The first message never delivered yet (every later one is fresh too).
    pub(super) fresh: u64,
    /// Messages nacked and waiting to be delivered again, by sequence number.
    pub(super) again: BTreeSet<u64>,
    /// The current connection's client (for PUBACKs); `None` while disconnected.
    pub(super) client: Option<AsyncClient>,
    /// Each consumer's deliveries not settled yet, by sequence number.
    /// (A few consumers at most: a list.)
    pub(super) in_flight: Vec<(u64, Vec<(u64, DeliveryHandle)>)>,
    /// Messages acked since their PUBACKs were last queued, and since when the first waits.
    pub(super) held: usize,
    pub(super) held_since: Option<Instant>,
}

impl Delivery {
    pub(super) fn lock(&self) -> MutexGuard<'_, DeliveryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets consumer `consumer` go: what it did not settle goes to the others.
    pub(super) fn release(&self, consumer: u64) {
        let mut st = self.lock();
        if st.reap(consumer, true) {
            st.flush_acks();
            drop(st);
            self.arrived.notify_waiters();
        }
    }

    /// Queues the PUBACKs a consumer held back (the session's [`ACK_HOLD`] ran out).
    pub(super) fn flush_held(&self) {
        let mut st = self.lock();
        if st.held > 0 {
            st.flush_acks();
        }
    }
}

impl DeliveryState {
    pub(super) fn next_seq(&self) -> u64 {
        self.front_seq + self.entries.len() as u64
    }

    pub(super) fn entry_mut(&mut self, seq: u64) -> Option<&mut Entry> {
        let i = seq.checked_sub(self.front_seq)?;
        self.entries.get_mut(usize::try_from(i).ok()?)
    }

    /// A new connection: its client takes the PUBACKs from now on.
    pub(super) fn connected(&mut self, client: AsyncClient) {
        self.client = Some(client);
    }

    /// The connection is gone, and with it what it delivered: the broker sends again what was
    /// not PUBACKed. Deliveries still out are forgotten (settling them does nothing).
    pub(super) fn lost(&mut self) {
        self.client = None;
        self.front_seq = self.next_seq();
        self.fresh = self.front_seq;
        self.entries.clear();
        self.again.clear();
        (self.held, self.held_since) = (0, None);
    }

    pub(super) fn received(&mut self, publish: Publish) {
        let msg = open_envelope(&publish);
        let foreign_uuid = (!has_uuid(&publish)).then(|| msg.uuid.clone());
        self.entries.push_back(Entry {
            publish,
            foreign_uuid,
            msg: Some(msg),
            state: EntryState::Waiting(None),
        });
    }

    pub(super) fn register(&mut self, consumer: u64) {
        if !self.in_flight.iter().any(|(id, _)| *id == consumer) {
            self.in_flight.push((consumer, Vec::new()));
        }
    }

    /// Settles what `consumer` has settled (with `gone`, also what it has not: those go to the
    /// other consumers); the PUBACKs wait for [`Self::flush_acks`]. Returns whether the
    /// consumer is registered.
    pub(super) fn reap(&mut self, consumer: u64, gone: bool) -> bool {
        let Some(i) = self.in_flight.iter().position(|(id, _)| *id == consumer) else {
            return false;
        };
        let DeliveryState {
            entries,
            front_seq,
            again,
            in_flight,
            ..
        } = self;
        let mut acked = 0;
        in_flight[i].1.retain(|(seq, delivery)| {
            let state = match delivery.ack_state() {
                AckState::Pending if !gone => return true,
                AckState::Acked => EntryState::Acked,
                _ => EntryState::Waiting(delivery.redelivery_delay().map(|d| Instant::now() + d)),
            };
            let entry = seq
                .checked_sub(*front_seq)
                .and_then(|i| entries.get_mut(usize::try_from(i).ok()?));
            if let Some(entry) = entry {
                entry.state = state;
                if state == EntryState::Acked {
                    acked += 1;
                } else {
                    entry.msg = Some(entry.reopen());
                    again.insert(*seq);
                }
            }
            false
        });
        if gone {
            in_flight.swap_remove(i);
        }
        self.held += acked;
        true
    }

    /// Queues the held PUBACKs if the consumer is about to wait (`waiting`), holds enough of
    /// them, or held the first long enough; otherwise keeps holding them. Returns whether the
    /// session must be told to send them in time (the first one is held).
    pub(super) fn send_or_hold_acks(&mut self, waiting: bool) -> bool {
        if self.held == 0 {
            return false;
        }
        let due = match self.held_since {
            _ if waiting || self.held >= ACK_BATCH => true,
            Some(since) => since.elapsed() >= ACK_HOLD,
            None => {
                self.held_since = Some(Instant::now());
                return true;
            }
        };
        if due {
            self.flush_acks();
        }
        false
    }

    /// Queues the PUBACKs of the acked messages at the front (an acked message waits for the
    /// earlier ones).
    pub(super) fn flush_acks(&mut self) {
        let Some(client) = &self.client else { return };
        while self
            .entries
            .front()
            .is_some_and(|e| e.state == EntryState::Acked)
        {
            let Some(e) = self.entries.front() else { break };
            if client.try_ack(&e.publish).is_err() {
                // The connection is failing (its failure arrives as an event) or the queue is
                // full: the next settlement tries again.
                break;
            }
            self.entries.pop_front();
            self.front_seq += 1;
        }
        self.fresh = self.fresh.max(self.front_seq);
        // What stays acked waits behind an unsettled message: its ack queues them too.
        (self.held, self.held_since) = (0, None);
    }

    /// The next message for `consumer` (if it has room under `max_in_flight`), in order: a
    /// nacked message goes out again before any later one. Otherwise says until when nothing
    /// is due (`None`: until a message arrives or a delivery is settled).
    pub(super) fn take(
        &mut self,
        consumer: u64,
        max_in_flight: usize,
        settled: &Arc<Notify>,
    ) -> std::result::Result<Message, Option<Instant>> {
        let Some(i) = self.in_flight.iter().position(|(id, _)| *id == consumer) else {
            return Err(None);
        };
        if self.in_flight[i].1.len() >= max_in_flight {
            return Err(None);
        }
        let seq = loop {
            match self.again.first().copied() {
                Some(seq) => match self.entry_mut(seq).map(|e| e.state) {
                    Some(EntryState::Waiting(Some(at))) if at > Instant::now() => {
                        return Err(Some(at));
                    }
                    Some(EntryState::Waiting(_)) => {
                        self.again.remove(&seq);
                        break seq;
                    }
                    // Not waiting any more: nothing to deliver.
                    _ => {
                        self.again.remove(&seq);
                    }
                },
                None if self.fresh < self.next_seq() => {
                    self.fresh += 1;
                    break self.fresh - 1;
                }
                None => return Err(None),
            }
        };
        let Some(msg) = self.entry_mut(seq).map(|entry| {
            entry.state = EntryState::InFlight;
            entry.msg.take().unwrap_or_else(|| entry.reopen())
        }) else {
            return Err(None);
        };
        msg.notify_settled(settled);
        self.in_flight[i].1.push((seq, msg.delivery_handle()));
        Ok(msg)
    }
}

/// A subscription's source: takes messages from its session's [`Delivery`] in the consumer's
/// own task.
pub(crate) struct MqttSource {
    pub(super) session: Arc<SessionShared>,
    pub(super) id: u64,
    pub(super) max_in_flight: usize,
    /// Told when one of this consumer's deliveries is settled.
    pub(super) settled: Arc<Notify>,
}

impl MqttSource {
    /// The source of consumer `id` in `session`.
    pub fn new(session: Arc<SessionShared>, id: u64, max_in_flight: usize) -> MqttSource {
        MqttSource {
            id,
            max_in_flight: max_in_flight.max(1),
            settled: Arc::new(Notify::new()),
            session,
        }
    }
}

impl MqttSource {
    /// The next message if one is at hand (`Ok(Some)`), `Ok(None)` once the session let go of
    /// this consumer (its subscriber closed), else when the next redelivery is due.
    pub(super) fn take_ready(&self) -> std::result::Result<Option<Message>, Option<Instant>> {
        let delivery = &self.session.delivery;
        let mut st = delivery.lock();
        if !st.reap(self.id, false) {
            return Ok(None);
        }
        match st.take(self.id, self.max_in_flight, &self.settled) {
            Ok(msg) => {
                if st.send_or_hold_acks(false) {
                    drop(st);
                    delivery.acks_held.notify_one();
                }
                Ok(Some(msg))
            }
            Err(due) => {
                st.send_or_hold_acks(true);
                Err(due)
            }
        }
    }
}

#[async_trait]
impl MessageSource for MqttSource {
    fn try_next(&mut self) -> Option<Message> {
        self.take_ready().ok().flatten()
    }

    async fn next(&mut self) -> Option<Message> {
        // Messages are often ready without waiting: take part in tokio's cooperative budget.
        tokio::task::consume_budget().await;
        loop {
            let arrived = self.session.delivery.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let due = match self.take_ready() {
                Ok(msg) => return msg,
                Err(due) => due,
            };
            tokio::select! {
                _ = arrived => {}
                _ = self.settled.notified() => {}
                _ = super::super::sleep_until_opt(due) => {}
            }
        }
    }
}

impl Drop for MqttSource {
    fn drop(&mut self) {
        self.session.delivery.release(self.id);
        let _ = self.session.requests.send(Request::Detach(self.id));
    }
}
