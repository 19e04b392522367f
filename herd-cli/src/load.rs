//! `load`: the benchmark client.
//!
//! Workers (one per connection, or per concurrent client in classic mode) are spread over the
//! targets round-robin. Each keeps its buffers for the whole run and writes requests with
//! herd-core's formatting; replies are framed by what was sent (one line, or up to the empty
//! line of a WHATSAT reply) and classified by their first bytes (`AT ` or `? `) without
//! allocating. Latencies go into a per-worker HDR histogram, merged at the end.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use herd_core::protocol::{write_iamat, write_whatsat};
use herd_core::{ClientId, Location, MaxItems, RadiusKm, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{Herd, Target};
use crate::conn::Conn;
use crate::error::{Failure, EXIT_INVALID, EXIT_NET};
use crate::reply::{self, Expect, Kind};
use crate::util::{now_nanos, write_posix, write_u128};
use crate::Global;

/// Largest reply buffered before it is called malformed (a reply echoes at most one line).
const MAX_REPLY: usize = 1 << 20;
/// Pause after a failed connect, so a server that is down is not hammered in a tight loop.
const CONNECT_BACKOFF: Duration = Duration::from_millis(20);
/// Run length when neither `--duration` nor `--requests` is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// How requests travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// Connect, send one request, half-close, read to the end: the assignment's own client.
    Classic,
    /// Persistent connections, each with up to `--depth` requests in flight.
    Pipelined,
}

/// Arguments of `load`.
#[derive(Debug, Args)]
pub(crate) struct LoadArgs {
    /// classic (a connection per request) or pipelined (persistent connections).
    #[arg(long, value_enum, default_value = "pipelined")]
    mode: Mode,
    /// Connections (pipelined) or concurrent clients (classic).
    #[arg(short = 'c', long, default_value_t = 64)]
    connections: usize,
    /// Requests in flight per connection (pipelined).
    #[arg(short = 'd', long, default_value_t = 16)]
    depth: usize,
    /// Run for this long (default 10s unless --requests is given).
    #[arg(long, value_parser = crate::util::parse_duration, conflicts_with = "requests")]
    duration: Option<Duration>,
    /// Send this many requests in all.
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Size K of the client id pool (the store grows to K clients).
    #[arg(short = 'k', long, default_value_t = 1000)]
    clients: u64,
    /// Share of WHATSAT among requests, 0 to 1 (the rest are IAMAT).
    #[arg(long, default_value_t = 0.0)]
    whatsat_ratio: f64,
    /// WHATSAT radius in km.
    #[arg(long, default_value = "1")]
    radius: String,
    /// WHATSAT max items.
    #[arg(long, default_value = "1")]
    max_items: String,
    /// Every IAMAT carries a new, increasing client time, so each is stored and flooded
    /// (each connection then owns its own clients, which needs --clients ≥ --connections).
    #[arg(long)]
    fresh: bool,
    /// Client ids are PREFIX-<n>.
    #[arg(long, default_value = "load")]
    prefix: String,
    /// Location sent in every IAMAT.
    #[arg(
        long,
        allow_hyphen_values = true,
        default_value = "+34.068930-118.445127"
    )]
    location: String,
    /// Spread over every server of the config.
    #[arg(long, conflicts_with = "echo_server")]
    all: bool,
    /// Run a trivial in-process server and load it (measures the load generator itself).
    #[arg(long)]
    echo_server: bool,
    /// Skip the warm-up (one IAMAT per client per target before a run with WHATSATs).
    #[arg(long)]
    no_warmup: bool,
    /// Runtime worker threads (all cores by default; 1 runs everything on the main thread).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// Pace the run at N requests/s in all, spread evenly over the connections (each sends
    /// every connections/N s, their turns interleaved); a connection that falls behind
    /// catches up as fast as --depth allows. A paced connection takes its replies at its
    /// next turn (no wake-up per reply), so its latency figures are high by up to one turn.
    /// Without it, every connection sends as fast as replies come back.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
}

/// When one worker's requests are due under `--rate`: the k-th (from 0) at
/// `first + k × every`. Worker i of c starts i/N s after the run, every c/N s, so the
/// workers' turns interleave into one even stream of N requests/s.
#[derive(Debug, Clone, Copy)]
struct Pace {
    first: Instant,
    /// Seconds between two requests of this worker.
    every: f64,
}

impl Pace {
    /// Longest single sleep while waiting for a turn, so a stop (Ctrl-C) is seen promptly.
    const NAP: Duration = Duration::from_millis(100);

    fn new(started: Instant, rate: u64, worker: usize, workers: usize) -> Self {
        let rate = rate as f64;
        Self {
            first: started + Duration::from_secs_f64(worker as f64 / rate),
            every: workers as f64 / rate,
        }
    }

    /// How many of this worker's requests are due at `now` (counting from the first).
    fn due(&self, now: Instant) -> u64 {
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
    async fn wait_turn(&self, k: u64, shared: &Shared) {
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

/// Kinds of failed requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorKind {
    /// The server answered `? `.
    Invalid,
    /// A reply neither `AT ` nor `? `, or too long.
    Malformed,
    /// The connection could not be made.
    Connect,
    /// A wait exceeded `--timeout`.
    Timeout,
    /// The server closed with requests unanswered.
    Closed,
    /// A read or write failed.
    Io,
}

const KINDS: [(ErrorKind, &str); 6] = [
    (ErrorKind::Invalid, "invalid"),
    (ErrorKind::Malformed, "malformed"),
    (ErrorKind::Connect, "connect"),
    (ErrorKind::Timeout, "timeout"),
    (ErrorKind::Closed, "closed"),
    (ErrorKind::Io, "io"),
];

/// What one worker counted.
#[derive(Debug)]
struct Stats {
    ok: u64,
    errors: [u64; 6],
    latency: Histogram<u64>,
}

impl Stats {
    fn new() -> Self {
        Self {
            ok: 0,
            errors: [0; 6],
            // Nanoseconds from 1 ns to 1 hour at three significant figures: fixed bounds, so
            // creating it cannot fail.
            latency: Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
                .expect("static histogram bounds are valid"),
        }
    }

    fn error(&mut self, kind: ErrorKind, count: u64) {
        let i = KINDS.iter().position(|(k, _)| *k == kind).unwrap_or(0);
        self.errors[i] += count;
    }

    fn merge(&mut self, other: &Stats) {
        self.ok += other.ok;
        for (a, b) in self.errors.iter_mut().zip(other.errors) {
            *a += b;
        }
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
    }

    fn errors_total(&self) -> u64 {
        self.errors.iter().sum()
    }
}

/// What every worker shares: the budget, the stop flag and the progress counter.
#[derive(Debug)]
struct Shared {
    limit: Option<u64>,
    issued: AtomicU64,
    deadline: Option<Instant>,
    stop: AtomicBool,
    done: AtomicU64,
}

impl Shared {
    /// How many of `want` requests may still be issued.
    fn take(&self, want: usize) -> usize {
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

    fn more(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
            && self.deadline.is_none_or(|d| Instant::now() < d)
            && self
                .limit
                .is_none_or(|l| self.issued.load(Ordering::Relaxed) < l)
    }
}

/// Everything a request generator needs, shared by the workers.
#[derive(Debug)]
struct Plan {
    prefix: Vec<u8>,
    pool: u64,
    whatsat_per_million: u64,
    location: Vec<u8>,
    fixed_time: Vec<u8>,
    base_nanos: u128,
    fresh: bool,
    radius: String,
    max: MaxItems,
}

/// One worker's request generator: client ids, times and request kinds.
#[derive(Debug)]
struct Gen {
    plan: Arc<Plan>,
    worker: u64,
    workers: u64,
    rng: u64,
    sent: u128,
    id: Vec<u8>,
    time: Vec<u8>,
}

impl Gen {
    fn new(plan: Arc<Plan>, worker: u64, workers: u64) -> Self {
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
    fn write(&mut self, out: &mut Vec<u8>) -> Expect {
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

/// The outcome of framing the start of `buf` as the reply to a request of kind `expect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framed {
    /// More bytes are needed.
    Partial,
    /// A whole reply of this many bytes; `None` when it is fine, else the error kind.
    Reply(usize, Option<ErrorKind>),
}

/// Frames with [`reply::frame`], then counts by the reply's kind.
fn frame(buf: &[u8], expect: Expect) -> Framed {
    match reply::frame(buf, expect) {
        None => Framed::Partial,
        Some((len, Kind::At)) => Framed::Reply(len, None),
        Some((len, Kind::Invalid)) => Framed::Reply(len, Some(ErrorKind::Invalid)),
        Some((len, Kind::Malformed)) => Framed::Reply(len, Some(ErrorKind::Malformed)),
    }
}

/// Makes room in `input` for the next read.
fn reserve_input(input: &mut Vec<u8>) {
    if input.capacity() - input.len() < 4096 {
        input.reserve(16 * 1024);
    }
}

/// Counts the whole replies at the start of `input` against the oldest requests in flight
/// (latency up to now) and drops them from `input`.
fn settle(
    input: &mut Vec<u8>,
    inflight: &mut VecDeque<(Expect, Instant)>,
    stats: &mut Stats,
    shared: &Shared,
) -> Result<(), ErrorKind> {
    let now = Instant::now();
    let mut pos = 0;
    let mut done = 0;
    while let Some(&(expect, sent)) = inflight.front() {
        let Framed::Reply(len, error) = frame(&input[pos..], expect) else {
            break;
        };
        pos += len;
        done += 1;
        inflight.pop_front();
        match error {
            None => {
                stats.ok += 1;
                let ns = u64::try_from((now - sent).as_nanos()).unwrap_or(u64::MAX);
                stats.latency.saturating_record(ns.max(1));
            }
            Some(kind) => stats.error(kind, 1),
        }
    }
    input.drain(..pos);
    shared.done.fetch_add(done, Ordering::Relaxed);
    if input.len() > MAX_REPLY {
        return Err(ErrorKind::Malformed);
    }
    Ok(())
}

/// A worker's fixed inputs.
#[derive(Debug, Clone)]
struct Worker {
    addr: Arc<str>,
    shared: Arc<Shared>,
    timeout: Duration,
    depth: usize,
    /// Set under `--rate`.
    pace: Option<Pace>,
}

impl Worker {
    /// Connects; `nodelay` sets TCP_NODELAY (a classic connection writes once and
    /// half-closes, which Nagle's algorithm never holds back, so it saves the system call).
    async fn connect(&self, nodelay: bool) -> Result<TcpStream, ErrorKind> {
        match tokio::time::timeout(self.timeout, connect_spread(&self.addr)).await {
            Ok(Ok(s)) => {
                if nodelay {
                    let _ = s.set_nodelay(true);
                }
                Ok(s)
            }
            Ok(Err(_)) => {
                tokio::time::sleep(CONNECT_BACKOFF).await;
                Err(ErrorKind::Connect)
            }
            Err(_) => Err(ErrorKind::Timeout),
        }
    }

    /// Pipelined: refill to `depth` in flight, write, read what came, repeat.
    async fn pipelined(self, mut gen: Gen) -> Stats {
        let mut stats = Stats::new();
        let mut out = Vec::with_capacity(self.depth * 128);
        let mut input = Vec::with_capacity(64 * 1024);
        let mut inflight: VecDeque<(Expect, Instant)> = VecDeque::with_capacity(self.depth);
        // Requests this worker issued (for --rate), over all its connections.
        let mut issued = 0u64;
        while self.shared.more() {
            let mut stream = match self.connect(true).await {
                Ok(s) => s,
                // A failed connect uses up one request, so a count-bounded run against a
                // server that is down ends.
                Err(kind) => {
                    if self.shared.take(1) == 1 {
                        issued += 1;
                        stats.error(kind, 1);
                    }
                    continue;
                }
            };
            input.clear();
            let lost = self
                .session(
                    &mut stream,
                    &mut gen,
                    &mut stats,
                    &mut out,
                    &mut input,
                    &mut inflight,
                    &mut issued,
                )
                .await;
            if let Err(kind) = lost {
                stats.error(kind, u64::try_from(inflight.len()).unwrap_or(0));
                inflight.clear();
            } else {
                break;
            }
        }
        stats
    }

    /// One connection's life; `Err` when it broke with the requests still in `inflight`.
    #[allow(clippy::too_many_arguments)]
    async fn session(
        &self,
        stream: &mut TcpStream,
        gen: &mut Gen,
        stats: &mut Stats,
        out: &mut Vec<u8>,
        input: &mut Vec<u8>,
        inflight: &mut VecDeque<(Expect, Instant)>,
        issued: &mut u64,
    ) -> Result<(), ErrorKind> {
        let (mut rd, mut wr) = stream.split();
        loop {
            if self.pace.is_some() {
                // Paced: take the replies that are already here, at this turn, instead of
                // waking up for each one as it comes (one wake-up per connection per turn).
                reserve_input(input);
                match rd.try_read_buf(input) {
                    Ok(0) => return Err(ErrorKind::Closed),
                    Ok(_) => settle(input, inflight, stats, &self.shared)?,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return Err(ErrorKind::Io),
                }
            }
            let room = self.depth - inflight.len();
            let want = match &self.pace {
                Some(p) => {
                    let due = p.due(Instant::now()).saturating_sub(*issued);
                    room.min(usize::try_from(due).unwrap_or(usize::MAX))
                }
                None => room,
            };
            let n = self.shared.take(want);
            *issued += u64::try_from(n).unwrap_or(0);
            if n > 0 {
                let sent = Instant::now();
                out.clear();
                for _ in 0..n {
                    inflight.push_back((gen.write(out), sent));
                }
                match tokio::time::timeout(self.timeout, wr.write_all(out)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(ErrorKind::Io),
                    Err(_) => return Err(ErrorKind::Timeout),
                }
            }
            if let Some(p) = &self.pace {
                if inflight.len() < self.depth && self.shared.more() {
                    // Room for the next turn: sleep until it; the replies are taken then.
                    if let Some(&(_, oldest)) = inflight.front() {
                        if oldest.elapsed() > self.timeout {
                            return Err(ErrorKind::Timeout);
                        }
                    }
                    p.wait_turn(*issued, &self.shared).await;
                    continue;
                }
            }
            if inflight.is_empty() {
                return Ok(());
            }
            // Unpaced, a full window, or the run is over: wait for replies.
            reserve_input(input);
            match tokio::time::timeout(self.timeout, rd.read_buf(input)).await {
                Ok(Ok(0)) => return Err(ErrorKind::Closed),
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err(ErrorKind::Io),
                Err(_) => return Err(ErrorKind::Timeout),
            }
            settle(input, inflight, stats, &self.shared)?;
        }
    }

    /// Classic: connect, one request, half-close, read to the end; repeat.
    async fn classic(self, mut gen: Gen) -> Stats {
        let mut stats = Stats::new();
        let mut out = Vec::with_capacity(256);
        let mut input = Vec::with_capacity(16 * 1024);
        let mut issued = 0u64;
        loop {
            if let Some(p) = &self.pace {
                p.wait_turn(issued, &self.shared).await;
            }
            if self.shared.take(1) != 1 {
                break;
            }
            issued += 1;
            let started = Instant::now();
            out.clear();
            let expect = gen.write(&mut out);
            let result = match self.connect(false).await {
                Ok(stream) => self.one_shot(stream, &out, &mut input).await,
                Err(kind) => Err(kind),
            };
            self.shared.done.fetch_add(1, Ordering::Relaxed);
            let error = match result {
                Err(kind) => Some(kind),
                Ok(()) => match frame(&input, expect) {
                    Framed::Reply(len, error) if len == input.len() => error,
                    Framed::Reply(..) | Framed::Partial => Some(ErrorKind::Malformed),
                },
            };
            match error {
                None => {
                    stats.ok += 1;
                    let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    stats.latency.saturating_record(ns.max(1));
                }
                Some(kind) => stats.error(kind, 1),
            }
        }
        stats
    }

    async fn one_shot(
        &self,
        mut stream: TcpStream,
        request: &[u8],
        input: &mut Vec<u8>,
    ) -> Result<(), ErrorKind> {
        input.clear();
        let t = self.timeout;
        let io = |r: Result<std::io::Result<()>, _>| match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ErrorKind::Io),
            Err(_) => Err(ErrorKind::Timeout),
        };
        io(tokio::time::timeout(t, stream.write_all(request)).await)?;
        io(tokio::time::timeout(t, stream.shutdown()).await)?;
        loop {
            if input.len() > MAX_REPLY {
                return Err(ErrorKind::Malformed);
            }
            input.reserve(4096);
            match tokio::time::timeout(t, stream.read_buf(input)).await {
                Ok(Ok(0)) if input.is_empty() => return Err(ErrorKind::Closed),
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err(ErrorKind::Io),
                Err(_) => return Err(ErrorKind::Timeout),
            }
        }
    }
}

/// Source addresses used round-robin for connections to a loopback target.
const LOOPBACK_SOURCES: u32 = 64;

/// Connects to `addr`; to an IPv4 loopback target, from one of several loopback source
/// addresses in turn. One source address has about 28k ephemeral ports, all held in
/// TIME_WAIT within seconds of classic load (the client closes first), and the kernel then
/// spends most of each connect searching for a reusable port: spreading the sources keeps
/// the load generator from being the bottleneck.
async fn connect_spread(addr: &str) -> std::io::Result<TcpStream> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let Ok(std::net::SocketAddr::V4(target)) = addr.parse::<std::net::SocketAddr>() else {
        return TcpStream::connect(addr).await;
    };
    if !target.ip().is_loopback() {
        return TcpStream::connect(addr).await;
    }
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % LOOPBACK_SOURCES;
    let source = std::net::Ipv4Addr::new(127, 0, 1, u8::try_from(n + 1).unwrap_or(1));
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from((source, 0)))?;
    socket.connect(std::net::SocketAddr::V4(target)).await
}

/// Validated settings of a run.
fn plan(a: &LoadArgs) -> Result<Plan, Failure> {
    if a.connections == 0 || a.depth == 0 || a.clients == 0 {
        return Err(Failure::usage(
            "--connections, --depth and --clients must be at least 1",
        ));
    }
    if a.fresh && a.clients < u64::try_from(a.connections).unwrap_or(u64::MAX) {
        return Err(Failure::usage(
            "--fresh gives each connection its own clients: --clients must be at least --connections",
        ));
    }
    if !(0.0..=1.0).contains(&a.whatsat_ratio) {
        return Err(Failure::usage("--whatsat-ratio must be between 0 and 1"));
    }
    let prefix = format!("{}-0", a.prefix);
    ClientId::new(prefix.as_bytes())
        .map_err(|_| Failure::usage(format!("bad --prefix {:?}: no white space", a.prefix)))?;
    Location::parse(a.location.as_bytes())
        .map_err(|_| Failure::usage(format!("bad --location {:?}", a.location)))?;
    RadiusKm::parse(a.radius.as_bytes()).map_err(|_| {
        Failure::usage(format!(
            "bad --radius {:?}: more than 0, at most 50",
            a.radius
        ))
    })?;
    let max = MaxItems::parse(a.max_items.as_bytes())
        .map_err(|_| Failure::usage(format!("bad --max-items {:?}: 1 to 20", a.max_items)))?;
    let base_nanos = now_nanos();
    let mut fixed_time = Vec::new();
    write_posix(base_nanos, &mut fixed_time);
    Ok(Plan {
        prefix: a.prefix.as_bytes().to_vec(),
        pool: a.clients,
        // A share in [0, 1] times a million fits easily.
        whatsat_per_million: (a.whatsat_ratio * 1e6).round() as u64,
        location: a.location.as_bytes().to_vec(),
        fixed_time,
        base_nanos,
        fresh: a.fresh,
        radius: a.radius.clone(),
        max,
    })
}

async fn resolve(g: &Global, a: &LoadArgs) -> Result<Vec<Target>, Failure> {
    if a.echo_server {
        let name = ServerName::new("Echo").map_err(|_| Failure::usage("bad echo name"))?;
        let addr = crate::echo::spawn("127.0.0.1:0", name).await?;
        return Ok(vec![Target {
            label: format!("echo-server {addr}"),
            addr: addr.to_string(),
        }]);
    }
    if a.all {
        if !g.server.is_empty() || !g.to.is_empty() {
            return Err(Failure::usage(
                "--all takes every server of the config: no --server or --to",
            ));
        }
        let herd = Herd::load(g.config.as_deref())?;
        return Ok(herd
            .servers
            .iter()
            .map(|s| Target {
                label: s.name.to_string(),
                addr: s.addr.clone(),
            })
            .collect());
    }
    crate::config::targets(&g.server, &g.to, g.config.as_deref())
}

/// Before a run with WHATSATs: one IAMAT per client of the pool at each target, so WHATSATs
/// find their client.
async fn warm_up(targets: &[Target], plan: &Plan, timeout: Duration) -> Result<(), Failure> {
    let mut time = Vec::new();
    // A second older than the run's own times, so the run's IAMATs still count as new.
    write_posix(plan.base_nanos.saturating_sub(1_000_000_000), &mut time);
    for target in targets {
        let mut conn = Conn::open(&target.addr, &target.label, timeout).await?;
        let mut out = Vec::new();
        let mut id = Vec::new();
        let mut start = 0;
        while start < plan.pool {
            let end = (start + 256).min(plan.pool);
            out.clear();
            for client in start..end {
                id.clear();
                id.extend_from_slice(&plan.prefix);
                id.push(b'-');
                write_u128(u128::from(client), &mut id);
                write_iamat(&id, &plan.location, &time, &mut out);
            }
            conn.writer.write(&out).await?;
            for _ in start..end {
                conn.reader.reply(Expect::Line).await?;
            }
            start = end;
        }
    }
    Ok(())
}

/// `load`: runs the benchmark and prints the summary.
pub(crate) async fn run(g: &Global, a: LoadArgs) -> Result<u8, Failure> {
    let plan = Arc::new(plan(&a)?);
    let targets = resolve(g, &a).await?;
    if plan.whatsat_per_million > 0 && !a.no_warmup {
        warm_up(&targets, &plan, g.timeout).await?;
    }
    let duration = match (a.duration, a.requests) {
        (Some(d), _) => Some(d),
        (None, Some(_)) => None,
        (None, None) => Some(DEFAULT_DURATION),
    };
    let started = Instant::now();
    let shared = Arc::new(Shared {
        limit: a.requests,
        issued: AtomicU64::new(0),
        deadline: duration.map(|d| started + d),
        stop: AtomicBool::new(false),
        done: AtomicU64::new(0),
    });
    let workers = u64::try_from(a.connections).unwrap_or(u64::MAX);
    let mut handles = Vec::with_capacity(a.connections);
    for i in 0..a.connections {
        let worker = Worker {
            addr: Arc::from(targets[i % targets.len()].addr.as_str()),
            shared: Arc::clone(&shared),
            timeout: g.timeout,
            depth: a.depth,
            pace: a.rate.map(|r| Pace::new(started, r, i, a.connections)),
        };
        let gen = Gen::new(Arc::clone(&plan), u64::try_from(i).unwrap_or(0), workers);
        handles.push(match a.mode {
            Mode::Pipelined => tokio::spawn(worker.pipelined(gen)),
            Mode::Classic => tokio::spawn(worker.classic(gen)),
        });
    }
    let progress = tokio::spawn(progress(Arc::clone(&shared), duration, a.requests, g.json));
    let interrupt = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                shared.stop.store(true, Ordering::Relaxed);
            }
        })
    };
    let mut total = Stats::new();
    for h in handles {
        let stats = h
            .await
            .map_err(|e| Failure::net(format!("a load worker failed: {e}")))?;
        total.merge(&stats);
    }
    let elapsed = started.elapsed();
    interrupt.abort();
    shared.stop.store(true, Ordering::Relaxed);
    let _ = progress.await;
    report(g, &a, &targets, &total, elapsed)
}

async fn progress(
    shared: Arc<Shared>,
    duration: Option<Duration>,
    requests: Option<u64>,
    json: bool,
) {
    if json || !std::io::stderr().is_terminal() {
        return;
    }
    let bar = match (requests, duration) {
        (Some(n), None) => indicatif::ProgressBar::new(n),
        (_, d) => {
            indicatif::ProgressBar::new(d.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0)))
        }
    };
    let template = if requests.is_some() && duration.is_none() {
        "{bar:40} {pos}/{len} replies  {per_sec}  {elapsed_precise}"
    } else {
        "{bar:40} {elapsed_precise}  {msg}"
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while !shared.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let done = shared.done.load(Ordering::Relaxed);
        if requests.is_some() && duration.is_none() {
            bar.set_position(done);
        } else {
            let secs = started.elapsed().as_secs_f64().max(1e-9);
            bar.set_position(u64::try_from(started.elapsed().as_millis()).unwrap_or(0));
            bar.set_message(format!("{done} replies, {:.0}/s", done as f64 / secs));
        }
    }
    bar.finish_and_clear();
}

/// The end-of-run figures.
#[derive(Debug)]
struct Summary<'a> {
    mode: &'static str,
    targets: Vec<&'a str>,
    connections: usize,
    depth: Option<usize>,
    /// `--rate`, if given.
    rate_limit: Option<u64>,
    secs: f64,
    ok: u64,
    errors: Vec<(&'static str, u64)>,
    /// Latency in µs at p50, p90, p99, p99.9 and the maximum.
    latency_us: [f64; 5],
}

impl<'a> Summary<'a> {
    fn new(a: &LoadArgs, targets: &'a [Target], total: &Stats, elapsed: Duration) -> Self {
        let h = &total.latency;
        let us = |v: u64| v as f64 / 1e3;
        Self {
            mode: match a.mode {
                Mode::Classic => "classic",
                Mode::Pipelined => "pipelined",
            },
            targets: targets.iter().map(|t| t.label.as_str()).collect(),
            connections: a.connections,
            depth: (a.mode == Mode::Pipelined).then_some(a.depth),
            rate_limit: a.rate,
            secs: elapsed.as_secs_f64().max(1e-9),
            ok: total.ok,
            errors: KINDS
                .iter()
                .map(|(_, name)| *name)
                .zip(total.errors)
                .collect(),
            latency_us: [
                us(h.value_at_quantile(0.5)),
                us(h.value_at_quantile(0.9)),
                us(h.value_at_quantile(0.99)),
                us(h.value_at_quantile(0.999)),
                us(h.max()),
            ],
        }
    }

    fn rate(&self) -> f64 {
        self.ok as f64 / self.secs
    }

    fn to_json(&self) -> serde_json::Value {
        let errors: serde_json::Map<String, serde_json::Value> = self
            .errors
            .iter()
            .map(|(name, n)| ((*name).to_string(), json!(n)))
            .collect();
        let [p50, p90, p99, p99_9, max] = self.latency_us;
        json!({
            "mode": self.mode,
            "targets": self.targets,
            "connections": self.connections,
            "depth": self.depth,
            "rate_limit": self.rate_limit,
            "elapsed_s": self.secs,
            "ok": self.ok,
            "errors": errors,
            "requests_per_s": self.rate(),
            "latency_us": {"p50": p50, "p90": p90, "p99": p99, "p99_9": p99_9, "max": max},
        })
    }

    fn print_text(&self) {
        let depth = self
            .depth
            .map(|d| format!(", depth {d}"))
            .unwrap_or_default();
        let paced = self
            .rate_limit
            .map(|r| format!(", paced at {r} requests/s"))
            .unwrap_or_default();
        println!(
            "load {} against {}: {} connections{depth}{paced}",
            self.mode,
            self.targets.join(", "),
            self.connections
        );
        println!(
            "{} ok replies in {:.3} s: {:.0} requests/s",
            self.ok,
            self.secs,
            self.rate()
        );
        let errors: Vec<String> = self
            .errors
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        if errors.is_empty() {
            println!("errors: none");
        } else {
            println!("errors: {}", errors.join(", "));
        }
        if self.ok > 0 {
            let [p50, p90, p99, p99_9, max] = self.latency_us;
            println!(
                "latency µs: p50 {p50:.1}  p90 {p90:.1}  p99 {p99:.1}  p99.9 {p99_9:.1}  max {max:.1}"
            );
        }
    }
}

/// Prints the summary; exit 0 when something was answered normally, 1 when every reply was
/// `? `, 2 when nothing was answered.
fn report(
    g: &Global,
    a: &LoadArgs,
    targets: &[Target],
    total: &Stats,
    elapsed: Duration,
) -> Result<u8, Failure> {
    let summary = Summary::new(a, targets, total, elapsed);
    if g.json {
        println!("{}", summary.to_json());
    } else {
        summary.print_text();
    }
    let invalid = total.errors[0];
    if total.ok > 0 || total.errors_total() == 0 {
        Ok(0)
    } else if invalid == total.errors_total() {
        eprintln!("herd-cli: every reply was `? ` (invalid)");
        Ok(EXIT_INVALID)
    } else {
        Err(Failure {
            code: EXIT_NET,
            message: format!("no request was answered ({} failed)", total.errors_total()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_follows_the_request_kind() {
        assert_eq!(frame(b"AT A +0.0", Expect::Line), Framed::Partial);
        assert_eq!(frame(b"AT x\nAT y\n", Expect::Line), Framed::Reply(5, None));
        assert_eq!(
            frame(b"? WHATSAT x 1 1\nAT", Expect::Places),
            Framed::Reply(16, Some(ErrorKind::Invalid))
        );
        assert_eq!(frame(b"AT x\n{\n}\n", Expect::Places), Framed::Partial);
        assert_eq!(
            frame(b"AT x\n{\n}\n\nAT", Expect::Places),
            Framed::Reply(10, None)
        );
        assert_eq!(
            frame(b"HI\n", Expect::Line),
            Framed::Reply(3, Some(ErrorKind::Malformed))
        );
    }

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
