//! Per-handler counters: what `GET /handlers` and `/metrics` show.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one handler, shared by the router and the middleware that update them
/// (Retry counts retries, PoisonQueue counts poisoned messages).
#[derive(Debug, Default)]
pub struct HandlerStats {
    /// Messages handled successfully and acked.
    pub processed: AtomicU64,
    /// Messages whose handler chain failed (nacked).
    pub failed: AtomicU64,
    /// Retry attempts made by a Retry middleware.
    pub retried: AtomicU64,
    /// Messages sent to a poison queue.
    pub poisoned: AtomicU64,
    last_error: Mutex<Option<String>>,
    duration: DurationHistogram,
}

/// Upper bounds, in seconds, of the handler duration histogram's buckets.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A lock-free histogram of handler durations (cumulative counts are computed on read).
#[derive(Debug, Default)]
struct DurationHistogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl HandlerStats {
    /// Adds one to `counter`.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records `error` as the last error seen.
    pub fn set_last_error(&self, error: impl ToString) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(error.to_string());
        }
    }

    /// The last error seen, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Records how long one message took to handle.
    pub fn record_duration(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = DURATION_BUCKETS.iter().position(|b| secs <= *b) {
            self.duration.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.duration.count.fetch_add(1, Ordering::Relaxed);
        self.duration
            .sum_nanos
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The duration histogram: cumulative count per bucket of [`DURATION_BUCKETS`], the total
    /// count and the sum in seconds.
    pub fn duration_histogram(&self) -> (Vec<u64>, u64, f64) {
        let mut acc = 0;
        let cumulative = self
            .duration
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Ordering::Relaxed);
                acc
            })
            .collect();
        let count = self.duration.count.load(Ordering::Relaxed);
        let sum = self.duration.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (cumulative, count, sum)
    }

    /// A consistent-enough copy of the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            processed: self.processed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            poisoned: self.poisoned.load(Ordering::Relaxed),
            last_error: self.last_error(),
        }
    }
}

/// A copy of a handler's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// Messages handled successfully.
    pub processed: u64,
    /// Messages whose handling failed.
    pub failed: u64,
    /// Retry attempts.
    pub retried: u64,
    /// Messages sent to a poison queue.
    pub poisoned: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_last_error() {
        let s = HandlerStats::default();
        HandlerStats::inc(&s.processed);
        HandlerStats::inc(&s.retried);
        HandlerStats::inc(&s.retried);
        s.set_last_error("boom");
        let snap = s.snapshot();
        assert_eq!(snap.processed, 1);
        assert_eq!(snap.retried, 2);
        assert_eq!(snap.last_error.as_deref(), Some("boom"));
    }

    #[test]
    fn duration_histogram_is_cumulative() {
        let s = HandlerStats::default();
        s.record_duration(std::time::Duration::from_micros(50));
        s.record_duration(std::time::Duration::from_millis(3));
        s.record_duration(std::time::Duration::from_secs(60));
        let (buckets, count, sum) = s.duration_histogram();
        assert_eq!(count, 3);
        assert_eq!(buckets[0], 1);
        assert_eq!(buckets[3], 2, "<= 5ms holds two");
        assert_eq!(*buckets.last().unwrap(), 2, "60s is past every bucket");
        assert!(sum > 60.0);
    }
}
