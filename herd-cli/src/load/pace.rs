//! When requests may go: the budget every worker shares ([`Shared`]: a request count, a
//! deadline, the stop flag) and, under `--rate`, each worker's turns ([`Pace`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When one worker's requests are due under `--rate`: the k-th (from 0) at
/// `first + k × every`. Worker i of c starts i/N s after the run, every c/N s, so the
/// workers' turns interleave into one even stream of N requests/s.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pace {
    first: Instant,
    /// Seconds between two requests of this worker.
    every: f64,
}

impl Pace {
    /// Longest single sleep while waiting for a turn, so a stop (Ctrl-C) is seen promptly.
    const NAP: Duration = Duration::from_millis(100);

    pub(super) fn new(started: Instant, rate: u64, worker: usize, workers: usize) -> Self {
        let rate = rate as f64;
        Self {
            first: started + Duration::from_secs_f64(worker as f64 / rate),
            every: workers as f64 / rate,
        }
    }

    /// How many of this worker's requests are due at `now` (counting from the first).
    pub(super) fn due(&self, now: Instant) -> u64 {
        if now < self.first {
            return 0;
        }
        // Float to integer saturates; the run is bounded long before that matters.
        ((now - self.first).as_secs_f64() / self.every) as u64 + 1
    }

    /// When request `k` of this worker is due.
    fn at(&self, k: u64) -> Instant {
        self.first + Duration::from_secs_f64(k as f64 * self.every)
    }

    /// Sleeps until request `k` is due, or the run is over (deadline, request count, stop),
    /// whichever is first.
    pub(super) async fn wait_turn(&self, k: u64, shared: &Shared) {
        let turn = self.at(k);
        loop {
            let now = Instant::now();
            if now >= turn || !shared.more() {
                return;
            }
            let mut until = turn.min(now + Self::NAP);
            if let Some(d) = shared.deadline {
                until = until.min(d);
            }
            tokio::time::sleep_until(until.into()).await;
        }
    }
}

/// What every worker shares: the budget, the stop flag and the progress counter.
#[derive(Debug)]
pub(super) struct Shared {
    limit: Option<u64>,
    issued: AtomicU64,
    deadline: Option<Instant>,
    /// Set to end the run early (Ctrl-C) or once it is over.
    pub(super) stop: AtomicBool,
    /// Replies (or failed requests) counted so far, for the progress bar.
    pub(super) done: AtomicU64,
}

impl Shared {
    /// A budget of `limit` requests (unbounded when `None`) until `deadline` (none when `None`).
    pub(super) fn new(limit: Option<u64>, deadline: Option<Instant>) -> Self {
        Self {
            limit,
            issued: AtomicU64::new(0),
            deadline,
            stop: AtomicBool::new(false),
            done: AtomicU64::new(0),
        }
    }

    /// How many of `want` requests may still be issued.
    pub(super) fn take(&self, want: usize) -> usize {
        if want == 0 || self.stop.load(Ordering::Relaxed) {
            return 0;
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return 0;
        }
        let Some(limit) = self.limit else {
            return want;
        };
        let want64 = u64::try_from(want).unwrap_or(u64::MAX);
        let before = self.issued.fetch_add(want64, Ordering::Relaxed);
        let left = limit.saturating_sub(before).min(want64);
        usize::try_from(left).unwrap_or(0)
    }

    pub(super) fn more(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
            && self.deadline.is_none_or(|d| Instant::now() < d)
            && self
                .limit
                .is_none_or(|l| self.issued.load(Ordering::Relaxed) < l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_workers_interleave_into_one_even_stream() {
        let t0 = Instant::now();
        // 1000 requests/s over 4 workers: worker i's k-th request is due at (i + 4k) ms.
        let paces: Vec<Pace> = (0..4).map(|i| Pace::new(t0, 1000, i, 4)).collect();
        let ms = |m: f64| t0 + Duration::from_secs_f64(m / 1000.0);
        assert_eq!(paces[0].due(t0), 1);
        assert_eq!(paces[3].due(t0), 0);
        assert_eq!(paces[3].due(ms(3.000_01)), 1);
        // After 100 ms (plus a hair), each worker has had 25 turns: 100 in all.
        let total: u64 = paces.iter().map(|p| p.due(ms(99.999))).sum();
        assert_eq!(total, 100);
        let at = paces[2].at(10).duration_since(t0).as_secs_f64() * 1000.0;
        assert!((at - 42.0).abs() < 1e-6, "{at}");
    }

    #[test]
    fn budget_by_count_is_exact() {
        let shared = Shared {
            limit: Some(10),
            issued: AtomicU64::new(0),
            deadline: None,
            stop: AtomicBool::new(false),
            done: AtomicU64::new(0),
        };
        assert_eq!(shared.take(4), 4);
        assert_eq!(shared.take(4), 4);
        assert_eq!(shared.take(4), 2);
        assert_eq!(shared.take(4), 0);
        assert!(!shared.more());
    }
}
