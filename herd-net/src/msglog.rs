//! The per-message log: every client message and its reply, written in bulk.
//!
//! Logging each message through `tracing` costs a formatted event and a channel send per
//! line. When a server has a [`MessageLog`], a connection formats the log lines of a whole
//! batch itself (one timestamp per batch: the batch's receive time) in the same layout as the
//! other log lines, and hands them over with one call. Without one, the connection emits a
//! `tracing` event per message instead.

use std::io::Write as _;
use std::net::SocketAddr;

use herd_core::Timestamp;

use crate::escape::{clip_len, push_escaped};

/// A sink for pre-formatted log lines of one server.
pub trait MessageLog: Send + Sync {
    /// Appends `lines` (whole lines, each ending in `\n`) to the server's log.
    fn write_lines(&self, lines: &[u8]);
}

/// Appends `t` as an RFC 3339 UTC timestamp with microseconds (`2018-03-02T20:52:14.918963Z`).
pub fn push_timestamp(out: &mut Vec<u8>, t: Timestamp) {
    let nanos = t.as_nanos();
    let secs = nanos / 1_000_000_000;
    let micros = (nanos % 1_000_000_000) / 1000;
    // Once per batch of log lines: digits by hand, not through `fmt`, and the part up to the
    // second made once per second per thread. (Nanoseconds in a u64 end in 2554: the year has
    // four digits.)
    thread_local! {
        static SECOND: std::cell::Cell<(u64, [u8; 20])> = const { std::cell::Cell::new((u64::MAX, [0; 20])) };
    }
    let (at, mut head) = SECOND.get();
    if at != secs {
        let (days, sod) = (secs / 86_400, secs % 86_400);
        let (y, m, d) = civil_from_days(days);
        head = *b"0000-00-00T00:00:00.";
        put_digits(&mut head[0..4], y);
        put_digits(&mut head[5..7], m);
        put_digits(&mut head[8..10], d);
        put_digits(&mut head[11..13], sod / 3600);
        put_digits(&mut head[14..16], sod % 3600 / 60);
        put_digits(&mut head[17..19], sod % 60);
        SECOND.set((secs, head));
    }
    let mut tail = *b"000000Z";
    put_digits(&mut tail[..6], micros);
    out.extend_from_slice(&head);
    out.extend_from_slice(&tail);
}

/// Writes the last `to.len()` decimal digits of `n` into `to`, zero-padded.
fn put_digits(to: &mut [u8], mut n: u64) {
    for slot in to.iter_mut().rev() {
        // A digit: below 10.
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// Days since 1970-01-01 to a (year, month, day) date (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// The part of a connection's `client message` lines that never changes:
/// `  INFO client message addr=ADDR msg=`.
pub fn message_prefix(addr: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    // Writing into a Vec cannot fail.
    let _ = write!(out, "  INFO client message addr={addr} msg=");
    out
}

/// Appends one `client message` log line.
pub fn push_message(out: &mut Vec<u8>, stamp: &[u8], addr: SocketAddr, msg: &[u8], reply: &[u8]) {
    push_message_with(out, stamp, &message_prefix(addr), msg, reply);
}

/// Appends one `client message` log line, with the connection's [`message_prefix`].
pub fn push_message_with(out: &mut Vec<u8>, stamp: &[u8], prefix: &[u8], msg: &[u8], reply: &[u8]) {
    push_message_clipped(out, stamp, prefix, msg, reply, usize::MAX);
}

/// [`push_message_with`] with the message and the reply each cut to `max` bytes of their
/// escaped form (then followed by `…(N bytes)`, [`crate::escape::Clipped`]).
pub fn push_message_clipped(
    out: &mut Vec<u8>,
    stamp: &[u8],
    prefix: &[u8],
    msg: &[u8],
    reply: &[u8],
    max: usize,
) {
    let shown = |b: &[u8]| b.len().min(max);
    out.reserve(stamp.len() + prefix.len() + shown(msg) + shown(reply) + 48);
    out.extend_from_slice(stamp);
    out.extend_from_slice(prefix);
    push_value(out, msg, max);
    out.extend_from_slice(b" reply=");
    push_value(out, reply, max);
    out.push(b'\n');
}

/// Appends `bytes` as a field value of a text log line: escaped and cut to `max` bytes as
/// [`crate::escape::Clipped`] shows them, and in double quotes (a `"` inside as `\"`) when
/// that is empty, holds a space or starts with `"`, like herd-server's text format quotes a
/// value.
pub fn push_value(out: &mut Vec<u8>, bytes: &[u8], max: usize) {
    let n = clip_len(bytes, max);
    let shown = &bytes[..n];
    let cut = n < bytes.len();
    if !cut && !shown.is_empty() && shown[0] != b'"' && memchr::memchr(b' ', shown).is_none() {
        push_escaped(out, shown);
        return;
    }
    // (Measured: a protocol line's first space is a few bytes in and the search for a quote
    // is vectorised, so these two searches cost less than folding them into the escaping.)
    out.push(b'"');
    if memchr::memchr(b'"', shown).is_none() {
        // The usual case (a protocol line holds no quote): one pass.
        push_escaped(out, shown);
    } else {
        for (i, part) in shown.split(|&b| b == b'"').enumerate() {
            if i > 0 {
                out.extend_from_slice(b"\\\"");
            }
            push_escaped(out, part);
        }
    }
    if cut {
        // Writing into a Vec cannot fail.
        let _ = write!(out, "…({} bytes)", bytes.len());
    }
    out.push(b'"');
}

/// Appends one log line of another per-message event, in the layout `tracing` gives it:
/// `STAMP  INFO WHAT addr=ADDR FIELD=VALUE` (VALUE escaped).
pub fn push_event(
    out: &mut Vec<u8>,
    stamp: &[u8],
    what: &str,
    addr: SocketAddr,
    field: &str,
    value: &[u8],
) {
    push_event_clipped(out, stamp, what, addr, field, value, usize::MAX);
}

/// [`push_event`] with the value cut to `max` bytes of its escaped form.
pub fn push_event_clipped(
    out: &mut Vec<u8>,
    stamp: &[u8],
    what: &str,
    addr: SocketAddr,
    field: &str,
    value: &[u8],
    max: usize,
) {
    out.reserve(stamp.len() + what.len() + value.len().min(max) + 64);
    out.extend_from_slice(stamp);
    out.extend_from_slice(b"  INFO ");
    out.extend_from_slice(what.as_bytes());
    // Writing into a Vec cannot fail.
    let _ = write!(out, " addr={addr} {field}=");
    push_value(out, value, max);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(t: Timestamp) -> String {
        let mut v = Vec::new();
        push_timestamp(&mut v, t);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        assert_eq!(stamp(Timestamp(0)), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            stamp(Timestamp::from_parts(1_520_023_934, 918_963_997)),
            "2018-03-02T20:52:14.918963Z"
        );
        assert_eq!(
            stamp(Timestamp::from_parts(951_782_400 + 86_399, 0)),
            "2000-02-29T23:59:59.000000Z"
        );
    }

    #[test]
    fn an_event_line_has_the_layout_of_tracing() {
        let mut v = Vec::new();
        push_event(
            &mut v,
            b"T",
            "client reply",
            "127.0.0.1:9".parse().unwrap(),
            "reply",
            b"AT x\n{\n}\n\n",
        );
        assert_eq!(
            v,
            b"T  INFO client reply addr=127.0.0.1:9 reply=\"AT x\\n{\\n}\\n\\n\"\n"
        );
    }

    #[test]
    fn a_message_line_is_one_escaped_line() {
        let mut v = Vec::new();
        push_message(
            &mut v,
            b"T",
            "127.0.0.1:9".parse().unwrap(),
            b"IAMAT\tx",
            b"? IAMAT\tx\n",
        );
        assert_eq!(
            v,
            b"T  INFO client message addr=127.0.0.1:9 msg=IAMAT\\tx reply=\"? IAMAT\\tx\\n\"\n"
        );
    }

    #[test]
    fn values_with_spaces_or_a_leading_quote_are_quoted() {
        let value = |b: &[u8]| {
            let mut v = Vec::new();
            push_value(&mut v, b, usize::MAX);
            String::from_utf8(v).unwrap()
        };
        assert_eq!(value(b"IAMAT"), "IAMAT");
        assert_eq!(value(b"a\"b"), "a\"b");
        assert_eq!(value(b"a=b"), "a=b");
        assert_eq!(value(b""), "\"\"");
        assert_eq!(value(b"\"a"), "\"\\\"a\"");
        assert_eq!(value(b"say \"hi\"\\\n"), "\"say \\\"hi\\\"\\\\\\n\"");
    }

    #[test]
    fn timestamps_in_the_same_second_differ_in_their_microseconds_only() {
        let t = |nanos| stamp(Timestamp::from_parts(1_520_023_934, nanos));
        assert_eq!(t(918_963_997), "2018-03-02T20:52:14.918963Z");
        assert_eq!(t(5_000), "2018-03-02T20:52:14.000005Z");
        assert_eq!(
            stamp(Timestamp::from_parts(1_520_023_935, 0)),
            "2018-03-02T20:52:15.000000Z"
        );
    }

    #[test]
    fn long_messages_and_replies_are_cut_with_their_length() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let msg = vec![b'x'; 1000];
        let mut v = Vec::new();
        push_message_clipped(&mut v, b"T", &message_prefix(addr), &msg, b"? x\n", 8);
        assert_eq!(
            v,
            b"T  INFO client message addr=127.0.0.1:9 msg=\"xxxxxxxx\xe2\x80\xa6(1000 bytes)\" reply=\"? x\\n\"\n"
        );
        v.clear();
        push_event_clipped(&mut v, b"T", "client reply", addr, "reply", &msg, 3);
        assert_eq!(
            v,
            "T  INFO client reply addr=127.0.0.1:9 reply=\"xxx…(1000 bytes)\"\n".as_bytes()
        );
    }
}
