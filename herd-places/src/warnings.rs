//! Warnings about a failing Places service, at most one line a second per cause.
//!
//! A service that refuses the key (`REQUEST_DENIED`), is over its quota or cannot be reached
//! fails every lookup: a warning for each would flood the log. For each cause (a status, an
//! HTTP code, a transport failure, …) the first failure is logged; later ones within
//! [`WARN_PERIOD`] of that cause's last line are only counted, and the count is logged with the
//! next line (`suppressed`). At most [`MAX_CAUSES`] causes are told apart; failures of any
//! further cause share one.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// At most one warning per cause in this period.
pub const WARN_PERIOD: Duration = Duration::from_secs(1);
/// The most causes told apart (the statuses come from the service, so the set is bounded here).
pub const MAX_CAUSES: usize = 32;
/// The cause that the failures of every cause past [`MAX_CAUSES`] share.
const OTHER: &str = "other";

/// One cause: when it was last logged and how many failures were not logged since.
#[derive(Debug)]
struct Cause {
    name: String,
    last: Instant,
    suppressed: u64,
}

/// Rate limits warnings per cause.
#[derive(Debug, Default)]
pub(crate) struct WarnLimiter {
    causes: Mutex<Vec<Cause>>,
}

impl WarnLimiter {
    /// Counts one failure of `cause` now: `Some(n)` when it is to be logged, `n` the failures
    /// of that cause not logged since its last line.
    pub(crate) fn hit(&self, cause: &str) -> Option<u64> {
        self.hit_at(cause, Instant::now())
    }

    fn hit_at(&self, cause: &str, now: Instant) -> Option<u64> {
        let mut causes = self.lock();
        let name = if causes.len() >= MAX_CAUSES && !causes.iter().any(|c| c.name == cause) {
            OTHER
        } else {
            cause
        };
        match causes.iter_mut().find(|c| c.name == name) {
            Some(c) if now.saturating_duration_since(c.last) < WARN_PERIOD => {
                c.suppressed += 1;
                None
            }
            Some(c) => {
                c.last = now;
                Some(std::mem::take(&mut c.suppressed))
            }
            None => {
                causes.push(Cause {
                    name: name.to_owned(),
                    last: now,
                    suppressed: 0,
                });
                Some(0)
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Cause>> {
        // Times and counts: a panicked holder cannot leave them worse than off by one.
        self.causes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_per_cause_with_the_count_of_the_rest() {
        let w = WarnLimiter::default();
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        assert_eq!(w.hit_at("REQUEST_DENIED", ms(0)), Some(0));
        assert_eq!(w.hit_at("REQUEST_DENIED", ms(10)), None);
        assert_eq!(w.hit_at("REQUEST_DENIED", ms(999)), None);
        // Another cause has its own second.
        assert_eq!(w.hit_at("HTTP 429", ms(500)), Some(0));
        assert_eq!(w.hit_at("REQUEST_DENIED", ms(1000)), Some(2));
        assert_eq!(w.hit_at("REQUEST_DENIED", ms(1500)), None);
        assert_eq!(w.hit_at("HTTP 429", ms(1500)), Some(0));
        assert_eq!(w.hit_at("REQUEST_DENIED", ms(2000)), Some(1));
    }

    #[test]
    fn causes_past_the_bound_share_one() {
        let w = WarnLimiter::default();
        let t = Instant::now();
        for i in 0..MAX_CAUSES - 1 {
            assert_eq!(w.hit_at(&format!("c{i}"), t), Some(0));
        }
        assert_eq!(w.hit_at("x", t), Some(0), "the last cause of its own");
        assert_eq!(w.hit_at("y", t), Some(0), "the shared one, first time");
        assert_eq!(w.hit_at("z", t), None, "shares y's second");
        assert_eq!(w.hit_at("x", t), None, "x is still its own cause");
        assert_eq!(w.lock().len(), MAX_CAUSES + 1);
    }
}
