//! The store's compact copy of its AT lines: each line packed into a few bytes, kept in
//! pools of equal-length cells instead of one allocation per record.
//!
//! A line `AT origin diff client location time` packs as
//!
//! ```text
//! [origin code] [client length, LEB128] [client bytes] [nibbles: diff ¶ location ␠ time ∎]
//! ```
//!
//! The origin is one byte: the index (from 1) of its name in the store's table of origins
//! (a herd has a few servers; up to 255 names are kept). The three numeric fields are in the
//! alphabet `0-9 + - .`, four bits a character, two to a byte; `¶` marks where the client
//! id goes and `∎` ends the line. A line that does not fit the scheme (its origin table is
//! full, or a field holds another character) is kept whole after an origin code of 0. The
//! everyday line of 85 bytes packs into about 45.
//!
//! Cells of one packed length share a pool (a vector of bytes cut into cells of that length
//! and a list of the free ones), so a record costs its packed bytes and nothing more: no
//! allocator header, no rounding, no pointer. A newer line of the same packed length (the
//! usual case: a client's next report) overwrites its cell in place. Packed lines longer than
//! 255 bytes have an allocation each.

use std::hash::BuildHasher;

use foldhash::fast::FixedState;
use hashbrown::HashTable;

use crate::types::TimeValue;

const NIB_PLUS: u8 = 10;
const NIB_MINUS: u8 = 11;
const NIB_DOT: u8 = 12;
const NIB_SPACE: u8 = 13;
/// Where the client id (and the spaces around it) goes back.
const NIB_CLIENT: u8 = 14;
const NIB_END: u8 = 15;

/// Longest packed line kept in a pool cell.
const POOL_MAX: usize = 255;

/// Most origin names a table keeps (codes 1 to 255).
const ORIGINS_MAX: usize = 255;

/// The character of each nibble (the two marks have none).
const CHARS: [u8; 16] = *b"0123456789+-. ??";

/// The two characters of each byte of plain characters (both nibbles below `NIB_SPACE`).
const PAIRS: [[u8; 2]; 256] = {
    let mut t = [[0u8; 2]; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = [CHARS[b >> 4], CHARS[b & 0x0f]];
        b += 1;
    }
    t
};

/// The nibble of each byte, or `NIB_END` for a byte outside the alphabet.
const NIBBLES: [u8; 256] = {
    let mut t = [NIB_END; 256];
    let mut d = 0;
    while d < 10 {
        t[b'0' as usize + d] = d as u8;
        d += 1;
    }
    t[b'+' as usize] = NIB_PLUS;
    t[b'-' as usize] = NIB_MINUS;
    t[b'.' as usize] = NIB_DOT;
    t[b' ' as usize] = NIB_SPACE;
    t
};

fn unnibble(n: u8) -> u8 {
    match n {
        0..=9 => b'0' + n,
        NIB_PLUS => b'+',
        NIB_MINUS => b'-',
        NIB_DOT => b'.',
        _ => b' ',
    }
}

/// The store's table of origin names: code `i + 1` is `names[i]`.
#[derive(Clone, Default)]
pub(super) struct Origins {
    names: Vec<Box<[u8]>>,
    /// Indexes into `names`, by a fixed hash of the name.
    index: HashTable<u8>,
}

fn name_hash(name: &[u8]) -> u64 {
    FixedState::with_seed(0x6f72_6967).hash_one(name)
}

impl Origins {
    /// The code of `name`, given one if it has none and the table has room.
    fn code(&mut self, name: &[u8]) -> Option<u8> {
        let names = &self.names;
        let hash = name_hash(name);
        if let Some(&i) = self.index.find(hash, |&i| &*names[usize::from(i)] == name) {
            return Some(i + 1);
        }
        if self.names.len() >= ORIGINS_MAX {
            return None;
        }
        let i = u8::try_from(self.names.len()).ok()?;
        self.names.push(name.into());
        let names = &self.names;
        self.index
            .insert_unique(hash, i, |&j| name_hash(&names[usize::from(j)]));
        Some(i + 1)
    }

    fn name(&self, code: u8) -> &[u8] {
        self.names
            .get(usize::from(code).wrapping_sub(1))
            .map_or(&[][..], |n| n)
    }
}

fn push_leb(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A LEB128 number at the start of `b` and the bytes after it.
fn read_leb(b: &[u8]) -> (usize, &[u8]) {
    let mut v = 0usize;
    for (i, &byte) in b.iter().enumerate() {
        if i >= 5 {
            break;
        }
        v |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (v, &b[i + 1..]);
        }
    }
    (0, &[])
}

/// The fields of an AT line around its client id: (origin, diff, location and time).
fn split_line(line: &[u8], client: (usize, usize)) -> Option<(&[u8], &[u8], &[u8])> {
    let head = line.get(..client.0.checked_sub(1)?)?;
    let head = head.strip_prefix(b"AT ")?;
    let space = head.iter().position(|&b| b == b' ')?;
    let (origin, diff) = (&head[..space], &head[space + 1..]);
    let tail = line.get(client.1 + 1..)?;
    Some((origin, diff, tail))
}

/// Packs `line`, whose client id is `line[client.0..client.1]`, into `out` (cleared first).
pub(super) fn pack(line: &[u8], client: (usize, usize), origins: &mut Origins, out: &mut Vec<u8>) {
    out.clear();
    if try_pack(line, client, origins, out).is_none() {
        out.clear();
        out.push(0);
        out.extend_from_slice(line);
    }
}

fn try_pack(
    line: &[u8],
    client: (usize, usize),
    origins: &mut Origins,
    out: &mut Vec<u8>,
) -> Option<()> {
    let (origin, diff, tail) = split_line(line, client)?;
    let code = origins.code(origin)?;
    let id = &line[client.0..client.1];
    out.reserve(8 + id.len() + diff.len() / 2 + tail.len() / 2);
    out.push(code);
    push_leb(out, id.len());
    out.extend_from_slice(id);
    // The character codes first (on the stack for everyday lines), then two to a byte.
    // Plain loops: this runs for every record stored, debug builds included.
    let count = diff.len() + 1 + tail.len() + 1;
    let mut stack = [0u8; 160];
    let mut heap = Vec::new();
    let codes: &mut [u8] = if count <= stack.len() {
        &mut stack[..count]
    } else {
        heap.resize(count, 0);
        &mut heap
    };
    let mut k = 0;
    for &b in diff {
        let n = NIBBLES[usize::from(b)];
        if n >= NIB_SPACE {
            return None;
        }
        codes[k] = n;
        k += 1;
    }
    codes[k] = NIB_CLIENT;
    k += 1;
    for &b in tail {
        let n = NIBBLES[usize::from(b)];
        if n == NIB_END {
            return None;
        }
        codes[k] = n;
        k += 1;
    }
    codes[k] = NIB_END;
    let bytes = count.div_ceil(2);
    let at = out.len();
    out.resize(at + bytes, 0);
    for (dst, pair) in out[at..].iter_mut().zip(codes.chunks(2)) {
        let low = pair.get(1).copied().unwrap_or(NIB_END);
        *dst = (pair[0] << 4) | low;
    }
    Some(())
}

/// A packed line's parts: its origin code, client id, and the nibbles after it (for code 0:
/// the whole line as `client`... see [`Packed::client`]).
#[derive(Clone, Copy)]
pub(super) struct Packed<'a>(pub(super) &'a [u8]);

impl<'a> Packed<'a> {
    fn code(self) -> u8 {
        self.0.first().copied().unwrap_or(0)
    }

    /// The whole line of a line kept as it is (origin code 0).
    fn raw(self) -> &'a [u8] {
        self.0.get(1..).unwrap_or_default()
    }

    /// (client id, nibble bytes) of a packed line.
    fn parts(self) -> (&'a [u8], &'a [u8]) {
        let (len, rest) = read_leb(self.raw());
        let len = len.min(rest.len());
        (&rest[..len], &rest[len..])
    }

    /// The client id.
    pub(super) fn client(self) -> &'a [u8] {
        if self.code() == 0 {
            return self.raw().split(|&b| b == b' ').nth(3).unwrap_or_default();
        }
        self.parts().0
    }

    /// The characters of the numeric fields, `NIB_CLIENT` where the client id goes.
    fn nibbles(self) -> impl Iterator<Item = u8> + 'a {
        self.parts()
            .1
            .iter()
            .flat_map(|&b| [b >> 4, b & 0x0f])
            .take_while(|&n| n != NIB_END)
    }

    /// The whole AT line, appended to `out`; for a packed line, where its client id and its
    /// location lie in it (`None` for a line kept whole).
    pub(super) fn unpack(self, origins: &Origins, out: &mut Vec<u8>) -> Option<Unpacked> {
        if self.code() == 0 {
            out.extend_from_slice(self.raw());
            return None;
        }
        let base = out.len();
        let (client, nibbles) = self.parts();
        let name = origins.name(self.code());
        out.reserve(6 + name.len() + client.len() + 2 * nibbles.len());
        out.extend_from_slice(b"AT ");
        out.extend_from_slice(name);
        out.push(b' ');
        let (mut start, mut space) = (0, 0);
        // Two characters a byte; the client id goes back at its mark, the end mark stops.
        // (Plain index loops: this runs for every record read, debug builds included.)
        let mut i = 0;
        while i < 2 * nibbles.len() {
            if i % 2 == 0 {
                // A byte of two plain characters, the usual case: both at once.
                let byte = nibbles[i / 2];
                if byte >> 4 < NIB_SPACE && byte & 0x0f < NIB_SPACE {
                    out.extend_from_slice(&PAIRS[usize::from(byte)]);
                    i += 2;
                    continue;
                }
            }
            let n = nibble_at(nibbles, i);
            i += 1;
            match n {
                NIB_END => break,
                NIB_CLIENT => {
                    out.push(b' ');
                    start = out.len() - base;
                    out.extend_from_slice(client);
                    out.push(b' ');
                }
                n => {
                    if n == NIB_SPACE {
                        space = out.len() - base;
                    }
                    out.push(CHARS[usize::from(n)]);
                }
            }
        }
        let client = (start, start + client.len());
        Some(Unpacked {
            client,
            location: (client.1 + 1, space.max(client.1 + 1)),
        })
    }

    /// The client time (the last field), read without unpacking the line. A line kept
    /// whole has it parsed from the line.
    pub(super) fn time(self) -> TimeValue {
        if self.code() == 0 {
            let field = self.raw().rsplit(|&b| b == b' ').next().unwrap_or_default();
            return TimeValue::parse(field).unwrap_or_default();
        }
        // The time is the last field: its characters, read back from the end mark to the
        // space before it, for everyday times (a longer one is read forwards below).
        let nibbles = self.parts().1;
        let mut back = [0u8; 48];
        let (mut n, mut i) = (0, 2 * nibbles.len());
        while i > 0 && n < back.len() {
            i -= 1;
            match nibble_at(nibbles, i) {
                NIB_END => {}
                NIB_SPACE | NIB_CLIENT => return time_of(back[..n].iter().rev().copied()),
                c => {
                    back[n] = c;
                    n += 1;
                }
            }
        }
        self.time_forwards()
    }

    /// [`Packed::time`] of a packed line, read from the start.
    fn time_forwards(self) -> TimeValue {
        // Digits after the space (the location's end): whole seconds, then up to nine
        // digits of the fraction (the rest truncated), exactly as `TimeValue::parse`.
        let (mut secs, mut nanos, mut frac) = (0u128, 0u32, 0u32);
        let (mut in_time, mut in_frac) = (false, false);
        let nibbles = self.parts().1;
        let mut i = 0;
        while i < 2 * nibbles.len() {
            let n = nibble_at(nibbles, i);
            i += 1;
            match n {
                NIB_END => break,
                NIB_SPACE => in_time = true,
                _ if !in_time => {}
                NIB_DOT => in_frac = true,
                d if in_frac => {
                    if frac < 9 {
                        nanos = nanos * 10 + u32::from(d);
                        frac += 1;
                    }
                }
                d => secs = secs.saturating_mul(10).saturating_add(u128::from(d)),
            }
        }
        while frac < 9 {
            nanos *= 10;
            frac += 1;
        }
        TimeValue { secs, nanos }
    }

    /// The position (latitude, longitude) of the location field, parsed.
    pub(super) fn position(self) -> (f64, f64) {
        let mut text = Vec::new();
        let mut buf = [0u8; 64];
        let mut len = 0;
        if self.code() == 0 {
            self.location(&mut text);
        } else {
            let nibbles = self.parts().1;
            let (mut i, mut after_client) = (0, false);
            while i < 2 * nibbles.len() {
                let n = nibble_at(nibbles, i);
                i += 1;
                match n {
                    NIB_CLIENT => after_client = true,
                    NIB_SPACE | NIB_END => break,
                    _ if !after_client => {}
                    n if len < buf.len() => {
                        buf[len] = CHARS[usize::from(n)];
                        len += 1;
                    }
                    _ => {
                        // A location of over 64 characters: read it again into a vector.
                        self.location(&mut text);
                        break;
                    }
                }
            }
        }
        let text = if text.is_empty() {
            &buf[..len]
        } else {
            &text[..]
        };
        crate::types::Location::degrees(text).unwrap_or((0.0, 0.0))
    }

    /// The location field, appended to `out` (the line's own bytes for a line kept whole).
    pub(super) fn location(self, out: &mut Vec<u8>) {
        if self.code() == 0 {
            let field = self.raw().split(|&b| b == b' ').nth(4).unwrap_or_default();
            out.extend_from_slice(field);
            return;
        }
        let mut after_client = false;
        for n in self.nibbles() {
            if n == NIB_CLIENT {
                after_client = true;
            } else if n == NIB_SPACE {
                break;
            } else if after_client {
                out.push(unnibble(n));
            }
        }
    }
}

/// The `i`th character code of a nibble stream (high nibble first).
#[inline]
fn nibble_at(nibbles: &[u8], i: usize) -> u8 {
    let b = nibbles[i / 2];
    if i.is_multiple_of(2) {
        b >> 4
    } else {
        b & 0x0f
    }
}

/// The value of a client time's character codes (digits and at most one dot): whole
/// seconds, then up to nine digits of the fraction (the rest truncated), exactly as
/// `TimeValue::parse`.
fn time_of(codes: impl Iterator<Item = u8>) -> TimeValue {
    let (mut secs, mut nanos, mut frac, mut in_frac) = (0u128, 0u32, 0u32, false);
    for c in codes {
        if c == NIB_DOT {
            in_frac = true;
        } else if in_frac {
            if frac < 9 {
                nanos = nanos * 10 + u32::from(c);
                frac += 1;
            }
        } else {
            secs = secs.saturating_mul(10).saturating_add(u128::from(c));
        }
    }
    while frac < 9 {
        nanos *= 10;
        frac += 1;
    }
    TimeValue { secs, nanos }
}

/// Where the fields of an unpacked line lie in it: `line[a..b]` for each (a, b).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Unpacked {
    pub(super) client: (usize, usize),
    pub(super) location: (usize, usize),
}

/// Where a packed line is kept: its pool (its packed length; 0 for one of its own) and cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Cell {
    pub(super) class: u8,
    pub(super) index: u32,
}

/// Cells a pool's chunk holds. Pools grow by whole chunks, never by moving what they hold:
/// a vector that doubles leaves its old buffer behind, and under glibc's malloc that freed
/// space stays resident (it is reused only by later allocations that fit it), which for a
/// store of a million clients was as much again as the lines themselves.
const CHUNK_CELLS: usize = 4096;

/// Cells of one packed length, in chunks of [`CHUNK_CELLS`] (the first grows to that size
/// as a vector does, so a pool of a few cells costs a few cells).
#[derive(Clone, Default)]
struct Pool {
    chunks: Vec<Vec<u8>>,
    /// Cells in use or free (the free ones listed in `free`).
    cells: usize,
    free: Vec<u32>,
}

impl Pool {
    #[inline]
    fn cell(&self, len: usize, index: usize) -> Option<&[u8]> {
        let chunk = self.chunks.get(index / CHUNK_CELLS)?;
        let at = (index % CHUNK_CELLS) * len;
        chunk.get(at..at + len)
    }

    fn cell_mut(&mut self, len: usize, index: usize) -> Option<&mut [u8]> {
        let chunk = self.chunks.get_mut(index / CHUNK_CELLS)?;
        let at = (index % CHUNK_CELLS) * len;
        chunk.get_mut(at..at + len)
    }

    /// A new cell at the end holding `packed`.
    fn push(&mut self, packed: &[u8]) -> usize {
        if self.cells.is_multiple_of(CHUNK_CELLS) && self.cells / CHUNK_CELLS == self.chunks.len() {
            let cap = if self.chunks.is_empty() {
                0
            } else {
                CHUNK_CELLS * packed.len()
            };
            self.chunks.push(Vec::with_capacity(cap));
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.extend_from_slice(packed);
        }
        self.cells += 1;
        self.cells - 1
    }

    /// Drops the last cell.
    fn pop(&mut self, len: usize) {
        self.cells -= 1;
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.truncate(chunk.len() - len);
            if chunk.is_empty() {
                self.chunks.pop();
            }
        }
    }
}

/// Every packed line of a store.
#[derive(Clone, Default)]
pub(super) struct Lines {
    /// By packed length (index 0 unused).
    pools: Vec<Pool>,
    /// Packed lines over [`POOL_MAX`] bytes, each its own allocation.
    big: Vec<Box<[u8]>>,
    big_free: Vec<u32>,
}

impl Lines {
    /// The packed line in `cell`.
    #[inline]
    pub(super) fn get(&self, cell: Cell) -> Packed<'_> {
        let i = cell.index as usize;
        let bytes = match cell.class {
            0 => self.big.get(i).map_or(&[][..], |b| b),
            c => {
                let len = usize::from(c);
                self.pools
                    .get(len)
                    .and_then(|p| p.cell(len, i))
                    .unwrap_or_default()
            }
        };
        Packed(bytes)
    }

    /// Keeps `packed` in a new cell.
    pub(super) fn alloc(&mut self, packed: &[u8]) -> Cell {
        let len = packed.len();
        match u8::try_from(len) {
            Ok(class) if len > 0 && len <= POOL_MAX => {
                if self.pools.len() <= len {
                    self.pools.resize_with(len + 1, Pool::default);
                }
                let pool = &mut self.pools[len];
                let index = match pool.free.pop() {
                    Some(i) => {
                        if let Some(dst) = pool.cell_mut(len, i as usize) {
                            dst.copy_from_slice(packed);
                        }
                        i
                    }
                    None => u32::try_from(pool.push(packed)).unwrap_or(u32::MAX),
                };
                Cell { class, index }
            }
            _ => {
                let index = match self.big_free.pop() {
                    Some(i) => {
                        self.big[i as usize] = packed.into();
                        i
                    }
                    None => {
                        self.big.push(packed.into());
                        u32::try_from(self.big.len() - 1).unwrap_or(u32::MAX)
                    }
                };
                Cell { class: 0, index }
            }
        }
    }

    /// Gives `cell` up.
    pub(super) fn free(&mut self, cell: Cell) {
        match cell.class {
            0 => {
                if let Some(b) = self.big.get_mut(cell.index as usize) {
                    *b = Box::default();
                    self.big_free.push(cell.index);
                }
            }
            c => {
                let len = usize::from(c);
                if let Some(pool) = self.pools.get_mut(len) {
                    if cell.index as usize + 1 == pool.cells {
                        // The last cell: the pool shrinks instead (no free cell is at or
                        // past it: the last cell was in use).
                        pool.pop(len);
                    } else {
                        pool.free.push(cell.index);
                    }
                }
            }
        }
    }

    /// Replaces the packed line in `cell` by `packed`: in place when it has the same packed
    /// length, else in a new cell (the old one given up). Returns where it is.
    pub(super) fn replace(&mut self, cell: Cell, packed: &[u8]) -> Cell {
        let len = usize::from(cell.class);
        if cell.class != 0 && packed.len() == len {
            if let Some(dst) = self
                .pools
                .get_mut(len)
                .and_then(|p| p.cell_mut(len, cell.index as usize))
            {
                dst.copy_from_slice(packed);
                return cell;
            }
        }
        self.free(cell);
        self.alloc(packed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;

    fn roundtrip(line: &str, origins: &mut Origins) -> usize {
        let r = Record::parse(line.as_bytes()).unwrap();
        let span = r.client_span();
        let mut packed = Vec::new();
        pack(r.at_line(), span, origins, &mut packed);
        let p = Packed(&packed);
        let mut back = Vec::new();
        if let Some(got) = p.unpack(origins, &mut back) {
            assert_eq!(got.client, span);
            assert_eq!(&back[got.location.0..got.location.1], r.location_text());
        }
        assert_eq!(back, line.as_bytes(), "{line}");
        assert_eq!(p.client(), r.client());
        assert_eq!(p.time(), r.time(), "{line}");
        let mut loc = Vec::new();
        p.location(&mut loc);
        assert_eq!(loc, r.location_text());
        assert_eq!(p.position(), r.position());
        packed.len()
    }

    #[test]
    fn packed_lines_unpack_to_the_same_bytes_and_fields() {
        let mut o = Origins::default();
        let n = roundtrip(
            "AT Goloman +276089134.263873386 mem-123456 +34.068930-118.445127 1520023934.000123456",
            &mut o,
        );
        assert!(n <= 45, "{n}");
        for line in [
            "AT A +0.000000000 c +1+1 1",
            "AT A -12.000000001 c +1.5-2.25 10.5",
            "AT Hands +0.100000000 x +90-180 99999999999999999999.1234567891234",
            "AT B +0.000000000 kiwi.cs.ucla.edu +34.068930-118.445127 0001.000",
            "AT B +0.000000000 c +1+1 7.",
            "AT B +0.000000000 c +1+1 12.000000000000000000000000000000000000000000000000000000009",
        ] {
            let _ = Record::parse(line.as_bytes()).map(|_| roundtrip(line, &mut o));
        }
        let long = format!("AT A +0.000000000 {} +1+1 1", "c".repeat(300));
        roundtrip(&long, &mut o);
        let far = format!("AT A +0.000000000 c +1.{}+2 1", "5".repeat(80));
        roundtrip(&far, &mut o);
    }

    #[test]
    fn a_full_origin_table_keeps_lines_whole() {
        let mut o = Origins::default();
        for i in 0..300 {
            let line = format!("AT S{i} +0.000000000 c{i} +1+1 {i}");
            let n = roundtrip(&line, &mut o);
            if i >= ORIGINS_MAX {
                assert_eq!(n, line.len() + 1);
            }
        }
    }

    #[test]
    fn cells_are_reused_and_replaced_in_place() {
        let mut l = Lines::default();
        let a = l.alloc(b"aaaa");
        let b = l.alloc(b"bbbb");
        let c = l.alloc(b"cc");
        assert_eq!(l.get(a).0, b"aaaa");
        assert_eq!(l.replace(a, b"AAAA"), a);
        assert_eq!(l.get(a).0, b"AAAA");
        let a2 = l.replace(a, b"aaa");
        assert_ne!(a2, a);
        let d = l.alloc(b"dddd");
        assert_eq!(d, a, "the freed cell is reused");
        assert_eq!(
            (l.get(b).0, l.get(c).0, l.get(a2).0),
            (&b"bbbb"[..], &b"cc"[..], &b"aaa"[..])
        );
        let big = vec![7u8; 300];
        let e = l.alloc(&big);
        assert_eq!(e.class, 0);
        assert_eq!(l.get(e).0, &big[..]);
        l.free(e);
        assert_eq!(l.alloc(b"x".repeat(400).as_slice()).index, e.index);
        // Across chunks: cells keep their bytes, the last cell's removal shrinks the pool.
        let many: Vec<Cell> = (0..3 * CHUNK_CELLS as u32 + 5)
            .map(|i| l.alloc(&i.to_le_bytes()[..3]))
            .collect();
        for (i, &c) in many.iter().enumerate() {
            assert_eq!(l.get(c).0, &(i as u32).to_le_bytes()[..3]);
        }
        for &c in many.iter().rev() {
            l.free(c);
        }
        // Left: `a2`, the first cell.
        assert_eq!((l.pools[3].cells, l.pools[3].chunks.len()), (1, 1));
        assert_eq!(l.get(a2).0, b"aaa");
    }
}
