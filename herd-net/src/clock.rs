//! The wall clock the adapters pass to the node, and the production id source.

use std::time::{SystemTime, UNIX_EPOCH};

use herd_core::{IdSource, Timestamp};

/// The current wall-clock time as a core timestamp (the epoch itself if the clock is before it).
pub fn now() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_parts(d.as_secs(), d.subsec_nanos())
}

/// Unpredictable ids from the thread's cryptographically seeded generator.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomIds;

impl IdSource for RandomIds {
    fn next_u64(&mut self) -> u64 {
        rand::random()
    }
}
