//! One client connection, with every network wait bounded, and reply framing.
//!
//! A reply's shape follows from the request (see [`crate::reply`]): a blank line gets no
//! reply, an IAMAT or an invalid line one line, a WHATSAT either `? <line>` or the AT line
//! followed by JSON lines up to an empty line. This module brings the lines, bounded in size
//! and time; [`Reply`] makes a reply of them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::Target;
use crate::error::Failure;
use crate::reply::{Expect, Reply, Step};

/// The reading side of a plain or TLS connection.
type Read = Box<dyn AsyncRead + Send + Unpin>;
/// The writing side of a plain or TLS connection.
type Write = Box<dyn AsyncWrite + Send + Unpin>;

/// TLS towards the servers' TLS client addresses, verified against the herd's CA.
#[derive(Clone)]
pub(crate) struct ClientTls(TlsConnector);

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    /// TLS 1.3 trusting only the CA certificate(s) in `ca` (PEM).
    pub(crate) fn load(ca: &Path) -> Result<Self, Failure> {
        let bad = |e: &dyn std::fmt::Display| Failure::usage(format!("--ca {}: {e}", ca.display()));
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(&e))? {
            roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        }
        if roots.is_empty() {
            return Err(bad(&"no certificate in the file"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| bad(&e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self(TlsConnector::from(Arc::new(config))))
    }
}

/// Longest reply line accepted (a reply echoes a line of at most the server's limit, 64 KiB
/// by default); a longer one is a malformed reply.
pub(crate) const MAX_REPLY_LINE: usize = 1 << 20;
/// Most lines accepted in one WHATSAT reply's JSON.
pub(crate) const MAX_JSON_LINES: usize = 100_000;

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

    /// Sets the bound on each later read (a fence watcher waits for events unbounded).
    pub(crate) fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The next line without its terminator; `None` at a clean end of stream.
    pub(crate) async fn line(&mut self) -> Result<Option<Vec<u8>>, Failure> {
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
        let mut step = Reply::head(&first, expect).map_err(|e| {
            Failure::net(format!(
                "malformed reply from {} ({e}): {:?}",
                self.peer,
                String::from_utf8_lossy(&first)
            ))
        })?;
        // JSON lines follow up to the empty line that ends a WHATSAT reply.
        for _ in 0..MAX_JSON_LINES {
            let body = match step {
                Step::Done(reply) => return Ok(reply),
                Step::More(body) => body,
            };
            let Some(line) = self.line().await? else {
                return Err(Failure::net(format!(
                    "{} closed the connection before the end of a WHATSAT reply",
                    self.peer
                )));
            };
            step = body.line(&line);
        }
        match step {
            Step::Done(reply) => Ok(reply),
            Step::More(_) => Err(Failure::net(format!(
                "malformed reply from {}: a WHATSAT reply over {MAX_JSON_LINES} lines",
                self.peer
            ))),
        }
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
pub(crate) struct Conn {
    /// The reading side.
    pub(crate) reader: ReplyReader<Read>,
    /// The writing side.
    pub(crate) writer: Writer,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.writer.peer)
            .finish()
    }
}

/// The writing side of a connection.
pub(crate) struct Writer {
    inner: Write,
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
        Ok(Self::of(Box::new(r), Box::new(w), timeout, peer))
    }

    fn of(r: Read, w: Write, timeout: Duration, peer: String) -> Self {
        Self {
            reader: ReplyReader::new(r, timeout, peer.clone()),
            writer: Writer {
                inner: w,
                timeout,
                peer,
            },
        }
    }

    /// Connects to `target`: plainly, or with `tls` to its TLS client address, verifying that
    /// the server's certificate names it.
    pub(crate) async fn to(
        target: &Target,
        tls: Option<&ClientTls>,
        timeout: Duration,
    ) -> Result<Self, Failure> {
        let Some(tls) = tls else {
            return Self::open(&target.addr, &target.label, timeout).await;
        };
        let addr = target.tls_addr.as_deref().ok_or_else(|| {
            Failure::usage(format!(
                "{} has no TLS client address in the config (\"tls_listen\")",
                target.label
            ))
        })?;
        let name = ServerName::try_from(target.tls_name.clone()).map_err(|_| {
            Failure::usage(format!(
                "{:?} cannot be checked against a certificate",
                target.tls_name
            ))
        })?;
        let stream = connect(addr, timeout).await?;
        let peer = format!("{} ({addr}, TLS)", target.label);
        let stream = match tokio::time::timeout(timeout, tls.0.connect(name, stream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(Failure::net(format!("TLS with {peer}: {e}"))),
            Err(_) => {
                return Err(Failure::net(format!(
                    "TLS with {peer}: no handshake within {timeout:?}"
                )))
            }
        };
        let (r, w) = tokio::io::split(stream);
        Ok(Self::of(Box::new(r), Box::new(w), timeout, peer))
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
