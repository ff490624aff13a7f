//! The delay metadata (Watermill's `components/delay`): when a message is due, in
//! `_watermill_delayed_until` (RFC 3339) and `_watermill_delayed_for`. Set by the
//! `delay_on_error` middleware and `components::delay`; honoured by the backends that can
//! delay (in-memory: held at publish; SQLite and PostgreSQL: a table; Redis: a sorted set;
//! each moved into the topic once due by [`run_mover`]; NATS: a `Nak` with the remaining
//! delay) and by the requeuer on any backend.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

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

/// Milliseconds since the Unix epoch (how the durable backends store a due time).
pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// When `msg` is due, in milliseconds since the epoch, if that is still ahead: such a message
/// is kept aside by a durable backend until then.
pub fn due_millis(msg: &Message) -> Option<u64> {
    wait(msg)?;
    due(msg).map(millis)
}

/// How often a durable backend's subscription moves due messages into its topic, at most.
pub const MOVE_INTERVAL: Duration = Duration::from_millis(100);

/// Moves a topic's due delayed messages until `stop` (a subscription's end): calls `move_due`
/// every [`MOVE_INTERVAL`], or at the next message's due time when that is sooner.
/// `move_due` moves what is due and returns when the next one waiting is due (milliseconds
/// since the epoch). A failure is logged at debug level and tried again (the server may be
/// away; the messages wait where they are). Each call is bounded by `timeout`.
pub async fn run_mover<F, Fut>(
    backend: &'static str,
    topic: String,
    stop: CancellationToken,
    timeout: Duration,
    mut move_due: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<u64>, String>>,
{
    loop {
        let pause = match tokio::time::timeout(timeout, move_due()).await {
            Ok(Ok(Some(next))) => {
                let now = millis(SystemTime::now());
                MOVE_INTERVAL.min(Duration::from_millis(next.saturating_sub(now)))
            }
            Ok(Ok(None)) => MOVE_INTERVAL,
            Ok(Err(e)) => {
                tracing::debug!(backend, topic, error = %e, "moving delayed messages");
                MOVE_INTERVAL
            }
            Err(_) => MOVE_INTERVAL,
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Spawns [`run_mover`] for `topic` until `stop`, calling `move_due(this, topic)`: the mover
/// task every subscription of a durable backend that can delay starts beside it.
pub fn spawn_mover<T, F, Fut>(
    backend: &'static str,
    topic: &str,
    stop: CancellationToken,
    timeout: Duration,
    this: T,
    move_due: F,
) where
    T: Clone + Send + 'static,
    F: Fn(T, String) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Option<u64>, String>> + Send + 'static,
{
    let moved = topic.to_string();
    tokio::spawn(run_mover(
        backend,
        topic.to_string(),
        stop,
        timeout,
        move || move_due(this.clone(), moved.clone()),
    ));
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
    fn only_a_message_due_ahead_is_kept_aside() {
        let mut m = Message::new("x");
        assert!(due_millis(&m).is_none());
        delay_for(&mut m, Duration::from_secs(5));
        let due = due_millis(&m).unwrap();
        let now = millis(SystemTime::now());
        assert!(due > now + 4_000 && due <= now + 5_000, "{due} vs {now}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_mover_runs_until_stopped_and_sooner_when_something_is_due_sooner() {
        let stop = CancellationToken::new();
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = calls.clone();
        let started = tokio::time::Instant::now();
        let mover = tokio::spawn(run_mover(
            "test",
            "t".into(),
            stop.clone(),
            Duration::from_secs(1),
            move || {
                let mut seen = seen.lock().unwrap();
                seen.push(started.elapsed());
                // Something due right away the first three times, then nothing waits.
                let next = (seen.len() <= 3).then(|| millis(SystemTime::now()));
                async move { Ok(next) }
            },
        ));
        tokio::time::sleep(Duration::from_millis(250)).await;
        stop.cancel();
        mover.await.unwrap();
        let ms: Vec<u128> = calls
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.as_millis())
            .collect();
        assert_eq!(ms, vec![0, 0, 0, 0, 100, 200], "called at (ms)");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(calls.lock().unwrap().len(), 6, "called after the stop");
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
