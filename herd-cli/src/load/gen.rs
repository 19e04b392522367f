//! One worker's request generator: client ids from the pool, client times, positions, and
//! the mix of IAMAT, WHATSAT and NEARBY, written with herd-core's formatting (or as RESP
//! GEOADD and GEOSEARCH under `--resp`).

use std::sync::Arc;

use herd_core::protocol::{write_iamat, write_whatsat};

use super::args::{Plan, Proto};
use super::resp::write_command;
use crate::reply::Expect;
use crate::util::{write_posix, write_u128};

/// What a request was, for the figures kept per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// IAMAT (or GEOADD).
    Iamat,
    /// WHATSAT.
    Whatsat,
    /// NEARBY POINT (or GEOSEARCH).
    Nearby,
}

/// A request written: the reply it gets, its kind and, for a fresh IAMAT, its number `n`
/// (its client time is the run's base time plus `n` ns, unique in the run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sent {
    pub(super) expect: Expect,
    pub(super) kind: Kind,
    pub(super) n: u64,
}

/// splitmix64: a position per client that does not depend on which worker asks.
pub(super) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform fraction in [0, 1) from the high bits of `r`.
pub(super) fn fraction(r: u64) -> f64 {
    (r >> 11) as f64 / (1u64 << 53) as f64
}

/// Appends `v` with a sign when `signed` (ISO 6709) and exactly six decimals.
fn write_degrees(v: f64, signed: bool, out: &mut Vec<u8>) {
    // Micro-degrees: at most 180e6, so the rounding to an integer is exact.
    let micro = (v.abs() * 1e6).round() as u64;
    if v < 0.0 && micro > 0 {
        out.push(b'-');
    } else if signed {
        out.push(b'+');
    }
    write_u128(u128::from(micro / 1_000_000), out);
    out.push(b'.');
    let frac = micro % 1_000_000;
    let mut digits = [b'0'; 6];
    let mut rest = frac;
    for d in digits.iter_mut().rev() {
        *d = b'0' + u8::try_from(rest % 10).unwrap_or(0);
        rest /= 10;
    }
    out.extend_from_slice(&digits);
}

/// Appends a location as ISO 6709 (`+34.068930-118.445127`).
pub(super) fn write_iso6709(lat: f64, lon: f64, out: &mut Vec<u8>) {
    write_degrees(lat, true, out);
    write_degrees(lon, true, out);
}

/// Writes `client`'s IAMAT (herd) or GEOADD (RESP) at (`lat`, `lon`) with client time `time`.
pub(super) fn write_update(
    plan: &Plan,
    id: &[u8],
    (lat, lon): (f64, f64),
    time: &[u8],
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) {
    scratch.clear();
    match &plan.proto {
        Proto::Herd => {
            if plan.area.is_none() {
                write_iamat(id, &plan.location, time, out);
                return;
            }
            write_iso6709(lat, lon, scratch);
            write_iamat(id, scratch, time, out);
        }
        Proto::Resp(key) => {
            write_degrees(lon, false, scratch);
            let split = scratch.len();
            write_degrees(lat, false, scratch);
            let (lon, lat) = scratch.split_at(split);
            write_command(&[b"GEOADD", key, lon, lat, id], out);
        }
    }
}

/// Appends the client id `PREFIX-<client>`.
pub(super) fn write_id(prefix: &[u8], client: u64, id: &mut Vec<u8>) {
    id.clear();
    id.extend_from_slice(prefix);
    id.push(b'-');
    write_u128(u128::from(client), id);
}

/// Where `client` is in the warm-up: a fixed point of the area, or the plan's location.
pub(super) fn home_of(plan: &Plan, client: u64) -> (f64, f64) {
    match &plan.area {
        Some(area) => {
            let r = mix(client);
            area.point(fraction(r), fraction(mix(r)))
        }
        None => plan.center,
    }
}

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
    scratch: Vec<u8>,
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
            scratch: Vec::with_capacity(64),
        }
    }

    /// xorshift64*: cheap, good enough to pick clients, kinds and positions.
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

    /// A random point of the area (the plan's location without one).
    fn point(&mut self) -> (f64, f64) {
        match self.plan.area {
            Some(area) => {
                let (u, v) = (fraction(self.next()), fraction(self.next()));
                area.point(u, v)
            }
            None => self.plan.center,
        }
    }

    fn nearby(&mut self, out: &mut Vec<u8>) -> Sent {
        let (lat, lon) = self.point();
        let plan = Arc::clone(&self.plan);
        self.scratch.clear();
        match &plan.proto {
            Proto::Herd => {
                out.extend_from_slice(b"NEARBY POINT ");
                if plan.area.is_some() {
                    write_iso6709(lat, lon, out);
                } else {
                    out.extend_from_slice(&plan.location);
                }
                out.push(b' ');
                out.extend_from_slice(plan.nearby_km.as_bytes());
                out.push(b' ');
                out.extend_from_slice(plan.nearby_count.as_bytes());
                out.push(b'\n');
            }
            Proto::Resp(key) => {
                write_degrees(lon, false, &mut self.scratch);
                let split = self.scratch.len();
                write_degrees(lat, false, &mut self.scratch);
                let (lon, lat) = self.scratch.split_at(split);
                write_command(
                    &[
                        b"GEOSEARCH",
                        key,
                        b"FROMLONLAT",
                        lon,
                        lat,
                        b"BYRADIUS",
                        plan.nearby_km.as_bytes(),
                        b"km",
                        b"COUNT",
                        plan.nearby_count.as_bytes(),
                        b"ASC",
                    ],
                    out,
                );
            }
        }
        Sent {
            expect: Expect::Nearby { subject: false },
            kind: Kind::Nearby,
            n: 0,
        }
    }

    /// Appends the next request to `out` and says what it is.
    pub(super) fn write(&mut self, out: &mut Vec<u8>) -> Sent {
        let r = self.next();
        let pick = (r >> 40) % 1_000_000;
        if pick < self.plan.nearby_per_million {
            return self.nearby(out);
        }
        let client = self.client(r);
        write_id(&self.plan.prefix, client, &mut self.id);
        if pick < self.plan.nearby_per_million + self.plan.whatsat_per_million {
            write_whatsat(&self.id, &self.plan.radius, self.plan.max, out);
            return Sent {
                expect: Expect::Places,
                kind: Kind::Whatsat,
                n: 0,
            };
        }
        self.time.clear();
        let mut n = 0;
        if self.plan.fresh {
            // Unique across workers, increasing within each.
            let k = self.sent * u128::from(self.workers) + u128::from(self.worker) + 1;
            n = u64::try_from(k).unwrap_or(u64::MAX);
            write_posix(self.plan.base_nanos + k, &mut self.time);
        } else {
            self.time.extend_from_slice(&self.plan.fixed_time);
        }
        self.sent += 1;
        let at = self.point();
        let plan = Arc::clone(&self.plan);
        write_update(&plan, &self.id, at, &self.time, &mut self.scratch, out);
        Sent {
            expect: Expect::Line,
            kind: Kind::Iamat,
            n,
        }
    }
}

#[cfg(test)]
mod tests {
    use herd_core::MaxItems;

    use super::super::args::Area;
    use super::*;

    fn test_plan(fresh: bool) -> Plan {
        Plan {
            prefix: b"p".to_vec(),
            pool: 10,
            whatsat_per_million: 0,
            location: b"+1+2".to_vec(),
            fixed_time: b"5".to_vec(),
            base_nanos: 1_000_000_000,
            fresh,
            radius: "1".into(),
            max: MaxItems::parse(b"1").unwrap(),
            nearby_per_million: 0,
            nearby_km: "1".into(),
            nearby_count: "50".into(),
            area: None,
            center: (1.0, 2.0),
            proto: Proto::Herd,
        }
    }

    #[test]
    fn fresh_generators_own_their_clients_and_increase_time() {
        let mut gen = Gen::new(Arc::new(test_plan(true)), 1, 3);
        let mut last_time = herd_core::TimeValue::default();
        let mut last_n = 0;
        for _ in 0..50 {
            let mut out = Vec::new();
            let sent = gen.write(&mut out);
            assert_eq!((sent.expect, sent.kind), (Expect::Line, Kind::Iamat));
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
            assert_eq!(
                req.time_value.as_nanos(),
                1_000_000_000 + i128::from(sent.n)
            );
            assert!(sent.n > last_n);
            last_time = req.time_value;
            last_n = sent.n;
        }
    }

    #[test]
    fn whatsat_ratio_one_sends_only_whatsat() {
        let mut plan = test_plan(false);
        plan.whatsat_per_million = 1_000_000;
        let mut gen = Gen::new(Arc::new(plan), 0, 1);
        let mut out = Vec::new();
        assert_eq!(gen.write(&mut out).expect, Expect::Places);
        assert!(
            out.starts_with(b"WHATSAT p-"),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }

    #[test]
    fn positions_stay_in_the_area_and_nearby_asks_about_one() {
        let mut plan = test_plan(true);
        plan.area = Some(Area::new(34.0689, -118.4451, 20.0));
        plan.nearby_per_million = 500_000;
        let mut gen = Gen::new(Arc::new(plan), 0, 1);
        let (mut iamats, mut nearbys) = (0, 0);
        for _ in 0..400 {
            let mut out = Vec::new();
            let sent = gen.write(&mut out);
            let line = out.strip_suffix(b"\n").unwrap();
            let loc = match herd_core::parse_client_line(line) {
                herd_core::ClientLine::IAmAt(req) => {
                    iamats += 1;
                    req.location.to_vec()
                }
                herd_core::ClientLine::Nearby(_) => {
                    nearbys += 1;
                    assert_eq!(sent.kind, Kind::Nearby);
                    let text = String::from_utf8(line.to_vec()).unwrap();
                    assert!(text.ends_with(" 1 50"), "{text}");
                    text.split(' ').nth(2).unwrap().as_bytes().to_vec()
                }
                _ => panic!("{}", String::from_utf8_lossy(line)),
            };
            let (lat, lon) = herd_core::Location::degrees(&loc).unwrap();
            // 20 km a side: within 10 km (0.09° of latitude, 0.11° of longitude) of the centre.
            assert!((lat - 34.0689).abs() <= 0.0900, "{lat}");
            assert!((lon + 118.4451).abs() <= 0.1087, "{lon}");
        }
        assert!(iamats > 100 && nearbys > 100, "{iamats} {nearbys}");
    }

    #[test]
    fn resp_writes_geoadd_and_geosearch_with_the_same_ids() {
        let mut plan = test_plan(true);
        plan.proto = Proto::Resp(b"k".to_vec());
        plan.nearby_per_million = 500_000;
        let mut gen = Gen::new(Arc::new(plan), 0, 1);
        let mut seen = [false; 2];
        for _ in 0..50 {
            let mut out = Vec::new();
            let sent = gen.write(&mut out);
            let text = String::from_utf8(out).unwrap();
            match sent.kind {
                Kind::Iamat => {
                    seen[0] = true;
                    assert!(
                        text.starts_with("*5\r\n$6\r\nGEOADD\r\n$1\r\nk\r\n$8\r\n2.000000\r\n$8\r\n1.000000\r\n$3\r\np-"),
                        "{text:?}"
                    );
                }
                Kind::Nearby => {
                    seen[1] = true;
                    assert!(text.starts_with("*11\r\n$9\r\nGEOSEARCH\r\n"), "{text:?}");
                    assert!(text.ends_with("$2\r\n50\r\n$3\r\nASC\r\n"), "{text:?}");
                }
                Kind::Whatsat => panic!("no WHATSAT asked for"),
            }
        }
        assert_eq!(seen, [true, true]);
    }

    #[test]
    fn degrees_have_six_decimals_and_iso_signs() {
        let mut out = Vec::new();
        write_iso6709(34.06893, -118.445127, &mut out);
        assert_eq!(out, b"+34.068930-118.445127");
        out.clear();
        write_degrees(-0.0000001, false, &mut out);
        assert_eq!(out, b"0.000000");
        out.clear();
        write_degrees(-0.5, false, &mut out);
        assert_eq!(out, b"-0.500000");
    }
}
