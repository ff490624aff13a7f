//! The delay metadata (Watermill's `components/delay`): when a message is due, in
//! `_watermill_delayed_until` (RFC 3339) and `_watermill_delayed_for`. Set by the
//! `delay_on_error` middleware and `components::delay`; honoured by the backends that can
//! delay (in-memory: held at publish; Redis: a sorted set moved into the stream once due;
//! NATS: a `Nak` with the remaining delay) and by the requeuer on any backend.

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

/// Gives a message that names only how long it is delayed for (`_watermill_delayed_for`, as a
/// user publishing over HTTP writes it) its due time, that long from now. An unreadable
/// duration is an error naming the key.
pub fn due_from_now(msg: &mut Message) -> Result<(), String> {
    if msg.metadata.contains(DELAYED_UNTIL) {
        return Ok(());
    }
    let Some(text) = msg.metadata.get_opt(DELAYED_FOR) else {
        return Ok(());
    };
    let delay = humantime::parse_duration(text)
        .map_err(|e| format!("metadata {DELAYED_FOR}: {text:?} is not a duration: {e}"))?;
    delay_for(msg, delay);
    Ok(())
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

    #[test]
    fn a_delay_named_alone_is_due_that_long_from_now() {
        let mut m = Message::new("x");
        m.metadata.set(DELAYED_FOR, "2s");
        due_from_now(&mut m).unwrap();
        assert!(wait(&m).is_some_and(|w| w > Duration::from_secs(1)));
        let mut named = Message::new("x");
        named.metadata.set(DELAYED_FOR, "2s");
        named.metadata.set(DELAYED_UNTIL, "2000-01-01T00:00:00Z");
        due_from_now(&mut named).unwrap();
        assert!(wait(&named).is_none(), "a due time given is kept");
        let mut bad = Message::new("x");
        bad.metadata.set(DELAYED_FOR, "soon");
        let err = due_from_now(&mut bad).unwrap_err();
        assert!(err.contains(DELAYED_FOR) && err.contains("soon"), "{err}");
    }
}
