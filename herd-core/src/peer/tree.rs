//! The epidemic broadcast tree's messages (`I` announcements, `G` graft, `X` prune): their
//! fields, line encoding and the record fingerprint an announcement carries. What a node does
//! with them is `crate::node` (its `tree` part); `docs/peer-protocol.md` has the design.

use super::{parse_u64, push_u64, PeerParseError};
use crate::record::Record;
use crate::types::{is_space, TimeValue};

/// Most bytes of announcement fields a node puts in one `I` line before it sends it (a
/// single announcement with a longer client id still goes out alone).
pub const MAX_ANNOUNCE_BATCH_BYTES: usize = 4096;

/// "I hold a record of `client` that is newer than what I had": one entry of an `I` line,
/// sent instead of the record on a lazy link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The sender's log number of that change.
    pub seq: u64,
    /// The record's client id.
    pub client: Box<[u8]>,
    /// The record's client time (seconds and nanoseconds; digits beyond the ninth are not
    /// part of the herd's order, which compares the line next).
    pub time: TimeValue,
    /// [`record_hash`] of the record's AT line.
    pub hash: u64,
}

impl Announcement {
    /// The announcement of `record`, stored under log number `seq`.
    pub fn of(seq: u64, record: &Record) -> Self {
        Self::with_hash(seq, record, record_hash(record))
    }

    /// [`Announcement::of`] with the record's [`record_hash`] already computed (a record
    /// announced over several links is hashed once).
    pub fn with_hash(seq: u64, record: &Record, hash: u64) -> Self {
        Self {
            seq,
            client: record.client().into(),
            time: record.time(),
            hash,
        }
    }

    /// Whether `held` (the receiver's record of the same client) is this announced record or
    /// newer in the herd's order, as far as the announcement tells: a later client time, or
    /// the same time and the same line (by hash). `false` means "possibly missing": an
    /// older time, or the same time and another line (whose order only the line can tell).
    pub fn is_covered_by(&self, held: &Record) -> bool {
        match held.time().cmp(&self.time) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => record_hash(held) == self.hash,
        }
    }

    /// Bytes this entry takes in an `I` line (with its leading space).
    pub fn encoded_len(&self) -> usize {
        // ` seq client secs.nnnnnnnnn hhhhhhhhhhhhhhhh`
        let digits = |mut v: u128| {
            let mut n = 1;
            while v >= 10 {
                v /= 10;
                n += 1;
            }
            n
        };
        1 + digits(u128::from(self.seq))
            + 1
            + self.client.len()
            + 1
            + digits(self.time.secs)
            + 1
            + 9
            + 1
            + 16
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.push(b' ');
        push_u64(out, self.seq);
        out.push(b' ');
        out.extend_from_slice(&self.client);
        out.push(b' ');
        crate::types::push_u128(out, self.time.secs);
        out.push(b'.');
        let mut nanos = [b'0'; 9];
        let mut v = self.time.nanos;
        for d in nanos.iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend_from_slice(&nanos);
        out.push(b' ');
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for k in (0..16).rev() {
            out.push(HEX[((self.hash >> (4 * k)) & 0xf) as usize]);
        }
    }
}

/// The fingerprint of a record that an announcement carries: 64-bit FNV-1a of its AT line.
/// It only breaks ties between records of one client with the same client time (the time
/// itself travels in full), so it needs to be stable across servers, not secret.
pub fn record_hash(record: &Record) -> u64 {
    line_hash(record.at_line())
}

/// [`record_hash`] of an AT line.
pub fn line_hash(line: &[u8]) -> u64 {
    line.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Appends `I <seq> <client> <time> <hash>...` (without the `\n`).
pub(super) fn encode_announce(entries: &[Announcement], out: &mut Vec<u8>) {
    out.push(b'I');
    for a in entries {
        a.encode(out);
    }
}

/// Parses the fields after `I ` (groups of four).
pub(super) fn parse_announce(rest: &[u8]) -> Result<Vec<Announcement>, PeerParseError> {
    let fields: Vec<&[u8]> = rest.split(|&b| b == b' ').collect();
    if fields.is_empty() || !fields.len().is_multiple_of(4) {
        return Err(PeerParseError::Malformed);
    }
    fields
        .chunks_exact(4)
        .map(|f| {
            let (seq, client, time, hash) = (f[0], f[1], f[2], f[3]);
            Ok(Announcement {
                seq: parse_u64(seq)?,
                client: client_id(client)?.into(),
                time: parse_time(time)?,
                hash: parse_hash(hash)?,
            })
        })
        .collect()
}

/// A client id field: not empty, no white space.
pub(super) fn client_id(s: &[u8]) -> Result<&[u8], PeerParseError> {
    if s.is_empty() || s.iter().any(|&b| is_space(b)) {
        return Err(PeerParseError::Field);
    }
    Ok(s)
}

/// `secs.nnnnnnnnn`: decimal seconds, a point, exactly nine digits.
fn parse_time(s: &[u8]) -> Result<TimeValue, PeerParseError> {
    let dot = s
        .iter()
        .position(|&b| b == b'.')
        .ok_or(PeerParseError::Number)?;
    let (secs, nanos) = (&s[..dot], &s[dot + 1..]);
    let digits = |d: &[u8]| !d.is_empty() && d.iter().all(u8::is_ascii_digit);
    if !digits(secs) || secs.len() > 20 || nanos.len() != 9 || !digits(nanos) {
        return Err(PeerParseError::Number);
    }
    let secs = secs
        .iter()
        .fold(0u128, |acc, &d| acc * 10 + u128::from(d - b'0'));
    let nanos = nanos
        .iter()
        .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'));
    Ok(TimeValue { secs, nanos })
}

/// Exactly 16 lowercase hex digits.
fn parse_hash(s: &[u8]) -> Result<u64, PeerParseError> {
    let hex = |b: u8| matches!(b, b'0'..=b'9' | b'a'..=b'f');
    if s.len() != 16 || !s.iter().all(|&b| hex(b)) {
        return Err(PeerParseError::Number);
    }
    let text = std::str::from_utf8(s).map_err(|_| PeerParseError::Number)?;
    u64::from_str_radix(text, 16).map_err(|_| PeerParseError::Number)
}
