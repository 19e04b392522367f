//! Answering a connection at once, before the runtime watches it: a performance trick.
//!
//! A classic client (connect, one request, half-close) has usually sent everything by the
//! time its connection is accepted ([`crate::fast_accept`]): then it is answered here with
//! plain non-blocking system calls and closed, without registering the socket with the
//! runtime's poller (two `epoll_ctl` calls and a wake-up saved per connection; measured in
//! bench/README.md, "Classic connections in five system calls"). Anything else goes on in
//! the runtime where this left off. To turn it off, make [`serve`] return
//! [`AtOnce::Nothing`] at once.

use std::io::{ErrorKind, Read, Write};

use bytes::BytesMut;

use super::{Conn, Stop, READ_CHUNK};

/// How many more times a new connection with nothing to read yet is looked at (after letting
/// the other tasks run) before it is registered with the runtime's poller. (More retries
/// registered more sockets, not fewer.)
const RETRIES: usize = 1;

/// What answering a connection at once came to.
pub(super) enum AtOnce {
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

/// Tries to serve `conn` on `stream` (non-blocking, unregistered) without the runtime.
pub(super) async fn serve(conn: &mut Conn, stream: &std::net::TcpStream) -> AtOnce {
    let mut at_once = answer(conn, stream);
    for _ in 0..RETRIES {
        if !matches!(at_once, AtOnce::Nothing) {
            break;
        }
        // Accepted before the request arrived (the client writes once its connect completes):
        // let the other tasks run and look again before registering the socket.
        tokio::task::yield_now().await;
        at_once = answer(conn, stream);
    }
    at_once
}

/// Reads what has arrived, answers it and, when the client has ended its stream and every
/// reply fits the socket at once, writes the replies and is done (the caller closes).
fn answer(conn: &mut Conn, stream: &std::net::TcpStream) -> AtOnce {
    let mut chunk = [0u8; 4096];
    let mut stream_ref = stream;
    let mut got = false;
    while conn.input.buf.len() < READ_CHUNK {
        match stream_ref.read(&mut chunk) {
            Ok(0) => {
                conn.input.stop = Stop::Eof;
                break;
            }
            Ok(n) => {
                got = true;
                conn.input.buf.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return AtOnce::Failed(e),
        }
    }
    if !got && conn.input.stop != Stop::Eof {
        return AtOnce::Nothing;
    }
    let mut more = false;
    if !conn.input.buf.is_empty() {
        more = match conn.process_lines(crate::driver::Turn::none()) {
            Ok(more) => more,
            Err(handshake) => return AtOnce::Handshake(handshake),
        };
    }
    let output = &mut conn.output;
    output.collect_ready();
    if more || conn.input.held || conn.input.stop != Stop::Eof || !output.queue.is_empty() {
        return AtOnce::Continue;
    }
    let mut written = 0;
    while written < output.out.len() {
        match stream_ref.write(&output.out[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return AtOnce::Failed(e),
        }
    }
    output.wrote |= written > 0;
    if written == output.out.len() {
        return AtOnce::Done;
    }
    output.out.drain(..written);
    AtOnce::Continue
}
