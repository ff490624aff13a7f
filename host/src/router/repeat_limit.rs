//! Log flood control: the same error, repeated, is logged once per window with a count,
//! never once per message. A message that fails forever (redelivered at once, without a
//! failure policy) would otherwise write megabytes of identical lines per second.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many distinct keys are tracked at once; past it the oldest windows are forgotten.
const MAX_KEYS: usize = 1024;

/// What to do with one occurrence of a repeated event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` identical events were left out since the last one logged.
    Log {
        /// Occurrences not logged since the last logged one.
        suppressed: u64,
    },
    /// Leave it out (it is counted and reported with the next one logged).
    Suppress,
}

/// Lets through the first occurrence of an event per `window` and counts the others.
#[derive(Debug)]
pub struct RepeatLimiter {
    window: Duration,
    seen: Mutex<HashMap<u64, (Instant, u64)>>,
}

impl RepeatLimiter {
    /// One logged occurrence per key and `window`.
    pub fn new(window: Duration) -> Self {
        RepeatLimiter {
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The verdict for one occurrence of the event identified by `key`.
    pub fn check(&self, key: impl Hash) -> Verdict {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let key = h.finish();
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_KEYS && !seen.contains_key(&key) {
            let window = self.window;
            seen.retain(|_, (since, _)| now.duration_since(*since) < window);
            if seen.len() >= MAX_KEYS {
                seen.clear();
            }
        }
        match seen.get_mut(&key) {
            Some((since, suppressed)) if now.duration_since(*since) < self.window => {
                *suppressed += 1;
                Verdict::Suppress
            }
            Some((since, suppressed)) => {
                let n = *suppressed;
                *since = now;
                *suppressed = 0;
                Verdict::Log { suppressed: n }
            }
            None => {
                seen.insert(key, (now, 0));
                Verdict::Log { suppressed: 0 }
            }
        }
    }
}

/// The first line of `text`, at most `max` bytes (cut at a character boundary): an error's
/// summary without its backtrace.
pub fn first_line(text: &str, max: usize) -> &str {
    let line = text.lines().next().unwrap_or("");
    if line.len() <= max {
        return line;
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_the_window_are_counted_not_logged() {
        let limiter = RepeatLimiter::new(Duration::from_millis(50));
        assert_eq!(limiter.check("a"), Verdict::Log { suppressed: 0 });
        for _ in 0..1000 {
            assert_eq!(limiter.check("a"), Verdict::Suppress);
        }
        assert_eq!(
            limiter.check("b"),
            Verdict::Log { suppressed: 0 },
            "another key"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(limiter.check("a"), Verdict::Log { suppressed: 1000 });
    }

    #[test]
    fn the_key_table_stays_bounded() {
        let limiter = RepeatLimiter::new(Duration::from_secs(60));
        for i in 0..(MAX_KEYS * 3) {
            limiter.check(i);
        }
        assert!(limiter.seen.lock().unwrap().len() <= MAX_KEYS);
    }

    #[test]
    fn first_line_drops_the_backtrace_and_cuts_long_lines() {
        assert_eq!(
            first_line("trap: boom\nwasm backtrace:\n 0: f", 100),
            "trap: boom"
        );
        assert_eq!(first_line("ééé", 3), "é");
        assert_eq!(first_line("", 3), "");
    }
}
