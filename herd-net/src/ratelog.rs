//! Refusals logged at most once a second per cause, and counted.
//!
//! Under a hostile load the same refusal happens thousands of times a second (a flood of
//! connections over the limit, `accept` out of file descriptors): a log line for each would
//! turn the attack into a flood of the disk. For each cause ([`RateLog`]) the first event
//! logs; later ones within [`RATE_LOG_PERIOD`] of the last logged line are only counted, and
//! that count is logged with the next line (its `suppressed` field). Every event is counted
//! in the cause's total, which the server's counters show ([`RefusalCounts`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// At most one log line per cause in this period.
pub const RATE_LOG_PERIOD: Duration = Duration::from_secs(1);

/// One cause's rate limit and total.
#[derive(Debug, Default)]
pub struct RateLog {
    window: Mutex<Window>,
    total: AtomicU64,
}

#[derive(Debug, Default)]
struct Window {
    /// When the last line was logged.
    last: Option<Instant>,
    /// Events since then that were not logged.
    suppressed: u64,
}

impl RateLog {
    /// A cause with nothing counted yet (`const`, so a cause may be a `static`).
    pub const fn new() -> Self {
        Self {
            window: Mutex::new(Window {
                last: None,
                suppressed: 0,
            }),
            total: AtomicU64::new(0),
        }
    }

    /// Counts one event now; `Some(n)` when it is to be logged, `n` the events not logged
    /// since the last line.
    pub fn hit(&self) -> Option<u64> {
        self.hit_at(Instant::now())
    }

    /// [`RateLog::hit`] at time `now`.
    pub fn hit_at(&self, now: Instant) -> Option<u64> {
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut w = self.lock();
        match w.last {
            Some(last) if now.saturating_duration_since(last) < RATE_LOG_PERIOD => {
                w.suppressed += 1;
                None
            }
            _ => {
                w.last = Some(now);
                Some(std::mem::take(&mut w.suppressed))
            }
        }
    }

    /// Events counted so far, logged or not.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        // Two integers: a panicked holder cannot leave them worse than off by one.
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The causes for which a server refuses or closes client connections before serving them,
/// each logged at most once a second.
#[derive(Debug, Default)]
pub struct Refusals {
    /// Over `max_clients`: closed at once.
    pub max_clients: RateLog,
    /// Over `max_clients_per_ip` from one address: closed at once.
    pub per_ip: RateLog,
    /// `accept` failed (out of file descriptors and the like).
    pub accept_errors: RateLog,
    /// A line not complete within `line_timeout`: closed.
    pub line_timeouts: RateLog,
}

impl Refusals {
    /// The totals so far.
    pub fn counts(&self) -> RefusalCounts {
        RefusalCounts {
            max_clients: self.max_clients.total(),
            per_ip: self.per_ip.total(),
            accept_errors: self.accept_errors.total(),
            line_timeouts: self.line_timeouts.total(),
        }
    }
}

/// How many connections each cause refused or closed, since the server started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefusalCounts {
    /// Closed at once: over `max_clients`.
    pub max_clients: u64,
    /// Closed at once: over `max_clients_per_ip`.
    pub per_ip: u64,
    /// `accept` errors.
    pub accept_errors: u64,
    /// Closed: a line not complete within `line_timeout`.
    pub line_timeouts: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_event_of_a_second_logs_and_carries_the_count_of_the_rest() {
        let log = RateLog::new();
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(log.hit_at(t0), Some(0));
        for n in 1..=99 {
            assert_eq!(log.hit_at(ms(n * 10)), None);
        }
        // One second after the last line: the next event logs, with the 99 not logged.
        assert_eq!(log.hit_at(ms(1000)), Some(99));
        assert_eq!(log.hit_at(ms(1500)), None);
        assert_eq!(log.hit_at(ms(5000)), Some(1));
        assert_eq!(log.hit_at(ms(6001)), Some(0));
        assert_eq!(log.total(), 104);
    }

    #[test]
    fn causes_are_limited_and_counted_apart() {
        let r = Refusals::default();
        let t = Instant::now();
        assert_eq!(r.per_ip.hit_at(t), Some(0));
        assert_eq!(r.max_clients.hit_at(t), Some(0), "another cause logs too");
        assert_eq!(r.per_ip.hit_at(t), None);
        assert_eq!(
            r.counts(),
            RefusalCounts {
                max_clients: 1,
                per_ip: 2,
                accept_errors: 0,
                line_timeouts: 0
            }
        );
    }
}
