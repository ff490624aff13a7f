//! The delay metadata (Watermill's `components/delay`): when a message is due, in
//! `_watermill_delayed_until` (RFC 3339) and `_watermill_delayed_for`. Set by the
//! `delay_on_error` middleware and `components::delay`; honoured by the in-memory backend and
//! the requeuer.

use std::time::{Duration, SystemTime};

use crate::message::Message;

/// Metadata key: how long the message is delayed for (e.g. "200ms").
pub const DELAYED_FOR: &str = "_watermill_delayed_for";
/// Metadata key: until when (RFC 3339).
pub const DELAYED_UNTIL: &str = "_watermill_delayed_until";

/// Marks `msg` due `delay` from now.
pub fn delay_for(msg: &mut Message, delay: Duration) {
    msg.metadata
        .set(DELAYED_FOR, humantime::format_duration(delay).to_string());
    msg.metadata.set(
        DELAYED_UNTIL,
        humantime::format_rfc3339_millis(SystemTime::now() + delay).to_string(),
    );
}

/// When `msg` is due, if it names a time.
pub fn due(msg: &Message) -> Option<SystemTime> {
    msg.metadata
        .get_opt(DELAYED_UNTIL)
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
}

/// How long until `msg` is due, when that is still ahead.
pub fn wait(msg: &Message) -> Option<Duration> {
    due(msg)
        .and_then(|at| at.duration_since(SystemTime::now()).ok())
        .filter(|w| !w.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delay_is_written_and_read_back() {
        let mut m = Message::new("x");
        assert!(due(&m).is_none() && wait(&m).is_none());
        delay_for(&mut m, Duration::from_secs(60));
        assert!(wait(&m).is_some_and(|w| w > Duration::from_secs(58)));
        assert_eq!(m.metadata.get(DELAYED_FOR), "1m");
    }
}
