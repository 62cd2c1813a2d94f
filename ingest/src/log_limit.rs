//! Loud logs for what repeats, without letting it flood the log.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Logs at warn at most once per `every` per key (debug in between), so one
/// misconfigured client cannot flood the log.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    every: Duration,
    last: Mutex<HashMap<String, Instant>>,
}

impl LogLimiter {
    pub(crate) fn new(every: Duration) -> Self {
        LogLimiter {
            every,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// True when `key` should be logged loudly now.
    pub(crate) fn allow(&self, key: &str) -> bool {
        let now = Instant::now();
        let mut last = self.last.lock();
        if last.len() > 10_000 {
            // Bounded memory against id spraying; forgetting only makes
            // the next messages loud again.
            last.clear();
        }
        match last.get(key) {
            Some(t) if now.duration_since(*t) < self.every => false,
            _ => {
                last.insert(key.to_owned(), now);
                true
            }
        }
    }
}
