//! One client connection, with every network wait bounded, and reply framing.
//!
//! A reply's shape follows from the request, read with herd-core's grammar: a blank line gets
//! no reply, an IAMAT or an invalid line one line, a WHATSAT either `? <line>` or the AT line
//! followed by JSON lines up to an empty line.

use std::time::Duration;

use herd_core::protocol::{parse_client_line, ClientLine};
use herd_core::Record;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::error::Failure;

/// Longest reply line accepted (a reply echoes a line of at most the server's limit, 64 KiB
/// by default); a longer one is a malformed reply.
pub(crate) const MAX_REPLY_LINE: usize = 1 << 20;
/// Most lines accepted in one WHATSAT reply's JSON.
pub(crate) const MAX_JSON_LINES: usize = 100_000;

/// What reply a request line gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    /// A blank line: no reply.
    Nothing,
    /// One line: an AT reply to IAMAT, or `? ` for an invalid line.
    Line,
    /// A WHATSAT: `? ` or the AT line, JSON lines and an empty line.
    Places,
}

impl Expect {
    /// The reply `line` (without terminator) gets, per herd-core's grammar.
    pub(crate) fn of(line: &[u8]) -> Self {
        match parse_client_line(line) {
            ClientLine::Blank => Self::Nothing,
            ClientLine::IAmAt(_) | ClientLine::Invalid(_) => Self::Line,
            ClientLine::WhatsAt(_) => Self::Places,
        }
    }
}

/// One reply from a server.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    /// An AT line (the reply to IAMAT).
    At(Record),
    /// A WHATSAT reply: the stored AT line and the places JSON text (without the final `\n\n`).
    Places {
        /// The stored record.
        record: Record,
        /// The JSON text as received.
        json: Vec<u8>,
    },
    /// `? <line>`: the echoed line.
    Invalid(Vec<u8>),
}

impl Reply {
    /// The reply's bytes exactly as the protocol writes them.
    pub(crate) fn wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Reply::At(r) => {
                out.extend_from_slice(r.at_line());
                out.push(b'\n');
            }
            Reply::Places { record, json } => {
                out.extend_from_slice(record.at_line());
                out.push(b'\n');
                out.extend_from_slice(json);
                out.extend_from_slice(b"\n\n");
            }
            Reply::Invalid(line) => {
                out.extend_from_slice(b"? ");
                out.extend_from_slice(line);
                out.push(b'\n');
            }
        }
        out
    }
}

/// Connects to `addr`, bounded by `timeout`.
pub(crate) async fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, Failure> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(Failure::net(format!("cannot connect to {addr}: {e}"))),
        Err(_) => Err(Failure::net(format!(
            "cannot connect to {addr}: no answer within {timeout:?}"
        ))),
    }
}

/// The reading side of a connection: buffered, bounded lines.
#[derive(Debug)]
pub(crate) struct ReplyReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    timeout: Duration,
    peer: String,
}

impl<R: AsyncRead + Unpin> ReplyReader<R> {
    /// Wraps a reader; `peer` names the server in messages.
    pub(crate) fn new(inner: R, timeout: Duration, peer: String) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(8192),
            start: 0,
            timeout,
            peer,
        }
    }

    /// The next line without its terminator; `None` at a clean end of stream.
    async fn line(&mut self) -> Result<Option<Vec<u8>>, Failure> {
        loop {
            if let Some(pos) = self.buf[self.start..].iter().position(|&b| b == b'\n') {
                let end = self.start + pos;
                // Servers end reply lines with a bare `\n`; a `\r` before it is part of an
                // echoed line, so it is kept.
                let line = self.buf[self.start..end].to_vec();
                self.start = end + 1;
                return Ok(Some(line));
            }
            if self.buf.len() - self.start > MAX_REPLY_LINE {
                return Err(Failure::net(format!(
                    "malformed reply from {}: a line over {MAX_REPLY_LINE} bytes",
                    self.peer
                )));
            }
            self.buf.drain(..self.start);
            self.start = 0;
            if self.fill().await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(Failure::net(format!(
                    "{} closed the connection in the middle of a reply line",
                    self.peer
                )));
            }
        }
    }

    async fn fill(&mut self) -> Result<usize, Failure> {
        self.buf.reserve(8192);
        match tokio::time::timeout(self.timeout, self.inner.read_buf(&mut self.buf)).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(Failure::net(format!("reading from {}: {e}", self.peer))),
            Err(_) => Err(Failure::net(format!(
                "no reply from {} within {:?}",
                self.peer, self.timeout
            ))),
        }
    }

    /// Reads the reply to a request of kind `expect` (not [`Expect::Nothing`]).
    pub(crate) async fn reply(&mut self, expect: Expect) -> Result<Reply, Failure> {
        let Some(first) = self.line().await? else {
            return Err(Failure::net(format!(
                "{} closed the connection without replying",
                self.peer
            )));
        };
        if let Some(echo) = first.strip_prefix(b"? ") {
            return Ok(Reply::Invalid(echo.to_vec()));
        }
        let record = Record::parse(&first).map_err(|e| {
            Failure::net(format!(
                "malformed reply from {} ({e}): {:?}",
                self.peer,
                String::from_utf8_lossy(&first)
            ))
        })?;
        if expect != Expect::Places {
            return Ok(Reply::At(record));
        }
        let json = self.json_lines().await?;
        Ok(Reply::Places { record, json })
    }

    /// JSON lines up to the empty line that ends a WHATSAT reply, joined with `\n`.
    async fn json_lines(&mut self) -> Result<Vec<u8>, Failure> {
        let mut json = Vec::new();
        for _ in 0..MAX_JSON_LINES {
            let Some(line) = self.line().await? else {
                return Err(Failure::net(format!(
                    "{} closed the connection before the end of a WHATSAT reply",
                    self.peer
                )));
            };
            if line.is_empty() {
                if json.last() == Some(&b'\n') {
                    json.pop();
                }
                return Ok(json);
            }
            json.extend_from_slice(&line);
            json.push(b'\n');
        }
        Err(Failure::net(format!(
            "malformed reply from {}: a WHATSAT reply over {MAX_JSON_LINES} lines",
            self.peer
        )))
    }

    /// Waits for the server to close after a half-close; extra bytes are a malformed reply.
    pub(crate) async fn expect_end(&mut self) -> Result<(), Failure> {
        match self.line().await? {
            None => Ok(()),
            Some(extra) => Err(Failure::net(format!(
                "unexpected bytes from {}: {:?}",
                self.peer,
                String::from_utf8_lossy(&extra)
            ))),
        }
    }
}

/// A connection split into a framed reader and a writer with bounded writes.
#[derive(Debug)]
pub(crate) struct Conn {
    /// The reading side.
    pub(crate) reader: ReplyReader<OwnedReadHalf>,
    /// The writing side.
    pub(crate) writer: Writer,
}

/// The writing side of a connection.
#[derive(Debug)]
pub(crate) struct Writer {
    inner: OwnedWriteHalf,
    timeout: Duration,
    peer: String,
}

impl Writer {
    /// Writes all of `bytes`, bounded by the timeout.
    pub(crate) async fn write(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        match tokio::time::timeout(self.timeout, self.inner.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure::net(format!("writing to {}: {e}", self.peer))),
            Err(_) => Err(Failure::net(format!(
                "{} took more than {:?} to accept a write",
                self.peer, self.timeout
            ))),
        }
    }

    /// Shuts down the writing side (the request stream's end).
    pub(crate) async fn finish(&mut self) -> Result<(), Failure> {
        match tokio::time::timeout(self.timeout, self.inner.shutdown()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure::net(format!(
                "closing the write side to {}: {e}",
                self.peer
            ))),
            Err(_) => Err(Failure::net(format!(
                "closing the write side to {} timed out",
                self.peer
            ))),
        }
    }
}

impl Conn {
    /// Connects to `addr`; `label` names it in messages.
    pub(crate) async fn open(addr: &str, label: &str, timeout: Duration) -> Result<Self, Failure> {
        let stream = connect(addr, timeout).await?;
        let peer = if label == addr {
            addr.to_string()
        } else {
            format!("{label} ({addr})")
        };
        let (r, w) = stream.into_split();
        Ok(Self {
            reader: ReplyReader::new(r, timeout, peer.clone()),
            writer: Writer {
                inner: w,
                timeout,
                peer,
            },
        })
    }

    /// Sends one request line (given without terminator) and reads its reply.
    pub(crate) async fn request(&mut self, line: &[u8]) -> Result<Reply, Failure> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
        self.writer.write(&bytes).await?;
        self.reader.reply(Expect::of(line)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(bytes: &'static [u8], expect: Expect) -> Result<Reply, Failure> {
        let mut r = ReplyReader::new(bytes, Duration::from_secs(1), "test".into());
        r.reply(expect).await
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn expectations_follow_the_grammar() {
        assert_eq!(Expect::of(b"  \t"), Expect::Nothing);
        assert_eq!(Expect::of(b"IAMAT a +1+2 3"), Expect::Line);
        assert_eq!(Expect::of(b"WHATSAT a 10 5"), Expect::Places);
        assert_eq!(Expect::of(b"WHATSAT a 51 5"), Expect::Line);
        assert_eq!(Expect::of(b"HELLO"), Expect::Line);
    }

    #[test]
    fn whatsat_reply_is_framed_by_the_empty_line() {
        let reply = rt()
            .block_on(read_all(
                b"AT A +0.000000001 c +1+2 3\n{\n   \"results\" : []\n}\n\nAT",
                Expect::Places,
            ))
            .unwrap();
        let Reply::Places { record, json } = &reply else {
            panic!("{reply:?}")
        };
        assert_eq!(record.at_line(), b"AT A +0.000000001 c +1+2 3");
        assert_eq!(json, b"{\n   \"results\" : []\n}");
        assert_eq!(
            reply.wire(),
            b"AT A +0.000000001 c +1+2 3\n{\n   \"results\" : []\n}\n\n"
        );
    }

    #[test]
    fn invalid_and_malformed_replies_are_told_apart() {
        let rt = rt();
        let r = rt.block_on(read_all(b"? WHATSAT x 1 1\n", Expect::Places));
        assert_eq!(r.unwrap(), Reply::Invalid(b"WHATSAT x 1 1".to_vec()));
        let err = rt.block_on(read_all(b"HELLO\n", Expect::Line)).unwrap_err();
        assert_eq!(err.code, 2);
        let err = rt.block_on(read_all(b"", Expect::Line)).unwrap_err();
        assert!(err.message.contains("without replying"), "{}", err.message);
        let err = rt
            .block_on(read_all(b"AT A +0.000000001 c +1+2 3\n{\n", Expect::Places))
            .unwrap_err();
        assert!(err.message.contains("before the end"), "{}", err.message);
    }
}
