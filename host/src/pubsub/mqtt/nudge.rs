//! When the publisher's connection sends a PINGREQ to fetch the PUBACKs a broker holds back.
//!
//! Mosquitto, by default (`set_tcp_nodelay false`), writes its PUBACKs through Nagle's
//! algorithm: once one segment of PUBACKs is out and not yet acknowledged by TCP, the next
//! ones wait in its socket for that acknowledgement. A publisher that has sent everything it
//! had and now only waits for PUBACKs has no data to carry the acknowledgement, so its kernel
//! delays it (40 ms or more on Linux): every `publish` call then lasts at least one delayed ACK,
//! ~2,500 messages/s in windows of 100 instead of ~28,000 on the same broker with Nagle off.
//!
//! The client cannot reach its socket (rumqttc gives no hook for `TCP_QUICKACK`), but any
//! packet it sends carries the acknowledgement. So once the connection showed such a stall
//! (PUBACKs owed, nothing in from the broker for [`STALL`]), then whenever a read brought
//! PUBACKs, more are owed and the client has nothing else to send, the publisher sends a
//! PINGREQ (2 bytes; the broker answers with a 2-byte PINGRESP): the broker gets its
//! acknowledgement at once and sends what it held. On a broker that sends at once there is no
//! stall, hence no extra ping.
//!
//! Only while at most [`MAX_CALLS`] publish calls are in progress (a batch waiting for its
//! PUBACKs; a handler at concurrency 1 relaying beside the loop that feeds its topic): rumqttc
//! sends a queued ping after a timer tick (~1 ms) and holds the client's other requests back
//! until then. With many callers publishing (a router at concurrency 16, say), their own
//! publishes soon carry the acknowledgement, and nudging there measured 3-4x slower.
//!
//! The rules keep rumqttc's own keep-alive intact. rumqttc fails the connection if it pings
//! while a ping is unanswered, and it pings every `keep_alive` from its last keep-alive ping (or
//! the connection). So a nudge goes out only when no keep-alive ping is unanswered, no packet id
//! collision is pending (rumqttc counts pings during one), and the next keep-alive ping is
//! more than [`KEEPALIVE_GUARD`] away; once that close, nudges wait until the keep-alive ping
//! went out. An unanswered *nudge* does not hold the next one back (the broker's answer to it
//! may itself wait for an acknowledgement): the caller clears rumqttc's "ping unanswered"
//! flag before queueing a nudge, and the keep-alive guard leaves every nudge the time to be
//! answered before rumqttc checks the flag again.

use std::collections::VecDeque;
use std::time::Duration;

use rumqttc::Outgoing;
use rumqttc::v5::Event;
use rumqttc::v5::mqttbytes::v5::Packet;
use tokio::time::Instant;

/// Nudges only while at most this many publish calls are in progress.
pub(super) const MAX_CALLS: usize = 2;

/// No nudge this close before rumqttc's next keep-alive ping is due.
pub(super) const KEEPALIVE_GUARD: Duration = Duration::from_secs(1);

/// PUBACKs owed and nothing in from the broker for this long: its delayed-ACK stall (Linux
/// delays an ACK by 40 ms at least), so nudging pays on this connection.
pub(super) const STALL: Duration = Duration::from_millis(20);

/// What the client's state says at the end of a poll.
#[derive(Debug, Clone, Copy)]
pub(super) struct PollState {
    /// A publish waits for its packet id to be free.
    pub collision: bool,
    /// The events of the last read are all taken (the read's PUBACKs are all counted).
    pub read_drained: bool,
    /// At most [`MAX_CALLS`] publish calls are in progress, and every publish handed to the
    /// client went out: the client has nothing else to send, and few callers' publishes could
    /// wait behind a nudge.
    pub few_and_idle: bool,
}

/// Tracks one connection's owed PUBACKs and pings; see the module documentation.
#[derive(Debug)]
pub(super) struct AckNudge {
    /// When rumqttc pings next on its own, once connected.
    next_keepalive: Option<Instant>,
    /// The keep-alive interval in force (the broker may set its own in CONNACK).
    keep_alive: Duration,
    /// QoS 1 publishes sent whose PUBACK is not in yet.
    owed: usize,
    /// QoS 1 publishes sent on this connection.
    sent: usize,
    /// A nudge was queued and its PINGREQ has not gone out yet.
    queued: bool,
    /// Pings out and not answered, oldest first: `true` for a nudge, `false` for keep-alive.
    pings: VecDeque<bool>,
    /// The broker held PUBACKs back on this connection at least once.
    stall_seen: bool,
    /// When the last event came.
    last_event: Option<Instant>,
}

impl AckNudge {
    /// A tracker for a connection that is about to connect.
    pub fn new() -> Self {
        AckNudge {
            next_keepalive: None,
            keep_alive: Duration::ZERO,
            owed: 0,
            sent: 0,
            queued: false,
            pings: VecDeque::new(),
            stall_seen: false,
            last_event: None,
        }
    }

    /// QoS 1 publishes sent on this connection so far.
    pub fn sent(&self) -> usize {
        self.sent
    }

    /// Takes note of one event of the connection. `keep_alive` is the interval in force, read
    /// from the client's options after the event.
    pub fn observe(&mut self, event: &Event, keep_alive: Duration, now: Instant) {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                self.keep_alive = keep_alive;
                self.next_keepalive = Some(now + keep_alive);
            }
            Event::Outgoing(Outgoing::Publish(_)) => {
                self.owed += 1;
                self.sent += 1;
            }
            Event::Incoming(Packet::PubAck(_)) => {
                let waited = self.last_event.map(|t| now.saturating_duration_since(t));
                if self.owed > 0 && waited.is_some_and(|w| w >= STALL) {
                    self.stall_seen = true;
                }
                self.owed = self.owed.saturating_sub(1);
            }
            Event::Outgoing(Outgoing::PingReq) => {
                self.pings.push_back(self.queued);
                if !self.queued {
                    self.next_keepalive = Some(now + self.keep_alive);
                }
                self.queued = false;
            }
            Event::Incoming(Packet::PingResp(_)) => {
                self.pings.pop_front();
            }
            _ => {}
        }
        self.last_event = Some(now);
    }

    /// Whether to send a PINGREQ now, after a poll that returned `event`. If so, the caller
    /// must clear rumqttc's "ping unanswered" flag and queue one (this records it as queued).
    pub fn should_nudge(&mut self, event: &Event, state: PollState, now: Instant) -> bool {
        let nudge = matches!(event, Event::Incoming(Packet::PubAck(_)))
            && self.stall_seen
            && state.read_drained
            && state.few_and_idle
            && self.owed > 0
            && !self.queued
            && !state.collision
            && self.pings.iter().all(|&nudge| nudge)
            && self
                .next_keepalive
                .is_some_and(|due| now + KEEPALIVE_GUARD < due);
        self.queued |= nudge;
        nudge
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::{ConnAck, ConnectReturnCode, PingResp, PubAck};

    const KEEP_ALIVE: Duration = Duration::from_secs(30);
    const MS: Duration = Duration::from_millis(1);

    fn connack() -> Event {
        Event::Incoming(Packet::ConnAck(ConnAck {
            session_present: false,
            code: ConnectReturnCode::Success,
            properties: None,
        }))
    }

    fn puback(pkid: u16) -> Event {
        Event::Incoming(Packet::PubAck(PubAck::new(pkid, None)))
    }

    fn ping_out() -> Event {
        Event::Outgoing(Outgoing::PingReq)
    }

    fn ping_answered() -> Event {
        Event::Incoming(Packet::PingResp(PingResp))
    }

    fn ready() -> PollState {
        PollState {
            collision: false,
            read_drained: true,
            few_and_idle: true,
        }
    }

    /// A connected tracker that sent publishes 1..=`n` at `t0`.
    fn sent(n: u16, t0: Instant) -> AckNudge {
        let mut a = AckNudge::new();
        a.observe(&connack(), KEEP_ALIVE, t0);
        for pkid in 1..=n {
            a.observe(&Event::Outgoing(Outgoing::Publish(pkid)), KEEP_ALIVE, t0);
        }
        a
    }

    /// Observes `event` at `now` and asks whether to nudge after it.
    fn after(a: &mut AckNudge, event: Event, state: PollState, now: Instant) -> bool {
        a.observe(&event, KEEP_ALIVE, now);
        a.should_nudge(&event, state, now)
    }

    /// A tracker that sent publishes 1..=`n` at `t0` and saw the broker hold PUBACK 1 back for
    /// 45 ms (not yet nudged: the read was not drained).
    fn stalled(n: u16, t0: Instant) -> AckNudge {
        let mut a = sent(n, t0);
        let read_on = PollState {
            read_drained: false,
            ..ready()
        };
        assert!(!after(&mut a, puback(1), read_on, t0 + 45 * MS));
        a
    }

    #[test]
    fn no_nudge_until_the_broker_held_pubacks_back() {
        let t0 = Instant::now();
        let mut a = sent(4, t0);
        assert!(!after(&mut a, puback(1), ready(), t0 + MS), "acks flow");
        assert!(!after(&mut a, puback(2), ready(), t0 + 2 * MS), "acks flow");
        assert!(after(&mut a, puback(3), ready(), t0 + 50 * MS), "a stall");
    }

    #[test]
    fn nudges_after_a_drained_read_while_idle_and_owed() {
        let t0 = Instant::now();
        let t = t0 + 45 * MS;
        let mut a = stalled(5, t0);
        let busy = PollState {
            few_and_idle: false,
            ..ready()
        };
        assert!(
            !after(&mut a, puback(2), busy, t),
            "publishes will carry the ACK"
        );
        assert!(after(&mut a, puback(3), ready(), t));
        assert!(!after(&mut a, puback(4), ready(), t), "one queued already");
        a.observe(&ping_out(), KEEP_ALIVE, t);
        assert!(
            !after(&mut a, puback(5), ready(), t),
            "nothing owed any more"
        );
    }

    #[test]
    fn an_unanswered_nudge_does_not_hold_the_next_back() {
        let t0 = Instant::now();
        let t = t0 + 45 * MS;
        let mut a = stalled(4, t0);
        assert!(after(&mut a, puback(2), ready(), t));
        a.observe(&ping_out(), KEEP_ALIVE, t);
        assert!(after(&mut a, puback(3), ready(), t));
    }

    #[test]
    fn no_nudge_while_a_keepalive_ping_is_unanswered_or_a_packet_id_collides() {
        let t0 = Instant::now();
        let t = t0 + 45 * MS;
        let mut a = stalled(4, t0);
        a.observe(&ping_out(), KEEP_ALIVE, t);
        assert!(!after(&mut a, puback(2), ready(), t), "keep-alive ping out");
        a.observe(&ping_answered(), KEEP_ALIVE, t);
        let collided = PollState {
            collision: true,
            ..ready()
        };
        assert!(!after(&mut a, puback(3), collided, t));
        assert!(!after(&mut a, puback(4), ready(), t), "nothing owed");

        let mut a = stalled(3, t0);
        a.observe(&ping_out(), KEEP_ALIVE, t);
        a.observe(&ping_answered(), KEEP_ALIVE, t);
        assert!(after(&mut a, puback(2), ready(), t), "answered");
    }

    #[test]
    fn no_nudge_near_the_keepalive_ping_until_it_went_out() {
        let t0 = Instant::now();
        let mut a = stalled(5, t0);
        let near = t0 + KEEP_ALIVE - KEEPALIVE_GUARD;
        assert!(!after(&mut a, puback(2), ready(), near));
        let late = t0 + KEEP_ALIVE + 2 * KEEPALIVE_GUARD;
        assert!(
            !after(&mut a, puback(3), ready(), late),
            "overdue, not seen yet"
        );
        // rumqttc's own ping: the next one is due a keep-alive later, once it is answered.
        a.observe(&ping_out(), KEEP_ALIVE, late);
        a.observe(&ping_answered(), KEEP_ALIVE, late);
        assert!(after(&mut a, puback(4), ready(), late));
    }

    #[test]
    fn no_nudge_before_the_connection_is_up() {
        let t0 = Instant::now();
        let mut a = AckNudge::new();
        for pkid in 1..=3 {
            a.observe(&Event::Outgoing(Outgoing::Publish(pkid)), KEEP_ALIVE, t0);
        }
        assert!(!after(&mut a, puback(1), ready(), t0 + 45 * MS));
        assert!(!after(&mut a, puback(2), ready(), t0 + 90 * MS));
        assert_eq!(a.sent(), 3);
    }

    #[test]
    fn the_keepalive_in_force_is_the_one_read_at_the_connack() {
        let t0 = Instant::now();
        let mut a = AckNudge::new();
        a.observe(&connack(), Duration::from_secs(5), t0);
        for pkid in 1..=3 {
            a.observe(&Event::Outgoing(Outgoing::Publish(pkid)), KEEP_ALIVE, t0);
        }
        let at = t0 + Duration::from_millis(4_500);
        assert!(
            !after(&mut a, puback(1), ready(), at),
            "5 s keep-alive, 0.5 s left"
        );
    }
}
