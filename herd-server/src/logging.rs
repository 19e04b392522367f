//! Logging: one file per server (`DIR/NAME.log`, appended), events routed by server.
//!
//! Every task of a server is tagged with the server's index ([`herd_net::scope`]); the file
//! writer sends each event to the tagged server's file, and events from outside any server
//! (start-up, shutdown of the process) to every file. Files are written by background
//! threads (one per file: loggers append whole lines to a shared buffer, the thread writes
//! each accumulated batch with one system call) so logging every message does not stall the
//! servers; dropping [`LogGuards`] flushes them. `RUST_LOG` is honoured (default `info`; an
//! invalid one is an error, [`filter_from_env`]); every warning and error that it lets
//! through also goes to stderr (without colour unless stderr is a terminal; never in files).
//! Lines are text or JSON ([`LogFormat`]).
//!
//! One layer formats each event once and writes it to the file(s) and, for a warning or an
//! error, to stderr; the filter is global. (Two layers with a filter each would lose events:
//! a `tracing::enabled!` check, which herd-net makes before each batch of client messages,
//! leaves the per-layer filter state of the next event on that thread stale, and the
//! warn-only layer then skipped, for instance, the over-long-line warning.)
//!
//! A logger never waits for the disk: when a file's writer is [`MAX_PENDING`] bytes behind,
//! new lines for that file are dropped and counted ([`dropped_lines`]); at most once a second
//! the writer says how many in the file and on stderr. Lines that are written keep their
//! order. A file that would grow past [`Rotation::max_bytes`] is rotated
//! (`NAME.log` → `NAME.log.1` → … → `NAME.log.KEEP`, always between two lines), and
//! [`reopen`] (SIGHUP) makes every writer reopen `DIR/NAME.log`, for external log rotation.

use std::cell::RefCell;
use std::io::{self, IsTerminal as _, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use herd_core::ServerName;
use herd_net::MessageLog;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

mod line;

pub use line::LogFormat;
use line::Value;

/// Bytes a log file may have waiting for its writer thread; a line that does not fit is
/// dropped (and counted) rather than making its logger wait.
pub const MAX_PENDING: usize = 8 * 1024 * 1024;
/// The default size past which a log file is rotated (`--log-max-bytes`): 256 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// The default number of rotated files kept (`--log-keep`).
pub const DEFAULT_KEEP: usize = 5;
/// The shortest time between two notices of dropped lines in one file.
const NOTICE_EVERY: Duration = Duration::from_secs(1);
/// How long the writer lets lines gather after a small write (a line reaches its file within
/// about this long). Under a moderate load it keeps the writer threads' wake-ups, which
/// compete with the servers' threads for the cores, to about a hundred per second per file.
const GATHER_QUIET: Duration = Duration::from_millis(10);
/// How long the writer lets lines gather after a large write: under heavy logging the
/// batches stay small enough to be cheap to fill and the pending buffer stays small.
const GATHER_BUSY: Duration = Duration::from_millis(1);
/// A write of at least this many bytes is large (the next gather is [`GATHER_BUSY`]).
const BUSY_BATCH: usize = 64 * 1024;
/// A writer batch buffer grown past this is given back after its write.
const KEEP_CAPACITY: usize = 1024 * 1024;

/// The bulk message logs of the servers, by log index, once [`init`] ran.
static MESSAGE_LOGS: OnceLock<Vec<Arc<dyn MessageLog>>> = OnceLock::new();
/// The files of the servers, by log index, once [`init`] ran (for [`reopen`] and the counts).
static FILES: OnceLock<Vec<Arc<LogFile>>> = OnceLock::new();
/// Lines dropped in every file of the process since it started.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The bulk message log of server `index`, once file logging is installed in the text format
/// (in JSON every client message is a `tracing` event).
pub fn message_log(index: usize) -> Option<Arc<dyn MessageLog>> {
    MESSAGE_LOGS.get()?.get(index).cloned()
}

/// Log lines dropped so far in all files of this process because a writer fell behind
/// (never decreases; 0 before [`init`]).
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Log lines dropped so far in the file of server `index` (its log index); `None` before
/// [`init`] or for an index without a file.
pub fn dropped_lines_in(index: usize) -> Option<u64> {
    FILES
        .get()?
        .get(index)
        .map(|f| f.dropped.load(Ordering::Relaxed))
}

/// Asks every writer to reopen its `DIR/NAME.log` (creating it if it was moved away) once
/// the lines already logged are written to the old file; returns at once. Called on SIGHUP.
/// Each writer then logs `log file reopened` in the new file. Does nothing before [`init`].
pub fn reopen() {
    for f in FILES.get().into_iter().flatten() {
        f.request_reopen();
    }
}

/// When log files are rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// A file that would grow past this many bytes is rotated first (0: never). A single line
    /// longer than this is written alone into a fresh file.
    pub max_bytes: u64,
    /// Rotated files kept (`NAME.log.1` newest … `NAME.log.KEEP` oldest); 0 keeps none.
    pub keep: usize,
}

impl Default for Rotation {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            keep: DEFAULT_KEEP,
        }
    }
}

/// The number of lines in `bytes` (whole lines; at least 1 when not empty).
fn lines_in(bytes: &[u8]) -> u64 {
    (bytes.iter().filter(|&&b| b == b'\n').count() as u64).max(1)
}

/// Where a writer thread puts its batches.
trait Sink {
    /// Writes whole lines.
    fn write_lines(&mut self, lines: &[u8]) -> io::Result<()>;
    /// Reopens the destination (after it was moved away).
    fn reopen(&mut self) -> io::Result<()>;
}

/// A log file on disk, rotated by size.
#[derive(Debug)]
struct FileSink {
    path: PathBuf,
    file: std::fs::File,
    /// Bytes in the file now.
    len: u64,
    rotation: Rotation,
    /// A rotation failed and was reported; reset by the next one that works.
    rotate_failed: bool,
}

fn open_append(path: &Path) -> io::Result<(std::fs::File, u64)> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let len = file.metadata()?.len();
    Ok((file, len))
}

/// `path` with `.n` appended (`NAME.log.3`).
fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl FileSink {
    fn open(path: PathBuf, rotation: Rotation) -> io::Result<Self> {
        let (file, len) = open_append(&path)?;
        Ok(Self {
            path,
            file,
            len,
            rotation,
            rotate_failed: false,
        })
    }

    /// Moves `NAME.log` to `NAME.log.1` (shifting the older ones, the oldest overwritten)
    /// and starts a new `NAME.log`.
    fn rotate(&mut self) -> io::Result<()> {
        let keep = self.rotation.keep;
        if keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for n in (1..keep).rev() {
                match std::fs::rename(numbered(&self.path, n), numbered(&self.path, n + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, numbered(&self.path, 1))?;
        }
        let (file, len) = open_append(&self.path)?;
        self.file = file;
        self.len = len;
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }
}

impl Sink for FileSink {
    fn write_lines(&mut self, mut lines: &[u8]) -> io::Result<()> {
        let max = self.rotation.max_bytes;
        while !lines.is_empty() {
            let room = if max == 0 {
                u64::MAX
            } else {
                max.saturating_sub(self.len)
            };
            if lines.len() as u64 <= room {
                return self.append(lines);
            }
            // The whole lines that fit, or one line alone in an empty file.
            let fit = &lines[..usize::try_from(room).unwrap_or(usize::MAX)];
            let cut = match fit.iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None if self.len == 0 => lines
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(lines.len(), |i| i + 1),
                None => 0,
            };
            let (now, rest) = lines.split_at(cut);
            if !now.is_empty() {
                self.append(now)?;
            }
            lines = rest;
            if !lines.is_empty() {
                match self.rotate() {
                    Ok(()) => self.rotate_failed = false,
                    Err(e) => {
                        if !std::mem::replace(&mut self.rotate_failed, true) {
                            eprintln!(
                                "herd-server: cannot rotate the log file {}: {e}",
                                self.path.display()
                            );
                        }
                        // Keep writing where we are; try again after another max_bytes.
                        self.len = 0;
                    }
                }
            }
        }
        Ok(())
    }

    fn reopen(&mut self) -> io::Result<()> {
        let (file, len) = open_append(&self.path)?;
        self.file = file;
        self.len = len;
        Ok(())
    }
}

/// What loggers and the writer thread of one file share.
#[derive(Debug, Default)]
struct Pending {
    /// Bytes appended and not yet taken by the writer.
    buf: Vec<u8>,
    /// The writer sleeps until woken (so a logger only signals when it has to).
    writer_asleep: bool,
    /// Lines dropped since the last notice.
    unreported: u64,
    /// [`reopen`] was asked for.
    reopen: bool,
    /// No more writes: the writer drains what is left and stops.
    closed: bool,
}

/// One log file: loggers append whole lines to a shared buffer under a short lock; a
/// background thread swaps the buffer out and writes it with one system call.
#[derive(Debug)]
struct LogFile {
    /// The file's name in notices (`Welsh.log`).
    label: String,
    /// The layout of the lines the writer itself writes (notices).
    format: LogFormat,
    /// Bytes that may wait for the writer; more are dropped.
    max_pending: usize,
    pending: Mutex<Pending>,
    /// Wakes the writer.
    work: Condvar,
    /// Lines dropped in this file so far.
    dropped: AtomicU64,
}

impl LogFile {
    #[cfg(test)]
    fn new(label: String, max_pending: usize) -> Self {
        Self::with_format(label, max_pending, LogFormat::Text)
    }

    fn with_format(label: String, max_pending: usize, format: LogFormat) -> Self {
        Self {
            label,
            format,
            max_pending,
            pending: Mutex::default(),
            work: Condvar::new(),
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Appending bytes cannot leave the buffer inconsistent, even after a panic.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the writer if it sleeps (`p` is released first).
    fn wake(&self, mut p: MutexGuard<'_, Pending>) {
        if p.writer_asleep {
            p.writer_asleep = false;
            drop(p);
            self.work.notify_one();
        }
    }

    /// Appends `bytes` (whole lines), or drops them when the writer is too far behind to
    /// take them: never waits for the disk.
    fn append(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut p = self.lock();
        if p.buf.is_empty() || p.buf.len() + bytes.len() <= self.max_pending {
            p.buf.extend_from_slice(bytes);
            self.wake(p);
            return;
        }
        drop(p);
        // Counted outside the lock; the writer is awake (it has a full buffer to write).
        let n = lines_in(bytes);
        self.dropped.fetch_add(n, Ordering::Relaxed);
        DROPPED.fetch_add(n, Ordering::Relaxed);
        p = self.lock();
        p.unreported += n;
        self.wake(p);
    }

    fn request_reopen(&self) {
        let mut p = self.lock();
        p.reopen = true;
        self.wake(p);
    }

    /// One line of the file in the layout of the other lines.
    fn event_line(&self, level: &str, message: &str, fields: &[(&str, Value<'_>)]) -> Vec<u8> {
        let mut stamp = Vec::with_capacity(32);
        herd_net::msglog::push_timestamp(&mut stamp, herd_net::clock::now());
        line::line(self.format, &stamp, level, message, fields)
    }

    /// Writes the notice of `n` dropped lines to the file and stderr.
    fn notice(&self, sink: &mut impl Sink, n: u64) {
        let line = self.event_line(
            "WARN",
            "log lines dropped (the log writer fell behind)",
            &[
                ("file", Value::Str(&self.label)),
                ("dropped", Value::U64(n)),
                (
                    "total_dropped",
                    Value::U64(self.dropped.load(Ordering::Relaxed)),
                ),
            ],
        );
        // A failed write was reported by the writer already.
        let _ = sink.write_lines(&line);
        let _ = io::stderr().write_all(&line);
    }

    /// The writer thread's loop: returns once closed and drained.
    fn write_out(&self, sink: &mut impl Sink) {
        let mut batch = Vec::new();
        let mut failed = false;
        // When the last notice of dropped lines was written.
        let mut noticed: Option<Instant> = None;
        loop {
            let (reopen, dropped, closed) = {
                let mut p = self.lock();
                let mut notice_due;
                loop {
                    let wait = noticed
                        .map_or(Duration::ZERO, |t| NOTICE_EVERY.saturating_sub(t.elapsed()));
                    notice_due = p.unreported > 0 && wait.is_zero();
                    if !p.buf.is_empty() || p.reopen || p.closed || notice_due {
                        break;
                    }
                    p.writer_asleep = true;
                    p = if p.unreported > 0 {
                        self.work
                            .wait_timeout(p, wait)
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    } else {
                        self.work.wait(p).unwrap_or_else(|e| e.into_inner())
                    };
                    p.writer_asleep = false;
                }
                std::mem::swap(&mut p.buf, &mut batch);
                let dropped = if notice_due || p.closed {
                    std::mem::take(&mut p.unreported)
                } else {
                    0
                };
                (
                    std::mem::take(&mut p.reopen),
                    dropped,
                    p.closed && p.buf.is_empty(),
                )
            };
            if !batch.is_empty() {
                if let Err(e) = sink.write_lines(&batch) {
                    if !std::mem::replace(&mut failed, true) {
                        eprintln!("herd-server: cannot write the log file {}: {e}", self.label);
                    }
                }
            }
            if dropped > 0 {
                self.notice(sink, dropped);
                noticed = Some(Instant::now());
            }
            if reopen {
                match sink.reopen() {
                    Ok(()) => {
                        failed = false;
                        let _ =
                            sink.write_lines(&self.event_line("INFO", "log file reopened", &[]));
                    }
                    Err(e) => eprintln!(
                        "herd-server: cannot reopen the log file {}: {e}",
                        self.label
                    ),
                }
            }
            if closed {
                return;
            }
            let gather = if batch.len() >= BUSY_BATCH {
                GATHER_BUSY
            } else {
                GATHER_QUIET
            };
            let wrote = !batch.is_empty();
            batch.clear();
            if batch.capacity() > KEEP_CAPACITY {
                batch = Vec::new();
            }
            // Let lines gather for a moment: loggers do not wake a writer that is not asleep,
            // so under load the file gets a few large writes instead of one per batch.
            if wrote {
                std::thread::sleep(gather);
            }
        }
    }

    fn close(&self) {
        let mut p = self.lock();
        p.closed = true;
        p.writer_asleep = false;
        drop(p);
        self.work.notify_one();
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

/// Why `RUST_LOG` is not usable.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// `RUST_LOG` is not valid UTF-8.
    #[error("RUST_LOG is not valid UTF-8")]
    NotUnicode,
    /// A directive of `RUST_LOG` does not parse.
    #[error(
        "invalid RUST_LOG {value:?}: {reason} (e.g. RUST_LOG=info or RUST_LOG=warn,herd_net=debug)"
    )]
    Invalid {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The log filter from `RUST_LOG`: `info` when it is unset or empty.
///
/// # Errors
/// [`FilterError`] when `RUST_LOG` is set and not a valid filter (`herd=notalevel`), so a
/// typo is an error at start rather than a log that is silently empty.
pub fn filter_from_env() -> Result<EnvFilter, FilterError> {
    match std::env::var("RUST_LOG") {
        Err(std::env::VarError::NotPresent) => Ok(EnvFilter::new("info")),
        Err(std::env::VarError::NotUnicode(_)) => Err(FilterError::NotUnicode),
        Ok(v) if v.trim().is_empty() => Ok(EnvFilter::new("info")),
        Ok(v) => parse_filter(&v),
    }
}

/// `text` as a log filter (`RUST_LOG` syntax).
///
/// # Errors
/// [`FilterError::Invalid`] when a directive does not parse.
pub fn parse_filter(text: &str) -> Result<EnvFilter, FilterError> {
    EnvFilter::builder()
        .parse(text)
        .map_err(|e| FilterError::Invalid {
            value: text.to_owned(),
            reason: e.to_string(),
        })
}

/// A handle that writes into a [`LogFile`].
#[derive(Debug, Clone)]
struct FileWriter(Arc<LogFile>);

/// Where warnings and errors go besides the files.
#[derive(Debug, Clone, Copy)]
struct Stderr {
    /// Colour the level (only when stderr is a terminal, in the text format, and `NO_COLOR`
    /// is not set).
    colour: bool,
}

impl Stderr {
    /// Writes `line`, whose level word is `level_at` (text format), to stderr.
    fn write(self, line: &[u8], level: Level, level_at: Option<std::ops::Range<usize>>) {
        let mut err = io::stderr().lock();
        // Nothing sensible to do when stderr is gone.
        let _ = match level_at.filter(|_| self.colour) {
            Some(r) => err.write_all(&coloured(line, level, r)),
            None => err.write_all(line),
        };
    }
}

/// `line` with its level word (`at`) in red for an error, yellow otherwise.
fn coloured(line: &[u8], level: Level, at: std::ops::Range<usize>) -> Vec<u8> {
    let colour: &[u8] = if level == Level::ERROR {
        b"\x1b[31m"
    } else {
        b"\x1b[33m"
    };
    let at = at.start.min(line.len())..at.end.min(line.len());
    let mut out = Vec::with_capacity(line.len() + 10);
    out.extend_from_slice(&line[..at.start]);
    out.extend_from_slice(colour);
    out.extend_from_slice(&line[at.clone()]);
    out.extend_from_slice(b"\x1b[0m");
    out.extend_from_slice(&line[at.end..]);
    out
}

/// The one layer: formats each event once, writes it to its server's file (or every file)
/// and, for a warning or an error, to stderr.
struct HerdLayer {
    format: LogFormat,
    files: Vec<FileWriter>,
    stderr: Stderr,
}

/// Per-thread buffers of [`HerdLayer`] (reused from event to event).
#[derive(Default)]
struct Buffers {
    line: Vec<u8>,
    fields: Vec<u8>,
    message: String,
    scratch: String,
    stamp: Vec<u8>,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

/// Collects an event's message and formats its other fields.
struct Fields<'a> {
    format: LogFormat,
    out: &'a mut Vec<u8>,
    message: &'a mut String,
    has_message: bool,
    scratch: &'a mut String,
}

impl Fields<'_> {
    fn value(&mut self, field: &Field, value: Value<'_>) {
        // The metadata fields of `log` records (their target, file and line) are not shown.
        if !field.name().starts_with("log.") {
            line::push_field(self.out, self.format, field.name(), value);
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
            self.has_message = true;
        } else {
            self.value(field, Value::Str(value));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
            self.has_message = true;
        } else {
            let mut text = std::mem::take(self.scratch);
            text.clear();
            let _ = write!(text, "{value:?}");
            self.value(field, Value::Str(&text));
            *self.scratch = text;
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.value(field, Value::U64(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.value(field, Value::I64(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.value(field, Value::F64(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.value(field, Value::Bool(value));
    }
}

impl HerdLayer {
    fn write(&self, event: &Event<'_>, b: &mut Buffers) {
        b.line.clear();
        b.fields.clear();
        b.message.clear();
        b.stamp.clear();
        let mut fields = Fields {
            format: self.format,
            out: &mut b.fields,
            message: &mut b.message,
            has_message: false,
            scratch: &mut b.scratch,
        };
        event.record(&mut fields);
        let has_message = fields.has_message;
        let level = *event.metadata().level();
        herd_net::msglog::push_timestamp(&mut b.stamp, herd_net::clock::now());
        line::push_head(
            &mut b.line,
            self.format,
            &b.stamp,
            level.as_str(),
            has_message.then_some(b.message.as_str()),
        );
        b.line.extend_from_slice(&b.fields);
        line::push_tail(&mut b.line, self.format);
        match herd_net::scope::current().and_then(|i| self.files.get(i)) {
            Some(w) => w.0.append(&b.line),
            None => {
                for w in &self.files {
                    w.0.append(&b.line);
                }
            }
        }
        if level <= Level::WARN {
            // The level word of a text line: after the stamp and a space, right-aligned in 5.
            let at = (self.format == LogFormat::Text).then(|| {
                let end = b.stamp.len() + 6;
                end - level.as_str().len()..end
            });
            self.stderr.write(&b.line, level, at);
        }
    }
}

impl<S: Subscriber> Layer<S> for HerdLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        BUFFERS.with(|cell| match cell.try_borrow_mut() {
            Ok(mut b) => self.write(event, &mut b),
            // An event logged while formatting another (from a `Display`): fresh buffers.
            Err(_) => self.write(event, &mut Buffers::default()),
        });
    }
}

/// How the log files are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogSettings {
    /// When files are rotated.
    pub rotation: Rotation,
    /// Text or JSON lines.
    pub format: LogFormat,
}

/// Opens `dir/NAME.log` for each server (in `names` order = log index), rotated and
/// formatted as `settings` says, and installs the global subscriber with `filter` (see
/// [`filter_from_env`]). In the text format the servers' client messages are written in
/// bulk ([`message_log`]); in JSON each is a `tracing` event.
///
/// # Errors
/// When the directory cannot be created or a file cannot be opened.
pub fn init(
    dir: &Path,
    names: &[ServerName],
    settings: LogSettings,
    filter: EnvFilter,
) -> anyhow::Result<LogGuards> {
    use anyhow::Context as _;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create log directory {}", dir.display()))?;
    let mut files = Vec::with_capacity(names.len());
    let mut guards = Vec::with_capacity(names.len());
    for name in names {
        let label = format!("{name}.log");
        let path = dir.join(&label);
        let mut sink = FileSink::open(path.clone(), settings.rotation)
            .with_context(|| format!("cannot open log file {}", path.display()))?;
        let log = Arc::new(LogFile::with_format(label, MAX_PENDING, settings.format));
        let writer_log = log.clone();
        let thread = std::thread::Builder::new()
            .name("herd-log".into())
            .spawn(move || writer_log.write_out(&mut sink))
            .with_context(|| format!("cannot start the writer of {}", path.display()))?;
        let writer = FileWriter(log.clone());
        let guard = (log, Some(thread));
        files.push(writer);
        guards.push(guard);
    }
    if settings.format == LogFormat::Text {
        let logs: Vec<Arc<dyn MessageLog>> = files
            .iter()
            .map(|w| Arc::new(FileMessageLog(w.0.clone())) as Arc<dyn MessageLog>)
            .collect();
        // Only the first installation counts (one per process).
        let _ = MESSAGE_LOGS.set(logs);
    }
    let _ = FILES.set(files.iter().map(|w| w.0.clone()).collect());
    let colour = settings.format == LogFormat::Text
        && io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let layer = HerdLayer {
        format: settings.format,
        files,
        stderr: Stderr { colour },
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init()
        .context("cannot install the log subscriber")?;
    Ok(LogGuards(guards))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A sink whose writes wait until the test opens its gate; tells the test when a write
    /// began.
    struct Stalled {
        open: Arc<(Mutex<bool>, Condvar)>,
        began: mpsc::Sender<()>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Sink for Stalled {
        fn write_lines(&mut self, lines: &[u8]) -> io::Result<()> {
            let _ = self.began.send(());
            let (lock, cv) = &*self.open;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.out.lock().unwrap().extend_from_slice(lines);
            Ok(())
        }

        fn reopen(&mut self) -> io::Result<()> {
            self.out
                .lock()
                .unwrap()
                .extend_from_slice(b"--reopened--\n");
            Ok(())
        }
    }

    fn line(i: usize) -> Vec<u8> {
        // 100 bytes with the newline.
        format!("line {i:094}\n").into_bytes()
    }

    #[test]
    fn a_stalled_writer_never_blocks_loggers_drops_are_counted_and_noticed() {
        let open = Arc::new((Mutex::new(false), Condvar::new()));
        let out = Arc::new(Mutex::new(Vec::new()));
        let (began, write_began) = mpsc::channel();
        let file = Arc::new(LogFile::new("T.log".into(), 1024));
        let mut sink = Stalled {
            open: open.clone(),
            began,
            out: out.clone(),
        };
        let writer_file = file.clone();
        let writer = std::thread::spawn(move || writer_file.write_out(&mut sink));
        file.append(b"first\n");
        // The writer took "first" and is stuck writing it.
        write_began.recv_timeout(Duration::from_secs(5)).unwrap();
        let before = dropped_lines();
        let start = Instant::now();
        let mut slowest = Duration::ZERO;
        for i in 0..10_000 {
            let t = Instant::now();
            file.append(&line(i));
            slowest = slowest.max(t.elapsed());
        }
        let took = start.elapsed();
        // Ten 100-byte lines fit in 1024 pending bytes; the other 9990 are dropped.
        assert_eq!(file.dropped.load(Ordering::Relaxed), 9990);
        assert!(dropped_lines() >= before + 9990);
        // They all returned while the writer is still stuck: no logger waited for it. The
        // bounds only catch a gross stall (loose: the test machine may be busy).
        assert!(
            took < Duration::from_secs(5) && slowest < Duration::from_millis(500),
            "loggers waited: {took:?} in all, {slowest:?} at most"
        );
        *open.0.lock().unwrap() = true;
        open.1.notify_all();
        // The notice comes without any further line and without closing.
        let noticed = (0..500).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            String::from_utf8_lossy(&out.lock().unwrap()).contains("dropped=9990")
        });
        assert!(noticed, "no notice of the dropped lines");
        // Room again: lines are taken again.
        file.append(b"after\n");
        file.close();
        writer.join().unwrap();
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "first");
        for (i, l) in lines[1..11].iter().enumerate() {
            assert_eq!(format!("{l}\n").as_bytes(), line(i), "in order");
        }
        assert!(
            lines[11].contains(" WARN log lines dropped")
                && lines[11].contains("file=T.log dropped=9990 total_dropped=9990"),
            "{}",
            lines[11]
        );
        assert_eq!(lines[12..], ["after"]);
    }

    #[test]
    fn notices_come_at_most_once_a_second_and_at_close() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new((Mutex::new(true), Condvar::new()));
        let (began, _write_began) = mpsc::channel();
        // Nothing fits next to a pending line: every line but the first of a batch is dropped.
        let file = Arc::new(LogFile::new("N.log".into(), 1));
        let mut sink = Stalled {
            open,
            began,
            out: out.clone(),
        };
        let writer_file = file.clone();
        let writer = std::thread::spawn(move || writer_file.write_out(&mut sink));
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(1500) {
            file.append(b"x\n");
        }
        file.close();
        writer.join().unwrap();
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let notices: Vec<&str> = text.lines().filter(|l| l.contains("dropped=")).collect();
        // One at once, one a second later, the rest at close.
        assert!((2..=3).contains(&notices.len()), "{notices:?}");
        let sum: u64 = notices
            .iter()
            .map(|l| {
                let n = l.split("dropped=").nth(1).unwrap();
                n.split(' ').next().unwrap().parse::<u64>().unwrap()
            })
            .sum();
        assert_eq!(sum, file.dropped.load(Ordering::Relaxed));
        let written = text.lines().filter(|l| *l == "x").count() as u64;
        assert!(written > 0 && sum > 0);
    }

    #[test]
    fn reopen_comes_after_the_lines_logged_before_it() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new((Mutex::new(false), Condvar::new()));
        let (began, write_began) = mpsc::channel();
        let file = Arc::new(LogFile::new("R.log".into(), MAX_PENDING));
        let mut sink = Stalled {
            open: open.clone(),
            began,
            out: out.clone(),
        };
        let writer_file = file.clone();
        let writer = std::thread::spawn(move || writer_file.write_out(&mut sink));
        file.append(b"one\n");
        write_began.recv_timeout(Duration::from_secs(5)).unwrap();
        file.append(b"two\n");
        file.request_reopen();
        file.append(b"three\n");
        *open.0.lock().unwrap() = true;
        open.1.notify_all();
        std::thread::sleep(Duration::from_millis(50));
        file.append(b"four\n");
        file.close();
        writer.join().unwrap();
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..4],
            ["one", "two", "three", "--reopened--"],
            "{text}"
        );
        assert!(lines[4].ends_with("  INFO log file reopened"), "{text}");
        assert_eq!(lines[5..], ["four"]);
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    #[test]
    fn the_writers_own_lines_follow_the_format() {
        let file = LogFile::with_format("J.log".into(), 1, LogFormat::Json);
        file.dropped.store(7, Ordering::Relaxed);
        let out = Arc::new(Mutex::new(Vec::new()));
        let (began, _write_began) = mpsc::channel();
        let mut sink = Stalled {
            open: Arc::new((Mutex::new(true), Condvar::new())),
            began,
            out: out.clone(),
        };
        file.notice(&mut sink, 3);
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(
            v["message"],
            "log lines dropped (the log writer fell behind)"
        );
        assert_eq!(
            (&v["file"], &v["dropped"], &v["total_dropped"]),
            (&"J.log".into(), &3.into(), &7.into())
        );
        let reopened = file.event_line("INFO", "log file reopened", &[]);
        let v: serde_json::Value = serde_json::from_slice(&reopened).unwrap();
        assert_eq!(v["message"], "log file reopened");
    }

    #[test]
    fn only_the_level_word_is_coloured() {
        let line = b"2026-01-01T00:00:00.000000Z  WARN x y=1\n";
        let stamp = 27;
        let at = stamp + 6 - 4..stamp + 6;
        assert_eq!(
            coloured(line, Level::WARN, at),
            b"2026-01-01T00:00:00.000000Z  \x1b[33mWARN\x1b[0m x y=1\n"
        );
        let line = b"2026-01-01T00:00:00.000000Z ERROR x\n";
        assert_eq!(
            coloured(line, Level::ERROR, stamp + 1..stamp + 6),
            b"2026-01-01T00:00:00.000000Z \x1b[31mERROR\x1b[0m x\n"
        );
    }

    #[test]
    fn files_rotate_between_lines_and_keep_at_most_keep_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("S.log");
        let rotation = Rotation {
            max_bytes: 100,
            keep: 2,
        };
        let mut sink = FileSink::open(path.clone(), rotation).unwrap();
        let mut all = String::new();
        // Batches of a few lines of varying length (7 to 33 bytes).
        for b in 0..60 {
            let mut batch = String::new();
            for i in 0..(b % 4 + 1) {
                let l = format!("{b}-{i}-{}\n", "y".repeat((b * 7 + i) % 27));
                batch.push_str(&l);
            }
            sink.write_lines(batch.as_bytes()).unwrap();
            all.push_str(&batch);
        }
        assert!(!numbered(&path, 3).exists(), "at most 2 old files");
        let files = [numbered(&path, 2), numbered(&path, 1), path.clone()];
        let texts: Vec<String> = files.iter().map(|p| read(p)).collect();
        for (p, t) in files.iter().zip(&texts) {
            assert!(!t.is_empty(), "{} exists", p.display());
            assert!(t.len() <= 100, "{}: {} bytes", p.display(), t.len());
            assert!(t.ends_with('\n'), "{} ends with a whole line", p.display());
        }
        // Oldest to newest, they are the end of what was written, every line whole.
        let kept = texts.concat();
        assert!(all.ends_with(&kept));
        assert!(all[..all.len() - kept.len()].ends_with('\n'));
        // The two old files were full: adding their next line would have passed 100 bytes.
        let first_line_len = |t: &str| t.lines().next().unwrap().len() + 1;
        assert!(texts[0].len() + first_line_len(&texts[1]) > 100);
        assert!(texts[1].len() + first_line_len(&texts[2]) > 100);
    }

    #[test]
    fn a_line_longer_than_the_limit_is_alone_in_its_file_and_keep_zero_keeps_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("L.log");
        let mut sink = FileSink::open(
            path.clone(),
            Rotation {
                max_bytes: 10,
                keep: 0,
            },
        )
        .unwrap();
        sink.write_lines(b"abc\n").unwrap();
        sink.write_lines(b"a line of more than ten bytes\nxy\n")
            .unwrap();
        assert_eq!(read(&path), "xy\n");
        assert!(!numbered(&path, 1).exists());
        let mut sink = FileSink::open(
            path.clone(),
            Rotation {
                max_bytes: 10,
                keep: 3,
            },
        )
        .unwrap();
        sink.write_lines(b"a line of more than ten bytes\n")
            .unwrap();
        assert_eq!(read(&numbered(&path, 1)), "xy\n");
        assert_eq!(read(&path), "a line of more than ten bytes\n");
        sink.write_lines(b"z\n").unwrap();
        assert_eq!(read(&numbered(&path, 2)), "xy\n");
        assert_eq!(read(&numbered(&path, 1)), "a line of more than ten bytes\n");
        assert_eq!(read(&path), "z\n");
    }

    #[test]
    fn a_file_moved_away_is_created_again_on_reopen_and_the_size_counts_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("M.log");
        std::fs::write(&path, "0123456789\n").unwrap();
        let mut sink = FileSink::open(
            path.clone(),
            Rotation {
                max_bytes: 20,
                keep: 1,
            },
        )
        .unwrap();
        // 11 bytes were there already: 11 more do not fit.
        sink.write_lines(b"abcdefghij\n").unwrap();
        assert_eq!(read(&path), "abcdefghij\n");
        assert_eq!(read(&numbered(&path, 1)), "0123456789\n");
        let moved = dir.path().join("moved");
        std::fs::rename(&path, &moved).unwrap();
        sink.write_lines(b"old\n").unwrap();
        sink.reopen().unwrap();
        sink.write_lines(b"new\n").unwrap();
        assert_eq!(read(&moved), "abcdefghij\nold\n");
        assert_eq!(read(&path), "new\n");
    }
}
