//! Sealed sessions: after a handshake proven with the shared secret (and without TLS), every
//! batch of peer lines is followed by a line carrying its MAC, so a change made on the path
//! after the handshake is detected and drops the link.
//!
//! Each direction has its own key ([`SessionKeys`], derived from the secret, both names and
//! both nonces of the handshake, so a recorded session cannot be replayed into another) and
//! numbers its batches from 0. A batch is one or more whole lines; the line after it is
//! `M <mac>\n` with `mac = HMAC-SHA256(key, number ‖ batch)` in lowercase hex (the number as a
//! 64-bit big-endian integer). A receiver hands a batch on only once its MAC line has arrived
//! and checked; a wrong MAC, a batch that grows past the bound without one, or lines after
//! the end of a session are errors. Dropping, reordering or replaying a batch changes the
//! numbers and fails the check of the next one. See `docs/peer-protocol.md`.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

/// The start of a MAC line.
pub const SEAL_TAG: &[u8] = b"M ";
/// Most bytes of lines one MAC covers, unless [`Opener::with_max_batch`] says otherwise:
/// a writer cuts longer output into several batches.
pub const DEFAULT_MAX_BATCH: usize = 64 * 1024;

type HmacSha256 = Hmac<Sha256>;

/// The keys of one session: what this side seals with, and what it checks the other's with.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKeys {
    /// Seals this side's batches.
    pub send: [u8; 32],
    /// Checks the other side's batches.
    pub recv: [u8; 32],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(<secret>)")
    }
}

/// Why a sealed stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SealError {
    /// A MAC line whose MAC does not match its batch (the bytes were changed, dropped,
    /// reordered or replayed).
    #[error("peer batch failed its authentication check")]
    BadMac,
    /// A MAC line that is not `M ` and 64 hex digits.
    #[error("malformed peer batch seal")]
    Malformed,
    /// More than the bound of bytes without a MAC line.
    #[error("peer batch longer than {0} bytes without a seal")]
    Unsealed(usize),
}

fn mac(key: &[u8; 32], number: u64, batch: &[u8]) -> [u8; 32] {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("hmac accepts any key length");
    m.update(&number.to_be_bytes());
    m.update(batch);
    m.finalize().into_bytes().into()
}

/// Seals a session's outgoing batches.
#[derive(Debug, Clone)]
pub struct Sealer {
    key: [u8; 32],
    next: u64,
}

impl Sealer {
    /// A sealer numbering its batches from 0.
    pub fn new(keys: &SessionKeys) -> Self {
        Self {
            key: keys.send,
            next: 0,
        }
    }

    /// Appends `batch` (whole lines) and its MAC line to `out`.
    pub fn seal(&mut self, batch: &[u8], out: &mut Vec<u8>) {
        let m = mac(&self.key, self.next, batch);
        self.next += 1;
        out.reserve(batch.len() + 67);
        out.extend_from_slice(batch);
        out.extend_from_slice(SEAL_TAG);
        for b in m {
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 15)]);
        }
        out.push(b'\n');
    }

    /// Appends `bytes` (whole lines) as batches of at most `max` bytes each (cut at line
    /// ends; a single longer line is a batch of its own).
    pub fn seal_all(&mut self, mut bytes: &[u8], max: usize, out: &mut Vec<u8>) {
        while !bytes.is_empty() {
            let window = &bytes[..bytes.len().min(max)];
            let cut = match window.iter().rposition(|&b| b == b'\n') {
                Some(i) if bytes.len() > max => i + 1,
                _ if bytes.len() <= max => bytes.len(),
                // One line longer than the bound: up to its end.
                _ => bytes
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |i| i + 1),
            };
            let (batch, rest) = bytes.split_at(cut);
            self.seal(batch, out);
            bytes = rest;
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn unhex(d: u8) -> Option<u8> {
    match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    }
}

/// What [`Opener::next`] found in the bytes received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// No complete batch yet: read more.
    Need,
    /// `raw[..body]` is a batch that passed its check; drop `consumed` bytes (the batch and
    /// its MAC line) from the front of the buffer, then look again.
    Batch {
        /// Length of the checked batch at the front of the buffer.
        body: usize,
        /// Bytes to drop from the front: the batch and its MAC line.
        consumed: usize,
    },
}

/// Checks a session's incoming batches.
#[derive(Debug, Clone)]
pub struct Opener {
    key: [u8; 32],
    next: u64,
    /// Bytes at the front of the buffer already scanned (whole lines, none a MAC line).
    scanned: usize,
    max_batch: usize,
}

impl Opener {
    /// An opener expecting batch 0 first, of at most [`DEFAULT_MAX_BATCH`] bytes (plus one
    /// line of at most `max_line` bytes: a writer's single long line).
    pub fn new(keys: &SessionKeys, max_line: usize) -> Self {
        Self::with_max_batch(keys, DEFAULT_MAX_BATCH.saturating_add(max_line))
    }

    /// An opener refusing batches longer than `max_batch` bytes.
    pub fn with_max_batch(keys: &SessionKeys, max_batch: usize) -> Self {
        Self {
            key: keys.recv,
            next: 0,
            scanned: 0,
            max_batch,
        }
    }

    /// Looks for the next sealed batch at the front of `raw` (the bytes received and not yet
    /// consumed, unchanged since the last call except for bytes appended at its end).
    ///
    /// # Errors
    /// [`SealError`]: the session must end.
    pub fn next(&mut self, raw: &[u8]) -> Result<Opened, SealError> {
        loop {
            let Some(end) = raw
                .get(self.scanned..)
                .and_then(memchr_nl)
                .map(|i| self.scanned + i)
            else {
                if raw.len() > self.max_batch.saturating_add(67) {
                    return Err(SealError::Unsealed(self.max_batch));
                }
                return Ok(Opened::Need);
            };
            let line = &raw[self.scanned..end];
            if line.starts_with(SEAL_TAG) {
                let body = self.scanned;
                let want = parse_mac(&line[SEAL_TAG.len()..])?;
                let got = mac(&self.key, self.next, &raw[..body]);
                let diff = want.iter().zip(got).fold(0u8, |acc, (a, b)| acc | (a ^ b));
                if diff != 0 {
                    return Err(SealError::BadMac);
                }
                self.next += 1;
                self.scanned = 0;
                return Ok(Opened::Batch {
                    body,
                    consumed: end + 1,
                });
            }
            self.scanned = end + 1;
            if self.scanned > self.max_batch {
                return Err(SealError::Unsealed(self.max_batch));
            }
        }
    }
}

fn memchr_nl(s: &[u8]) -> Option<usize> {
    s.iter().position(|&b| b == b'\n')
}

fn parse_mac(hex: &[u8]) -> Result<[u8; 32], SealError> {
    if hex.len() != 64 {
        return Err(SealError::Malformed);
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let (Some(h), Some(l)) = (unhex(pair[0]), unhex(pair[1])) else {
            return Err(SealError::Malformed);
        };
        out[i] = (h << 4) | l;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (SessionKeys, SessionKeys) {
        let a = SessionKeys {
            send: [1; 32],
            recv: [2; 32],
        };
        let b = SessionKeys {
            send: [2; 32],
            recv: [1; 32],
        };
        (a, b)
    }

    /// Feeds `wire` to an opener and returns the batches it hands on, or the error.
    fn open_all(keys: &SessionKeys, wire: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut opener = Opener::with_max_batch(keys, 1000);
        let mut raw = wire.to_vec();
        let mut out = Vec::new();
        loop {
            match opener.next(&raw)? {
                Opened::Need => return Ok(out),
                Opened::Batch { body, consumed } => {
                    out.extend_from_slice(&raw[..body]);
                    raw.drain(..consumed);
                }
            }
        }
    }

    #[test]
    fn sealed_batches_open_in_order_and_hold_their_lines() {
        let (a, b) = pair();
        let mut s = Sealer::new(&a);
        let mut wire = Vec::new();
        s.seal(b"U 1 AT x\nS 1\n", &mut wire);
        s.seal(b"S 2\n", &mut wire);
        assert_eq!(open_all(&b, &wire).unwrap(), b"U 1 AT x\nS 1\nS 2\n");
        // Only whole batches are handed on.
        let cut = wire.len() - 3;
        assert_eq!(open_all(&b, &wire[..cut]).unwrap(), b"U 1 AT x\nS 1\n");
    }

    #[test]
    fn any_changed_byte_dropped_or_replayed_batch_is_refused() {
        let (a, b) = pair();
        let mut s = Sealer::new(&a);
        let mut first = Vec::new();
        s.seal(b"U 1 AT Goloman +0.1 kiwi +1+1 5\n", &mut first);
        let mut second = Vec::new();
        s.seal(b"S 1\n", &mut second);
        for i in 0..first.len() - 1 {
            let mut w = first.clone();
            w[i] ^= 0x01;
            // Refused, or (the seal line's tag itself changed) never handed on.
            let handed = open_all(&b, &w).unwrap_or_default();
            assert!(handed.is_empty(), "byte {i} changed and accepted");
        }
        assert_eq!(
            open_all(&b, &second),
            Err(SealError::BadMac),
            "batch 0 dropped"
        );
        let replay = [first.clone(), first.clone()].concat();
        assert_eq!(open_all(&b, &replay), Err(SealError::BadMac));
        assert_eq!(
            open_all(&a, &first),
            Err(SealError::BadMac),
            "the other key"
        );
    }

    #[test]
    fn unsealed_bytes_past_the_bound_are_refused() {
        let (_, b) = pair();
        let long = b"S 1\n".repeat(300);
        assert_eq!(open_all(&b, &long), Err(SealError::Unsealed(1000)));
        assert_eq!(open_all(&b, b"M zz\n"), Err(SealError::Malformed));
    }

    #[test]
    fn seal_all_cuts_at_line_ends_within_the_bound() {
        let (a, b) = pair();
        let mut s = Sealer::new(&a);
        let lines = b"U 1 AT x\n".repeat(100);
        let mut wire = Vec::new();
        s.seal_all(&lines, 100, &mut wire);
        let macs = wire.windows(2).filter(|w| w == b"\nM").count();
        assert!(macs >= 9, "{macs} batches");
        assert_eq!(open_all(&b, &wire).unwrap(), lines);
        let mut one = Vec::new();
        Sealer::new(&a).seal_all(&[b"x".repeat(300), b"\n".to_vec()].concat(), 100, &mut one);
        assert_eq!(one.windows(2).filter(|w| w == b"\nM").count(), 1);
    }
}
