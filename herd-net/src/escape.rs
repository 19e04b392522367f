//! Printing protocol bytes in logs: one log line per event, whatever the bytes are.

use std::fmt;

/// Displays bytes with printable ASCII as is and everything else escaped (`\n`, `\xNN`).
#[derive(Clone, Copy)]
pub struct Escaped<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while !rest.is_empty() {
            let plain = rest
                .iter()
                .position(|&b| !(0x20..0x7f).contains(&b) || b == b'\\')
                .unwrap_or(rest.len());
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

/// Appends `bytes` escaped as [`Escaped`] displays them, without going through `fmt`.
pub fn push_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut rest = bytes;
    while !rest.is_empty() {
        let plain = rest
            .iter()
            .position(|&b| !(0x20..0x7f).contains(&b) || b == b'\\')
            .unwrap_or(rest.len());
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

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::{push_escaped, Escaped};

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
}
