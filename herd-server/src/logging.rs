//! Logging: one file per server (`DIR/NAME.log`, appended), events routed by server.
//!
//! Every task of a server is tagged with the server's index ([`herd_net::scope`]); the file
//! writer sends each event to the tagged server's file, and events from outside any server
//! (start-up, shutdown of the process) to every file. Files are written by background
//! threads (`tracing_appender::non_blocking`, never dropping lines) so logging every message
//! does not stall the servers; dropping [`LogGuards`] flushes them. `RUST_LOG` is honoured
//! (default `info`); warnings and errors also go to stderr.

use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use herd_core::ServerName;
use herd_net::MessageLog;
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Lines a log file's channel holds before writers wait for the disk.
const BUFFERED_LINES: usize = 256 * 1024;
/// Bytes the writer thread gathers before a write (flushed whenever the queue runs dry).
const FILE_BUFFER: usize = 256 * 1024;

/// The bulk message logs of the servers, by log index, once [`init`] ran.
static MESSAGE_LOGS: OnceLock<Vec<Arc<dyn MessageLog>>> = OnceLock::new();

/// The bulk message log of server `index`, if file logging is installed and client messages
/// are enabled at `info` by `RUST_LOG`.
pub fn message_log(index: usize) -> Option<Arc<dyn MessageLog>> {
    MESSAGE_LOGS.get()?.get(index).cloned()
}

/// A server's file, as a bulk message log.
struct FileMessageLog(NonBlocking);

impl MessageLog for FileMessageLog {
    fn write_lines(&self, lines: &[u8]) {
        // The writer thread takes the whole batch as one message; it never drops lines.
        let mut w = self.0.clone();
        let _ = w.write_all(lines);
    }
}

/// Keeps the log writer threads alive; dropping it flushes every file.
#[must_use = "dropping the guards stops file logging"]
#[derive(Debug)]
pub struct LogGuards(#[allow(dead_code)] Vec<WorkerGuard>);

/// Routes each event to its server's file.
#[derive(Clone)]
struct Router {
    files: Vec<NonBlocking>,
}

/// The writer of one event.
enum Route {
    One(NonBlocking),
    All(Vec<NonBlocking>),
}

impl Write for Route {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Route::One(w) => w.write(buf),
            Route::All(ws) => {
                for w in ws {
                    w.write_all(buf)?;
                }
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Route::One(w) => w.flush(),
            Route::All(ws) => ws.iter_mut().try_for_each(Write::flush),
        }
    }
}

impl<'a> MakeWriter<'a> for Router {
    type Writer = Route;

    fn make_writer(&'a self) -> Route {
        match herd_net::scope::current().and_then(|i| self.files.get(i)) {
            Some(w) => Route::One(w.clone()),
            None => Route::All(self.files.clone()),
        }
    }
}

/// Opens `dir/NAME.log` for each server (in `names` order = log index) and installs the
/// global subscriber.
///
/// # Errors
/// When the directory cannot be created or a file cannot be opened.
pub fn init(dir: &Path, names: &[ServerName]) -> anyhow::Result<LogGuards> {
    use anyhow::Context as _;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create log directory {}", dir.display()))?;
    let mut files = Vec::with_capacity(names.len());
    let mut guards = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open log file {}", path.display()))?;
        let (writer, guard) = NonBlockingBuilder::default()
            .lossy(false)
            .buffered_lines_limit(BUFFERED_LINES)
            .thread_name("herd-log")
            // The writer thread writes whole batches: one system call per burst, not per line.
            .finish(io::BufWriter::with_capacity(FILE_BUFFER, file));
        files.push(writer);
        guards.push(guard);
    }
    let logs: Vec<Arc<dyn MessageLog>> = files
        .iter()
        .map(|w| Arc::new(FileMessageLog(w.clone())) as Arc<dyn MessageLog>)
        .collect();
    // Only the first installation counts (one per process).
    let _ = MESSAGE_LOGS.set(logs);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let file_layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_target(false)
        .with_writer(Router { files })
        .with_filter(filter);
    let stderr_layer = tracing_subscriber::fmt::layer()
        .with_writer(io::stderr)
        .with_target(false)
        .with_filter(LevelFilter::WARN);
    tracing_subscriber::registry()
        .with(file_layer)
        .with(stderr_layer)
        .try_init()
        .context("cannot install the log subscriber")?;
    Ok(LogGuards(guards))
}
