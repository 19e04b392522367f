//! `load --fences F`: F fences kept open while the load runs, on subscriber connections of
//! at most `--fences-per-conn` fences each, placed at random in the load's area; their
//! ENTER and EXIT events are read as they come and each is matched to the IAMAT it reports.
//!
//! Matching: under `--fresh` every IAMAT of a run carries a client time unique in the run
//! (the run's base time plus `n` ns, see [`super::gen::Sent`]). A worker notes when each
//! fresh IAMAT's AT reply came ([`Acks::record`]); a fence reader reads the event's AT line,
//! takes `n` back from its client time and records the time from that acknowledgement to the
//! event. An event read before its IAMAT's reply (the fence connection may be served first)
//! waits until the reply is noted and counts as 0 µs (`before_ack`). Acknowledgements are
//! kept 10 s, so the table stays bounded however long the run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::args::{LoadArgs, Plan};
use super::gen::{fraction, mix, write_iso6709};
use super::report::{histogram, quantiles_us};
use crate::config::Target;
use crate::error::{Failure, EXIT_INVALID};
use crate::fence::proto::{self, Crossing, Fence, Line};
use crate::Global;

/// How long an acknowledgement is kept for events to match.
const KEEP: Duration = Duration::from_secs(10);
/// How long an event waits for its IAMAT's acknowledgement before it counts as unmatched.
const WAIT_FOR_ACK: Duration = Duration::from_secs(5);
/// How long the readers keep reading after the load ends (events still on their way).
const GRACE: Duration = Duration::from_millis(500);

/// What the matcher holds under its lock.
#[derive(Debug)]
struct Table {
    /// Fresh IAMAT number → when its AT reply came (ns since the matcher's start).
    acked: HashMap<u64, u64>,
    /// Events read before their IAMAT's reply: (number, when read).
    pending: Vec<(u64, u64)>,
    latency: Histogram<u64>,
    matched: u64,
    before_ack: u64,
    unmatched: u64,
    last_sweep: u64,
}

/// Acknowledgements of fresh IAMATs and the events matched to them.
#[derive(Debug)]
pub(super) struct Acks {
    start: Instant,
    table: Mutex<Table>,
}

impl Acks {
    pub(super) fn new(start: Instant) -> Self {
        Self {
            start,
            table: Mutex::new(Table {
                acked: HashMap::new(),
                pending: Vec::new(),
                latency: histogram(),
                matched: 0,
                before_ack: 0,
                unmatched: 0,
                last_sweep: 0,
            }),
        }
    }

    fn ns(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panicked holder leaves counters only: keep counting.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes the AT replies of fresh IAMATs: (number, when the reply came).
    pub(super) fn record(&self, batch: &[(u64, Instant)]) {
        if batch.is_empty() {
            return;
        }
        let mut t = self.lock();
        for &(n, at) in batch {
            let ns = self.ns(at);
            t.acked.insert(n, ns);
        }
    }

    /// An event about fresh IAMAT `n`, read at `at`.
    fn event(&self, n: u64, at: Instant) {
        let now = self.ns(at);
        let mut t = self.lock();
        match t.acked.get(&n).copied() {
            Some(acked) => {
                t.matched += 1;
                t.latency
                    .saturating_record(now.saturating_sub(acked).max(1));
            }
            None => t.pending.push((n, now)),
        }
        if now.saturating_sub(t.last_sweep) > 1_000_000_000 {
            t.last_sweep = now;
            Self::sweep(&mut t, now, false);
        }
    }

    /// Matches the waiting events whose acknowledgement came; gives up on those that waited
    /// too long (all of them when `last`); forgets old acknowledgements.
    fn sweep(t: &mut Table, now: u64, last: bool) {
        let pending = std::mem::take(&mut t.pending);
        let wait = u64::try_from(WAIT_FOR_ACK.as_nanos()).unwrap_or(u64::MAX);
        for (n, read) in pending {
            if t.acked.contains_key(&n) {
                t.matched += 1;
                t.before_ack += 1;
                t.latency.saturating_record(1);
            } else if last || now.saturating_sub(read) > wait {
                t.unmatched += 1;
            } else {
                t.pending.push((n, read));
            }
        }
        let keep = u64::try_from(KEEP.as_nanos()).unwrap_or(u64::MAX);
        if now > keep {
            t.acked.retain(|_, acked| *acked >= now - keep);
        }
    }
}

/// What one fence connection read.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    enter: u64,
    exit: u64,
    /// Events about clients that are not this run's (another load, a person).
    foreign: u64,
    /// Lines that are not events (a bad line, a stray reply).
    unexpected: u64,
    /// The server closed the connection (it does so to a subscriber that does not keep up).
    lost: bool,
}

/// The fence figures of a run.
#[derive(Debug)]
pub(super) struct FenceReport {
    open: u64,
    connections: usize,
    target: String,
    counts: Counts,
    lost: usize,
    matched: u64,
    before_ack: u64,
    unmatched: u64,
    latency_us: [f64; 5],
}

impl FenceReport {
    pub(super) fn to_json(&self) -> serde_json::Value {
        let [p50, p90, p99, p99_9, max] = self.latency_us;
        let c = &self.counts;
        json!({
            "open": self.open,
            "connections": self.connections,
            "target": self.target,
            "events": c.enter + c.exit,
            "enter": c.enter,
            "exit": c.exit,
            "foreign": c.foreign,
            "unexpected": c.unexpected,
            "lost_connections": self.lost,
            "matched": self.matched,
            "before_ack": self.before_ack,
            "unmatched": self.unmatched,
            "latency_us": {"p50": p50, "p90": p90, "p99": p99, "p99_9": p99_9, "max": max},
        })
    }

    pub(super) fn print_text(&self) {
        let c = &self.counts;
        println!(
            "fences: {} open on {} connections to {}; events {} (enter {}, exit {}), matched {}, \
             unmatched {}, connections lost {}",
            self.open,
            self.connections,
            self.target,
            c.enter + c.exit,
            c.enter,
            c.exit,
            self.matched,
            self.unmatched,
            self.lost
        );
        if self.matched > 0 {
            let [p50, _, p99, _, max] = self.latency_us;
            println!("fence event latency µs (AT reply → event): p50 {p50:.1}  p99 {p99:.1}  max {max:.1}");
        }
    }
}

/// The fences of a run: `count` of them at random points of the area (the plan's location
/// without one), ids `PREFIX-fence-<i>`.
fn place(plan: &Plan, count: u64, km: &str) -> Vec<Fence> {
    (0..count)
        .map(|i| {
            let (lat, lon) = match &plan.area {
                Some(area) => {
                    let r = mix(0xFE7C_E000 ^ i);
                    area.point(fraction(r), fraction(mix(r)))
                }
                None => plan.center,
            };
            let mut location = Vec::new();
            write_iso6709(lat, lon, &mut location);
            let mut id = plan.prefix.clone();
            id.extend_from_slice(format!("-fence-{i}").as_bytes());
            Fence {
                id,
                location,
                radius_km: km.as_bytes().to_vec(),
            }
        })
        .collect()
}

/// Where the fences go: `--fence-server`, `--fence-to`, or the first target.
fn fence_target(g: &Global, a: &LoadArgs, targets: &[Target]) -> Result<Target, Failure> {
    if let Some(addr) = &a.fence_server {
        return Ok(Target::address(addr));
    }
    if let Some(name) = &a.fence_to {
        let mut t = crate::config::targets(&[], std::slice::from_ref(name), g.config.as_deref())?;
        return Ok(t.remove(0));
    }
    Ok(targets[0].clone())
}

/// One subscriber connection with its fences acknowledged.
struct Subscriber {
    stream: TcpStream,
    /// Bytes read after the acknowledgements.
    rest: Vec<u8>,
}

/// Reads lines from `stream` into `buf` until `f` says stop; `Err` on a closed or failed
/// connection or a timeout.
async fn read_lines(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    timeout: Duration,
    mut f: impl FnMut(&[u8]) -> Result<bool, Failure>,
) -> Result<(), Failure> {
    loop {
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + nl];
            start += nl + 1;
            if !f(line)? {
                buf.drain(..start);
                return Ok(());
            }
        }
        buf.drain(..start);
        buf.reserve(8192);
        match tokio::time::timeout(timeout, stream.read_buf(buf)).await {
            Ok(Ok(0)) => return Err(Failure::net("the fence server closed the connection")),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(Failure::net(format!("reading from the fence server: {e}"))),
            Err(_) => {
                return Err(Failure::net(format!(
                    "the fence server acknowledged no fence within {timeout:?}"
                )))
            }
        }
    }
}

/// Opens one connection and makes `fences` on it, each acknowledged.
async fn subscribe(addr: &str, fences: &[Fence], timeout: Duration) -> Result<Subscriber, Failure> {
    let mut stream = crate::conn::connect(addr, timeout).await?;
    let mut out = Vec::new();
    for f in fences {
        f.write_request(&mut out);
    }
    match tokio::time::timeout(timeout, stream.write_all(&out)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Failure::net(format!("writing to {addr}: {e}"))),
        Err(_) => return Err(Failure::net(format!("writing to {addr} timed out"))),
    }
    let mut buf = Vec::new();
    let mut next = 0;
    read_lines(&mut stream, &mut buf, timeout, |line| {
        match proto::parse(line) {
            // Events for the fences already made are not this run's yet.
            Ok(Line::Event { .. }) => {}
            Ok(Line::Fenced(l)) if fences[next].is_ack(&l) => next += 1,
            Ok(Line::Invalid(echo)) => {
                return Err(Failure {
                    code: EXIT_INVALID,
                    message: format!(
                        "the fence server {addr} answered `? {}`: it does not support FENCE \
                         (or the fences are over its limits)",
                        String::from_utf8_lossy(&echo)
                    ),
                })
            }
            _ => {
                return Err(Failure::net(format!(
                    "malformed reply from the fence server {addr}: {:?}",
                    String::from_utf8_lossy(line)
                )))
            }
        }
        Ok(next < fences.len())
    })
    .await?;
    Ok(Subscriber { stream, rest: buf })
}

/// The fences of a run, open and read.
pub(super) struct Fences {
    open: u64,
    target: String,
    readers: Vec<tokio::task::JoinHandle<Counts>>,
    stop: Arc<AtomicBool>,
    acks: Arc<Acks>,
}

/// Opens the fences of `--fences` (nothing without it) and starts reading their events.
pub(super) async fn open(
    g: &Global,
    a: &LoadArgs,
    plan: &Arc<Plan>,
    targets: &[Target],
    acks: &Arc<Acks>,
) -> Result<Option<Fences>, Failure> {
    if a.fences == 0 {
        return Ok(None);
    }
    let target = fence_target(g, a, targets)?;
    let fences = place(plan, a.fences, &a.fence_km);
    let per = usize::try_from(a.fences_per_conn).unwrap_or(usize::MAX);
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for chunk in fences.chunks(per) {
        let sub = subscribe(&target.addr, chunk, g.timeout).await?;
        let (stop, acks, plan) = (Arc::clone(&stop), Arc::clone(acks), Arc::clone(plan));
        readers.push(tokio::spawn(read_events(sub, stop, acks, plan)));
    }
    Ok(Some(Fences {
        open: a.fences,
        target: target.label,
        readers,
        stop,
        acks: Arc::clone(acks),
    }))
}

/// The fresh IAMAT an event reports: its number, if the client is one of this run's.
fn number_of(plan: &Plan, record: &herd_core::Record) -> Option<u64> {
    let client = record.client();
    let rest = client.strip_prefix(plan.prefix.as_slice())?;
    if rest.first() != Some(&b'-') {
        return None;
    }
    let n = record.time().as_nanos() - i128::try_from(plan.base_nanos).ok()?;
    u64::try_from(n).ok().filter(|&n| n > 0)
}

/// Reads one subscriber's events until the run is over (or the server closes it).
async fn read_events(
    mut sub: Subscriber,
    stop: Arc<AtomicBool>,
    acks: Arc<Acks>,
    plan: Arc<Plan>,
) -> Counts {
    let mut counts = Counts::default();
    let mut buf = std::mem::take(&mut sub.rest);
    let handle = |line: &[u8], counts: &mut Counts| {
        let now = Instant::now();
        match proto::parse(line) {
            Ok(Line::Event {
                crossing, record, ..
            }) => {
                match crossing {
                    Crossing::Enter => counts.enter += 1,
                    Crossing::Exit => counts.exit += 1,
                }
                match number_of(&plan, &record) {
                    Some(n) => acks.event(n, now),
                    None => counts.foreign += 1,
                }
            }
            _ => counts.unexpected += 1,
        }
    };
    loop {
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
            handle(&buf[start..start + nl], &mut counts);
            start += nl + 1;
        }
        buf.drain(..start);
        if stop.load(Ordering::Relaxed) {
            return counts;
        }
        buf.reserve(8192);
        match tokio::time::timeout(Duration::from_millis(50), sub.stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                counts.lost = true;
                return counts;
            }
            Ok(Ok(_)) | Err(_) => {}
        }
    }
}

impl Fences {
    /// Lets late events arrive, stops the readers and sums up.
    pub(super) async fn finish(self) -> FenceReport {
        tokio::time::sleep(GRACE).await;
        self.stop.store(true, Ordering::Relaxed);
        let connections = self.readers.len();
        let (mut counts, mut lost) = (Counts::default(), 0);
        for r in self.readers {
            let c = r.await.unwrap_or_default();
            counts.enter += c.enter;
            counts.exit += c.exit;
            counts.foreign += c.foreign;
            counts.unexpected += c.unexpected;
            lost += usize::from(c.lost);
        }
        let mut t = self.acks.lock();
        let now = self.acks.ns(Instant::now());
        Acks::sweep(&mut t, now, true);
        FenceReport {
            open: self.open,
            connections,
            target: self.target,
            counts,
            lost,
            matched: t.matched,
            before_ack: t.before_ack,
            unmatched: t.unmatched,
            latency_us: quantiles_us(&t.latency),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_match_acknowledgements_either_way_round() {
        let t0 = Instant::now();
        let acks = Acks::new(t0);
        let ms = |m: u64| t0 + Duration::from_millis(m);
        acks.record(&[(7, ms(10))]);
        acks.event(7, ms(13));
        // Read before its acknowledgement: matched once it comes, at 0.
        acks.event(8, ms(20));
        acks.record(&[(8, ms(21))]);
        acks.event(9, ms(30));
        let mut t = acks.lock();
        Acks::sweep(&mut t, acks.ns(ms(40)), true);
        assert_eq!((t.matched, t.before_ack, t.unmatched), (2, 1, 1));
        assert_eq!(t.latency.len(), 2);
        let p = t.latency.max();
        assert!((2_990_000..=3_010_000).contains(&p), "{p}");
    }

    #[test]
    fn old_acknowledgements_are_forgotten() {
        let t0 = Instant::now();
        let acks = Acks::new(t0);
        acks.record(&[(1, t0), (2, t0 + Duration::from_secs(9))]);
        let mut t = acks.lock();
        Acks::sweep(&mut t, acks.ns(t0 + Duration::from_secs(12)), false);
        assert_eq!(t.acked.len(), 1);
        assert!(t.acked.contains_key(&2));
    }
}
