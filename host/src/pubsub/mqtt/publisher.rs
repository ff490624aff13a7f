//! The publisher side: one connection that reconnects by itself, the PUBACK each publish waits for.

use super::*;

pub(super) type Waiter = oneshot::Sender<std::result::Result<(), String>>;

/// Who waits for which PUBACK on one connection.
#[derive(Default)]
pub(super) struct Waiters {
    /// The connection is gone: nothing more may be fed to it.
    pub(super) dead: bool,
    /// Fed to the client, packet id not known yet (in feeding order).
    pub(super) unassigned: VecDeque<Waiter>,
    /// Sent with this packet id (a queue: a collision reuses an id still in flight).
    pub(super) inflight: HashMap<u16, VecDeque<Waiter>>,
    /// A publish the client holds back because its packet id collided.
    pub(super) collided: Option<u16>,
}

impl Waiters {
    pub(super) fn fail_all(&mut self, why: &str) {
        self.dead = true;
        let inflight = self.inflight.drain().flat_map(|(_, q)| q);
        for w in self.unassigned.drain(..).chain(inflight) {
            let _ = w.send(Err(why.to_string()));
        }
    }
}

/// One connection of the publisher.
pub(super) struct PubConn {
    pub(super) client: AsyncClient,
    /// Held while feeding a call's messages, so that the queue order is the waiters' order.
    pub(super) feed: tokio::sync::Mutex<()>,
    pub(super) waiters: Mutex<Waiters>,
    /// A caller gave up while handing a message over: end this connection.
    pub(super) broken: CancellationToken,
    /// What the publish calls hand over, for the poller's nudges.
    pub(super) feeding: Arc<Feeding>,
}

/// What the publish calls hand to one connection, as its poller sees it ([`nudge`]).
#[derive(Default)]
pub(super) struct Feeding {
    /// Publishes handed (or being handed) to the client, counted before each hand-over.
    pub(super) fed: AtomicUsize,
    /// Publish calls in progress.
    pub(super) calls: AtomicUsize,
}

/// Counts one publish call in progress for as long as it lives.
pub(super) struct CallInProgress(Arc<Feeding>);

impl CallInProgress {
    pub(super) fn new(feeding: &Arc<Feeding>) -> Self {
        feeding.calls.fetch_add(1, Ordering::AcqRel);
        CallInProgress(feeding.clone())
    }
}

impl Drop for CallInProgress {
    fn drop(&mut self) {
        self.0.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PubConn {
    pub(super) fn waiters(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn sent(&self, pkid: u16, held_back: bool) {
        let mut w = self.waiters();
        if !held_back && w.collided == Some(pkid) {
            // The held-back publish is out now; it was assigned when it collided.
            w.collided = None;
            return;
        }
        if held_back {
            w.collided = Some(pkid);
        }
        if let Some(waiter) = w.unassigned.pop_front() {
            w.inflight.entry(pkid).or_default().push_back(waiter);
        }
    }

    pub(super) fn acked(&self, ack: &PubAck) {
        let mut w = self.waiters();
        let Some(queue) = w.inflight.get_mut(&ack.pkid) else {
            return;
        };
        let waiter = queue.pop_front();
        if queue.is_empty() {
            w.inflight.remove(&ack.pkid);
        }
        let result = match ack.reason {
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
            other => Err(format!("the broker refused the message ({other:?})")),
        };
        if let Some(waiter) = waiter {
            let _ = waiter.send(result);
        }
    }
}

/// The publisher's connection, kept up by a task of its own.
pub(super) struct PubLink {
    /// The connection publishes go to, when there is one.
    pub(super) current: watch::Sender<Option<Arc<PubConn>>>,
    /// Why the last connection attempt failed.
    pub(super) last_error: Mutex<String>,
}

impl PubLink {
    pub(super) fn set_error(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    pub(super) fn error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Keeps the publisher connected until `stop`; a fresh client per connection.
pub(super) async fn run_publisher(
    link: Arc<PubLink>,
    options: MqttOptions,
    config: Arc<MqttConfig>,
    shown: String,
    stop: CancellationToken,
) {
    let mut reconnect = Reconnect::new(MIN_BACKOFF, config.reconnect_max_delay);
    let mut was_connected = false;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let (client, eventloop) = AsyncClient::new(options.clone(), REQUEST_QUEUE);
        let feeding = Arc::new(Feeding::default());
        let conn = Arc::new(PubConn {
            client,
            feed: tokio::sync::Mutex::new(()),
            waiters: Mutex::new(Waiters::default()),
            broken: CancellationToken::new(),
            feeding: feeding.clone(),
        });
        let (mut events, poller) = spawn_poller(eventloop, feeding);
        let mut resume_at = None;
        let mut connected = false;
        let mut leave_by = None;
        let failure: Option<String> = loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                        connected = true;
                        reconnect.reset();
                        if was_connected {
                            resume_at = Some(Instant::now() + config.resume_delay);
                        } else {
                            link.current.send_replace(Some(conn.clone()));
                        }
                        was_connected = true;
                    }
                    Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => conn.sent(pkid, false),
                    Some(Ok(Event::Outgoing(Outgoing::AwaitAck(pkid)))) => conn.sent(pkid, true),
                    Some(Ok(Event::Incoming(Packet::PubAck(ack)))) => conn.acked(&ack),
                    Some(Ok(Event::Outgoing(Outgoing::Disconnect))) => break None,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break Some(e.to_string()),
                    None => break Some("the client's event loop ended".into()),
                },
                _ = stop.cancelled(), if leave_by.is_none() => {
                    leave_by = Some(Instant::now() + Duration::from_secs(2));
                    if !connected || conn.client.try_disconnect().is_err() {
                        break None;
                    }
                }
                _ = sleep_until_opt(leave_by) => break None,
                _ = conn.broken.cancelled() => {
                    break Some("a publish gave up while handing a message over".into());
                }
                _ = sleep_until_opt(resume_at) => {
                    resume_at = None;
                    link.current.send_replace(Some(conn.clone()));
                }
            }
        };
        link.current.send_if_modified(|c| {
            let mine = c.as_ref().is_some_and(|c| Arc::ptr_eq(c, &conn));
            if mine {
                *c = None;
            }
            mine
        });
        conn.waiters()
            .fail_all(failure.as_deref().unwrap_or("the publisher was closed"));
        poller.abort();
        let Some(why) = failure else { return };
        if connected {
            tracing::warn!(url = %shown, "mqtt publisher: connection lost: {why}; reconnecting");
        } else {
            tracing::debug!(url = %shown, "mqtt publisher: connect failed: {why}");
        }
        link.set_error(why);
        if !reconnect.wait(&stop).await {
            return;
        }
    }
}
