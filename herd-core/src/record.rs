//! The AT line: one client's location report as the herd keeps and floods it.
//!
//! A [`Record`] is the origin server's whole AT line (`AT server diff client location time`),
//! built from an IAMAT ([`Record::from_iamat`]) or parsed back from a peer or the journal
//! ([`Record::parse`]), with the herd's total order on records of one client
//! ([`Record::precedence`]): client time, then the bytes of the line.

use std::cmp::Ordering;

use crate::protocol::IAmAt;
use crate::types::{is_space, FieldError, Location, ServerName, TimeDiff, TimeValue, Timestamp};

/// Longest AT line kept inside the record itself; longer ones get their own allocation.
const INLINE: usize = 86;

/// An AT line: inline (one allocation per record for the lines of everyday clients) or boxed.
#[derive(Clone)]
enum Line {
    /// `len` bytes at the start of the buffer.
    Inline(u8, [u8; INLINE]),
    /// A line longer than [`INLINE`].
    Heap(Box<[u8]>),
}

impl Line {
    fn new(bytes: &[u8]) -> Self {
        match u8::try_from(bytes.len()) {
            Ok(len) if bytes.len() <= INLINE => {
                let mut buf = [0u8; INLINE];
                buf[..bytes.len()].copy_from_slice(bytes);
                Line::Inline(len, buf)
            }
            _ => Line::Heap(bytes.into()),
        }
    }

    #[inline]
    fn bytes(&self) -> &[u8] {
        match self {
            Line::Inline(len, buf) => &buf[..usize::from(*len)],
            Line::Heap(b) => b,
        }
    }
}

/// Marks a client time whose seconds do not fit the compact field: read from the line.
const SECS_IN_LINE: u64 = u64::MAX;

/// One client's location report as the herd keeps it: the origin's whole AT line.
///
/// The line and what is read from it once, when it is built or parsed: the client time for
/// ordering, where the client id lies in the line, and the position. A record lives while
/// it is handled or queued for a peer; the store keeps its own compact copy of the line
/// (see [`crate::store`]) and gives back records built from it.
#[derive(Clone)]
pub struct Record {
    /// Whole seconds of the client time, or [`SECS_IN_LINE`] when they do not fit below it.
    secs: u64,
    nanos: u32,
    /// The client id's span in the line, or `(0, 0)` when it does not fit in 16 bits.
    client: (u16, u16),
    /// Latitude and longitude in degrees, read from the location field.
    position: (f64, f64),
    line: Line,
}

impl AsRef<Record> for Record {
    fn as_ref(&self) -> &Record {
        self
    }
}

impl PartialEq for Record {
    fn eq(&self, other: &Self) -> bool {
        // Everything else is derived from the line.
        self.at_line() == other.at_line()
    }
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Record({:?})", String::from_utf8_lossy(self.at_line()))
    }
}

/// The 4th field of an AT line (`AT server diff client ...`).
fn client_field(line: &[u8]) -> &[u8] {
    line.split(|&b| b == b' ').nth(3).unwrap_or_default()
}

impl Record {
    fn build(line: &[u8], span: (usize, usize), time: TimeValue, position: (f64, f64)) -> Self {
        let (client_start, client_end) = span;
        let client = match (u16::try_from(client_start), u16::try_from(client_end)) {
            (Ok(a), Ok(b)) => (a, b),
            _ => (0, 0),
        };
        let secs = u64::try_from(time.secs)
            .ok()
            .filter(|&s| s != SECS_IN_LINE)
            .unwrap_or(SECS_IN_LINE);
        Self {
            secs,
            nanos: time.nanos,
            client,
            position,
            line: Line::new(line),
        }
    }

    /// The record an IAMAT received by `server` at `now` makes: builds its AT line. Its
    /// position is the request's `lat` and `lon`, which must be what [`Location::degrees`]
    /// gives for its location text (as [`crate::protocol::parse_client_line`] makes them):
    /// the store's nearby index finds a record's old key from the text it keeps.
    pub fn from_iamat(server: &ServerName, now: Timestamp, req: &IAmAt<'_>) -> Self {
        let diff = TimeDiff::between(now, req.time_value);
        let len = 3 + server.as_str().len() + 1 + 24 + 1;
        let len = len + req.client.len() + 1 + req.location.len() + 1 + req.time.len();
        let mut line = Vec::with_capacity(len + 8);
        line.extend_from_slice(b"AT ");
        line.extend_from_slice(server.as_str().as_bytes());
        line.push(b' ');
        diff.write_to(&mut line);
        line.push(b' ');
        let start = line.len();
        line.extend_from_slice(req.client);
        line.push(b' ');
        line.extend_from_slice(req.location);
        line.push(b' ');
        line.extend_from_slice(req.time);
        let span = (start, start + req.client.len());
        Self::build(&line, span, req.time_value, (req.lat, req.lon))
    }

    /// Parses a stored AT line (`AT server diff client location time`, single spaces).
    ///
    /// # Errors
    /// The first field that does not validate.
    pub fn parse(line: &[u8]) -> Result<Self, FieldError> {
        let mut parts = line.split(|&b| b == b' ');
        let mut next = || parts.next().ok_or(FieldError::ClientId);
        let (at, server, diff, client) = (next()?, next()?, next()?, next()?);
        let (location, time) = (next()?, next()?);
        if at != b"AT" || parts.next().is_some() {
            return Err(FieldError::ClientId);
        }
        ServerName::check(server)?;
        TimeDiff::parse(diff)?;
        if client.is_empty() || client.iter().any(|&b| is_space(b)) {
            return Err(FieldError::ClientId);
        }
        let position = Location::degrees(location)?;
        let time_value = TimeValue::parse(time)?;
        let start = at.len() + server.len() + diff.len() + 3;
        Ok(Self::build(
            line,
            (start, start + client.len()),
            time_value,
            position,
        ))
    }

    /// The record of an AT line the store kept (parsed when it was stored, so valid).
    pub(crate) fn from_stored(line: &[u8]) -> Self {
        Self::parse(line).unwrap_or_else(|_| {
            let start = client_start(line);
            let end = start + client_field(line).len();
            Self::build(line, (start, end), TimeValue::default(), (0.0, 0.0))
        })
    }

    /// The record of an AT line the store kept, with the fields it read from its packed
    /// form: where the client id lies, the client time and the position.
    pub(crate) fn from_stored_parts(
        line: &[u8],
        client: (usize, usize),
        time: TimeValue,
        position: (f64, f64),
    ) -> Self {
        Self::build(line, client, time, position)
    }

    /// Where the client id lies in the line: `at_line()[start..end]`.
    pub(crate) fn client_span(&self) -> (usize, usize) {
        match self.client {
            (0, 0) => {
                let start = client_start(self.at_line());
                (start, start + self.client().len())
            }
            (a, b) => (usize::from(a), usize::from(b)),
        }
    }

    /// The whole AT line, without a newline.
    #[inline]
    pub fn at_line(&self) -> &[u8] {
        self.line.bytes()
    }

    /// The client id.
    #[inline]
    pub fn client(&self) -> &[u8] {
        let line = self.at_line();
        match self.client {
            (0, 0) => client_field(line),
            (a, b) => line.get(usize::from(a)..usize::from(b)).unwrap_or_default(),
        }
    }

    /// The client time.
    pub fn time(&self) -> TimeValue {
        if self.secs != SECS_IN_LINE {
            return TimeValue {
                secs: u128::from(self.secs),
                nanos: self.nanos,
            };
        }
        // Over 18 digits of seconds: rare enough to read from the line (the last field).
        let line = self.at_line();
        let field = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
        TimeValue::parse(field).unwrap_or(TimeValue {
            secs: u128::from(SECS_IN_LINE),
            nanos: self.nanos,
        })
    }

    /// The location field as the client sent it (ISO 6709).
    pub fn location_text(&self) -> &[u8] {
        let line = self.at_line();
        match self.client {
            // The field after the client id, up to the next space.
            (a, b) if (a, b) != (0, 0) => {
                let rest = line.get(usize::from(b) + 1..).unwrap_or_default();
                let end = rest.iter().position(|&c| c == b' ').unwrap_or(rest.len());
                &rest[..end]
            }
            _ => location_field(line),
        }
    }

    /// Latitude and longitude in degrees, parsed once.
    #[inline]
    pub fn position(&self) -> (f64, f64) {
        self.position
    }

    /// Latitude in degrees.
    #[inline]
    pub fn lat(&self) -> f64 {
        self.position.0
    }

    /// Longitude in degrees.
    #[inline]
    pub fn lon(&self) -> f64 {
        self.position.1
    }

    /// The name of the server that received the IAMAT (the AT line's second field).
    pub fn origin(&self) -> &[u8] {
        self.at_line()
            .split(|&b| b == b' ')
            .nth(1)
            .unwrap_or_default()
    }

    /// The herd's total order on records of one client: client time, then AT line bytes.
    pub fn precedence(&self, other: &Record) -> Ordering {
        let time = if self.secs != SECS_IN_LINE && other.secs != SECS_IN_LINE {
            (self.secs, self.nanos).cmp(&(other.secs, other.nanos))
        } else {
            self.time().cmp(&other.time())
        };
        time.then_with(|| self.at_line().cmp(other.at_line()))
    }
}

/// Where the 4th field of an AT line starts (the line's length when it has none).
fn client_start(line: &[u8]) -> usize {
    let mut spaces = line.iter().enumerate().filter(|&(_, &b)| b == b' ');
    spaces.nth(2).map_or(line.len(), |(i, _)| i + 1)
}

/// The location field of an AT line: the 5th field.
fn location_field(line: &[u8]) -> &[u8] {
    line.split(|&b| b == b' ').nth(4).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn the_location_text_is_the_fifth_field() {
        let r = Record::parse(
            b"AT Goloman +0.100000000 kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.9",
        )
        .unwrap();
        assert_eq!(r.location_text(), b"+34.068930-118.445127");
        assert_eq!(r.position(), (34.068930, -118.445127));
    }
    use crate::protocol::{parse_client_line, ClientLine};

    fn rec(server: &str, line: &str, now: u64) -> Arc<Record> {
        let ClientLine::IAmAt(req) = parse_client_line(line.as_bytes()) else {
            panic!("bad test line")
        };
        Arc::new(Record::from_iamat(
            &ServerName::new(server).unwrap(),
            Timestamp(now),
            &req,
        ))
    }

    #[test]
    fn at_lines_parse_back_to_the_same_record() {
        let r = rec(
            "Goloman",
            "IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997",
            1_520_023_935_182_837_383,
        );
        assert_eq!(
            r.at_line(),
            b"AT Goloman +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997"
        );
        let back = Record::parse(r.at_line()).unwrap();
        assert_eq!(&back, &*r);
        assert_eq!(back.client(), b"kiwi.cs.ucla.edu");
        for bad in [
            "AT A +0.000000000 c +1+1",
            "AT A 0.0 c +1+1 1",
            "XX A +0.000000000 c +1+1 1",
            "AT A +0.000000000 c +1+1 1 extra",
            "AT A  +0.000000000 c +1+1 1",
        ] {
            assert!(Record::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_record_with_an_everyday_line_is_one_allocation() {
        // Arc counts plus the record: one allocator chunk, the line inside.
        assert_eq!(std::mem::size_of::<Record>(), 120);
        let r = rec(
            "Goloman",
            "IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997",
            1_520_023_935_182_837_383,
        );
        assert!(matches!(r.line, Line::Inline(..)));
    }

    #[test]
    fn long_lines_and_huge_times_keep_every_field() {
        let client = "c".repeat(70_000);
        let line = format!("IAMAT {client} -89.5+179.25 99999999999999999999.123456789");
        let r = rec("Goloman", &line, 5);
        assert!(matches!(r.line, Line::Heap(_)));
        assert_eq!(r.client(), client.as_bytes());
        assert_eq!(
            r.time(),
            TimeValue {
                secs: 99_999_999_999_999_999_999,
                nanos: 123_456_789
            }
        );
        assert_eq!((r.lat(), r.lon()), (-89.5, 179.25));
        let back = Record::parse(r.at_line()).unwrap();
        assert_eq!(&back, &*r);
        assert_eq!(back.client(), client.as_bytes());
        assert_eq!(back.time(), r.time());
        // Ordering across the compact and the in-line time forms.
        let small = rec(
            "Goloman",
            &format!("IAMAT {client} +1+1 18446744073709551614.5"),
            5,
        );
        let max = rec(
            "Goloman",
            &format!("IAMAT {client} +1+1 18446744073709551615"),
            5,
        );
        assert_eq!(small.precedence(&max), Ordering::Less);
        assert_eq!(max.precedence(&r), Ordering::Less);
        assert_eq!(r.precedence(&small), Ordering::Greater);
        let short = rec("A", "IAMAT c +12.5-7.25 10", 0);
        assert_eq!((short.lat(), short.lon()), (12.5, -7.25));
        assert_eq!(short.time(), TimeValue { secs: 10, nanos: 0 });
    }
}
