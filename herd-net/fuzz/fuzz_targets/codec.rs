//! Feeds `LineCodec` arbitrary bytes in arbitrary reads, checking it against a plain model.
//!
//! Input: byte 0 chooses the maximum line length (mostly small, sometimes the default or near
//! `usize::MAX`); byte 1 gives a count `k` of read sizes, the next `k` bytes the sizes (used in
//! turn, cyclically; 0 is a read that brings nothing); the rest is the stream. After each read
//! the codec's `decode` is called until it returns `None`; at the end `decode_eof` until
//! `None`. A `TooLong` error ends the stream (the server closes the connection).
//!
//! Invariants checked:
//! - nothing panics;
//! - every returned line is at most the maximum, and is exactly the model's next line (the
//!   bytes up to the next `\n`, less a `\r` just before it; at the end of the stream the rest
//!   as it is);
//! - the bytes the codec consumed are the lines returned so far with their terminators: the
//!   model's position after that line, never past what was read (no line is returned before
//!   its `\n` arrived, except by `decode_eof`);
//! - `TooLong` only when the model's next line really is longer than the maximum, and such a
//!   line is never returned;
//! - at the end of a stream without error every byte was consumed and the buffer is empty.
#![no_main]

use bytes::BytesMut;
use herd_net::codec::{LineCodec, LineError, DEFAULT_MAX_LINE};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

/// The model's next line at `pos`: `None` at the end, else the line and where the next starts.
fn next_line(stream: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    if pos == stream.len() {
        return None;
    }
    let rest = &stream[pos..];
    Some(match rest.iter().position(|&b| b == b'\n') {
        Some(i) => {
            let line = &rest[..i];
            (line.strip_suffix(b"\r").unwrap_or(line), pos + i + 1)
        }
        None => (rest, stream.len()),
    })
}

struct Check<'a> {
    stream: &'a [u8],
    max: usize,
    /// Bytes handed to the codec so far.
    fed: usize,
    /// Where the model's next line starts.
    pos: usize,
}

impl Check<'_> {
    /// Checks one result of `decode` (`eof`: of `decode_eof`); `true` when the caller should
    /// call again.
    fn result(&mut self, r: Result<Option<BytesMut>, LineError>, buf: &BytesMut, eof: bool) -> bool {
        let model = next_line(self.stream, self.pos);
        match r {
            Ok(Some(line)) => {
                assert!(line.len() <= self.max, "line of {} bytes > max {}", line.len(), self.max);
                let (want, next) = model.expect("codec returned a line past the end of the stream");
                assert_eq!(&line[..], want, "line differs from the model's at {}", self.pos);
                assert!(next <= self.fed, "line returned before its terminator was read");
                if !eof {
                    assert_ne!(next, self.pos + line.len(), "unterminated line returned by decode");
                }
                self.pos = next;
                assert_eq!(self.fed - buf.len(), self.pos, "consumed bytes are not the lines + terminators");
                true
            }
            Ok(None) => {
                assert_eq!(self.fed - buf.len(), self.pos, "decode consumed bytes without a line");
                if eof {
                    assert!(buf.is_empty(), "decode_eof left {} bytes", buf.len());
                    assert_eq!(model, None, "decode_eof ended before the model's last line");
                } else if let Some((_, next)) = model {
                    // A complete line that fits must be returned as soon as it is read.
                    let terminated = self.stream[self.pos..next].last() == Some(&b'\n');
                    assert!(!(terminated && next <= self.fed), "a complete line was not returned");
                }
                false
            }
            Err(LineError::TooLong { max }) => {
                assert_eq!(max, self.max);
                let (want, _) = model.expect("TooLong past the end of the stream");
                assert!(want.len() > self.max, "TooLong for a line of {} bytes, max {}", want.len(), self.max);
                false
            }
            Err(LineError::Io(e)) => panic!("decoding a buffer cannot fail with I/O: {e}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [sel, k, rest @ ..] = data else { return };
    let max = match *sel {
        0..=199 => usize::from(sel % 40),
        200..=249 => DEFAULT_MAX_LINE,
        _ => usize::MAX - usize::from(sel - 250),
    };
    let k = usize::from(k % 16).min(rest.len());
    let (sizes, stream) = rest.split_at(k);
    let sizes: Vec<usize> = if sizes.iter().all(|&s| s == 0) {
        vec![stream.len()]
    } else {
        sizes.iter().map(|&s| usize::from(s)).collect()
    };

    let mut codec = LineCodec::new(max);
    assert_eq!(codec.max_length(), max);
    let mut buf = BytesMut::new();
    let mut check = Check { stream, max, fed: 0, pos: 0 };
    let mut reads = sizes.iter().cycle();
    while check.fed < stream.len() {
        let n = (*reads.next().expect("cycle of a non-empty list")).min(stream.len() - check.fed);
        buf.extend_from_slice(&stream[check.fed..check.fed + n]);
        check.fed += n;
        loop {
            let r = codec.decode(&mut buf);
            let too_long = r.is_err();
            if !check.result(r, &buf, false) {
                if too_long {
                    return;
                }
                break;
            }
        }
    }
    loop {
        let r = codec.decode_eof(&mut buf);
        if !check.result(r, &buf, true) {
            break;
        }
    }
});
