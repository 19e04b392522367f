//! The workers: one per connection (pipelined) or per concurrent client (classic), each
//! writing its generator's requests and counting the replies, framed in place by what was sent.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::args::Proto;
use super::fences::Acks;
use super::gen::{self, Gen, Sent};
use super::pace::{Pace, Shared};
use super::report::{ErrorKind, Stats};
use super::resp;
use crate::reply::{self, Kind};

/// Largest reply buffered before it is called malformed (a reply echoes at most one line).
const MAX_REPLY: usize = 1 << 20;

/// Pause after a failed connect, so a server that is down is not hammered in a tight loop.
const CONNECT_BACKOFF: Duration = Duration::from_millis(20);

/// The outcome of framing the start of `buf` as the reply to a request of kind `expect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framed {
    /// More bytes are needed.
    Partial,
    /// A whole reply of this many bytes; `None` when it is fine, else the error kind.
    Reply(usize, Option<ErrorKind>),
}

/// Frames with [`reply::frame`] (or [`resp::frame`]), then counts by the reply's kind.
fn frame(proto: &Proto, buf: &[u8], sent: Sent) -> Framed {
    let framed = match proto {
        Proto::Herd => reply::frame(buf, sent.expect),
        Proto::Resp(_) => resp::frame(buf),
    };
    match framed {
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

/// Counts one reply to `sent`, sent at `at`, complete at `now`; a fresh IAMAT's
/// acknowledgement is noted in `acked` (for matching fence events to it).
fn count(
    stats: &mut Stats,
    sent: Sent,
    at: Instant,
    now: Instant,
    error: Option<ErrorKind>,
    acked: &mut Vec<(u64, Instant)>,
) {
    match error {
        None => {
            let ns = u64::try_from((now - at).as_nanos()).unwrap_or(u64::MAX);
            stats.ok_reply(sent.kind, ns);
            if sent.kind == gen::Kind::Iamat && sent.n > 0 {
                acked.push((sent.n, now));
            }
        }
        Some(kind) => stats.error(kind, 1),
    }
}

/// Counts the whole replies at the start of `input` against the oldest requests in flight
/// (latency up to now) and drops them from `input`.
fn settle(
    worker: &Worker,
    input: &mut Vec<u8>,
    inflight: &mut VecDeque<(Sent, Instant)>,
    stats: &mut Stats,
    acked: &mut Vec<(u64, Instant)>,
) -> Result<(), ErrorKind> {
    let now = Instant::now();
    let mut pos = 0;
    let mut done = 0;
    while let Some(&(sent, at)) = inflight.front() {
        let Framed::Reply(len, error) = frame(&worker.proto, &input[pos..], sent) else {
            break;
        };
        pos += len;
        done += 1;
        inflight.pop_front();
        count(stats, sent, at, now, error, acked);
    }
    input.drain(..pos);
    worker.shared.done.fetch_add(done, Ordering::Relaxed);
    if let Some(acks) = &worker.acks {
        acks.record(acked);
    }
    acked.clear();
    if input.len() > MAX_REPLY {
        return Err(ErrorKind::Malformed);
    }
    Ok(())
}

/// A worker's fixed inputs.
#[derive(Debug, Clone)]
pub(super) struct Worker {
    pub(super) addr: Arc<str>,
    pub(super) shared: Arc<Shared>,
    pub(super) timeout: Duration,
    pub(super) depth: usize,
    /// Set under `--rate`.
    pub(super) pace: Option<Pace>,
    /// The protocol spoken.
    pub(super) proto: Arc<Proto>,
    /// Where fresh IAMATs' acknowledgements go, under `--fences`.
    pub(super) acks: Option<Arc<Acks>>,
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
    pub(super) async fn pipelined(self, mut gen: Gen) -> Stats {
        let mut stats = Stats::new();
        let mut out = Vec::with_capacity(self.depth * 128);
        let mut input = Vec::with_capacity(64 * 1024);
        let mut inflight: VecDeque<(Sent, Instant)> = VecDeque::with_capacity(self.depth);
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
        inflight: &mut VecDeque<(Sent, Instant)>,
        issued: &mut u64,
    ) -> Result<(), ErrorKind> {
        let (mut rd, mut wr) = stream.split();
        let mut acked = Vec::with_capacity(self.depth);
        loop {
            if self.pace.is_some() {
                // Paced: take the replies that are already here, at this turn, instead of
                // waking up for each one as it comes (one wake-up per connection per turn).
                reserve_input(input);
                match rd.try_read_buf(input) {
                    Ok(0) => return Err(ErrorKind::Closed),
                    Ok(_) => settle(self, input, inflight, stats, &mut acked)?,
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
            settle(self, input, inflight, stats, &mut acked)?;
        }
    }

    /// Classic: connect, one request, half-close, read to the end; repeat.
    pub(super) async fn classic(self, mut gen: Gen) -> Stats {
        let mut stats = Stats::new();
        let mut out = Vec::with_capacity(256);
        let mut input = Vec::with_capacity(16 * 1024);
        let mut issued = 0u64;
        let mut acked = Vec::with_capacity(1);
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
            let sent = gen.write(&mut out);
            let result = match self.connect(false).await {
                Ok(stream) => self.one_shot(stream, &out, &mut input).await,
                Err(kind) => Err(kind),
            };
            self.shared.done.fetch_add(1, Ordering::Relaxed);
            let error = match result {
                Err(kind) => Some(kind),
                Ok(()) => match frame(&self.proto, &input, sent) {
                    Framed::Reply(len, error) if len == input.len() => error,
                    Framed::Reply(..) | Framed::Partial => Some(ErrorKind::Malformed),
                },
            };
            count(&mut stats, sent, started, Instant::now(), error, &mut acked);
            if let Some(acks) = &self.acks {
                acks.record(&acked);
            }
            acked.clear();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::Expect;

    fn sent(expect: Expect) -> Sent {
        Sent {
            expect,
            kind: gen::Kind::Iamat,
            n: 0,
        }
    }

    #[test]
    fn framing_follows_the_request_kind() {
        let herd = |b: &[u8], e| frame(&Proto::Herd, b, sent(e));
        assert_eq!(herd(b"AT A +0.0", Expect::Line), Framed::Partial);
        assert_eq!(herd(b"AT x\nAT y\n", Expect::Line), Framed::Reply(5, None));
        assert_eq!(
            herd(b"? WHATSAT x 1 1\nAT", Expect::Places),
            Framed::Reply(16, Some(ErrorKind::Invalid))
        );
        assert_eq!(herd(b"AT x\n{\n}\n", Expect::Places), Framed::Partial);
        assert_eq!(
            herd(b"AT x\n{\n}\n\nAT", Expect::Places),
            Framed::Reply(10, None)
        );
        assert_eq!(
            herd(b"HI\n", Expect::Line),
            Framed::Reply(3, Some(ErrorKind::Malformed))
        );
        let point = Expect::Nearby { subject: false };
        assert_eq!(herd(b"{\"count\":0}\n\nAT", point), Framed::Reply(13, None));
        let resp = Proto::Resp(b"k".to_vec());
        assert_eq!(
            frame(&resp, b"-ERR x\r\n", sent(Expect::Line)),
            Framed::Reply(8, Some(ErrorKind::Invalid))
        );
        assert_eq!(
            frame(&resp, b":1\r\n", sent(Expect::Line)),
            Framed::Reply(4, None)
        );
        assert_eq!(frame(&resp, b":1", sent(Expect::Line)), Framed::Partial);
    }
}
