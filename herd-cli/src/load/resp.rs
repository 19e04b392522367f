//! RESP, the Redis protocol, as far as `load --resp` needs it: commands written as arrays of
//! bulk strings, and replies framed in place (their length, and whether the reply is an
//! error) without allocating, like [`crate::reply::frame`] frames the herd's.

use crate::reply::Kind;

/// Deepest nesting of arrays accepted in a reply (GEOSEARCH without options is one level).
const MAX_DEPTH: usize = 8;

/// Appends one command, `*<n>\r\n` then each argument as `$<len>\r\n<bytes>\r\n`.
pub(super) fn write_command(args: &[&[u8]], out: &mut Vec<u8>) {
    out.push(b'*');
    push_len(args.len(), out);
    for a in args {
        out.push(b'$');
        push_len(a.len(), out);
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_len(n: usize, out: &mut Vec<u8>) {
    crate::util::write_u128(n as u128, out);
    out.extend_from_slice(b"\r\n");
}

/// The end of the `\r\n`-terminated line that starts at `pos`, and the line; `None` while
/// more bytes are needed; `Err` for a bare `\n`.
fn line_at(buf: &[u8], pos: usize) -> Result<Option<(usize, &[u8])>, ()> {
    let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    let end = pos + nl;
    if end == pos || buf[end - 1] != b'\r' {
        return Err(());
    }
    Ok(Some((end + 1, &buf[pos..end - 1])))
}

/// A length or count field: digits, or `-1` (a null).
fn number(field: &[u8]) -> Result<i64, ()> {
    let (neg, digits) = match field.strip_prefix(b"-") {
        Some(d) => (true, d),
        None => (false, field),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(());
    }
    let v = digits
        .iter()
        .fold(0i64, |v, &d| v * 10 + i64::from(d - b'0'));
    Ok(if neg { -v } else { v })
}

/// The end of the whole reply that starts at `pos`; `None` while more bytes are needed.
fn end_of(buf: &[u8], pos: usize, depth: usize) -> Result<Option<usize>, ()> {
    if pos >= buf.len() {
        return Ok(None);
    }
    let Some((after, line)) = line_at(buf, pos)? else {
        return Ok(None);
    };
    let body = &line[1..];
    match line[0] {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' => Ok(Some(after)),
        b'$' => {
            let n = number(body)?;
            if n < 0 {
                return Ok(Some(after));
            }
            let end = after + usize::try_from(n).map_err(|_| ())? + 2;
            if buf.len() < end {
                return Ok(None);
            }
            if &buf[end - 2..end] != b"\r\n" {
                return Err(());
            }
            Ok(Some(end))
        }
        b'*' => {
            if depth >= MAX_DEPTH {
                return Err(());
            }
            let n = number(body)?;
            let mut at = after;
            for _ in 0..n.max(0) {
                match end_of(buf, at, depth + 1)? {
                    Some(e) => at = e,
                    None => return Ok(None),
                }
            }
            Ok(Some(at))
        }
        _ => Err(()),
    }
}

/// Frames the reply at the start of `buf`: its length and kind (`-` errors are
/// [`Kind::Invalid`], anything that is not RESP [`Kind::Malformed`]), or `None` while more
/// bytes are needed.
pub(super) fn frame(buf: &[u8]) -> Option<(usize, Kind)> {
    match end_of(buf, 0, 0) {
        Ok(None) => None,
        Ok(Some(len)) if buf[0] == b'-' => Some((len, Kind::Invalid)),
        Ok(Some(len)) => Some((len, Kind::At)),
        // Skip past the bad line if there is one; the worker counts it and goes on.
        Err(()) => Some((
            buf.iter()
                .position(|&b| b == b'\n')
                .map_or(buf.len(), |p| p + 1),
            Kind::Malformed,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        write_command(&[b"GEOADD", b"herd", b"-118.4", b"34.1", b"c-1"], &mut out);
        assert_eq!(
            out,
            b"*5\r\n$6\r\nGEOADD\r\n$4\r\nherd\r\n$6\r\n-118.4\r\n$4\r\n34.1\r\n$3\r\nc-1\r\n"
        );
    }

    #[test]
    fn replies_are_framed_whole() {
        assert_eq!(frame(b":1\r\n:0\r\n"), Some((4, Kind::At)));
        assert_eq!(frame(b":1\r"), None);
        assert_eq!(frame(b""), None);
        assert_eq!(
            frame(b"-ERR wrong number\r\n+OK"),
            Some((19, Kind::Invalid))
        );
        let arr = b"*2\r\n$3\r\nc-1\r\n$4\r\nc-22\r\n";
        assert_eq!(frame(arr), Some((arr.len(), Kind::At)));
        for cut in 1..arr.len() {
            assert_eq!(frame(&arr[..cut]), None, "{cut}");
        }
        assert_eq!(frame(b"*0\r\n"), Some((4, Kind::At)));
        assert_eq!(frame(b"$-1\r\n"), Some((5, Kind::At)));
        assert_eq!(
            frame(b"*1\r\n*2\r\n$1\r\na\r\n:5\r\n"),
            Some((19, Kind::At))
        );
        assert_eq!(frame(b"AT x\nmore"), Some((5, Kind::Malformed)));
        assert_eq!(frame(b"$3\r\nabcd\r\n"), Some((4, Kind::Malformed)));
    }
}
