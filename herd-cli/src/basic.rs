//! The commands for people and scripts: `iamat`, `whatsat` and `send`.

use clap::Args;
use herd_core::protocol::{write_iamat, write_whatsat};
use herd_core::{ClientId, ClientTime, Location, MaxItems, RadiusKm};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::mpsc;

use crate::config::single_target;
use crate::conn::{Conn, ReplyReader, Writer, MAX_REPLY_LINE};
use crate::error::{Failure, EXIT_INVALID};
use crate::output::print_reply;
use crate::reply::{unknown_client_of, why_invalid, Expect, Reply};
use crate::util::{now_nanos, write_posix};
use crate::Global;

/// Arguments of `iamat`.
#[derive(Debug, Args)]
pub(crate) struct IamatArgs {
    /// Client id (no white space).
    client: String,
    /// ISO 6709 location, e.g. +34.068930-118.445127.
    #[arg(allow_hyphen_values = true)]
    location: String,
    /// Client time, POSIX seconds with an optional fraction; now (to the nanosecond) by default.
    #[arg(long, value_name = "POSIX")]
    time: Option<String>,
}

/// Arguments of `whatsat`.
#[derive(Debug, Args)]
pub(crate) struct WhatsatArgs {
    /// Client id.
    client: String,
    /// Radius in km, more than 0 and at most 50.
    radius_km: String,
    /// Most places to return, 1 to 20.
    max_items: String,
}

/// Arguments of `send`.
#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// Lines to send as they are (each gets a `\n`); stdin is read when none are given.
    #[arg(allow_hyphen_values = true)]
    lines: Vec<String>,
}

fn bad(what: &str, value: &str, hint: &str) -> Failure {
    Failure::usage(format!("bad {what} {value:?}: {hint}"))
}

/// Validates a client id given on the command line.
fn client_id(text: &str) -> Result<ClientId, Failure> {
    ClientId::new(text.as_bytes()).map_err(|_| {
        bad(
            "client id",
            text,
            "it must be non-empty, without white space",
        )
    })
}

/// `iamat`: one IAMAT, half-close, print the reply.
pub(crate) async fn iamat(g: &Global, a: IamatArgs) -> Result<u8, Failure> {
    let client = client_id(&a.client)?;
    let location = Location::parse(a.location.as_bytes()).map_err(|_| {
        bad(
            "location",
            &a.location,
            "expected ISO 6709 like +34.068930-118.445127",
        )
    })?;
    let mut time = Vec::new();
    match &a.time {
        Some(t) => {
            ClientTime::parse(t.as_bytes()).map_err(|_| {
                bad(
                    "time",
                    t,
                    "expected POSIX seconds like 1520023934.918963997",
                )
            })?;
            time.extend_from_slice(t.as_bytes());
        }
        None => write_posix(now_nanos(), &mut time),
    }
    let mut line = Vec::new();
    write_iamat(client.as_bytes(), location.as_bytes(), &time, &mut line);
    one_request(g, line).await
}

/// `whatsat`: one WHATSAT, half-close, print the AT line and the JSON.
pub(crate) async fn whatsat(g: &Global, a: WhatsatArgs) -> Result<u8, Failure> {
    let client = client_id(&a.client)?;
    RadiusKm::parse(a.radius_km.as_bytes()).map_err(|_| {
        bad(
            "radius",
            &a.radius_km,
            "expected km, more than 0 and at most 50",
        )
    })?;
    let max = MaxItems::parse(a.max_items.as_bytes())
        .map_err(|_| bad("max items", &a.max_items, "expected 1 to 20"))?;
    let mut line = Vec::new();
    write_whatsat(client.as_bytes(), &a.radius_km, max, &mut line);
    one_request(g, line).await
}

/// Sends `line` (ending in `\n`) the way the assignment's client does and prints the reply.
async fn one_request(g: &Global, line: Vec<u8>) -> Result<u8, Failure> {
    let target = single_target(&g.server, &g.to, g.config.as_deref())?;
    let mut conn = Conn::to(&target, g.client_tls()?.as_ref(), g.timeout).await?;
    conn.writer.write(&line).await?;
    conn.writer.finish().await?;
    let request = line.strip_suffix(b"\n").unwrap_or(&line);
    let reply = conn.reader.reply(Expect::of(request)).await?;
    print_reply(&reply, request, g.json)?;
    let code = exit_code(&reply);
    if code == EXIT_INVALID {
        eprintln!(
            "herd-cli: the server answered `? `: {}",
            why_invalid(request)
        );
    }
    Ok(code)
}

fn exit_code(reply: &Reply) -> u8 {
    if reply.is_invalid() {
        EXIT_INVALID
    } else {
        0
    }
}

/// A line as the server will frame it: without `\n`, and without a `\r` just before it.
fn message_of(raw: &[u8]) -> &[u8] {
    raw.strip_suffix(b"\r").unwrap_or(raw)
}

/// `send`: raw lines out, each reply printed in order; blank lines get none.
pub(crate) async fn send(g: &Global, a: SendArgs) -> Result<u8, Failure> {
    let target = single_target(&g.server, &g.to, g.config.as_deref())?;
    let conn = Conn::to(&target, g.client_tls()?.as_ref(), g.timeout).await?;
    // The writer tells the reader, in order, which requests wait for a reply.
    let (tx, rx) = mpsc::unbounded_channel();
    let from_args = !a.lines.is_empty();
    let lines = a.lines;
    let mut writer = conn.writer;
    let writing = tokio::spawn(async move {
        if from_args {
            for arg in &lines {
                for raw in arg.as_bytes().split(|&b| b == b'\n') {
                    send_line(&mut writer, raw, &tx).await?;
                }
            }
        } else {
            send_stdin(&mut writer, &tx).await?;
        }
        drop(tx);
        writer.finish().await
    });
    // A reader error ends the command at once (the writer may be waiting on stdin); a writer
    // error only once the replies to what was already sent are printed.
    let read = print_replies(conn.reader, rx, g.json).await;
    let code = match read {
        Ok(code) => code,
        Err(e) => {
            writing.abort();
            return Err(e);
        }
    };
    writing
        .await
        .map_err(|e| Failure::net(format!("the sending task failed: {e}")))??;
    Ok(code)
}

async fn send_line(
    writer: &mut Writer,
    raw: &[u8],
    tx: &mpsc::UnboundedSender<(Expect, Vec<u8>)>,
) -> Result<(), Failure> {
    let mut bytes = Vec::with_capacity(raw.len() + 1);
    bytes.extend_from_slice(raw);
    bytes.push(b'\n');
    let message = message_of(raw);
    let expect = Expect::of(message);
    if expect != Expect::Nothing {
        // The reader may have stopped on an error; the writer then finishes unheard.
        let _ = tx.send((expect, message.to_vec()));
    }
    writer.write(&bytes).await
}

async fn send_stdin(
    writer: &mut Writer,
    tx: &mpsc::UnboundedSender<(Expect, Vec<u8>)>,
) -> Result<(), Failure> {
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    loop {
        line.clear();
        let limit = u64::try_from(MAX_REPLY_LINE).unwrap_or(u64::MAX);
        let n = (&mut stdin)
            .take(limit + 1)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| Failure::usage(format!("reading stdin: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        let raw = match line.strip_suffix(b"\n") {
            Some(raw) => raw,
            None if line.len() > MAX_REPLY_LINE => {
                return Err(Failure::usage(format!(
                    "a stdin line is longer than {MAX_REPLY_LINE} bytes"
                )))
            }
            None => &line,
        };
        send_line(writer, raw, tx).await?;
    }
}

async fn print_replies(
    mut reader: ReplyReader<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
    mut rx: mpsc::UnboundedReceiver<(Expect, Vec<u8>)>,
    json: bool,
) -> Result<u8, Failure> {
    let (mut replies, mut invalid) = (0u64, 0u64);
    let mut unknown = Unknown::default();
    while let Some((expect, request)) = rx.recv().await {
        let reply = reader.reply(expect).await?;
        print_reply(&reply, &request, json)?;
        replies += 1;
        if exit_code(&reply) == EXIT_INVALID {
            invalid += 1;
            if let Some(client) = unknown_client_of(&request) {
                unknown.add(client);
            }
        }
    }
    reader.expect_end().await?;
    if invalid > 0 {
        eprintln!(
            "herd-cli: the server answered `? ` to {invalid} of {replies} requests{}",
            unknown.describe()
        );
        return Ok(EXIT_INVALID);
    }
    Ok(0)
}

/// The clients of the well-formed WHATSATs answered `? ` (the herd does not know them).
#[derive(Debug, Default)]
struct Unknown {
    count: u64,
    /// The first few, for the message.
    names: Vec<String>,
}

impl Unknown {
    /// Clients named in the message; the rest are counted.
    const SHOWN: usize = 5;

    fn add(&mut self, client: &[u8]) {
        self.count += 1;
        if self.names.len() < Self::SHOWN {
            let mut name = String::from_utf8_lossy(&client[..client.len().min(80)]).into_owned();
            if client.len() > 80 {
                name.push('…');
            }
            self.names.push(name);
        }
    }

    /// `" (2 of them WHATSATs for clients the herd does not know: a, b)"`, or nothing.
    fn describe(&self) -> String {
        if self.count == 0 {
            return String::new();
        }
        let more = self.count - self.names.len() as u64;
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        let what = if self.count == 1 {
            "a WHATSAT for a client"
        } else {
            "WHATSATs for clients"
        };
        format!(
            " ({} of them {what} the herd does not know: {}{more})",
            self.count,
            self.names.join(", ")
        )
    }
}
