//! One client connection: lines in, replies out, in order.
//!
//! The task reads whatever the socket has, hands every complete line to the node under one
//! lock, and writes all the replies that are ready with one write. A WHATSAT's Places lookup
//! runs in its own task, outside any lock; replies that follow it wait in order behind it.
//! After the client's end-of-stream every pending reply is finished and flushed, then the
//! connection is closed. The first line decides whether the connection is a peer's.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use herd_core::protocol::{write_invalid, write_whatsat_reply};
use herd_core::store::WARM_MAX;
use herd_core::types::is_space;
use herd_core::{ClientAction, LookupError, PlacesQuery, QueryOutcome, Record, Timestamp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio::time::{sleep, timeout, Instant};
use tokio_util::codec::Decoder;
use tracing::{debug, info, warn};

use crate::clock;
use crate::codec::{LineCodec, LineError};
use crate::escape::Escaped;
use crate::msglog;
use crate::server::{Core, Shared};

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
/// How many more times a new connection with nothing to read yet is looked at (after letting
/// the other tasks run) before it is registered with the runtime's poller.
const AT_ONCE_RETRIES: usize = 1;
/// Extra time a WHATSAT waiting on a herd query may take beyond the node's own deadline.
const QUERY_GUARD: Duration = Duration::from_secs(2);

/// What the log says about a line handled under the node lock.
#[derive(Debug, Clone, Copy)]
enum Note {
    /// Answered at once; the reply is `out[start..end]`.
    Replied(usize, usize),
    /// Waiting on Places.
    Places,
    /// Waiting on the herd.
    Herd,
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
}

struct Conn {
    shared: Arc<Shared>,
    addr: SocketAddr,
    codec: LineCodec,
    buf: BytesMut,
    out: Vec<u8>,
    queue: VecDeque<Slot>,
    stop: Stop,
    first: bool,
    now: Timestamp,
    logs: Vec<(BytesMut, Note)>,
    log_enabled: bool,
    /// This connection's fixed part of its message log lines (made on first use).
    log_prefix: Vec<u8>,
    /// The batch's log lines, formatted here and handed over in one call (reused).
    log_text: Vec<u8>,
    /// Something was written to the client already.
    wrote: bool,
    /// TCP_NODELAY is set (from the second write on).
    nodelay: bool,
}

/// What answering a connection at once, before the runtime watches it, came to.
enum AtOnce {
    /// Answered in full and closed.
    Done,
    /// The first line opens a peer handshake.
    Handshake(BytesMut),
    /// More to do: go on in the runtime (with what was read and answered so far).
    Continue,
    /// Nothing new has arrived (the client is still open): go on in the runtime.
    Nothing,
    /// The socket failed.
    Failed(std::io::Error),
}

/// Serves a client connection (or hands it to the peer handshake if it opens with one).
///
/// `stream` comes straight from `accept4`, non-blocking and not yet watched by the runtime.
/// A classic client (connect, one request, half-close) has usually sent everything by the
/// time its connection is accepted: then it is answered here with plain non-blocking system
/// calls and closed, without registering the socket with the runtime's poller (two
/// `epoll_ctl` calls and a wake-up saved per connection). Anything else goes on in the
/// runtime where this left off.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    stream: std::net::TcpStream,
    addr: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let max = shared.spec.limits.max_line_bytes;
    let mut conn = Conn {
        shared,
        addr,
        codec: LineCodec::new(max),
        buf: BytesMut::with_capacity(READ_CHUNK),
        out: Vec::with_capacity(4096),
        queue: VecDeque::new(),
        stop: Stop::No,
        first: true,
        now: clock::now(),
        logs: Vec::new(),
        log_enabled: true,
        log_prefix: Vec::new(),
        log_text: Vec::new(),
        wrote: false,
        nodelay: false,
    };
    debug!(%addr, "connection opened");
    let mut at_once = conn.answer_at_once(&stream);
    for _ in 0..AT_ONCE_RETRIES {
        if !matches!(at_once, AtOnce::Nothing) {
            break;
        }
        // Accepted before the request arrived (the client writes once its connect completes):
        // let the other tasks run and look again before registering the socket.
        tokio::task::yield_now().await;
        at_once = conn.answer_at_once(&stream);
    }
    let first_line = match at_once {
        AtOnce::Done => {
            debug!(%addr, reason = ?conn.stop, "connection closed");
            return;
        }
        AtOnce::Failed(e) => {
            debug!(%addr, error = %e, "connection failed");
            return;
        }
        AtOnce::Handshake(line) => Some(line),
        AtOnce::Continue | AtOnce::Nothing => None,
    };
    let mut stream = match TcpStream::from_std(stream) {
        Ok(s) => s,
        Err(e) => {
            warn!(%addr, error = %e, "cannot register a connection");
            return;
        }
    };
    let result = match first_line {
        Some(line) => Ok(Some(line)),
        None => conn.run(&mut stream).await,
    };
    match result {
        Ok(Some(first_line)) => {
            // A peer: it does not count against the client limit.
            drop(permit);
            if let Err(e) = stream.set_nodelay(true) {
                warn!(%addr, error = %e, "cannot set TCP_NODELAY");
            }
            let Conn { shared, buf, .. } = conn;
            crate::link::accept(shared, stream, addr, first_line, buf).await;
        }
        Ok(None) => conn.close(stream).await,
        Err(e) => debug!(%addr, error = %e, "connection failed"),
    }
}

impl Conn {
    /// Reads what has arrived, answers it and, when the client has ended its stream and every
    /// reply fits the socket at once, writes the replies and is done (the caller closes).
    fn answer_at_once(&mut self, stream: &std::net::TcpStream) -> AtOnce {
        use std::io::{ErrorKind, Read, Write};
        let mut chunk = [0u8; 4096];
        let mut stream_ref = stream;
        let mut got = false;
        while self.buf.len() < READ_CHUNK {
            match stream_ref.read(&mut chunk) {
                Ok(0) => {
                    self.stop = Stop::Eof;
                    break;
                }
                Ok(n) => {
                    got = true;
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return AtOnce::Failed(e),
            }
        }
        if !got && self.stop != Stop::Eof {
            return AtOnce::Nothing;
        }
        let mut more = false;
        if !self.buf.is_empty() {
            more = match self.process_lines() {
                Ok(more) => more,
                Err(handshake) => return AtOnce::Handshake(handshake),
            };
        }
        self.collect_ready();
        if more || self.stop != Stop::Eof || !self.queue.is_empty() {
            return AtOnce::Continue;
        }
        let mut written = 0;
        while written < self.out.len() {
            match stream_ref.write(&self.out[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return AtOnce::Failed(e),
            }
        }
        self.wrote |= written > 0;
        if written == self.out.len() {
            return AtOnce::Done;
        }
        self.out.drain(..written);
        AtOnce::Continue
    }

    /// Runs until the connection is done; returns the first line if it is a peer handshake.
    async fn run(&mut self, stream: &mut TcpStream) -> std::io::Result<Option<BytesMut>> {
        let idle_limit = self.shared.spec.limits.idle_timeout;
        let idle = sleep(idle_limit);
        tokio::pin!(idle);
        let token = self.shared.token.clone();
        loop {
            let more = match self.process_lines() {
                Ok(more) => more,
                Err(handshake) => return Ok(Some(handshake)),
            };
            self.collect_ready();
            if !self.out.is_empty() {
                if std::mem::replace(&mut self.wrote, true) && !self.nodelay {
                    // The first write of a connection is never held back by Nagle's
                    // algorithm (nothing is in flight yet), so a connection answered once
                    // (a classic client) saves the system call.
                    self.nodelay = true;
                    if let Err(e) = stream.set_nodelay(true) {
                        warn!(addr = %self.addr, error = %e, "cannot set TCP_NODELAY");
                    }
                }
                // A client that reads nothing for the idle time loses its connection.
                match timeout(idle_limit, stream.write_all(&self.out)).await {
                    Ok(r) => r?,
                    Err(_) => {
                        info!(addr = %self.addr, "client does not read its replies; closing connection");
                        return Ok(None);
                    }
                }
                self.out.clear();
                // Idle means no input and no output: a slow reply restarts the clock.
                idle.as_mut().reset(Instant::now() + idle_limit);
            }
            if more {
                continue;
            }
            if self.stop != Stop::No && self.queue.is_empty() {
                return Ok(None);
            }
            let waiting_front = matches!(self.queue.front(), Some(Slot::Waiting(_)));
            tokio::select! {
                biased;
                reply = front_reply(&mut self.queue), if waiting_front => {
                    self.queue.pop_front();
                    self.out.extend_from_slice(&reply);
                }
                () = token.cancelled(), if self.stop == Stop::No => self.stop = Stop::Shutdown,
                r = stream.read_buf(&mut self.buf), if self.stop == Stop::No && self.queue.len() < MAX_WAITING => {
                    if r? == 0 {
                        self.stop = Stop::Eof;
                    }
                    self.now = clock::now();
                    idle.as_mut().reset(Instant::now() + idle_limit);
                    if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                        self.buf.reserve(READ_CHUNK);
                    }
                }
                () = &mut idle, if self.stop == Stop::No && self.queue.is_empty() => {
                    info!(addr = %self.addr, idle_secs = idle_limit.as_secs_f64(), "client idle; closing connection");
                    self.stop = Stop::Idle;
                }
            }
        }
    }

    /// Handles the complete lines buffered; `Ok(true)` when it stopped early to flush.
    /// `Err(line)` when the first line opens a peer handshake.
    fn process_lines(&mut self) -> Result<bool, BytesMut> {
        self.log_enabled = tracing::enabled!(tracing::Level::INFO);
        let shared = self.shared.clone();
        let mut core = shared.lock();
        let result = self.process_locked(&mut core);
        core.drain_events();
        drop(core);
        // Every update acknowledged in `self.out` is in the journal before the reply leaves.
        self.shared.sync_journal();
        self.write_logs();
        result
    }

    /// Notes a line for the log, written once the node lock is released.
    fn log_later(&mut self, line: BytesMut, note: Note) {
        if self.log_enabled {
            self.logs.push((line, note));
        }
    }

    fn write_logs(&mut self) {
        if self.logs.is_empty() {
            return;
        }
        let mut logs = std::mem::take(&mut self.logs);
        let bulk = self.shared.spec.message_log.clone();
        let mut text = std::mem::take(&mut self.log_text);
        text.clear();
        let mut stamp = Vec::with_capacity(32);
        if bulk.is_some() {
            msglog::push_timestamp(&mut stamp, self.now);
            if self.log_prefix.is_empty() {
                self.log_prefix = msglog::message_prefix(self.addr);
            }
        }
        for (line, note) in &logs {
            let msg = Escaped(line);
            match *note {
                Note::Replied(s, e) => {
                    let reply = self.out.get(s..e).unwrap_or_default();
                    if bulk.is_some() {
                        msglog::push_message_with(&mut text, &stamp, &self.log_prefix, line, reply);
                    } else {
                        info!(addr = %self.addr, %msg, reply = %Escaped(reply), "client message");
                    }
                }
                Note::Places if bulk.is_some() => msglog::push_event(
                    &mut text,
                    &stamp,
                    "client message; looking up places",
                    self.addr,
                    "msg",
                    line,
                ),
                Note::Herd if bulk.is_some() => msglog::push_event(
                    &mut text,
                    &stamp,
                    "client message; asking the herd",
                    self.addr,
                    "msg",
                    line,
                ),
                Note::Places => info!(addr = %self.addr, %msg, "client message; looking up places"),
                Note::Herd => info!(addr = %self.addr, %msg, "client message; asking the herd"),
            }
        }
        if let Some(log) = bulk.filter(|_| !text.is_empty()) {
            log.write_lines(&text);
        }
        text.clear();
        self.log_text = text;
        logs.clear();
        self.logs = logs;
    }

    fn process_locked(&mut self, core: &mut Core) -> Result<bool, BytesMut> {
        // Lines handled since the store was last warmed for the lines ahead, and how many
        // lines that warming covered.
        let mut warm_left = 0usize;
        loop {
            if warm_left == 0 && matches!(self.stop, Stop::No | Stop::Shutdown | Stop::Eof) {
                warm_left = warm_store(core, &self.buf, Lines::Client);
            }
            warm_left = warm_left.saturating_sub(1);
            let decoded = match self.stop {
                Stop::Eof => self.codec.decode_eof(&mut self.buf),
                // At shutdown, complete lines already received are still answered.
                Stop::No | Stop::Shutdown => self.codec.decode(&mut self.buf),
                Stop::TooLong | Stop::Idle => return Ok(false),
            };
            let line = match decoded {
                Ok(Some(line)) => line,
                Ok(None) => return Ok(false),
                Err(LineError::TooLong { max }) => {
                    warn!(addr = %self.addr, max, "client line over the length limit; closing connection");
                    self.stop = Stop::TooLong;
                    return Ok(false);
                }
                Err(LineError::Io(e)) => {
                    warn!(addr = %self.addr, error = %e, "client read failed");
                    self.stop = Stop::TooLong;
                    return Ok(false);
                }
            };
            if std::mem::take(&mut self.first) && herd_core::peer::is_handshake(&line) {
                return Err(line);
            }
            self.handle_line(core, line);
            if self.out.len() >= FLUSH_AT {
                return Ok(true);
            }
            if self.queue.len() >= MAX_WAITING {
                // Read no further until the oldest waiting replies are sent.
                return Ok(false);
            }
        }
    }

    fn handle_line(&mut self, core: &mut Core, line: BytesMut) {
        let direct = self.queue.is_empty();
        let mut side = Vec::new();
        let target = if direct { &mut self.out } else { &mut side };
        let start = target.len();
        let action = core.node.handle_client_line(self.now, &line, target);
        match action {
            ClientAction::Silent => debug!(addr = %self.addr, msg = %Escaped(&line), "blank line"),
            ClientAction::Replied if direct => {
                let end = self.out.len();
                self.log_later(line, Note::Replied(start, end));
            }
            ClientAction::Replied => {
                info!(addr = %self.addr, msg = %Escaped(&line), reply = %Escaped(&side), "client message");
                self.queue.push_back(Slot::Ready(side));
            }
            ClientAction::Places { record, query } => {
                self.log_later(line, Note::Places);
                let (tx, rx) = oneshot::channel();
                let shared = self.shared.clone();
                let addr = self.addr;
                self.shared.spawn(async move {
                    let _ = tx.send(places_reply(&shared, addr, record, query).await);
                });
                self.queue.push_back(Slot::Waiting(rx));
            }
            ClientAction::Pending { ticket } => {
                let line_copy = line.to_vec();
                self.log_later(line, Note::Herd);
                let (tx, rx) = oneshot::channel();
                core.waiters.insert(ticket, tx);
                let (reply_tx, reply_rx) = oneshot::channel();
                let shared = self.shared.clone();
                let (addr, line) = (self.addr, line_copy);
                self.shared.spawn(async move {
                    let reply = herd_reply(&shared, addr, rx, line).await;
                    let _ = reply_tx.send(reply);
                });
                self.queue.push_back(Slot::Waiting(reply_rx));
            }
        }
    }

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

    async fn close(self, mut stream: TcpStream) {
        if self.stop != Stop::Eof {
            // After the client's end of stream everything it sent has been read, so closing
            // the socket sends the FIN by itself (one system call fewer per connection).
            let _ = stream.shutdown().await;
        }
        if self.stop == Stop::TooLong {
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
        debug!(addr = %self.addr, reason = ?self.stop, "connection closed");
    }
}

/// Whose lines [`warm_store`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lines {
    /// A client's: `IAMAT client ...` or `WHATSAT client ...` (fields split by white space).
    Client,
    /// A peer's: `U seq AT server diff client ...` (single spaces).
    Peer,
}

/// The client id a line of `kind` touches in the store, if any.
fn client_of(line: &[u8], kind: Lines) -> Option<&[u8]> {
    match kind {
        Lines::Client => {
            let mut fields = line.split(|&b| is_space(b)).filter(|f| !f.is_empty());
            match fields.next() {
                Some(b"IAMAT" | b"WHATSAT") => fields.next(),
                _ => None,
            }
        }
        Lines::Peer => {
            let mut fields = line.split(|&b| b == b' ');
            match fields.next() {
                Some(b"U") => fields.nth(4),
                _ => None,
            }
        }
    }
}

/// Warms the store ([`herd_core::LocationStore::warm`]) for the client ids of the next
/// complete lines in `buf` (at most [`WARM_MAX`]); returns how many lines it looked at (0: no
/// complete line). Call it before handling those lines one by one under the same lock.
pub(crate) fn warm_store(core: &Core, buf: &[u8], kind: Lines) -> usize {
    let mut clients: [&[u8]; WARM_MAX] = [&[]; WARM_MAX];
    let mut found = 0;
    let mut lines = 0;
    let mut rest = buf;
    while lines < WARM_MAX {
        let Some(end) = memchr::memchr(b'\n', rest) else {
            break;
        };
        let (line, tail) = rest.split_at(end);
        rest = &tail[1..];
        lines += 1;
        if let Some(client) = client_of(line, kind) {
            clients[found] = client;
            found += 1;
        }
    }
    // One lookup has nothing to overlap with.
    if found > 1 {
        core.node.store().warm(&clients[..found]);
    }
    lines
}

/// Waits for the reply at the front of the queue (which is `Waiting`).
async fn front_reply(queue: &mut VecDeque<Slot>) -> Vec<u8> {
    match queue.front_mut() {
        Some(Slot::Waiting(rx)) => rx.await.unwrap_or_default(),
        Some(Slot::Ready(bytes)) => std::mem::take(bytes),
        None => std::future::pending().await,
    }
}

/// Looks up places for a known client and formats the WHATSAT reply.
async fn places_reply(
    shared: &Shared,
    addr: SocketAddr,
    record: Arc<Record>,
    query: PlacesQuery,
) -> Vec<u8> {
    let limit = shared.spec.limits.places_timeout;
    let result = match timeout(limit, shared.spec.places.nearby(&query)).await {
        Ok(r) => r,
        Err(_) => Err(LookupError::Timeout),
    };
    if let Err(e) = &result {
        warn!(%addr, error = %e, "places lookup failed");
    }
    let mut out = Vec::with_capacity(4096);
    write_whatsat_reply(record.at_line(), result, query.max_items, &mut out);
    log_reply(shared, addr, &out);
    out
}

/// Logs a reply that was not ready at once (in bulk when the server has a message log).
fn log_reply(shared: &Shared, addr: SocketAddr, out: &[u8]) {
    match &shared.spec.message_log {
        Some(log) => {
            if tracing::enabled!(tracing::Level::INFO) {
                let mut text = Vec::with_capacity(out.len() + out.len() / 8 + 96);
                msglog::push_timestamp(&mut text, clock::now());
                msglog::push_event(&mut text, &[], "client reply", addr, "reply", out);
                log.write_lines(&text);
            }
        }
        None => info!(%addr, reply = %Escaped(out), "client reply"),
    }
}

/// Finishes a WHATSAT that waited for the herd's answer about an unknown client.
async fn herd_reply(
    shared: &Shared,
    addr: SocketAddr,
    answer: oneshot::Receiver<QueryOutcome>,
    line: Vec<u8>,
) -> Vec<u8> {
    // The node answers by its own deadline; the guard only protects against a lost answer.
    let outcome = timeout(QUERY_GUARD, answer).await.ok().and_then(Result::ok);
    match outcome {
        Some(QueryOutcome::Places { record, query }) => {
            places_reply(shared, addr, record, query).await
        }
        Some(QueryOutcome::Reply(out)) => {
            log_reply(shared, addr, &out);
            out
        }
        None => {
            let mut out = Vec::new();
            write_invalid(&line, &mut out);
            log_reply(shared, addr, &out);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{client_of, Lines};

    #[test]
    fn the_client_id_of_client_and_peer_lines() {
        assert_eq!(
            client_of(b"IAMAT  kiwi\t+1+1 5", Lines::Client),
            Some(&b"kiwi"[..])
        );
        assert_eq!(client_of(b"WHATSAT k 1 1", Lines::Client), Some(&b"k"[..]));
        assert_eq!(client_of(b"HELLO k", Lines::Client), None);
        assert_eq!(client_of(b"IAMAT", Lines::Client), None);
        assert_eq!(
            client_of(b"U 7 AT Goloman +0.1 kiwi +1+1 5", Lines::Peer),
            Some(&b"kiwi"[..])
        );
        assert_eq!(client_of(b"S 7", Lines::Peer), None);
        assert_eq!(client_of(b"U 7 AT", Lines::Peer), None);
    }
}
