//! The journal: every record a server stores, appended to a file before the reply that
//! acknowledges it is sent, so that an acknowledged update survives a crash of its server (a
//! killed process; the file is not fsynced, so not a power cut of the machine).
//!
//! Format: one AT line per record, `\n`-terminated, in store order (the same lines the peer
//! protocol carries). On start the server reads the file back into its store (newest per
//! client wins, so order and duplicates do not matter; a torn last line from a crash is
//! skipped) and rewrites it compacted: one line per client. While it runs, the file is
//! compacted again in the background whenever it holds more than twice as many lines as the
//! store (and at least `journal_compact_lines`, [`crate::Limits`], default [`COMPACT_FLOOR`]).
//!
//! A file with bad lines at start (a torn last line from a crash, or damage) is first copied
//! to `NAME.journal.damaged-<unix time>` (see [`damaged_path`]), so that the compacted rewrite,
//! which drops the bad lines, never destroys what was there: the copy can be inspected.
//!
//! With `fsync` each write is followed by `fdatasync` (and a compaction syncs the new file
//! and its directory before and after the rename), so acknowledged updates survive a power
//! cut too, at the cost of a disk flush per group of writes.
//!
//! Writes are grouped: records are appended to a shared buffer under the node's lock; a task
//! about to send replies calls [`Journal::flush_to`] with the buffer position it needs
//! written, and whichever task gets the file lock first writes everything pending (one
//! `write` for many connections' records).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use herd_core::store::Snapshot;
use herd_core::Record;
use tracing::{error, info, warn};

/// Default: the journal is compacted only once it holds at least this many lines.
pub const COMPACT_FLOOR: u64 = 100_000;

/// Where a server keeps its journal, and how hard it writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalSpec {
    /// The file.
    pub path: PathBuf,
    /// Whether every write is followed by `fdatasync`.
    pub fsync: bool,
}

/// What [`Journal::open`] found in an existing file.
#[derive(Debug)]
pub struct Restored {
    /// Records read back, in file order.
    pub records: Vec<Arc<Record>>,
    /// Lines that were not valid AT lines (a torn write at a crash, or damage), skipped.
    pub bad_lines: u64,
    /// Where the file as it was is kept, when it had bad lines.
    pub damaged_copy: Option<PathBuf>,
}

/// One server's journal file.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    pending: Mutex<Pending>,
    file: Mutex<FileState>,
    /// Bytes ever appended to `pending`.
    appended: AtomicU64,
    /// Bytes ever taken from `pending` and handed to the file (written, or failed and logged).
    written: AtomicU64,
    /// Lines in the file now (written, not pending).
    lines: AtomicU64,
    /// Bytes of whole lines in the file now; a compaction copies what was written after the
    /// value it saw when its snapshot was taken.
    file_len: AtomicU64,
    compacting: AtomicBool,
    floor: u64,
    fsync: bool,
    /// `NAME.journal.lock`, locked while this journal is open: two servers writing one journal
    /// would lose each other's records at the first compaction.
    _lock: File,
}

#[derive(Debug, Default)]
struct Pending {
    buf: Vec<u8>,
    lines: u64,
}

#[derive(Debug)]
struct FileState {
    file: File,
    /// Write errors so far (the first is logged as an error, later ones counted).
    errors: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing a panicking holder leaves behind breaks these invariants worse than a lost
    // buffer, which the next compaction repairs.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Journal {
    /// Opens the journal at `path` (creating it and its directory if missing) and reads back
    /// the records it holds. Call [`Journal::compact`] with the restored store next.
    ///
    /// # Errors
    /// The file or its directory cannot be created, read or opened for appending.
    pub fn open(path: &Path) -> std::io::Result<(Arc<Self>, Restored)> {
        Self::open_with(path, COMPACT_FLOOR, false)
    }

    /// [`Journal::open`] with another compaction floor (the file is never compacted below
    /// `floor` lines), and `fdatasync` after every write when `fsync` is set.
    ///
    /// # Errors
    /// As [`Journal::open`].
    pub fn open_with(
        path: &Path,
        floor: u64,
        fsync: bool,
    ) -> std::io::Result<(Arc<Self>, Restored)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.with_extension("journal.lock"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    "in use by another running server (its .lock file is locked)",
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        let mut restored = Restored {
            records: Vec::new(),
            bad_lines: 0,
            damaged_copy: None,
        };
        match File::open(path) {
            Ok(f) => {
                let mut reader = BufReader::with_capacity(1 << 16, f);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    if reader.read_until(b'\n', &mut line)? == 0 {
                        break;
                    }
                    let complete = line.last() == Some(&b'\n');
                    if complete {
                        line.pop();
                    }
                    match Record::parse(&line) {
                        Ok(r) if complete => restored.records.push(Arc::new(r)),
                        _ => restored.bad_lines += 1,
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if restored.bad_lines > 0 {
            // Before any rewrite drops the bad lines. A server that cannot keep the evidence
            // does not start: the rewrite would destroy it.
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let copy = damaged_path(path, unix);
            keep_copy(path, &copy).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot keep the damaged journal as {}: {e}", copy.display()),
                )
            })?;
            restored.damaged_copy = Some(copy);
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let file_len = file.metadata()?.len();
        let lines = restored.records.len() as u64 + restored.bad_lines;
        let journal = Arc::new(Self {
            path: path.to_owned(),
            pending: Mutex::new(Pending::default()),
            file: Mutex::new(FileState { file, errors: 0 }),
            appended: AtomicU64::new(0),
            written: AtomicU64::new(0),
            lines: AtomicU64::new(lines),
            file_len: AtomicU64::new(file_len),
            compacting: AtomicBool::new(false),
            floor,
            fsync,
            _lock: lock,
        });
        Ok((journal, restored))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record to the pending buffer (call under the node's lock, in store order).
    pub fn append(&self, record: &Record) {
        let line = record.at_line();
        let mut p = lock(&self.pending);
        p.buf.reserve(line.len() + 1);
        p.buf.extend_from_slice(line);
        p.buf.push(b'\n');
        p.lines += 1;
        self.appended
            .fetch_add(line.len() as u64 + 1, Ordering::Release);
    }

    /// The buffer position after everything appended so far: pass it to
    /// [`Journal::flush_to`] before acknowledging what was appended.
    pub fn appended(&self) -> u64 {
        self.appended.load(Ordering::Acquire)
    }

    /// Returns once everything appended up to `position` has been written to the file (by
    /// this call or a concurrent one). A write error is logged and counted; the records stay
    /// in memory and reach the file with the next compaction.
    pub fn flush_to(&self, position: u64) {
        if self.written.load(Ordering::Acquire) >= position {
            return;
        }
        let mut f = lock(&self.file);
        if self.written.load(Ordering::Acquire) >= position {
            return;
        }
        let (buf, lines) = {
            let mut p = lock(&self.pending);
            (std::mem::take(&mut p.buf), std::mem::take(&mut p.lines))
        };
        let n = buf.len() as u64;
        let written = f.file.write_all(&buf).and_then(|()| {
            if self.fsync {
                f.file.sync_data()
            } else {
                Ok(())
            }
        });
        match written {
            Ok(()) => {
                self.lines.fetch_add(lines, Ordering::Relaxed);
                self.file_len.fetch_add(n, Ordering::Release);
            }
            Err(e) => {
                f.errors += 1;
                if f.errors == 1 {
                    error!(path = %self.path.display(), error = %e, "journal write failed; acknowledged updates are not durable until the next compaction succeeds");
                }
            }
        }
        self.written.fetch_add(n, Ordering::Release);
    }

    /// Writes everything appended so far.
    pub fn flush(&self) {
        self.flush_to(self.appended());
    }

    /// Lines in the file now (written, not pending).
    pub fn lines(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    /// Write errors so far.
    pub fn errors(&self) -> u64 {
        lock(&self.file).errors
    }

    /// Whether the file has grown past twice `store_len` lines (and the floor) and no
    /// compaction is running: then call [`Journal::compact_in_background`].
    pub fn wants_compaction(&self, store_len: usize) -> bool {
        if self.compacting.load(Ordering::Acquire) {
            return false;
        }
        let limit = (2 * store_len as u64).max(self.floor);
        self.lines() > limit
    }

    /// Bytes of whole lines in the file now. Read it while nothing can be appended (under the
    /// node's lock, where the snapshot for [`Journal::compact_from`] is taken).
    pub fn len(&self) -> u64 {
        self.file_len.load(Ordering::Acquire)
    }

    /// Whether the file holds no line.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// [`Journal::compact_from`] when nothing has been written since `snapshot` was taken
    /// (at start).
    ///
    /// # Errors
    /// As [`Journal::compact_from`].
    pub fn compact(&self, snapshot: &[Arc<Record>]) -> std::io::Result<()> {
        self.compact_from(snapshot, self.len())
    }

    /// Rewrites the file as `snapshot` (the store's records when [`Journal::len`] was `since`),
    /// then what the file received after `since` (flushes that ran between the snapshot and
    /// this call), then whatever is pending; and swaps it in atomically (a crash meanwhile
    /// leaves the old file whole). Flushes wait while it runs.
    ///
    /// # Errors
    /// The new file cannot be written or renamed; the old one is then kept.
    pub fn compact_from<R: AsRef<Record>>(
        &self,
        snapshot: impl IntoIterator<Item = R>,
        since: u64,
    ) -> std::io::Result<()> {
        let mut f = lock(&self.file);
        let tmp = self.path.with_extension("journal.tmp");
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        let (mut bytes, mut records) = (0u64, 0u64);
        for r in snapshot {
            let r = r.as_ref();
            out.write_all(r.at_line())?;
            out.write_all(b"\n")?;
            bytes += r.at_line().len() as u64 + 1;
            records += 1;
        }
        // Records flushed to the old file after the snapshot was taken are in no snapshot:
        // copy them (records flushed before are in it; a few may be in both, which is harmless).
        let mut tail = Vec::new();
        {
            use std::io::{Read, Seek, SeekFrom};
            let mut old = File::open(&self.path)?;
            old.seek(SeekFrom::Start(since))?;
            old.read_to_end(&mut tail)?;
        }
        let tail_lines = tail.iter().filter(|&&b| b == b'\n').count() as u64;
        out.write_all(&tail)?;
        bytes += tail.len() as u64;
        let (buf, lines) = {
            let mut p = lock(&self.pending);
            (std::mem::take(&mut p.buf), std::mem::take(&mut p.lines))
        };
        let n = buf.len() as u64;
        let result = (|| {
            out.write_all(&buf)?;
            out.flush()?;
            let file = out.into_inner().map_err(|e| e.into_error())?;
            if self.fsync {
                file.sync_data()?;
            }
            drop(file);
            std::fs::rename(&tmp, &self.path)?;
            if self.fsync {
                if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    File::open(dir)?.sync_all()?;
                }
            }
            OpenOptions::new().append(true).open(&self.path)
        })();
        match result {
            Ok(file) => {
                f.file = file;
                self.lines
                    .store(records + tail_lines + lines, Ordering::Relaxed);
                self.file_len.store(bytes + n, Ordering::Release);
                self.written.fetch_add(n, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                // Keep the pending records: write them to the old file as a flush would.
                let _ = std::fs::remove_file(&tmp);
                match f.file.write_all(&buf) {
                    Ok(()) => {
                        self.lines.fetch_add(lines, Ordering::Relaxed);
                        self.file_len.fetch_add(n, Ordering::Release);
                    }
                    Err(_) => f.errors += 1,
                }
                self.written.fetch_add(n, Ordering::Release);
                Err(e)
            }
        }
    }

    /// Starts [`Journal::compact_from`] on its own thread (at most one at a time). Call it
    /// under the node's lock, right after taking `snapshot` there: the file's length is read
    /// now, so whatever is flushed after this call is copied into the new file.
    pub fn compact_in_background(self: &Arc<Self>, snapshot: Snapshot) {
        if self.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        let since = self.len();
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("herd-journal".into())
            .spawn(move || {
                let before = me.lines();
                match me.compact_from(snapshot.records(), since) {
                    Ok(()) => info!(path = %me.path.display(), before, after = me.lines(), "journal compacted"),
                    Err(e) => warn!(path = %me.path.display(), error = %e, "journal compaction failed; kept the old file"),
                }
                me.compacting.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the journal compaction thread");
            self.compacting.store(false, Ordering::Release);
        }
    }
}

/// Where a journal at `path` with bad lines found at `unix` time (seconds) is kept:
/// `NAME.journal.damaged-<unix>` beside it, or `...-<unix>-2` (and so on) when that exists.
pub fn damaged_path(path: &Path, unix: u64) -> PathBuf {
    let name = path.file_name().map_or_else(
        || std::ffi::OsString::from("journal"),
        std::ffi::OsStr::to_os_string,
    );
    let mut n = 1u32;
    loop {
        let mut kept = name.clone();
        kept.push(format!(".damaged-{unix}"));
        if n > 1 {
            kept.push(format!("-{n}"));
        }
        let candidate = path.with_file_name(kept);
        if !candidate.exists() {
            return candidate;
        }
        n += 1;
    }
}

/// Copies `from` to `to`, a file that must not exist yet.
fn keep_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    let mut src = File::open(from)?;
    let mut dst = OpenOptions::new().write(true).create_new(true).open(to)?;
    std::io::copy(&mut src, &mut dst)?;
    dst.sync_all()
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(line: &str) -> Arc<Record> {
        Arc::new(Record::parse(line.as_bytes()).unwrap())
    }

    #[test]
    fn records_round_trip_and_a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/A.journal");
        let (j, restored) = Journal::open(&path).unwrap();
        assert!(restored.records.is_empty());
        j.append(&rec("AT A +0.100000000 kiwi +1+1 5"));
        j.append(&rec("AT B +0.200000000 pear +2+2 6"));
        assert_eq!(j.lines(), 0, "pending until flushed");
        j.flush_to(j.appended());
        assert_eq!(j.lines(), 2);
        drop(j);
        // A crash in the middle of a write leaves a torn line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"AT A +0.300000000 kiwi +1+1 7").unwrap();
        drop(f);
        let (j, restored) = Journal::open(&path).unwrap();
        let lines: Vec<&[u8]> = restored.records.iter().map(|r| r.at_line()).collect();
        assert_eq!(
            lines,
            [
                &b"AT A +0.100000000 kiwi +1+1 5"[..],
                &b"AT B +0.200000000 pear +2+2 6"[..]
            ]
        );
        assert_eq!(restored.bad_lines, 1);
        let kept = restored
            .damaged_copy
            .clone()
            .expect("a damaged journal is kept");
        j.compact(&restored.records).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"AT A +0.100000000 kiwi +1+1 5\nAT B +0.200000000 pear +2+2 6\n"
        );
        assert!(!path.with_extension("journal.tmp").exists());
        // The file as it was, torn line and all, survives the compaction.
        assert_eq!(
            std::fs::read(&kept).unwrap(),
            b"AT A +0.100000000 kiwi +1+1 5\nAT B +0.200000000 pear +2+2 6\nAT A +0.300000000 kiwi +1+1 7"
        );
        let name = kept.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("A.journal.damaged-"), "{name}");
        // A whole journal is not copied.
        drop(j);
        let (_, restored) = Journal::open(&path).unwrap();
        assert_eq!(restored.damaged_copy, None);
    }

    #[test]
    fn damaged_journals_found_in_the_same_second_are_kept_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("A.journal");
        let first = damaged_path(&path, 7);
        assert_eq!(first, dir.path().join("A.journal.damaged-7"));
        std::fs::write(&first, b"x").unwrap();
        assert_eq!(
            damaged_path(&path, 7),
            dir.path().join("A.journal.damaged-7-2")
        );
        for round in 0..2 {
            std::fs::write(&path, b"not an AT line\n").unwrap();
            let (_, restored) = Journal::open(&path).unwrap();
            assert_eq!(restored.bad_lines, 1, "round {round}");
            let kept = restored.damaged_copy.unwrap();
            assert_eq!(std::fs::read(kept).unwrap(), b"not an AT line\n");
        }
    }

    #[test]
    fn compaction_keeps_pending_records_and_is_asked_for_past_twice_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("A.journal");
        let (j, _) = Journal::open_with(&path, 4, false).unwrap();
        let kiwi: Vec<_> = (0..10)
            .map(|t| rec(&format!("AT A +0.100000000 kiwi +1+1 {t}")))
            .collect();
        for r in &kiwi {
            j.append(r);
        }
        j.flush();
        assert_eq!(j.lines(), 10);
        assert!(!j.wants_compaction(5), "10 lines, store of 5");
        assert!(j.wants_compaction(1), "10 lines, store of 1, floor 4");
        // A record appended but not yet flushed survives the compaction.
        j.append(&rec("AT A +0.100000000 pear +1+1 1"));
        j.compact(&kiwi[9..]).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"AT A +0.100000000 kiwi +1+1 9\nAT A +0.100000000 pear +1+1 1\n"
        );
        assert_eq!(j.lines(), 2);
        assert!(!j.wants_compaction(1));
        // Appends after a compaction go to the new file.
        j.append(&rec("AT A +0.100000000 fig +1+1 1"));
        j.flush();
        assert!(std::fs::read(&path)
            .unwrap()
            .ends_with(b"AT A +0.100000000 fig +1+1 1\n"));
    }

    #[test]
    fn records_flushed_between_the_snapshot_and_the_compaction_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("A.journal");
        let (j, _) = Journal::open_with(&path, 1, false).unwrap();
        let old = rec("AT A +0.100000000 kiwi +1+1 5");
        j.append(&old);
        j.flush();
        // The snapshot is taken (the store holds `old`), then a newer record is appended and
        // flushed to the old file before the compaction thread gets the file.
        let snapshot = vec![old.clone()];
        let since = j.len();
        let new = rec("AT A +0.100000000 kiwi +1+1 6");
        j.append(&new);
        j.flush();
        j.compact_from(&snapshot, since).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"AT A +0.100000000 kiwi +1+1 5\nAT A +0.100000000 kiwi +1+1 6\n"
        );
        assert_eq!((j.lines(), j.len()), (2, 60));
        // Appends after it land after it.
        j.append(&rec("AT A +0.100000000 pear +1+1 1"));
        j.flush();
        assert_eq!(j.len(), 90);
        let (_, restored) = {
            drop(j);
            Journal::open(&path).unwrap()
        };
        assert_eq!(restored.records.len(), 3);
    }

    #[test]
    fn with_fsync_writes_and_compactions_work_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("A.journal");
        let (j, _) = Journal::open_with(&path, 1, true).unwrap();
        let a = rec("AT A +0.100000000 kiwi +1+1 5");
        j.append(&a);
        j.flush();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"AT A +0.100000000 kiwi +1+1 5\n"
        );
        j.append(&a);
        j.flush();
        j.compact(std::slice::from_ref(&a)).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"AT A +0.100000000 kiwi +1+1 5\n"
        );
        assert_eq!((j.lines(), j.errors()), (1, 0));
    }

    #[test]
    fn a_journal_open_elsewhere_cannot_be_opened_again_until_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("A.journal");
        let (j, _) = Journal::open(&path).unwrap();
        let e = Journal::open(&path).unwrap_err();
        assert!(e.to_string().contains("in use"), "{e}");
        drop(j);
        assert!(Journal::open(&path).is_ok());
    }

    #[test]
    fn an_unwritable_journal_path_is_an_error_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        // A directory component that is a file.
        assert!(Journal::open(&file.join("A.journal")).is_err());
    }
}
