//! Logging: one file per server (`DIR/NAME.log`, appended), events routed by server.
//!
//! Every task of a server is tagged with the server's index ([`herd_net::scope`]); the file
//! writer sends each event to the tagged server's file, and events from outside any server
//! (start-up, shutdown of the process) to every file. Files are written by background
//! threads (one per file: loggers append whole lines to a shared buffer, the thread writes
//! each accumulated batch with one system call, never dropping lines) so logging every message
//! does not stall the servers; dropping [`LogGuards`] flushes them. `RUST_LOG` is honoured
//! (default `info`); warnings and errors also go to stderr.

use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;

use herd_core::ServerName;
use herd_net::MessageLog;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Bytes a log file may have waiting for its writer thread before loggers wait for the disk
/// (lines are never dropped).
const MAX_PENDING: usize = 8 * 1024 * 1024;
/// How long the writer lets lines gather after a small write (a line reaches its file within
/// about this long). Under a moderate load it keeps the writer threads' wake-ups, which
/// compete with the servers' threads for the cores, to about a hundred per second per file.
const GATHER_QUIET: std::time::Duration = std::time::Duration::from_millis(10);
/// How long the writer lets lines gather after a large write: under heavy logging the
/// batches stay small enough to be cheap to fill and the pending buffer stays small.
const GATHER_BUSY: std::time::Duration = std::time::Duration::from_millis(1);
/// A write of at least this many bytes is large (the next gather is [`GATHER_BUSY`]).
const BUSY_BATCH: usize = 64 * 1024;
/// A writer batch buffer grown past this is given back after its write.
const KEEP_CAPACITY: usize = 1024 * 1024;

/// The bulk message logs of the servers, by log index, once [`init`] ran.
static MESSAGE_LOGS: OnceLock<Vec<Arc<dyn MessageLog>>> = OnceLock::new();

/// The bulk message log of server `index`, if file logging is installed and client messages
/// are enabled at `info` by `RUST_LOG`.
pub fn message_log(index: usize) -> Option<Arc<dyn MessageLog>> {
    MESSAGE_LOGS.get()?.get(index).cloned()
}

/// What loggers and the writer thread of one file share.
#[derive(Debug, Default)]
struct Pending {
    /// Bytes appended and not yet taken by the writer.
    buf: Vec<u8>,
    /// The writer sleeps until woken (so a logger only signals when it has to).
    writer_asleep: bool,
    /// Loggers waiting for room.
    full_waiters: usize,
    /// No more writes: the writer drains what is left and stops.
    closed: bool,
}

/// One log file: loggers append whole lines to a shared buffer under a short lock; a
/// background thread swaps the buffer out and writes it with one system call.
#[derive(Debug, Default)]
struct LogFile {
    pending: Mutex<Pending>,
    /// Wakes the writer.
    work: Condvar,
    /// Wakes loggers waiting for room.
    room: Condvar,
}

impl LogFile {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Appending bytes cannot leave the buffer inconsistent, even after a panic.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `bytes` (whole lines); waits for room when the writer is far behind.
    fn append(&self, bytes: &[u8]) {
        let mut p = self.lock();
        while p.buf.len() >= MAX_PENDING && !p.closed {
            p.full_waiters += 1;
            p = self.room.wait(p).unwrap_or_else(|e| e.into_inner());
            p.full_waiters -= 1;
        }
        p.buf.extend_from_slice(bytes);
        if p.writer_asleep {
            p.writer_asleep = false;
            drop(p);
            self.work.notify_one();
        }
    }

    /// The writer thread's loop: returns once closed and drained.
    fn write_out(&self, mut file: std::fs::File) {
        let mut batch = Vec::new();
        let mut failed = false;
        loop {
            {
                let mut p = self.lock();
                while p.buf.is_empty() {
                    if p.closed {
                        return;
                    }
                    p.writer_asleep = true;
                    p = self.work.wait(p).unwrap_or_else(|e| e.into_inner());
                }
                std::mem::swap(&mut p.buf, &mut batch);
                if p.full_waiters > 0 {
                    self.room.notify_all();
                }
            }
            if let Err(e) = file.write_all(&batch) {
                if !std::mem::replace(&mut failed, true) {
                    eprintln!("herd-server: cannot write a log file: {e}");
                }
            }
            let gather = if batch.len() >= BUSY_BATCH {
                GATHER_BUSY
            } else {
                GATHER_QUIET
            };
            batch.clear();
            if batch.capacity() > KEEP_CAPACITY {
                batch = Vec::new();
            }
            // Let lines gather for a moment: loggers do not wake a writer that is not asleep,
            // so under load the file gets a few large writes instead of one per batch.
            std::thread::sleep(gather);
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.work.notify_one();
        self.room.notify_all();
    }
}

/// A server's file, as a bulk message log.
struct FileMessageLog(Arc<LogFile>);

impl MessageLog for FileMessageLog {
    fn write_lines(&self, lines: &[u8]) {
        self.0.append(lines);
    }
}

/// Keeps the log writer threads alive; dropping it flushes every file.
#[must_use = "dropping the guards stops file logging"]
#[derive(Debug)]
pub struct LogGuards(Vec<(Arc<LogFile>, Option<JoinHandle<()>>)>);

impl Drop for LogGuards {
    fn drop(&mut self) {
        for (file, _) in &self.0 {
            file.close();
        }
        for (_, thread) in &mut self.0 {
            if let Some(t) = thread.take() {
                // A writer that panicked has nothing left to flush.
                let _ = t.join();
            }
        }
    }
}

/// A handle that writes into a [`LogFile`].
#[derive(Debug, Clone)]
struct FileWriter(Arc<LogFile>);

impl Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Routes each event to its server's file.
#[derive(Clone)]
struct Router {
    files: Vec<FileWriter>,
}

/// The writer of one event.
enum Route {
    One(FileWriter),
    All(Vec<FileWriter>),
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
        let log = Arc::new(LogFile::default());
        let writer_log = log.clone();
        let thread = std::thread::Builder::new()
            .name("herd-log".into())
            .spawn(move || writer_log.write_out(file))
            .with_context(|| format!("cannot start the writer of {}", path.display()))?;
        let writer = FileWriter(log.clone());
        let guard = (log, Some(thread));
        files.push(writer);
        guards.push(guard);
    }
    let logs: Vec<Arc<dyn MessageLog>> = files
        .iter()
        .map(|w| Arc::new(FileMessageLog(w.0.clone())) as Arc<dyn MessageLog>)
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
