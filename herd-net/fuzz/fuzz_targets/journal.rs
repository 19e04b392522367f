//! Opens a journal file holding arbitrary bytes, then compacts it and opens it again.
//!
//! Input: byte 0 chooses the compaction floor (1 to 8 lines); the rest is the file.
//!
//! Invariants checked:
//! - nothing panics and opening does not fail;
//! - the restored records are exactly the file's `\n`-terminated lines that parse as AT
//!   lines, in file order; every other line (empty, invalid, or a torn last line without
//!   `\n`) is counted as bad, so restored + bad is the number of lines, at least the number
//!   of non-empty lines;
//! - every restored record is a valid AT line: parsing its `at_line()` gives it back, with the
//!   same client, origin, time and precedence;
//! - the journal's line and byte counts are the file's, and it asks for compaction exactly
//!   when its lines exceed twice the store and the floor;
//! - compacting with the restored records writes exactly their lines, and the compacted file
//!   opens again to the same records with no bad line.
#![no_main]

use std::cmp::Ordering;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use herd_core::types::TimeValue;
use herd_core::Record;
use herd_net::journal::Journal;
use libfuzzer_sys::fuzz_target;

/// One directory per fuzzing process, `herd-journal-fuzz-*` in `/dev/shm` where there is one
/// (ten times the executions of a disk's temp dir), else in the temp dir. It outlives the
/// process (statics are not dropped), empty: each input removes its files.
fn journal_path() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let b = tempfile::Builder::new().prefix("herd-journal-fuzz-").clone();
        b.tempdir_in("/dev/shm")
            .or_else(|_| b.tempdir())
            .expect("temp dir")
    })
    .path()
    .join("A.journal")
}

fn field(line: &[u8], n: usize) -> &[u8] {
    line.split(|&b| b == b' ').nth(n).unwrap_or_default()
}

fn check_record(r: &Record) {
    let line = r.at_line();
    let again = Record::parse(line).unwrap_or_else(|e| panic!("restored record does not parse: {e}"));
    assert_eq!(&again, r);
    assert_eq!(again.at_line(), line);
    assert_eq!(r.client(), field(line, 3), "client of {r:?}");
    assert_eq!(again.client(), r.client());
    assert_eq!(r.origin(), field(line, 1), "origin of {r:?}");
    let time = TimeValue::parse(field(line, 5)).expect("the time field of a valid AT line parses");
    assert_eq!(r.time(), time, "time of {r:?}");
    assert_eq!(r.precedence(&again), Ordering::Equal);
    assert_eq!(again.precedence(r), Ordering::Equal);
}

fuzz_target!(|data: &[u8]| {
    let [sel, file @ ..] = data else { return };
    let floor = u64::from(sel % 8) + 1;
    let path = journal_path();
    std::fs::write(&path, file).expect("write the journal file");

    // The model: lines as `read_until(b'\n')` yields them.
    let mut want: Vec<&[u8]> = Vec::new();
    let (mut lines, mut non_empty) = (0u64, 0u64);
    for chunk in file.split_inclusive(|&b| b == b'\n') {
        lines += 1;
        let (line, complete) = match chunk.strip_suffix(b"\n") {
            Some(l) => (l, true),
            None => (chunk, false),
        };
        non_empty += u64::from(!line.is_empty());
        if complete && Record::parse(line).is_ok() {
            want.push(line);
        }
    }

    let (j, restored) = Journal::open_with(&path, floor, false).expect("open the journal");
    let got: Vec<&[u8]> = restored.records.iter().map(|r| r.at_line()).collect();
    assert_eq!(got, want, "restored records differ from the file's valid lines");
    let n = restored.records.len() as u64;
    assert_eq!(n + restored.bad_lines, lines, "restored + bad != lines");
    assert!(n + restored.bad_lines >= non_empty);
    for r in &restored.records {
        check_record(r);
    }
    assert_eq!(j.lines(), lines);
    assert_eq!(j.len(), file.len() as u64);
    assert_eq!(j.is_empty(), file.is_empty());
    for store in [0, n as usize, (n / 2) as usize] {
        assert_eq!(j.wants_compaction(store), lines > (2 * store as u64).max(floor));
    }

    // Compact to the restored records, then read the file back.
    j.compact(&restored.records).expect("compact");
    let mut expect = Vec::new();
    for r in &restored.records {
        expect.extend_from_slice(r.at_line());
        expect.push(b'\n');
    }
    assert_eq!(std::fs::read(&path).expect("read back"), expect, "compacted file");
    assert_eq!((j.lines(), j.len()), (n, expect.len() as u64));
    // An append after the compaction lands at its end.
    if let Some(first) = restored.records.first() {
        j.append(first);
        j.flush();
        assert_eq!(j.lines(), n + 1);
    }
    drop(j);
    let (j, again) = Journal::open_with(&path, floor, false).expect("reopen the journal");
    assert_eq!(again.bad_lines, 0, "bad lines after compaction");
    let mut records: Vec<Arc<Record>> = restored.records.clone();
    records.extend(restored.records.first().cloned());
    assert_eq!(again.records, records, "records after compaction and append");
    drop(j);
    for p in [path.clone(), path.with_extension("journal.lock")] {
        std::fs::remove_file(&p).expect("remove the journal's files");
    }
});
