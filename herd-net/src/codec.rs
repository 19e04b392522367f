//! Line framing for client and peer connections (docs/client-protocol.md §1).
//!
//! Lines are bytes, not text. A line ends at `\n`; a `\r` just before it belongs to the
//! terminator. A final line without `\n` at end-of-stream is still a line. A line whose
//! content is longer than the codec's maximum is an error: the caller answers the lines
//! before it and closes the connection.
//!
//! The search for `\n` resumes where the previous call stopped, so a line that arrives in many
//! small reads costs O(1) amortised per byte, and pipelined input is never rescanned.

use bytes::BytesMut;
use thiserror::Error;
use tokio_util::codec::Decoder;

/// Default maximum length of a client line, in bytes (terminator excluded).
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;

/// Why framing failed.
#[derive(Debug, Error)]
pub enum LineError {
    /// A line is longer than the limit; the connection must be closed.
    #[error("line longer than {max} bytes")]
    TooLong {
        /// The limit in force.
        max: usize,
    },
    /// Reading the socket failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A byte line decoder with a maximum line length.
#[derive(Debug, Clone)]
pub struct LineCodec {
    max: usize,
    /// Bytes at the front of the buffer already known to hold no `\n`.
    scanned: usize,
}

impl LineCodec {
    /// A codec accepting lines of at most `max` bytes (terminator excluded).
    pub fn new(max: usize) -> Self {
        Self { max, scanned: 0 }
    }

    /// The maximum line length.
    pub fn max_length(&self) -> usize {
        self.max
    }

    fn too_long(&self) -> LineError {
        LineError::TooLong { max: self.max }
    }
}

impl Default for LineCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LINE)
    }
}

impl LineCodec {
    /// Finds the next complete line in `buf[from..]` without taking it out: `(end, next)`,
    /// the line being `buf[from..end]` (terminator excluded) and the one after it starting at
    /// `next`. The search resumes where the previous call for the same line stopped (`from`
    /// is where that line starts).
    pub fn find(&mut self, buf: &[u8], from: usize) -> Result<Option<(usize, usize)>, LineError> {
        let rest = buf.get(from..).unwrap_or_default();
        // The longest acceptable line is `max` content bytes, `\r` and `\n`.
        let window = rest.len().min(self.max.saturating_add(2));
        let found = rest
            .get(self.scanned..window)
            .and_then(|tail| memchr::memchr(b'\n', tail));
        let Some(offset) = found else {
            if rest.len() >= self.max.saturating_add(2) {
                return Err(self.too_long());
            }
            self.scanned = rest.len();
            return Ok(None);
        };
        let newline = self.scanned + offset;
        self.scanned = 0;
        let end = if newline > 0 && rest[newline - 1] == b'\r' {
            newline - 1
        } else {
            newline
        };
        if end > self.max {
            return Err(self.too_long());
        }
        Ok(Some((from + end, from + newline + 1)))
    }

    /// [`LineCodec::find`] at end-of-stream: what is left without a terminator is a line too.
    pub fn find_eof(
        &mut self,
        buf: &[u8],
        from: usize,
    ) -> Result<Option<(usize, usize)>, LineError> {
        if let Some(found) = self.find(buf, from)? {
            return Ok(Some(found));
        }
        self.scanned = 0;
        let rest = buf.len().saturating_sub(from);
        if rest == 0 {
            return Ok(None);
        }
        if rest > self.max {
            return Err(self.too_long());
        }
        // No terminator: the bytes are the line as received.
        Ok(Some((buf.len(), buf.len())))
    }
}

/// Takes the line that [`LineCodec::find`] found at the front of `buf` out of it.
fn take(buf: &mut BytesMut, (end, next): (usize, usize)) -> BytesMut {
    let mut line = buf.split_to(next);
    line.truncate(end);
    line
}

impl Decoder for LineCodec {
    type Item = BytesMut;
    type Error = LineError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, LineError> {
        Ok(self.find(buf, 0)?.map(|found| take(buf, found)))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, LineError> {
        Ok(self.find_eof(buf, 0)?.map(|found| take(buf, found)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(codec: &mut LineCodec, buf: &mut BytesMut) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(l) = codec.decode(buf).unwrap() {
            out.push(l.to_vec());
        }
        out
    }

    #[test]
    fn splits_lines_and_strips_crlf() {
        let mut c = LineCodec::new(100);
        let mut b = BytesMut::from(&b"a b\r\nc\n\n\rd\r\r\ntail"[..]);
        assert_eq!(
            lines(&mut c, &mut b),
            vec![
                b"a b".to_vec(),
                b"c".to_vec(),
                b"".to_vec(),
                b"\rd\r".to_vec()
            ]
        );
        assert_eq!(&b[..], b"tail");
        assert_eq!(
            c.decode_eof(&mut b).unwrap().unwrap().to_vec(),
            b"tail".to_vec()
        );
        assert!(c.decode_eof(&mut b).unwrap().is_none());
    }

    #[test]
    fn a_line_split_over_many_reads_is_found_once_complete() {
        let mut c = LineCodec::new(100);
        let mut b = BytesMut::new();
        for chunk in [&b"IAM"[..], b"AT x", b" +1+1 ", b"5\r", b"\nW"] {
            b.extend_from_slice(chunk);
            if let Some(l) = c.decode(&mut b).unwrap() {
                assert_eq!(&l[..], b"IAMAT x +1+1 5");
                assert_eq!(&b[..], b"W");
                return;
            }
        }
        panic!("line never decoded");
    }

    #[test]
    fn line_of_exactly_the_limit_passes_and_one_more_fails() {
        let mut c = LineCodec::new(4);
        let mut b = BytesMut::from(&b"abcd\r\nabcd\nabcde\n"[..]);
        assert_eq!(&c.decode(&mut b).unwrap().unwrap()[..], b"abcd");
        assert_eq!(&c.decode(&mut b).unwrap().unwrap()[..], b"abcd");
        assert!(matches!(
            c.decode(&mut b),
            Err(LineError::TooLong { max: 4 })
        ));
    }

    #[test]
    fn over_long_line_without_newline_fails_once_past_the_limit() {
        let mut c = LineCodec::new(4);
        let mut b = BytesMut::from(&b"abcd\r"[..]);
        assert!(c.decode(&mut b).unwrap().is_none());
        b.extend_from_slice(b"x");
        assert!(matches!(c.decode(&mut b), Err(LineError::TooLong { .. })));
        let mut c = LineCodec::new(4);
        let mut b = BytesMut::from(&b"abcde"[..]);
        assert!(c.decode(&mut b).unwrap().is_none());
        assert!(matches!(
            c.decode_eof(&mut b),
            Err(LineError::TooLong { .. })
        ));
    }

    #[test]
    fn lone_cr_at_eof_is_part_of_the_line() {
        let mut c = LineCodec::new(10);
        let mut b = BytesMut::from(&b"ab\r"[..]);
        assert_eq!(&c.decode_eof(&mut b).unwrap().unwrap()[..], b"ab\r");
    }
}
