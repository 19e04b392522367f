//! One client connection: lines in, replies out, in order.
//!
//! The task reads whatever the socket has, hands every complete line to the node in one
//! [`Driver::client_batch`], and writes all the replies that are ready with one write. A
//! WHATSAT's Places lookup runs in its own task ([`reply`]), outside any lock; replies that
//! follow it wait in order behind it. After the client's end-of-stream every pending reply is
//! finished and flushed, then the connection is closed. The first line decides whether the
//! connection is a peer's: then it is handed back to the listener ([`Served::Peer`]).
//!
//! Two clocks close a connection: the idle timeout (no input and no reply pending; every byte
//! restarts it) and the line timeout (a line must be complete that long after its first byte
//! arrived; a byte does not restart it, so a client dripping a line a byte at a time cannot
//! hold its connection for long).
//!
//! A connection whose request is already there when it is accepted is answered before the
//! runtime ever watches it ([`at_once`]); the batch's log lines are written once the node's
//! lock is released ([`log`]).

mod at_once;
mod log;
mod reply;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use herd_core::{ClientAction, Timestamp};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{sleep, timeout, Instant};
use tracing::{debug, info, warn};

use self::at_once::AtOnce;
use self::log::{BatchLog, Note};
use crate::clock;
use crate::codec::{LineCodec, LineError};
use crate::driver::{ClientTurn, Driver, Pushes, Settings, Turn};
use crate::escape::Clipped;

/// Replies are flushed once this many bytes are ready, even mid-batch.
const FLUSH_AT: usize = 64 * 1024;
/// Read buffer growth step.
const READ_CHUNK: usize = 16 * 1024;
/// After closing for an over-long line, how long unread input is drained so that the
/// replies already sent are not destroyed by a reset.
const LINGER: Duration = Duration::from_secs(2);
/// Most bytes drained while lingering.
const LINGER_BYTES: usize = 64 * 1024 * 1024;
/// Most replies one connection may have waiting (on Places or the herd) before it stops
/// reading: a client pipelining WHATSATs cannot make the server hold unbounded work.
const MAX_WAITING: usize = 1024;

/// How a connection ended.
pub(crate) enum Served {
    /// The client was served and the connection closed.
    Done,
    /// The first line opens a peer handshake: the connection is a peer's.
    Peer {
        /// The connection.
        stream: TcpStream,
        /// Its first line (the hello).
        first: BytesMut,
        /// What was read after it.
        buf: BytesMut,
    },
}

enum Slot {
    Ready(Vec<u8>),
    Waiting(oneshot::Receiver<Vec<u8>>),
}

/// Why the connection stops reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Still reading.
    No,
    /// The client ended its stream (half-close or close).
    Eof,
    /// The server is shutting down.
    Shutdown,
    /// A line over the limit: close without reading further.
    TooLong,
    /// No input for the idle timeout.
    Idle,
    /// A line not complete within the line timeout.
    LineTimeout,
    /// The connection's fence events piled up past `limits.fence_queue_lines`.
    SlowSubscriber,
}

/// What comes in: the buffered bytes, their framing and whether reading goes on.
struct Input {
    codec: LineCodec,
    buf: BytesMut,
    /// Bytes at the front of `buf` handled in the batch under way: lines are handled (and
    /// logged) where they lie, and taken out of `buf` all at once after the batch.
    pos: usize,
    stop: Stop,
    /// The next line is the connection's first.
    first: bool,
    /// When the bytes in `buf` arrived.
    now: Timestamp,
    /// The same on the monotonic clock.
    read_at: Instant,
    /// Lines taken from `buf` so far.
    lines: u64,
    /// The line in `buf` not complete yet must be by then (`None`: `buf` is empty).
    line_deadline: Option<Instant>,
    /// The last batch stopped with complete lines left in `buf` because [`MAX_WAITING`]
    /// replies were waiting: they are handled once there is room.
    held: bool,
}

/// What goes out: replies ready to write, and replies waiting in order behind a lookup.
struct Output {
    out: Vec<u8>,
    queue: VecDeque<Slot>,
    /// Something was written to the client already.
    wrote: bool,
    /// TCP_NODELAY is set (from the second write on).
    nodelay: bool,
}

struct Conn {
    driver: Arc<Driver>,
    /// The server's settings as the connection opened: its limits for its whole life.
    settings: Arc<Settings>,
    addr: SocketAddr,
    input: Input,
    output: Output,
    log: BatchLog,
    /// The connection's fence events, once it has sent a FENCE.
    pushes: Option<Pushes>,
}

/// Serves a client connection, or hands it back when it opens with a peer handshake.
///
/// `stream` comes straight from the listener, non-blocking and not yet watched by the
/// runtime; [`at_once`] tries to finish it before it is.
pub(crate) async fn serve(
    driver: Arc<Driver>,
    stream: std::net::TcpStream,
    addr: SocketAddr,
) -> Served {
    let mut conn = Conn::new(driver, addr);
    debug!(%addr, "connection opened");
    let first_line = match at_once::serve(&mut conn, &stream).await {
        AtOnce::Done => {
            debug!(%addr, reason = ?conn.input.stop, "connection closed");
            return Served::Done;
        }
        AtOnce::Failed(e) => {
            debug!(%addr, error = %e, "connection failed");
            return Served::Done;
        }
        AtOnce::Handshake(line) => Some(line),
        AtOnce::Continue | AtOnce::Nothing => None,
    };
    let mut stream = match TcpStream::from_std(stream) {
        Ok(s) => s,
        Err(e) => {
            warn!(%addr, error = %e, "cannot register a connection");
            return Served::Done;
        }
    };
    let result = match first_line {
        Some(line) => Ok(Some(line)),
        None => conn.run(&mut stream).await,
    };
    match result {
        Ok(Some(first)) => Served::Peer {
            stream,
            first,
            buf: conn.input.buf,
        },
        Ok(None) => {
            conn.close(stream).await;
            Served::Done
        }
        Err(e) => {
            debug!(%addr, error = %e, "connection failed");
            Served::Done
        }
    }
}

/// Serves a client on the TLS client address (after the TLS handshake): the same line
/// protocol, and no peer ever comes this way (a handshake line is an invalid line here).
pub(crate) async fn serve_tls<S: ClientStream>(
    driver: Arc<Driver>,
    mut stream: S,
    addr: SocketAddr,
) {
    let mut conn = Conn::new(driver, addr);
    conn.input.first = false;
    debug!(%addr, "TLS connection opened");
    match conn.run(&mut stream).await {
        Ok(_) => conn.close(stream).await,
        Err(e) => debug!(%addr, error = %e, "connection failed"),
    }
}

/// A client connection's stream: plain TCP, or TLS over it.
pub(crate) trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {
    /// Sets TCP_NODELAY on the socket underneath.
    fn set_nodelay(&self, on: bool) -> std::io::Result<()>;

    /// Writes what the socket takes of `bytes` now, without waiting and without the runtime's
    /// future machinery; returns how many bytes it took (0: none, or not supported here).
    fn write_now(&mut self, _bytes: &[u8]) -> std::io::Result<usize> {
        Ok(0)
    }

    /// Whether closing must say so in the stream itself (TLS's close_notify), even after
    /// the client's end of stream.
    fn closes_in_band(&self) -> bool {
        false
    }
}

impl ClientStream for TcpStream {
    fn set_nodelay(&self, on: bool) -> std::io::Result<()> {
        TcpStream::set_nodelay(self, on)
    }

    fn write_now(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut written = 0;
        while written < bytes.len() {
            match self.try_write(&bytes[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(written)
    }
}

impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {
    fn set_nodelay(&self, on: bool) -> std::io::Result<()> {
        self.get_ref().0.set_nodelay(on)
    }

    fn closes_in_band(&self) -> bool {
        true
    }
}

impl Conn {
    fn new(driver: Arc<Driver>, addr: SocketAddr) -> Self {
        let settings = driver.settings();
        let max = settings.limits.max_line_bytes;
        let log = BatchLog::new(
            addr,
            driver.spec().message_log.clone(),
            settings.limits.log_line_bytes,
        );
        Conn {
            driver,
            settings,
            addr,
            input: Input {
                codec: LineCodec::new(max),
                buf: BytesMut::with_capacity(READ_CHUNK),
                pos: 0,
                stop: Stop::No,
                first: true,
                now: clock::now(),
                read_at: Instant::now(),
                lines: 0,
                line_deadline: None,
                held: false,
            },
            output: Output {
                out: Vec::with_capacity(4096),
                queue: VecDeque::new(),
                wrote: false,
                nodelay: false,
            },
            log,
            pushes: None,
        }
    }

    /// Runs until the connection is done; returns the first line if it is a peer handshake.
    async fn run<S: ClientStream>(&mut self, stream: &mut S) -> std::io::Result<Option<BytesMut>> {
        let idle_limit = self.settings.limits.idle_timeout;
        // The idle timer is armed at a deadline and not moved by every read or write (that
        // costs a timer update per message): activity only notes its time in `last_active`,
        // and the timer, when it fires, checks it and re-arms at the deadline it implies.
        let mut last_active = Instant::now();
        let idle = sleep(idle_limit);
        tokio::pin!(idle);
        let line_limit = self.settings.limits.line_timeout;
        // Armed at `line_armed` while a line is incomplete.
        let line_timer = sleep(line_limit);
        tokio::pin!(line_timer);
        let mut line_armed: Option<Instant> = None;
        let token = self.driver.token().clone();
        // Made once: a `cancelled()` future made anew per turn registers and unregisters a
        // waiter (two locks) every time.
        let shutdown = token.cancelled();
        tokio::pin!(shutdown);
        // Input arrived since the last write (whose time is `last_active` already).
        let mut fresh_input = false;
        loop {
            // With no input (a subscriber woken for its pushes, a reply that became ready)
            // there is nothing for the node: no batch, and no wait for a turn behind the
            // connections that have lines.
            let lines = if self.input.buf.is_empty() {
                self.no_input();
                Ok(false)
            } else {
                let turn = self.driver.turn().await;
                self.process_lines(turn)
            };
            let more = match lines {
                Ok(more) => more,
                Err(handshake) => return Ok(Some(handshake)),
            };
            self.output.collect_ready();
            if !self.output.out.is_empty() {
                if std::mem::replace(&mut self.output.wrote, true) && !self.output.nodelay {
                    // The first write of a connection is never held back by Nagle's
                    // algorithm (nothing is in flight yet), so a connection answered once
                    // (a classic client) saves the system call.
                    self.output.nodelay = true;
                    if let Err(e) = stream.set_nodelay(true) {
                        warn!(addr = %self.addr, error = %e, "cannot set TCP_NODELAY");
                    }
                }
                // The usual case: the socket takes it all at once.
                let done = stream.write_now(&self.output.out)?;
                if done < self.output.out.len() {
                    // A client that reads nothing for the idle time loses its connection; one
                    // that holds fences, as soon as its events pile up.
                    let dropped = self.pushes.as_ref().map(|p| p.dropped.clone());
                    let rest = &self.output.out[done..];
                    let write = timeout(idle_limit, write_flush(stream, rest));
                    tokio::select! {
                        r = write => match r {
                            Ok(r) => r?,
                            Err(_) => {
                                info!(addr = %self.addr, "client does not read its replies; closing connection");
                                return Ok(None);
                            }
                        },
                        () = cancelled(dropped.as_ref()) => {
                            self.input.stop = Stop::SlowSubscriber;
                            return Ok(None);
                        }
                    }
                    fresh_input = false;
                }
                self.output.out.clear();
                // Idle means no input and no output: a slow reply restarts the clock (a reply
                // to input just read goes out within microseconds of its read time).
                if !std::mem::take(&mut fresh_input) {
                    last_active = Instant::now();
                }
            }
            // Lines held back while too many replies waited go on as soon as there is room
            // (the waiting replies may all have finished by now).
            if more || (self.input.held && self.output.queue.len() < MAX_WAITING) {
                continue;
            }
            let input = &mut self.input;
            let queue = &mut self.output.queue;
            let pushes = &mut self.pushes;
            if input.stop != Stop::No && queue.is_empty() && !input.held {
                return Ok(None);
            }
            if input.line_deadline != line_armed {
                line_armed = input.line_deadline;
                if let Some(at) = line_armed {
                    line_timer.as_mut().reset(at);
                }
            }
            let waiting_front = matches!(queue.front(), Some(Slot::Waiting(_)));
            tokio::select! {
                biased;
                reply = front_reply(queue), if waiting_front => {
                    queue.pop_front();
                    self.output.out.extend_from_slice(&reply);
                }
                () = &mut shutdown, if input.stop == Stop::No => input.stop = Stop::Shutdown,
                r = stream.read_buf(&mut input.buf), if input.stop == Stop::No && queue.len() < MAX_WAITING => {
                    if r? == 0 {
                        input.stop = Stop::Eof;
                    }
                    input.now = clock::now();
                    input.read_at = Instant::now();
                    last_active = input.read_at;
                    fresh_input = true;
                    if input.buf.capacity() - input.buf.len() < READ_CHUNK / 4 {
                        input.buf.reserve(READ_CHUNK);
                    }
                }
                push = next_push(pushes), if input.stop == Stop::No && pushes.is_some() => match push {
                    Some(line) => {
                        self.output.out.extend_from_slice(&line);
                        // Whatever else is queued goes out in the same write.
                        while self.output.out.len() < FLUSH_AT {
                            match pushes.as_mut().map(|p| p.rx.try_recv()) {
                                Some(Ok(line)) => self.output.out.extend_from_slice(&line),
                                _ => break,
                            }
                        }
                    }
                    None => input.stop = Stop::SlowSubscriber,
                },
                // A connection holding fences waits for events: it is never idle.
                () = &mut idle, if input.stop == Stop::No && queue.is_empty() && pushes.is_none() => {
                    let due = last_active + idle_limit;
                    if due > Instant::now() {
                        idle.as_mut().reset(due);
                    } else {
                        info!(addr = %self.addr, idle_secs = idle_limit.as_secs_f64(), "client idle; closing connection");
                        input.stop = Stop::Idle;
                    }
                }
                () = &mut line_timer, if input.stop == Stop::No && line_armed.is_some() && queue.len() < MAX_WAITING => {
                    if let Some(suppressed) = self.driver.refusals().line_timeouts.hit() {
                        info!(
                            addr = %self.addr,
                            line_timeout_secs = line_limit.as_secs_f64(),
                            pending_bytes = input.buf.len(),
                            suppressed,
                            "client line not complete in time; closing connection"
                        );
                    }
                    input.stop = Stop::LineTimeout;
                }
            }
        }
    }

    /// What a batch does when nothing is buffered: reading may go on, and no line is
    /// waiting to be completed.
    fn no_input(&mut self) {
        self.input.held = false;
        self.input.line_deadline = None;
    }

    /// Handles the complete lines buffered; `Ok(true)` when it stopped early to flush.
    /// `Err(line)` when the first line opens a peer handshake.
    fn process_lines(&mut self, turn: Turn) -> Result<bool, BytesMut> {
        self.log.begin();
        let driver = self.driver.clone();
        // The driver writes the journal before returning: every update acknowledged in the
        // output is durable before the reply leaves.
        let lines_before = self.input.lines;
        let result = driver.client_batch(turn, |turn| self.process_batch(turn));
        self.log
            .write(self.input.now, &self.input.buf, &self.output.out);
        let handled = std::mem::take(&mut self.input.pos);
        self.input.buf.advance(handled);
        self.arm_line_deadline(lines_before);
        result
    }

    /// After handling lines: an incomplete line left in the buffer must be complete within the
    /// line timeout of its first byte. A line that started after the last one handled started
    /// in the latest read (about now); one already waiting keeps its deadline.
    fn arm_line_deadline(&mut self, lines_before: u64) {
        let input = &mut self.input;
        if input.buf.is_empty() {
            input.line_deadline = None;
        } else if input.line_deadline.is_none() || input.lines != lines_before {
            input.line_deadline = Some(input.read_at + self.settings.limits.line_timeout);
        }
    }

    fn process_batch(&mut self, turn: &mut ClientTurn<'_>) -> Result<bool, BytesMut> {
        self.input.held = false;
        // Lines handled since the store was last warmed for the lines ahead.
        let mut warm_left = 0usize;
        loop {
            let input = &mut self.input;
            if warm_left == 0 && matches!(input.stop, Stop::No | Stop::Shutdown | Stop::Eof) {
                warm_left = turn.warm(input.buf.get(input.pos..).unwrap_or_default());
            }
            warm_left = warm_left.saturating_sub(1);
            let decoded = match input.stop {
                Stop::Eof => input.codec.find_eof(&input.buf, input.pos),
                // At shutdown, complete lines already received are still answered.
                Stop::No | Stop::Shutdown => input.codec.find(&input.buf, input.pos),
                Stop::TooLong | Stop::Idle | Stop::LineTimeout | Stop::SlowSubscriber => {
                    return Ok(false)
                }
            };
            let (end, next) = match decoded {
                Ok(Some(found)) => found,
                Ok(None) => return Ok(false),
                Err(LineError::TooLong { max }) => {
                    warn!(addr = %self.addr, max, "client line over the length limit; closing connection");
                    input.stop = Stop::TooLong;
                    return Ok(false);
                }
                Err(LineError::Io(e)) => {
                    warn!(addr = %self.addr, error = %e, "client read failed");
                    input.stop = Stop::TooLong;
                    return Ok(false);
                }
            };
            input.lines += 1;
            let start = input.pos;
            if std::mem::take(&mut input.first)
                && herd_core::peer::is_handshake(&input.buf[start..end])
            {
                input.buf.advance(start);
                let mut line = input.buf.split_to(next - start);
                line.truncate(end - start);
                return Err(line);
            }
            input.pos = next;
            self.handle_line(turn, start, end);
            if self.output.out.len() >= FLUSH_AT {
                return Ok(true);
            }
            if self.output.queue.len() >= MAX_WAITING {
                // Read no further until the oldest waiting replies are sent.
                self.input.held = true;
                return Ok(false);
            }
        }
    }

    /// Handles the line `input.buf[start..end]`.
    fn handle_line(&mut self, turn: &mut ClientTurn<'_>, start: usize, end: usize) {
        let line = &self.input.buf[start..end];
        let span = (start, end);
        let output = &mut self.output;
        let direct = output.queue.is_empty();
        let mut side = Vec::new();
        let target = if direct { &mut output.out } else { &mut side };
        let out_start = target.len();
        if self.pushes.is_none() && names_fence(line) {
            let queue = self.settings.limits.fence_queue_lines;
            self.pushes = Some(turn.subscribe(&self.driver, queue));
        }
        let from = self.pushes.as_ref().map(Pushes::id);
        let action = turn.line(self.input.now, from, line, target);
        let max = self.settings.limits.log_line_bytes;
        match action {
            ClientAction::Silent => {
                debug!(addr = %self.addr, msg = %Clipped::new(line, max), "blank line");
            }
            ClientAction::Replied if direct => {
                let out_end = output.out.len();
                self.log.note(span, Note::Replied(out_start, out_end));
            }
            ClientAction::Replied => {
                info!(
                    addr = %self.addr,
                    msg = %Clipped::new(line, max),
                    reply = %Clipped::new(&side, max),
                    "client message"
                );
                output.queue.push_back(Slot::Ready(side));
            }
            ClientAction::Places { record, query } => {
                self.log.note(span, Note::Places);
                let (tx, rx) = oneshot::channel();
                let driver = self.driver.clone();
                let settings = self.settings.clone();
                let addr = self.addr;
                self.driver.spawn(async move {
                    let reply = reply::places(&driver, &settings, addr, record, query).await;
                    let _ = tx.send(reply);
                });
                output.queue.push_back(Slot::Waiting(rx));
            }
            ClientAction::Pending { ticket } => {
                self.log.note(span, Note::Herd);
                let answer = turn.wait_for(ticket);
                let (reply_tx, reply_rx) = oneshot::channel();
                let driver = self.driver.clone();
                let settings = self.settings.clone();
                let addr = self.addr;
                self.driver.spawn(async move {
                    let reply = reply::herd(&driver, &settings, addr, answer).await;
                    let _ = reply_tx.send(reply);
                });
                output.queue.push_back(Slot::Waiting(reply_rx));
            }
        }
    }

    async fn close<S: ClientStream>(self, mut stream: S) {
        let stop = self.input.stop;
        if stop != Stop::Eof || stream.closes_in_band() {
            // After the client's end of stream everything it sent has been read, so closing
            // the socket sends the FIN by itself (one system call fewer per connection).
            let _ = stream.shutdown().await;
        }
        if stop == Stop::TooLong {
            // Closing with unread input would reset the connection and could destroy replies
            // the client has not read yet: drain (bounded) until the client closes.
            let mut sink = vec![0u8; READ_CHUNK];
            let mut drained = 0usize;
            let deadline = Instant::now() + LINGER;
            while drained < LINGER_BYTES {
                match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
                    Ok(Ok(n)) if n > 0 => drained += n,
                    _ => break,
                }
            }
        }
        debug!(addr = %self.addr, reason = ?stop, "connection closed");
    }
}

impl Output {
    /// Moves replies at the front of the queue that are finished into the output buffer.
    fn collect_ready(&mut self) {
        while let Some(front) = self.queue.front_mut() {
            match front {
                Slot::Ready(bytes) => self.out.extend_from_slice(bytes),
                Slot::Waiting(rx) => match rx.try_recv() {
                    Ok(bytes) => self.out.extend_from_slice(&bytes),
                    Err(oneshot::error::TryRecvError::Empty) => return,
                    // The task died without answering (it cannot, but never hang on it).
                    Err(oneshot::error::TryRecvError::Closed) => {}
                },
            }
            self.queue.pop_front();
        }
    }
}

/// Writes `bytes` and flushes them (a TLS stream holds written bytes until flushed).
async fn write_flush<S: ClientStream>(stream: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Whether a line's command is `FENCE` (the connection must then take events).
fn names_fence(line: &[u8]) -> bool {
    let start = line.iter().position(|&b| !herd_core::types::is_space(b));
    start.is_some_and(|i| {
        let rest = &line[i..];
        rest.starts_with(b"FENCE") && rest.get(5).is_none_or(|&b| herd_core::types::is_space(b))
    })
}

/// The next fence event (`None`: the driver dropped the subscriber); never ready without one.
async fn next_push(pushes: &mut Option<Pushes>) -> Option<Vec<u8>> {
    match pushes {
        Some(p) => p.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Waits for `token` to be cancelled; for ever without one.
async fn cancelled(token: Option<&tokio_util::sync::CancellationToken>) {
    match token {
        Some(t) => t.cancelled().await,
        None => std::future::pending().await,
    }
}

/// Waits for the reply at the front of the queue (which is `Waiting`).
async fn front_reply(queue: &mut VecDeque<Slot>) -> Vec<u8> {
    match queue.front_mut() {
        Some(Slot::Waiting(rx)) => rx.await.unwrap_or_default(),
        Some(Slot::Ready(bytes)) => std::mem::take(bytes),
        None => std::future::pending().await,
    }
}
