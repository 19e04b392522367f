//! Printing protocol bytes in logs: one log line per event, whatever the bytes are.

use std::fmt;

/// Displays bytes with printable ASCII as is and everything else escaped (`\n`, `\xNN`).
#[derive(Clone, Copy)]
pub struct Escaped<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while !rest.is_empty() {
            let plain = plain_prefix(rest);
            // The run is printable ASCII, hence valid UTF-8.
            f.write_str(std::str::from_utf8(&rest[..plain]).map_err(|_| fmt::Error)?)?;
            let Some((&b, tail)) = rest[plain..].split_first() else {
                break;
            };
            match b {
                b'\n' => f.write_str("\\n")?,
                b'\r' => f.write_str("\\r")?,
                b'\t' => f.write_str("\\t")?,
                b'\\' => f.write_str("\\\\")?,
                _ => write!(f, "\\x{b:02x}")?,
            }
            rest = tail;
        }
        Ok(())
    }
}

/// Whether `b` is printed escaped: anything but printable ASCII, and `\\` itself.
#[inline]
fn needs_escape(b: u8) -> bool {
    !(0x20..0x7f).contains(&b) || b == b'\\'
}

/// Length of the longest prefix of `bytes` that is printed as is.
///
/// Log lines are almost all printable ASCII, so the common case tests eight bytes at a time:
/// a word is plain when none of its bytes is below `0x20`, at or above `0x7f`, or `\\`. The
/// word tests may flag a plain word (a borrow between bytes), never miss one that is not;
/// a flagged word is then checked byte by byte.
#[inline]
fn plain_prefix(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    /// High bit set in every byte that is zero (and possibly above one that is).
    #[inline]
    fn zero_bytes(v: u64) -> u64 {
        v.wrapping_sub(ONES) & !v & HIGH
    }
    let mut done = 0;
    for chunk in bytes.chunks_exact(8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        let flagged = below_space
            | (x & HIGH)
            | zero_bytes(x ^ (ONES * 0x7f))
            | zero_bytes(x ^ (ONES * u64::from(b'\\')));
        if flagged != 0 {
            break;
        }
        done += 8;
    }
    let rest = &bytes[done..];
    done + rest
        .iter()
        .position(|&b| needs_escape(b))
        .unwrap_or(rest.len())
}

/// Appends `bytes` escaped as [`Escaped`] displays them, without going through `fmt`.
pub fn push_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut rest = bytes;
    while !rest.is_empty() {
        let plain = plain_prefix(rest);
        out.extend_from_slice(&rest[..plain]);
        let Some((&b, tail)) = rest[plain..].split_first() else {
            break;
        };
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\\' => out.extend_from_slice(b"\\\\"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]),
        }
        rest = tail;
    }
}

/// Bytes of the escaped form of byte `b` when it is escaped (`\n`: 2, `\xNN`: 4).
#[inline]
fn escaped_width(b: u8) -> usize {
    match b {
        b'\n' | b'\r' | b'\t' | b'\\' => 2,
        _ => 4,
    }
}

/// How many bytes at the front of `bytes` have an escaped form ([`Escaped`]) of at most `max`
/// bytes: all of them when it fits, else the longest prefix that does (never half an escape).
pub fn clip_len(bytes: &[u8], max: usize) -> usize {
    // No byte escapes to more than 4: the common short line needs no walk.
    if bytes.len() <= max / 4 {
        return bytes.len();
    }
    let mut budget = max;
    let mut i = 0;
    while i < bytes.len() {
        let window = &bytes[i..bytes.len().min(i + budget)];
        let plain = plain_prefix(window);
        i += plain;
        budget -= plain;
        // Past the plain run: the end, the budget spent, or a byte printed escaped.
        if i == bytes.len() || budget == 0 {
            break;
        }
        let w = escaped_width(bytes[i]);
        if w > budget {
            break;
        }
        budget -= w;
        i += 1;
    }
    i
}

/// Displays bytes as [`Escaped`] does, but at most `max` bytes of the escaped form; a longer
/// one is cut there and followed by `…(N bytes)`, N its full length. For log lines that
/// carry what a client sent: one line of any length costs at most `max` bytes of log.
#[derive(Clone, Copy)]
pub struct Clipped<'a> {
    bytes: &'a [u8],
    max: usize,
}

impl<'a> Clipped<'a> {
    /// `bytes`, shown in at most `max` bytes (plus the length note when cut).
    pub fn new(bytes: &'a [u8], max: usize) -> Self {
        Self { bytes, max }
    }
}

impl fmt::Display for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = clip_len(self.bytes, self.max);
        fmt::Display::fmt(&Escaped(&self.bytes[..n]), f)?;
        if n < self.bytes.len() {
            write!(f, "…({} bytes)", self.bytes.len())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Appends `bytes` as [`Clipped`] displays them, without going through `fmt`.
pub fn push_clipped(out: &mut Vec<u8>, bytes: &[u8], max: usize) {
    let n = clip_len(bytes, max);
    push_escaped(out, &bytes[..n]);
    if n < bytes.len() {
        use std::io::Write as _;
        // Writing into a Vec cannot fail.
        let _ = write!(out, "…({} bytes)", bytes.len());
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::{
        clip_len, needs_escape, plain_prefix, push_clipped, push_escaped, Clipped, Escaped,
    };

    #[test]
    fn escapes_control_and_non_ascii_bytes() {
        assert_eq!(
            Escaped(b"AT x\n{\"a\" : 1}\\\xff\x00").to_string(),
            "AT x\\n{\"a\" : 1}\\\\\\xff\\x00"
        );
    }

    #[test]
    fn push_escaped_writes_what_display_shows_for_every_byte() {
        let all: Vec<u8> = (0..=255u8).chain(*b"plain text\r\n\t\\").collect();
        for chunk in [&all[..], b"", b"AT x", b"\x7f\x1f"] {
            let mut v = Vec::new();
            push_escaped(&mut v, chunk);
            assert_eq!(v, Escaped(chunk).to_string().into_bytes());
        }
    }

    #[test]
    fn the_word_at_a_time_scan_finds_the_first_byte_to_escape_at_every_position() {
        // Every byte value at every position of lines up to 24 bytes, after plain bytes that
        // sit next to the word tests' thresholds.
        for len in 1..24 {
            for pos in 0..len {
                for b in 0..=255u8 {
                    let mut line: Vec<u8> =
                        (0..len).map(|i| [b' ', b'~', b'[', b']'][i % 4]).collect();
                    line[pos] = b;
                    let want = line.iter().position(|&c| needs_escape(c)).unwrap_or(len);
                    assert_eq!(plain_prefix(&line), want, "{line:?}");
                }
            }
        }
    }

    #[test]
    fn a_clipped_line_is_the_longest_escaped_prefix_that_fits_and_notes_the_length() {
        assert_eq!(Clipped::new(b"IAMAT x", 512).to_string(), "IAMAT x");
        assert_eq!(Clipped::new(b"IAMAT x", 5).to_string(), "IAMAT…(7 bytes)");
        // An escape is never split: `\x01` needs 4 bytes, only 3 are left.
        assert_eq!(Clipped::new(b"ab\x01cd", 5).to_string(), "ab…(5 bytes)");
        assert_eq!(Clipped::new(b"ab\ncd", 4).to_string(), "ab\\n…(5 bytes)");
        // Every byte value at every position, under every budget up to 40.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..300 {
            let line: Vec<u8> = (0..30)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    if seed.is_multiple_of(3) {
                        (seed >> 8) as u8
                    } else {
                        b'a' + (seed >> 8) as u8 % 26
                    }
                })
                .collect();
            for max in 0..40 {
                let n = clip_len(&line, max);
                let shown = Escaped(&line[..n]).to_string();
                assert!(shown.len() <= max, "{line:?} {max}");
                if n < line.len() {
                    let more = Escaped(&line[..=n]).to_string();
                    assert!(more.len() > max, "{line:?} {max}: not the longest");
                }
                let mut v = Vec::new();
                push_clipped(&mut v, &line, max);
                assert_eq!(v, Clipped::new(&line, max).to_string().into_bytes());
            }
        }
    }
}
