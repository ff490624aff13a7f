//! The one reconnect policy of every backend: exponential delays with jitter, from a minimum
//! to a cap, forever, reset after a success. Built on `backon`'s [`ExponentialBuilder`] so the
//! arithmetic (doubling, cap, jitter) is a maintained crate's, not ours.
//!
//! Jitter spreads the reconnects of several hosts (or many subscriptions of one host) that
//! lost the same broker at the same moment, so they do not all knock at once when it returns.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// The first delay after a failure, unless a backend's config says otherwise.
pub const MIN_DELAY: Duration = Duration::from_millis(100);
/// The longest delay between two attempts, unless a backend's config says otherwise.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// Delays between reconnect attempts: `min`, about `2 * min`, ... up to `max` (each with up to
/// the current delay again of jitter, never above twice `max`), then `max` forever. [`reset`]
/// after a success starts again from `min`.
///
/// [`reset`]: Reconnect::reset
#[derive(Debug)]
pub struct Reconnect {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect::new(MIN_DELAY, MAX_DELAY)
    }
}

impl Reconnect {
    /// Delays from `min` doubling up to `max` (`max` is raised to `min` when below it).
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        let max = max.max(min);
        let builder = ExponentialBuilder::new()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Reconnect {
            delays: builder.build(),
            builder,
            max,
        }
    }

    /// The delay to wait before the next attempt (and the one after it grows).
    pub fn next_delay(&mut self) -> Duration {
        // `without_max_times` never ends; fall back to the cap all the same.
        self.delays.next().unwrap_or(self.max)
    }

    /// A connection succeeded: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }

    /// Sleeps the next delay. Returns `false` at once when `stop` is cancelled first (the
    /// backend is closing: give up instead of reconnecting).
    pub async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = stop.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        let mut r = Reconnect::new(min, max);
        let first = r.next_delay();
        assert!(first >= min && first <= 2 * min, "{first:?}");
        let delays: Vec<Duration> = (0..20).map(|_| r.next_delay()).collect();
        // Grows: the later delays are at the cap (plus at most the same again of jitter).
        assert!(
            delays[15..].iter().all(|d| *d >= max && *d <= 2 * max),
            "{delays:?}"
        );
        assert!(delays.iter().all(|d| *d >= min), "{delays:?}");
        r.reset();
        let again = r.next_delay();
        assert!(again <= 2 * min, "reset starts from min again: {again:?}");
    }

    #[test]
    fn a_cap_below_the_minimum_is_the_minimum() {
        let mut r = Reconnect::new(Duration::from_millis(50), Duration::from_millis(10));
        for _ in 0..10 {
            let d = r.next_delay();
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(100));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn wait_gives_up_when_stopped() {
        let stop = CancellationToken::new();
        let mut r = Reconnect::new(Duration::from_secs(60), Duration::from_secs(60));
        stop.cancel();
        assert!(!r.wait(&stop).await);
        let running = CancellationToken::new();
        assert!(r.wait(&running).await);
    }
}
