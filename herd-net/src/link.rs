//! Peer links: dialling with back-off, the handshake, and one session's reader and writer.
//!
//! Both ends of a link dial each other, so a returning server is relinked at once; which of
//! two simultaneous sessions is kept is the link table's rule ([`crate::links`]). Every event
//! of a session goes to the [`Driver`]: its handshake's success (`link_up`), its lines
//! (`peer_batch`), its queue taken (`drained`) and its end (`link_down`).
//!
//! Liveness ([`crate::liveness`]): the writer pings when quiet, the reader drops a link that
//! has heard nothing for the peer timeout, and the dialler redials at least every
//! [`BACKOFF_MAX`] while the link is down, starting a new attempt even while an earlier one
//! still hangs (a dial into a black hole), so a healed link is back within that time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future as _;
use std::task::Poll;

use bytes::{Buf as _, BytesMut};
use herd_core::peer::seal::{Opened, Opener, SealError, Sealer, SessionKeys, DEFAULT_MAX_BATCH};
use herd_core::peer::{Acceptor, Dialler, Handshake, HandshakeError, START_TLS};
use herd_core::{PeerError, PeerId, PeerMsg, PeerParseError, ServerName};
use rand::Rng;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::codec::{LineCodec, LineError};
use crate::driver::{Driver, Live, PeerBatchError, Settings, Turn};
use crate::escape::{Clipped, Escaped};
use crate::liveness::{self, Silence};
use crate::queue::{PeerQueue, Take};
use crate::scope::Scoped;
use crate::tls::{certificate_names, peer_server_name, Prefixed};

/// The reading side of a session: plain TCP or TLS.
type PeerRead = Box<dyn AsyncRead + Send + Unpin>;
/// The writing side of a session.
type PeerWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A connection a session can run on, split into its reading and writing sides.
trait IntoHalves: AsyncRead + AsyncWrite + Send + Unpin + 'static + Sized {
    fn into_halves(self) -> (PeerRead, PeerWrite) {
        let (r, w) = tokio::io::split(self);
        (Box::new(r), Box::new(w))
    }
}

impl IntoHalves for TcpStream {
    // Plain TCP splits without the shared lock of `tokio::io::split`.
    fn into_halves(self) -> (PeerRead, PeerWrite) {
        let (r, w) = self.into_split();
        (Box::new(r), Box::new(w))
    }
}

impl IntoHalves for tokio_rustls::client::TlsStream<TcpStream> {}
impl IntoHalves for tokio_rustls::server::TlsStream<Prefixed<TcpStream>> {}

/// First redial delay after a link goes down.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(50);
/// Longest redial delay (before jitter). Attempts start at least this often while a link is
/// down, whether or not the previous one has failed yet, so a returning neighbour or a
/// healed partition is relinked within it (plus one round trip and the reconciliation),
/// however long it lasted: within the 1 s a client may take to see an update elsewhere.
pub const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Longest time a dial plus handshake may take (its connect, and the wait for the peer's
/// reply, are each bounded by the peer timeout as well).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most dial attempts to one neighbour in flight at once.
pub const MAX_DIALS_IN_FLIGHT: usize = 4;

/// Why a link could not be set up or went down.
#[derive(Debug, Error)]
pub enum LinkError {
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// A line over the peer line limit.
    #[error("peer line too long")]
    TooLong,
    /// A malformed peer message, or one that breaks the session's rules (a second digest).
    #[error("bad peer message: {0}")]
    Parse(#[from] PeerError),
    /// The handshake failed (wrong secret, stranger, ...).
    #[error("handshake refused: {0}")]
    Handshake(#[from] HandshakeError),
    /// The handshake took too long.
    #[error("handshake timed out")]
    Timeout,
    /// Nothing was received for the peer timeout (the peer, or the path to it, is gone).
    #[error("nothing received for {} ms", .0.as_millis())]
    Silent(Duration),
    /// This server is shutting down.
    #[error("server shutting down")]
    ShuttingDown,
    /// The outbound queue overflowed (reconciliation repairs the gap on reconnect).
    #[error("peer queue overflowed")]
    Overflow,
    /// The peer is not one of this server's neighbours.
    #[error("not a neighbour")]
    NotNeighbour,
    /// The TLS handshake failed (a certificate not from the herd's CA, expired, ...).
    #[error("tls: {0}")]
    Tls(std::io::Error),
    /// The peer's certificate does not name the server its hello claims to be.
    #[error("certificate does not name {0}")]
    Certificate(ServerName),
    /// This server requires TLS and the peer spoke plain text, or the other way round.
    #[error("{0}")]
    TlsMismatch(&'static str),
    /// A sealed batch failed its check (changed on the way) or was malformed.
    #[error("{0}")]
    Seal(#[from] SealError),
}

impl From<PeerParseError> for LinkError {
    fn from(e: PeerParseError) -> Self {
        Self::Parse(e.into())
    }
}

impl From<LineError> for LinkError {
    fn from(e: LineError) -> Self {
        match e {
            LineError::TooLong { .. } => LinkError::TooLong,
            LineError::Io(e) => LinkError::Io(e),
        }
    }
}

/// Reads one line of the handshake.
async fn read_line<S: AsyncRead + Unpin>(
    stream: &mut S,
    codec: &mut LineCodec,
    buf: &mut BytesMut,
) -> Result<BytesMut, LinkError> {
    loop {
        if let Some(line) = codec.decode(buf)? {
            return Ok(line);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(LinkError::Closed);
        }
    }
}

async fn write_msg<S: AsyncWrite + Unpin>(
    stream: &mut S,
    msg: &Handshake,
) -> Result<(), LinkError> {
    stream.write_all(&msg.to_line()).await?;
    stream.flush().await?;
    Ok(())
}

/// Exponential back-off between dials: doubles per failure up to [`BACKOFF_MAX`], each delay
/// scaled by a random factor in [0.5, 1) so that servers do not redial in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: BACKOFF_INITIAL,
        }
    }
}

impl Backoff {
    /// The delay before the next dial, given a jitter factor in [0, 1); advances the back-off.
    pub fn delay(&mut self, jitter: f64) -> Duration {
        let d = self.next.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }

    /// Back to the shortest delay (after a link came up).
    pub fn reset(&mut self) {
        self.next = BACKOFF_INITIAL;
    }
}

/// Keeps dialling neighbour `peer` whenever its link is down, with back-off and jitter, until
/// `stop` (the server's shutdown, or the neighbour's removal).
///
/// An attempt starts at each back-off delay, and also while earlier ones are still under way
/// once the newest has waited [`BACKOFF_MAX`] (at most [`MAX_DIALS_IN_FLIGHT`] at once): one
/// stuck in a black hole does not hold the next back, and a handshake that is merely slow is
/// not doubled (two sessions dialled the same way replace each other).
pub(crate) async fn dial_loop(
    driver: Arc<Driver>,
    peer: PeerId,
    mut up: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::default();
    let mut failures = 0u32;
    // Dropped when this loop ends: attempts still in flight are aborted with it.
    let mut attempts: JoinSet<Result<(), LinkError>> = JoinSet::new();
    let token = stop;
    let jitter = || rand::thread_rng().gen_range(0.0..1.0);
    // When the next attempt starts: the first one at once.
    let mut next = Instant::now();
    // When the newest attempt in flight started.
    let mut newest = Instant::now();
    loop {
        if *up.borrow_and_update() {
            // Attempts still in flight are left to end by themselves (aborting one just after
            // its AUTH would leave the peer with a session this side never installed); one that
            // succeeds is kept or refused by the link table's rule.
            backoff.reset();
            failures = 0;
            tokio::select! {
                () = token.cancelled() => return,
                r = up.changed() => if r.is_err() { return },
            }
            next = Instant::now() + backoff.delay(jitter());
            continue;
        }
        let start_at = if attempts.is_empty() {
            next
        } else {
            next.max(newest + BACKOFF_MAX)
        };
        let room = attempts.len() < MAX_DIALS_IN_FLIGHT;
        tokio::select! {
            () = token.cancelled() => return,
            r = up.changed() => if r.is_err() { return },
            Some(joined) = attempts.join_next(), if !attempts.is_empty() => {
                let Ok(Err(e)) = joined else { continue };
                failures += 1;
                let name = driver.peer_name(peer);
                if failures == 1 || matches!(e, LinkError::Handshake(_)) {
                    info!(peer = %name, error = %e, "cannot link to peer; retrying with back-off");
                } else {
                    debug!(peer = %name, error = %e, failures, "dial failed");
                }
            }
            () = sleep_until(start_at), if room => {
                let d = driver.clone();
                let attempt = async move {
                    match timeout(HANDSHAKE_TIMEOUT, dial(&d, peer)).await {
                        Ok(r) => r,
                        Err(_) => Err(LinkError::Timeout),
                    }
                };
                attempts.spawn(Scoped::new(driver.spec().log_index, attempt));
                newest = Instant::now();
                next = newest + backoff.delay(jitter());
            }
        }
    }
}

/// Dials `peer`, runs the dialler's side of the handshake (inside TLS when configured) and
/// starts the session.
///
/// The connect and the wait for the peer's reply are each bounded by the peer timeout. The
/// address, limits, secret and TLS are the server's settings as the dial starts.
async fn dial(driver: &Arc<Driver>, peer: PeerId) -> Result<(), LinkError> {
    let settings = driver.settings();
    let addr = settings.peers[peer.0].addr.as_str();
    let silence = liveness::peer_timeout(&settings.limits);
    let mut stream = timeout(silence, TcpStream::connect(addr))
        .await
        .map_err(|_| LinkError::Silent(silence))??;
    stream.set_nodelay(true)?;
    liveness::tune(&stream, &settings.limits)?;
    let remote = stream.peer_addr()?;
    let Some(tls) = settings.tls.clone() else {
        return dial_handshake(driver, &settings, peer, stream, remote).await;
    };
    let name = peer_server_name(driver.peer_name(peer).as_str())
        .map_err(|e| LinkError::Tls(std::io::Error::other(e.to_string())))?;
    let mut start = START_TLS.to_vec();
    start.push(b'\n');
    stream.write_all(&start).await?;
    let stream = timeout(silence, tls.connector().connect(name, stream))
        .await
        .map_err(|_| LinkError::Silent(silence))?
        .map_err(|e| {
            warn!(peer = %driver.peer_name(peer), %remote, error = %e, "peer TLS handshake refused");
            LinkError::Tls(e)
        })?;
    dial_handshake(driver, &settings, peer, stream, remote).await
}

async fn dial_handshake<S: IntoHalves>(
    driver: &Arc<Driver>,
    settings: &Settings,
    peer: PeerId,
    mut stream: S,
    remote: SocketAddr,
) -> Result<(), LinkError> {
    let silence = liveness::peer_timeout(&settings.limits);
    let dialler = Dialler::new(
        driver.name().clone(),
        driver.peer_name(peer),
        driver.epoch(),
        rand::random(),
        settings.secret.clone(),
    );
    write_msg(&mut stream, &dialler.hello()).await?;
    let mut codec = LineCodec::new(settings.limits.max_peer_line());
    let mut buf = BytesMut::with_capacity(4096);
    let line = timeout(silence, read_line(&mut stream, &mut codec, &mut buf))
        .await
        .map_err(|_| LinkError::Silent(silence))??;
    let reply = Handshake::parse(&line)?;
    let (peer_epoch, auth) = dialler.on_reply(&reply).inspect_err(|e| {
        warn!(peer = %driver.peer_name(peer), %remote, error = %e, "peer handshake refused");
    })?;
    write_msg(&mut stream, &auth).await?;
    let keys = sealing(settings, || dialler.session_keys(&reply));
    start_session(driver, peer, stream, codec, buf, peer_epoch, true, keys);
    Ok(())
}

/// The keys to seal a session with: with a secret and without TLS (TLS protects the session
/// by itself).
fn sealing(settings: &Settings, keys: impl FnOnce() -> Option<SessionKeys>) -> Option<SessionKeys> {
    if settings.tls.is_some() {
        None
    } else {
        keys()
    }
}

/// Runs the acceptor's side of the handshake on a connection whose first line is a hello,
/// or the start of TLS (then the hello comes inside it).
pub(crate) async fn accept(
    driver: Arc<Driver>,
    stream: TcpStream,
    addr: SocketAddr,
    first: BytesMut,
    buf: BytesMut,
) {
    let settings = driver.settings();
    if let Err(e) = liveness::tune(&stream, &settings.limits) {
        debug!(%addr, error = %e, "cannot set the peer socket's timeouts");
    }
    let max = settings.limits.log_line_bytes;
    let result = timeout(
        HANDSHAKE_TIMEOUT,
        accept_any(&driver, &settings, stream, &first, buf),
    )
    .await;
    if let Err(e) = result.unwrap_or(Err(LinkError::Timeout)) {
        warn!(%addr, hello = %Clipped::new(&first, max), error = %e, "peer handshake refused");
    }
}

async fn accept_any(
    driver: &Arc<Driver>,
    settings: &Settings,
    mut stream: TcpStream,
    first: &[u8],
    mut buf: BytesMut,
) -> Result<(), LinkError> {
    let tls = settings.tls.clone();
    match (first == START_TLS, tls) {
        (false, None) => {
            let hello = Handshake::parse(first)?;
            let (peer, peer_epoch, codec, keys) =
                accept_handshake(driver, settings, &mut stream, &hello, &mut buf, |_| true).await?;
            start_session(driver, peer, stream, codec, buf, peer_epoch, false, keys);
            Ok(())
        }
        (true, Some(tls)) => {
            let mut stream = tls
                .peer_acceptor()
                .accept(Prefixed::new(buf, stream))
                .await
                .map_err(LinkError::Tls)?;
            let mut codec = LineCodec::new(settings.limits.max_peer_line());
            let mut buf = BytesMut::with_capacity(4096);
            let line = read_line(&mut stream, &mut codec, &mut buf).await?;
            let hello = Handshake::parse(&line)?;
            // rustls checked the chain; the name is the hello's to claim and the certificate's
            // to prove.
            let cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .cloned();
            let names = |who: &ServerName| {
                cert.as_ref()
                    .is_some_and(|c| certificate_names(c, who.as_str()))
            };
            let (peer, peer_epoch, codec, keys) =
                accept_handshake(driver, settings, &mut stream, &hello, &mut buf, names).await?;
            start_session(driver, peer, stream, codec, buf, peer_epoch, false, keys);
            Ok(())
        }
        (false, Some(_)) => {
            let _ = stream.shutdown().await;
            Err(LinkError::TlsMismatch(
                "plain-text peer refused: this herd's links use TLS",
            ))
        }
        (true, None) => {
            let _ = stream.shutdown().await;
            Err(LinkError::TlsMismatch(
                "peer asks for TLS but this server has no TLS configured",
            ))
        }
    }
}

/// The acceptor's side of the handshake: only a neighbour that is not removed is accepted.
async fn accept_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    driver: &Driver,
    settings: &Settings,
    stream: &mut S,
    hello: &Handshake,
    buf: &mut BytesMut,
    certified: impl Fn(&ServerName) -> bool,
) -> Result<(PeerId, u64, LineCodec, Option<SessionKeys>), LinkError> {
    let peers = driver.active_peers();
    let neighbours: Vec<ServerName> = peers.iter().map(|(_, n)| n.clone()).collect();
    let mut acceptor = Acceptor::new(
        driver.name().clone(),
        driver.epoch(),
        rand::random(),
        settings.secret.clone(),
    );
    let (name, peer_epoch, reply) = acceptor.on_hello(hello, &neighbours)?;
    if !certified(&name) {
        return Err(LinkError::Certificate(name));
    }
    let peer = peers
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(p, _)| *p)
        .ok_or(LinkError::NotNeighbour)?;
    write_msg(stream, &reply).await?;
    let mut codec = LineCodec::new(settings.limits.max_peer_line());
    let line = read_line(stream, &mut codec, buf).await?;
    acceptor.on_auth(&Handshake::parse(&line)?)?;
    let keys = sealing(settings, || acceptor.session_keys());
    Ok((peer, peer_epoch, codec, keys))
}

/// Installs a session after its handshake and starts its reader and writer (or closes it, a
/// duplicate of the link's current session). With `keys`, every batch is sealed both ways.
#[allow(clippy::too_many_arguments)]
fn start_session<S: IntoHalves>(
    driver: &Arc<Driver>,
    peer: PeerId,
    stream: S,
    codec: LineCodec,
    buf: BytesMut,
    peer_epoch: u64,
    dialled_by_me: bool,
    keys: Option<SessionKeys>,
) {
    let name = driver.peer_name(peer);
    let Some(Live {
        id,
        queue,
        kill,
        replaced,
    }) = driver.link_up(peer, peer_epoch, dialled_by_me)
    else {
        debug!(peer = %name, dialled = dialled_by_me, "duplicate link session; keeping the current one");
        return;
    };
    if replaced {
        info!(peer = %name, dialled = dialled_by_me, peer_epoch, "peer link up (replaces the previous session)");
    } else {
        info!(peer = %name, dialled = dialled_by_me, peer_epoch, "peer link up");
    }
    let (read, write) = stream.into_halves();
    let max_line = driver.settings().limits.max_peer_line();
    let opener = keys.as_ref().map(|k| Opener::new(k, max_line));
    let sealer = keys.as_ref().map(Sealer::new);
    let writer = SessionTask {
        driver: driver.clone(),
        peer,
        id,
        kill: kill.clone(),
    };
    driver.spawn(async move { writer.write_loop(write, queue, sealer).await });
    let reader = SessionTask {
        driver: driver.clone(),
        peer,
        id,
        kill,
    };
    driver.spawn(async move { reader.read_loop(read, codec, buf, opener).await });
}

/// Polls `read` once for bytes already there (a stalled runtime may have left some unread):
/// `None` when none are.
async fn read_ready(read: &mut PeerRead, buf: &mut BytesMut) -> Option<std::io::Result<usize>> {
    let fut = read.read_buf(buf);
    tokio::pin!(fut);
    std::future::poll_fn(|cx| {
        Poll::Ready(match fut.as_mut().poll(cx) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        })
    })
    .await
}

/// A link's reader that keeps finding bytes to feed the node lets the other tasks run once
/// this long after it last did. A busy link always has bytes waiting, so its reads never
/// return `Pending`, and tokio's budget lets the task go on for some 128 reads of up to
/// 128 KiB, each fed to the node: under a saturating load on shared cores one such poll was
/// measured at up to 1.15 s, in which that worker ran nothing else. The link writers of the
/// process then sat with megabytes queued, their peers dropped the links as silent (nothing
/// received for `peer_timeout`), and the queues that grew meanwhile set off catch-ups. With
/// this turn, polls stay near the turn plus one feed. Yielding after every read instead
/// loses the batching that keeps a busy server fast.
const READER_TURN: Duration = Duration::from_millis(5);

/// Goes to the back of the worker's run queue once, so that the tasks ready now run first.
/// Not `tokio::task::yield_now`, which defers the task until the worker next polls its I/O
/// driver, which a worker that always has tasks ready does only every 61 polls.
fn requeue() -> impl std::future::Future<Output = ()> {
    let mut woken = false;
    std::future::poll_fn(move |cx| {
        if woken {
            return Poll::Ready(());
        }
        woken = true;
        // A task woken while it runs goes to the back of the run queue once it returns
        // `Pending`.
        cx.waker().wake_by_ref();
        Poll::Pending
    })
}

/// One side (reader or writer) of a session.
struct SessionTask {
    driver: Arc<Driver>,
    peer: PeerId,
    id: u64,
    kill: CancellationToken,
}

impl SessionTask {
    /// Reads the session's bytes and feeds them to the node; with an `opener`, the bytes
    /// read (`raw`) reach the node's buffer only batch by batch, once each batch's seal checks.
    async fn read_loop(
        self,
        mut read: PeerRead,
        mut codec: LineCodec,
        buf: BytesMut,
        mut opener: Option<Opener>,
    ) {
        let token = self.driver.token().clone();
        let mut silence = Silence::new(liveness::peer_timeout(&self.driver.settings().limits));
        let alarm = sleep_until(silence.deadline());
        tokio::pin!(alarm);
        // Without sealing the bytes read go straight to the node's buffer.
        let (mut raw, mut buf) = match opener {
            Some(_) => (buf, BytesMut::with_capacity(64 * 1024)),
            None => (BytesMut::new(), buf),
        };
        // When this task last let the others run.
        let mut last_turn = std::time::Instant::now();
        let reason = loop {
            if let Some(o) = opener.as_mut() {
                if let Err(e) = open_batches(o, &mut raw, &mut buf) {
                    warn!(peer = %self.driver.peer_name(self.peer), error = %e, "peer batch failed its seal; dropping link");
                    break e;
                }
            }
            let before = buf.len();
            let turn = self.driver.turn().await;
            if let Err(e) = self.feed(turn, &mut codec, &mut buf) {
                break e;
            }
            if before != buf.len() && last_turn.elapsed() >= READER_TURN {
                requeue().await;
                last_turn = std::time::Instant::now();
            }
            let into = if opener.is_some() { &mut raw } else { &mut buf };
            if into.capacity() - into.len() < 4096 {
                into.reserve(64 * 1024);
            }
            tokio::select! {
                () = self.kill.cancelled() => return,
                // At shutdown the writer flushes and ends the session.
                () = token.cancelled() => return,
                r = read.read_buf(into) => match r {
                    Ok(0) => break LinkError::Closed,
                    Ok(_) => silence.heard(Instant::now()),
                    Err(e) => break LinkError::Io(e),
                },
                () = &mut alarm => {
                    let now = Instant::now();
                    if silence.expired(now) {
                        match read_ready(&mut read, into).await {
                            Some(Ok(0)) => break LinkError::Closed,
                            Some(Ok(_)) => silence.heard(now),
                            None => {
                                warn!(peer = %self.driver.peer_name(self.peer), timeout_ms = silence.timeout().as_millis(), "peer silent; dropping link");
                                break LinkError::Silent(silence.timeout());
                            }
                            Some(Err(e)) => break LinkError::Io(e),
                        }
                    }
                    alarm.as_mut().reset(silence.deadline());
                }
            }
        };
        self.end(&reason);
    }

    /// Feeds every complete buffered line to the node.
    fn feed(&self, turn: Turn, codec: &mut LineCodec, buf: &mut BytesMut) -> Result<(), LinkError> {
        match self.driver.peer_batch(turn, self.peer, self.id, codec, buf) {
            Ok(()) => Ok(()),
            Err(PeerBatchError::Stale) => Err(LinkError::Closed),
            Err(PeerBatchError::Line(e)) => Err(e.into()),
            Err(PeerBatchError::Parse(e, line)) => {
                warn!(peer = %self.driver.peer_name(self.peer), line = %Escaped(&line), error = %e, "malformed peer message; dropping link");
                Err(LinkError::Parse(e))
            }
        }
    }

    async fn write_loop(
        self,
        mut write: PeerWrite,
        queue: Arc<PeerQueue>,
        mut sealer: Option<Sealer>,
    ) {
        let token = self.driver.token().clone();
        let heartbeat = liveness::heartbeat(&self.driver.settings().limits);
        let mut sent = Instant::now();
        let mut chunk = Vec::with_capacity(64 * 1024);
        let mut sealed = Vec::new();
        let reason = loop {
            if queue.take_drain_request() {
                // The node paces a reconciliation delta: let it queue the next window while
                // this task writes the one it takes below.
                self.driver.drained(self.peer);
            }
            match queue.take(&mut chunk) {
                Take::Data => {
                    let out = match sealer.as_mut() {
                        Some(s) => {
                            sealed.clear();
                            s.seal_all(&chunk, DEFAULT_MAX_BATCH, &mut sealed);
                            &sealed
                        }
                        None => &chunk,
                    };
                    tokio::select! {
                        () = self.kill.cancelled() => return,
                        r = write_all_flush(&mut write, out) => if let Err(e) = r { break LinkError::Io(e) },
                    }
                    queue.written(chunk.len());
                    chunk.clear();
                    sent = Instant::now();
                }
                Take::Empty if token.is_cancelled() => {
                    let _ = write.shutdown().await;
                    break LinkError::ShuttingDown;
                }
                Take::Empty => tokio::select! {
                    () = self.kill.cancelled() => return,
                    () = token.cancelled() => {}
                    // Let the tasks that are ready run before taking: updates queued by
                    // them meanwhile go out in the same write.
                    () = queue.wait() => tokio::task::yield_now().await,
                    // Quiet for a heartbeat: tell the peer this side is alive. A closed
                    // queue refuses it, and the next take sees why.
                    () = sleep_until(sent + heartbeat) => { let _ = queue.push(&PeerMsg::Ping); }
                },
                Take::Closed { overflowed: true } => {
                    warn!(peer = %self.driver.peer_name(self.peer), "peer queue overflowed; dropping link");
                    break LinkError::Overflow;
                }
                Take::Closed { overflowed: false } => return,
            }
        };
        self.end(&reason);
    }

    /// Ends this session if it is still the link's current one.
    fn end(&self, reason: &LinkError) {
        self.kill.cancel();
        if self.driver.link_down(self.peer, self.id) {
            if matches!(reason, LinkError::ShuttingDown) {
                info!(peer = %self.driver.peer_name(self.peer), reason = %reason, "peer link down");
            } else {
                warn!(peer = %self.driver.peer_name(self.peer), reason = %reason, "peer link down");
            }
        }
    }
}

/// Writes `bytes` and flushes them (a TLS stream holds written bytes until flushed).
async fn write_all_flush(write: &mut PeerWrite, bytes: &[u8]) -> std::io::Result<()> {
    write.write_all(bytes).await?;
    write.flush().await
}

/// Moves every sealed batch at the front of `raw` whose seal checks into `buf`.
fn open_batches(
    opener: &mut Opener,
    raw: &mut BytesMut,
    buf: &mut BytesMut,
) -> Result<(), LinkError> {
    loop {
        match opener.next(raw)? {
            Opened::Need => return Ok(()),
            Opened::Batch { body, consumed } => {
                buf.extend_from_slice(&raw[..body]);
                raw.advance(consumed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::default();
        let full: Vec<u128> = (0..8).map(|_| b.delay(1.0).as_millis()).collect();
        assert_eq!(full, [50, 100, 200, 400, 500, 500, 500, 500]);
        b.reset();
        assert_eq!(
            b.delay(0.0),
            Duration::from_millis(25),
            "jitter halves at most"
        );
        assert_eq!(b.delay(0.5), Duration::from_millis(75));
    }
}
