//! Consuming: one subscription's delivery loop, reopening its channel when it breaks, and the settling of each delivery (ack in the background, nack delivered again).

use super::*;

/// Waits `delay`; `false` if the subscription ended meanwhile.
pub(super) async fn pause(sender: &SubscriptionSender, delay: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = sender.closed() => false,
    }
}
/// Acks or nacks (requeue) one delivery once the consumer has settled it. If the subscription
/// ended first, nothing is sent: closing the channel requeues the message.
pub(super) async fn settle(
    acker: Acker,
    msg: Message,
    sender: SubscriptionSender,
    nack_delay: Duration,
) {
    let uuid = msg.uuid.clone();
    if settled_acked(msg, &sender, nack_delay).await {
        send_ack(acker, uuid).await;
    }
}

/// Waits until the consumer acks `msg`, delivering it again after each nack; `false` when the
/// subscription ended first (the channel closes with it, and the broker requeues the message).
pub(super) async fn settled_acked(
    msg: Message,
    sender: &SubscriptionSender,
    nack_delay: Duration,
) -> bool {
    // A nack is delivered again from here rather than requeued: the broker would put it back
    // behind the messages this channel already holds (read-ahead), out of order.
    settle_redelivering(msg, sender, nack_delay, || async {}).await
}

/// Sends the ack of the delivery `acker` belongs to, logging (not returning) a failure: the
/// broker then redelivers the message.
pub(super) async fn send_ack(acker: Acker, uuid: String) {
    // Bounded: an ack handed to a connection that dies under it may never be answered, and
    // the subscription must go on to notice the broken consumer and reconnect.
    let sent = tokio::time::timeout(ACK_TIMEOUT, acker.ack(BasicAckOptions::default())).await;
    match sent {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => tracing::debug!(
            uuid = %uuid,
            "amqp: channel gone before the ack/nack; the broker redelivers the message"
        ),
        Ok(Err(e)) => tracing::warn!(
            uuid = %uuid,
            "amqp: ack failed (the broker redelivers the message): {e}"
        ),
        Err(_) => tracing::warn!(
            uuid = %uuid,
            "amqp: ack not sent within {ACK_TIMEOUT:?} (the broker redelivers the message)"
        ),
    }
}

/// The deliveries of one channel still being settled: the handler's permits (at most
/// `max_in_flight` unsettled) and the acks written after a settlement.
pub(super) struct Settling {
    pub(super) in_flight: Arc<tokio::sync::Semaphore>,
    pub(super) acks: TaskTracker,
}

impl AmqpPubSub {
    /// Delivers `topic`'s messages until the subscription ends, reopening the channel (and
    /// the connection) whenever it breaks.
    pub(super) async fn consume(
        &self,
        topic: &str,
        max_in_flight: usize,
        first: (Channel, Consumer),
        sender: SubscriptionSender,
    ) {
        let mut current = Some(first);
        let mut reconnect = Reconnect::new(
            self.config.reconnect_backoff,
            self.config.reconnect_max_backoff,
        );
        loop {
            let (channel, mut consumer) = match current.take() {
                Some(open) => open,
                None => {
                    let opened = tokio::select! {
                        biased;
                        _ = sender.closed() => return,
                        r = self.open_consumer_bounded(topic, max_in_flight) => r,
                    };
                    match opened {
                        Ok(open) => {
                            tracing::info!(topic, "amqp: subscription resumed");
                            reconnect.reset();
                            open
                        }
                        Err(e) => {
                            let delay = reconnect.next_delay();
                            tracing::warn!(
                                topic,
                                url = %redacted(&self.config.url),
                                "amqp: {}; retrying in {delay:?}",
                                e.report()
                            );
                            if !pause(&sender, delay).await {
                                return;
                            }
                            continue;
                        }
                    }
                }
            };
            let ended = self
                .pump_to_end(topic, max_in_flight, &channel, &mut consumer, &sender)
                .await;
            drop(consumer);
            close_channel(&channel).await;
            if ended {
                return;
            }
            if !pause(&sender, reconnect.next_delay()).await {
                return;
            }
        }
    }

    /// Hands deliveries to the subscription: `true` when the subscription ended, `false` when
    /// the consumer broke (connection or channel lost, consumer cancelled by the broker).
    pub(super) async fn pump(
        &self,
        topic: &str,
        max_in_flight: usize,
        settling: &Settling,
        channel: &Channel,
        consumer: &mut Consumer,
        sender: &SubscriptionSender,
    ) -> bool {
        // A consumer whose channel died is normally ended by lapin; this check makes sure a
        // subscription never waits on a dead channel.
        let mut watchdog = tokio::time::interval(CHANNEL_CHECK);
        loop {
            let next = tokio::select! {
                biased;
                _ = sender.closed() => return true,
                n = consumer.next() => n,
                _ = watchdog.tick() => {
                    if channel.status().connected() {
                        continue;
                    }
                    tracing::warn!(topic, url = %redacted(&self.config.url), "amqp: channel closed; reconnecting");
                    return false;
                }
            };
            let delivery = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    tracing::warn!(topic, url = %redacted(&self.config.url), "amqp: consumer failed: {e}; reconnecting");
                    return false;
                }
                None => {
                    tracing::warn!(topic, url = %redacted(&self.config.url), "amqp: consumer cancelled; reconnecting");
                    return false;
                }
            };
            let Delivery {
                properties,
                data,
                acker,
                ..
            } = delivery;
            let msg = to_message(&properties, data);
            // The broker pushes up to `prefetch` ahead; at most `max_in_flight` of them are
            // handed over and unsettled at once.
            let Ok(permit) = settling.in_flight.clone().acquire_owned().await else {
                return true;
            };
            if sender.send(msg.clone()).await.is_err() {
                return true;
            }
            if max_in_flight <= 1 {
                // One at a time: the next delivery waits for this one's settlement, not for
                // its ack to be written (acks on a channel keep their order; `pump_to_end`
                // waits for them before the channel closes).
                let uuid = msg.uuid.clone();
                if settled_acked(msg, sender, self.config.nack_requeue_delay).await {
                    settling.acks.spawn(send_ack(acker, uuid));
                }
                drop(permit);
            } else {
                let settled = settle(acker, msg, sender.clone(), self.config.nack_requeue_delay);
                tokio::spawn(async move {
                    settled.await;
                    drop(permit);
                });
            }
        }
    }

    /// [`Self::pump`], then, if the subscription ended, waits until the settlements it spawned
    /// are sent (each is bounded): the channel closes after them.
    pub(super) async fn pump_to_end(
        &self,
        topic: &str,
        max_in_flight: usize,
        channel: &Channel,
        consumer: &mut Consumer,
        sender: &SubscriptionSender,
    ) -> bool {
        let settling = Settling {
            in_flight: Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1))),
            acks: TaskTracker::new(),
        };
        let ended = self
            .pump(topic, max_in_flight, &settling, channel, consumer, sender)
            .await;
        settling.acks.close();
        if ended {
            let all = u32::try_from(max_in_flight.max(1)).unwrap_or(u32::MAX);
            let _ = tokio::time::timeout(ACK_TIMEOUT, async {
                let _ = settling.in_flight.acquire_many(all).await;
                settling.acks.wait().await;
            })
            .await;
        }
        ended
    }
}
