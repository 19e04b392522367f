//! A trivial server that answers client lines as fast as it can, with herd-core's grammar and
//! no store, no peers and no Places: it stands in for a server that costs nothing, so a `load`
//! run against it measures the load generator itself.
//!
//! Answers: IAMAT → `AT <name> <diff> <client> <location> <time>` with a real diff; WHATSAT →
//! `AT <name> +0.000000000 <client> +0+0 0`, an empty `ZERO_RESULTS` places JSON and the empty
//! line; anything else → `? <line>`; blank lines → nothing (herd-cli's reply type writes them:
//! [`write_stateless_answer`]). Every batch of lines read at once is answered with one write.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use herd_core::{ServerName, Timestamp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::error::Failure;
use crate::reply::{write_stateless_answer, FixedPlaces};
use crate::util::now_nanos;
use crate::Global;

/// Longest line the echo server accepts (as the herd's default); a longer one closes.
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// Arguments of `echo-server`.
#[derive(Debug, Args)]
pub(crate) struct EchoArgs {
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:12999")]
    listen: String,
    /// Server name in the AT replies.
    #[arg(long, default_value = "Echo")]
    name: String,
    /// Runtime worker threads (all cores by default).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
}

/// What the echo server needs per connection, shared.
#[derive(Debug)]
pub(crate) struct Echo {
    name: ServerName,
    /// The places of every WHATSAT reply.
    places: FixedPlaces,
}

impl Echo {
    /// An echo server calling itself `name`.
    pub(crate) fn new(name: ServerName) -> Self {
        let places =
            serde_json::json!({"html_attributions": [], "results": [], "status": "ZERO_RESULTS"});
        Self {
            name,
            places: FixedPlaces::new(places),
        }
    }

    /// Answers every complete line of `input` into `out`; returns the bytes consumed.
    /// With `eof`, a final line without `\n` is answered too.
    pub(crate) fn answer(
        &self,
        input: &[u8],
        eof: bool,
        now: Timestamp,
        out: &mut Vec<u8>,
    ) -> usize {
        let mut consumed = 0;
        while let Some(pos) = input[consumed..].iter().position(|&b| b == b'\n') {
            let raw = &input[consumed..consumed + pos];
            self.answer_line(raw.strip_suffix(b"\r").unwrap_or(raw), now, out);
            consumed += pos + 1;
        }
        if eof && consumed < input.len() {
            self.answer_line(&input[consumed..], now, out);
            consumed = input.len();
        }
        consumed
    }

    fn answer_line(&self, line: &[u8], now: Timestamp, out: &mut Vec<u8>) {
        write_stateless_answer(&self.name, now, line, &self.places, out);
    }
}

fn now() -> Timestamp {
    Timestamp(u64::try_from(now_nanos()).unwrap_or(u64::MAX))
}

/// Serves connections on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, echo: Arc<Echo>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, Arc::clone(&echo)));
            }
            // Out of descriptors and the like: wait a little instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn connection(mut stream: TcpStream, echo: Arc<Echo>) {
    let _ = stream.set_nodelay(true);
    let mut input = Vec::with_capacity(16 * 1024);
    let mut out = Vec::with_capacity(16 * 1024);
    loop {
        if input.capacity() - input.len() < 4096 {
            input.reserve(16 * 1024);
        }
        let Ok(n) = stream.read_buf(&mut input).await else {
            return;
        };
        let eof = n == 0;
        let consumed = echo.answer(&input, eof, now(), &mut out);
        input.drain(..consumed);
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if eof || input.len() > MAX_LINE {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// Binds `addr` and serves in the background; returns the bound address.
pub(crate) async fn spawn(addr: &str, name: ServerName) -> Result<std::net::SocketAddr, Failure> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::net(format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::net(format!("cannot read the listening address: {e}")))?;
    tokio::spawn(serve(listener, Arc::new(Echo::new(name))));
    Ok(local)
}

/// `echo-server`: serves until interrupted.
pub(crate) async fn run(_g: &Global, a: EchoArgs) -> Result<u8, Failure> {
    let name = ServerName::new(&a.name)
        .map_err(|_| Failure::usage(format!("bad server name {:?}", a.name)))?;
    let local = spawn(&a.listen, name).await?;
    println!("echo-server listening on {local}");
    let _ = std::io::Write::flush(&mut std::io::stdout());
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| Failure::net(format!("waiting for ctrl-c: {e}")))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_each_kind_of_line() {
        let echo = Echo::new(ServerName::new("E").unwrap());
        let mut out = Vec::new();
        let input = b"IAMAT k +1+2 10.5\n\nBAD  x\r\nWHATSAT k 1 1\nIAMAT tail +1+2 11";
        let used = echo.answer(input, false, Timestamp(12_000_000_000), &mut out);
        assert_eq!(used, input.len() - b"IAMAT tail +1+2 11".len());
        let want = b"AT E +1.500000000 k +1+2 10.5\n? BAD  x\nAT E +0.000000000 k +0+0 0\n{\n   \"html_attributions\" : [],\n   \"results\" : [],\n   \"status\" : \"ZERO_RESULTS\"\n}\n\n";
        assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(want));
        out.clear();
        let rest = &input[used..];
        assert_eq!(
            echo.answer(rest, true, Timestamp(11_000_000_000), &mut out),
            rest.len()
        );
        assert_eq!(out, b"AT E +0.000000000 tail +1+2 11\n");
    }
}
