//! One worker's request generator: client ids from the pool, client times, and the mix of
//! IAMAT and WHATSAT, written with herd-core's formatting.

use std::sync::Arc;

use herd_core::protocol::{write_iamat, write_whatsat};

use super::args::Plan;
use crate::reply::Expect;
use crate::util::{write_posix, write_u128};

/// One worker's request generator: client ids, times and request kinds.
#[derive(Debug)]
pub(super) struct Gen {
    plan: Arc<Plan>,
    worker: u64,
    workers: u64,
    rng: u64,
    sent: u128,
    id: Vec<u8>,
    time: Vec<u8>,
}

impl Gen {
    pub(super) fn new(plan: Arc<Plan>, worker: u64, workers: u64) -> Self {
        Self {
            plan,
            worker,
            workers,
            rng: 0x9E37_79B9_7F4A_7C15 ^ (worker + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
            sent: 0,
            id: Vec::with_capacity(64),
            time: Vec::with_capacity(32),
        }
    }

    /// xorshift64*: cheap, good enough to pick clients and kinds.
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn client(&mut self, r: u64) -> u64 {
        let p = &self.plan;
        if !p.fresh {
            return r % p.pool;
        }
        // Each worker owns the clients ≡ worker (mod workers), so one client's requests go
        // in order over one connection and every fresh time is newer than its last.
        let own = (p.pool - self.worker).div_ceil(self.workers);
        self.worker + (r % own) * self.workers
    }

    /// Appends the next request to `out` and says what reply it gets.
    pub(super) fn write(&mut self, out: &mut Vec<u8>) -> Expect {
        let r = self.next();
        let client = self.client(r);
        self.id.clear();
        self.id.extend_from_slice(&self.plan.prefix);
        self.id.push(b'-');
        write_u128(u128::from(client), &mut self.id);
        if (r >> 40) % 1_000_000 < self.plan.whatsat_per_million {
            write_whatsat(&self.id, &self.plan.radius, self.plan.max, out);
            return Expect::Places;
        }
        self.time.clear();
        if self.plan.fresh {
            // Unique across workers, increasing within each.
            let n = self.sent * u128::from(self.workers) + u128::from(self.worker) + 1;
            write_posix(self.plan.base_nanos + n, &mut self.time);
        } else {
            self.time.extend_from_slice(&self.plan.fixed_time);
        }
        self.sent += 1;
        write_iamat(&self.id, &self.plan.location, &self.time, out);
        Expect::Line
    }
}

#[cfg(test)]
mod tests {
    use herd_core::MaxItems;

    use super::*;

    fn test_plan(fresh: bool) -> Arc<Plan> {
        Arc::new(Plan {
            prefix: b"p".to_vec(),
            pool: 10,
            whatsat_per_million: 0,
            location: b"+1+2".to_vec(),
            fixed_time: b"5".to_vec(),
            base_nanos: 1_000_000_000,
            fresh,
            radius: "1".into(),
            max: MaxItems::parse(b"1").unwrap(),
        })
    }

    #[test]
    fn fresh_generators_own_their_clients_and_increase_time() {
        let mut gen = Gen::new(test_plan(true), 1, 3);
        let mut last_time = herd_core::TimeValue::default();
        for _ in 0..50 {
            let mut out = Vec::new();
            assert_eq!(gen.write(&mut out), Expect::Line);
            let line = out.strip_suffix(b"\n").unwrap();
            let herd_core::ClientLine::IAmAt(req) = herd_core::parse_client_line(line) else {
                panic!("not an IAMAT: {:?}", String::from_utf8_lossy(&out))
            };
            let n: u64 = std::str::from_utf8(&req.client[2..])
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(n % 3, 1, "client {n} is not worker 1's");
            assert!(n < 10);
            assert!(req.time_value > last_time);
            last_time = req.time_value;
        }
    }

    #[test]
    fn whatsat_ratio_one_sends_only_whatsat() {
        let mut plan = Arc::try_unwrap(test_plan(false)).unwrap();
        plan.whatsat_per_million = 1_000_000;
        let mut gen = Gen::new(Arc::new(plan), 0, 1);
        let mut out = Vec::new();
        assert_eq!(gen.write(&mut out), Expect::Places);
        assert!(
            out.starts_with(b"WHATSAT p-"),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }
}
