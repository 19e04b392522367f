//! The one reply type of herd-cli: what a request line gets back, read from the wire, written
//! back to it, shown as JSON, and (for the echo server) answered.
//!
//! Every shape decision follows herd-core's grammar: [`Expect::of`] reads the request with
//! `parse_client_line`, AT lines are `herd_core::Record`s (`Record::parse` when read,
//! `Record::from_iamat` when answered), and the echo server's answers are written with
//! `write_invalid` and `write_whatsat_reply`. This is the only module of herd-cli that looks at
//! a [`ClientLine`]'s kind or at an AT line's fields, so a new client command touches herd-core's
//! grammar, the node and this module.

use herd_core::protocol::{write_iamat, write_invalid, write_whatsat_reply};
use herd_core::{
    parse_client_line, ClientLine, FieldError, MaxItems, Record, ServerName, Timestamp,
};
use serde_json::{json, Map, Value};

/// How an AT line starts.
const AT_PREFIX: &[u8] = b"AT ";
/// How the reply to an invalid line starts.
const INVALID_PREFIX: &[u8] = b"? ";

/// What reply a request line gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    /// A blank line: no reply.
    Nothing,
    /// One line: an AT reply to IAMAT, or `? ` for an invalid line.
    Line,
    /// A WHATSAT: `? ` or the AT line, JSON lines and an empty line.
    Places,
    /// A NEARBY (herd extension): `? `, or (for the client form, `subject`) the subject's AT
    /// line, then one JSON line and an empty line.
    Nearby {
        /// Whether the reply starts with the subject's AT line (the client form).
        subject: bool,
    },
}

impl Expect {
    /// The reply `line` (without terminator) gets, per herd-core's grammar.
    pub(crate) fn of(line: &[u8]) -> Self {
        match parse_client_line(line) {
            ClientLine::Blank => Self::Nothing,
            ClientLine::IAmAt(_)
            | ClientLine::Invalid(_)
            | ClientLine::Fence(_)
            | ClientLine::Unfence(_) => Self::Line,
            ClientLine::WhatsAt(_) => Self::Places,
            ClientLine::Nearby(n) => Self::Nearby {
                subject: matches!(n.center, herd_core::protocol::NearbyCenter::Client(_)),
            },
        }
    }
}

/// Longest client id shown in a message (a longer one is cut, with its length).
const SHOWN_ID_BYTES: usize = 80;

/// A client id for a message: lossy UTF-8, cut after [`SHOWN_ID_BYTES`] bytes.
fn shown_id(client: &[u8]) -> String {
    if client.len() <= SHOWN_ID_BYTES {
        return String::from_utf8_lossy(client).into_owned();
    }
    format!(
        "{}…({} bytes)",
        String::from_utf8_lossy(&client[..SHOWN_ID_BYTES]),
        client.len()
    )
}

/// The client a well-formed WHATSAT asks about: for that request a `? ` reply means the herd
/// does not know the client (the server answers `? ` to a malformed line too, but herd-core's
/// grammar, the server's own, says this line is not one).
pub(crate) fn unknown_client_of(request: &[u8]) -> Option<&[u8]> {
    match parse_client_line(request) {
        ClientLine::WhatsAt(w) => Some(w.client),
        _ => None,
    }
}

/// Why `request` got `? ` back, as herd-cli can tell from the grammar: for a well-formed
/// WHATSAT, the herd does not know its client; for a malformed line, what is wrong with it.
/// A well-formed request whose client id is longer than the server's default
/// `max_client_id_bytes` may have been refused for that instead, and the message says so.
pub(crate) fn why_invalid(request: &[u8]) -> String {
    let long = |client: &[u8]| client.len() > herd_core::node::DEFAULT_MAX_CLIENT_ID_BYTES;
    let long_note = format!(
        ", or its id is longer than the server's max_client_id_bytes ({} by default)",
        herd_core::node::DEFAULT_MAX_CLIENT_ID_BYTES
    );
    match parse_client_line(request) {
        ClientLine::WhatsAt(w) => format!(
            "the herd does not know client {}{}",
            shown_id(w.client),
            if long(w.client) {
                long_note.as_str()
            } else {
                ""
            }
        ),
        ClientLine::IAmAt(i) if long(i.client) => format!(
            "the server refused the IAMAT: client id {} is longer than the server's \
             max_client_id_bytes ({} by default)",
            shown_id(i.client),
            herd_core::node::DEFAULT_MAX_CLIENT_ID_BYTES
        ),
        ClientLine::Nearby(n) => match n.center {
            herd_core::protocol::NearbyCenter::Client(c) => {
                format!("this server does not hold client {}", shown_id(c))
            }
            herd_core::protocol::NearbyCenter::Point { .. } => {
                "the server found the request invalid".to_owned()
            }
        },
        ClientLine::Invalid(e) => format!("the request is invalid ({e})"),
        ClientLine::Fence(_) => {
            "the server refused the FENCE (no such connection, or over a fence limit)".to_owned()
        }
        ClientLine::Unfence(_) => "no fence of that id on this connection".to_owned(),
        ClientLine::IAmAt(_) | ClientLine::Blank => {
            "the server found the request invalid".to_owned()
        }
    }
}

/// One reply from a server.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    /// An AT line (the reply to IAMAT).
    At(Record),
    /// A WHATSAT reply: the stored AT line and the places JSON text (without the final `\n\n`).
    Places {
        /// The stored record.
        record: Record,
        /// The JSON text as received.
        json: Vec<u8>,
    },
    /// A NEARBY reply: the subject's AT line (client form) and the JSON line.
    Nearby {
        /// The subject's record, for the client form.
        record: Option<Record>,
        /// The JSON text as received.
        json: Vec<u8>,
    },
    /// `? <line>`: the echoed line.
    Invalid(Vec<u8>),
}

/// A reply read so far, line by line: whole, or a WHATSAT reply waiting for more JSON lines.
#[derive(Debug)]
pub(crate) enum Step {
    /// The whole reply.
    Done(Reply),
    /// A WHATSAT reply's AT line and the JSON lines so far: the next line is wanted.
    More(Body),
}

/// The part of a WHATSAT reply read so far (see [`Step::More`]).
#[derive(Debug)]
pub(crate) struct Body {
    /// The AT line (a WHATSAT's, or a client-form NEARBY's subject).
    record: Option<Record>,
    json: Vec<u8>,
    /// A NEARBY reply rather than a WHATSAT's.
    nearby: bool,
}

impl Body {
    /// Takes the reply's next line (without terminator); the empty line ends the reply.
    pub(crate) fn line(mut self, line: &[u8]) -> Step {
        if line.is_empty() {
            if self.json.last() == Some(&b'\n') {
                self.json.pop();
            }
            return Step::Done(match (self.nearby, self.record) {
                (false, Some(record)) => Reply::Places {
                    record,
                    json: self.json,
                },
                (_, record) => Reply::Nearby {
                    record,
                    json: self.json,
                },
            });
        }
        self.json.extend_from_slice(line);
        self.json.push(b'\n');
        Step::More(self)
    }
}

/// How a reply at the start of a buffer classifies by its first bytes (see [`frame`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Starts with `AT `: a normal reply.
    At,
    /// Starts with `? `: the server found the request invalid.
    Invalid,
    /// Neither.
    Malformed,
}

/// Frames the reply to a request of kind `expect` at the start of `buf` without parsing or
/// allocating: its length and kind, or `None` while more bytes are needed. A WHATSAT's AT
/// reply runs to the first empty line; every other reply is one line.
pub(crate) fn frame(buf: &[u8], expect: Expect) -> Option<(usize, Kind)> {
    let nl = buf.iter().position(|&b| b == b'\n')?;
    let line = &buf[..nl];
    if line.starts_with(INVALID_PREFIX) {
        return Some((nl + 1, Kind::Invalid));
    }
    if expect == (Expect::Nearby { subject: false }) {
        // The point form: one JSON line, then the empty line.
        if !line.starts_with(b"{") {
            return Some((nl + 1, Kind::Malformed));
        }
        let end = buf[nl..].windows(2).position(|w| w == b"\n\n")?;
        return Some((nl + end + 2, Kind::At));
    }
    if !line.starts_with(AT_PREFIX) {
        return Some((nl + 1, Kind::Malformed));
    }
    if !matches!(expect, Expect::Places | Expect::Nearby { .. }) {
        return Some((nl + 1, Kind::At));
    }
    // The JSON ends at the first empty line.
    let at = buf[nl..].windows(2).position(|w| w == b"\n\n")?;
    Some((nl + at + 2, Kind::At))
}

impl Reply {
    /// Reads a reply's first line (without terminator) to a request of kind `expect`.
    ///
    /// # Errors
    /// The line is neither `? ` nor a valid AT line: the first field that does not validate.
    pub(crate) fn head(line: &[u8], expect: Expect) -> Result<Step, FieldError> {
        if let Some(echo) = line.strip_prefix(INVALID_PREFIX) {
            return Ok(Step::Done(Reply::Invalid(echo.to_vec())));
        }
        if expect == (Expect::Nearby { subject: false }) {
            if !line.starts_with(b"{") {
                return Err(FieldError::Location);
            }
            let mut json = line.to_vec();
            json.push(b'\n');
            return Ok(Step::More(Body {
                record: None,
                json,
                nearby: true,
            }));
        }
        let record = Record::parse(line)?;
        let nearby = match expect {
            Expect::Places => false,
            Expect::Nearby { .. } => true,
            Expect::Nothing | Expect::Line => return Ok(Step::Done(Reply::At(record))),
        };
        Ok(Step::More(Body {
            record: Some(record),
            json: Vec::new(),
            nearby,
        }))
    }

    /// Whether the server answered `? `.
    pub(crate) fn is_invalid(&self) -> bool {
        matches!(self, Reply::Invalid(_))
    }

    /// The reply's AT line, if it has one.
    pub(crate) fn record(&self) -> Option<&Record> {
        match self {
            Reply::At(record) | Reply::Places { record, .. } => Some(record),
            Reply::Nearby { record, .. } => record.as_ref(),
            Reply::Invalid(_) => None,
        }
    }

    /// Appends the reply's bytes exactly as the protocol writes them.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        match self {
            Reply::At(r) => {
                out.extend_from_slice(r.at_line());
                out.push(b'\n');
            }
            Reply::Places { record, json } => {
                out.extend_from_slice(record.at_line());
                out.push(b'\n');
                out.extend_from_slice(json);
                out.extend_from_slice(b"\n\n");
            }
            Reply::Nearby { record, json } => {
                if let Some(r) = record {
                    out.extend_from_slice(r.at_line());
                    out.push(b'\n');
                }
                out.extend_from_slice(json);
                out.extend_from_slice(b"\n\n");
            }
            Reply::Invalid(line) => write_invalid(line, out),
        }
    }

    /// The reply's bytes exactly as the protocol writes them.
    pub(crate) fn wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    /// The JSON object for this reply to `request`:
    /// `{"reply": "at", "server", "diff", "client", "location", "time", "latitude",
    /// "longitude", "line", "request"}` for an AT line; the same with `"reply": "places"` and
    /// `"places"` for a WHATSAT; `{"reply": "invalid", "line", "request"}` for `? `.
    ///
    /// # Errors
    /// A WHATSAT reply whose places text is not JSON.
    pub(crate) fn to_json(&self, request: &[u8]) -> Result<Value, serde_json::Error> {
        let mut m = Map::new();
        match self {
            Reply::At(record) => {
                m.insert("reply".into(), json!("at"));
                m.extend(record_fields(record));
            }
            Reply::Places { record, json } => {
                let places: Value = serde_json::from_slice(json)?;
                m.insert("reply".into(), json!("places"));
                m.extend(record_fields(record));
                m.insert("places".into(), places);
            }
            Reply::Nearby { record, json } => {
                let nearby: Value = serde_json::from_slice(json)?;
                m.insert("reply".into(), json!("nearby"));
                if let Some(r) = record {
                    m.insert("subject".into(), Value::Object(record_fields(r)));
                }
                m.insert("nearby".into(), nearby);
            }
            Reply::Invalid(line) => {
                m.insert("reply".into(), json!("invalid"));
                m.insert("line".into(), text(line));
                m.insert("error".into(), json!(why_invalid(request)));
            }
        }
        m.insert("request".into(), text(request));
        Ok(Value::Object(m))
    }
}

fn text(bytes: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(bytes).into_owned())
}

/// The fields of a record's AT line, as a JSON object.
fn record_fields(record: &Record) -> Map<String, Value> {
    // `Record` holds a validated line: exactly six fields separated by single spaces.
    let mut f = record.at_line().split(|&b| b == b' ').skip(1);
    let mut next = || f.next().map_or(Value::Null, text);
    let mut m = Map::new();
    m.insert("server".into(), next());
    m.insert("diff".into(), next());
    m.insert("client".into(), next());
    m.insert("location".into(), next());
    m.insert("time".into(), next());
    m.insert("latitude".into(), json!(record.lat()));
    m.insert("longitude".into(), json!(record.lon()));
    m.insert("line".into(), text(record.at_line()));
    m
}

/// The places of a stateless server's WHATSAT replies, with what `write_whatsat_reply` appends
/// after the AT line written once for each max items (so a reply costs no JSON work).
#[derive(Debug)]
pub(crate) struct FixedPlaces {
    places: Value,
    /// `tails[n - 1]`: the reply after the AT line for max items `n`.
    tails: Vec<Vec<u8>>,
}

impl FixedPlaces {
    /// Every WHATSAT reply carries `places` (cut to its max items).
    pub(crate) fn new(places: Value) -> Self {
        let tails = (1..=MaxItems::MAX)
            .filter_map(|n| MaxItems::new(n).ok())
            .map(|max| {
                let mut tail = Vec::new();
                write_whatsat_reply(b"", Ok(places.clone()), max, &mut tail);
                tail
            })
            .collect();
        Self { places, tails }
    }

    /// Appends the whole WHATSAT reply for `at_line`, as `write_whatsat_reply` writes it.
    fn write(&self, at_line: &[u8], max: MaxItems, out: &mut Vec<u8>) {
        match self.tails.get(max.get().wrapping_sub(1)) {
            // `write_whatsat_reply` writes the AT line as given, then what only the places
            // and max items decide.
            Some(tail) => {
                out.extend_from_slice(at_line);
                out.extend_from_slice(tail);
            }
            None => write_whatsat_reply(at_line, Ok(self.places.clone()), max, out),
        }
    }
}

/// Appends the reply of a server called `server` that has no store, no peers and no Places
/// (the echo server) to `line` (without terminator), received at `now`.
///
/// IAMAT → its AT line with the real time difference; WHATSAT → the AT line of a client at
/// `+0+0` at time 0 received at time 0, and `places` (cut to the max items); anything else →
/// `? <line>`; a blank line → nothing.
pub(crate) fn write_stateless_answer(
    server: &ServerName,
    now: Timestamp,
    line: &[u8],
    places: &FixedPlaces,
    out: &mut Vec<u8>,
) {
    match parse_client_line(line) {
        ClientLine::Blank => {}
        ClientLine::IAmAt(req) => Reply::At(Record::from_iamat(server, now, &req)).write(out),
        ClientLine::WhatsAt(req) => {
            // The record of an IAMAT at +0+0 at time 0 received at time 0 (a zero diff).
            let mut iamat = Vec::new();
            write_iamat(req.client, b"+0+0", b"0", &mut iamat);
            let iamat = iamat.strip_suffix(b"\n").unwrap_or(&iamat);
            let ClientLine::IAmAt(zero) = parse_client_line(iamat) else {
                // A WHATSAT's client id always makes a valid IAMAT.
                write_invalid(line, out);
                return;
            };
            let record = Record::from_iamat(server, Timestamp(0), &zero);
            places.write(record.at_line(), req.max_items, out);
        }
        // The echo server holds no clients: no client is near anything, and it takes no
        // fences.
        ClientLine::Invalid(_)
        | ClientLine::Nearby(_)
        | ClientLine::Fence(_)
        | ClientLine::Unfence(_) => write_invalid(line, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(lines: &[&[u8]], expect: Expect) -> Reply {
        let mut step = Reply::head(lines[0], expect).unwrap();
        for line in &lines[1..] {
            let Step::More(body) = step else {
                panic!("done before {line:?}")
            };
            step = body.line(line);
        }
        let Step::Done(reply) = step else {
            panic!("not done")
        };
        reply
    }

    #[test]
    fn expectations_follow_the_grammar() {
        assert_eq!(Expect::of(b"  \t"), Expect::Nothing);
        assert_eq!(Expect::of(b"IAMAT a +1+2 3"), Expect::Line);
        assert_eq!(Expect::of(b"WHATSAT a 10 5"), Expect::Places);
        assert_eq!(Expect::of(b"WHATSAT a 51 5"), Expect::Line);
        assert_eq!(Expect::of(b"HELLO"), Expect::Line);
    }

    #[test]
    fn replies_read_line_by_line_write_back_the_same_bytes() {
        let reply = read(
            &[
                b"AT A +0.000000001 c +1+2 3",
                b"{",
                b"   \"results\" : []",
                b"}",
                b"",
            ],
            Expect::Places,
        );
        assert_eq!(
            reply.record().unwrap().at_line(),
            b"AT A +0.000000001 c +1+2 3"
        );
        assert_eq!(
            reply.wire(),
            b"AT A +0.000000001 c +1+2 3\n{\n   \"results\" : []\n}\n\n"
        );
        let at = read(&[b"AT A -1.000000000 c +1+2 3"], Expect::Line);
        assert_eq!(at.wire(), b"AT A -1.000000000 c +1+2 3\n");
        let invalid = read(&[b"? WHATSAT x 1 1"], Expect::Places);
        assert!(invalid.is_invalid());
        assert_eq!(invalid.record(), None);
        assert_eq!(invalid.wire(), b"? WHATSAT x 1 1\n");
        assert!(Reply::head(b"AT not an at line", Expect::Line).is_err());
        assert!(Reply::head(b"HELLO", Expect::Places).is_err());
    }

    #[test]
    fn framing_classifies_by_first_bytes() {
        assert_eq!(frame(b"AT A +0.0", Expect::Line), None);
        assert_eq!(frame(b"AT x\nAT y\n", Expect::Line), Some((5, Kind::At)));
        assert_eq!(
            frame(b"? WHATSAT x 1 1\nAT", Expect::Places),
            Some((16, Kind::Invalid))
        );
        assert_eq!(frame(b"AT x\n{\n}\n", Expect::Places), None);
        assert_eq!(
            frame(b"AT x\n{\n}\n\nAT", Expect::Places),
            Some((10, Kind::At))
        );
        assert_eq!(frame(b"HI\n", Expect::Line), Some((3, Kind::Malformed)));
    }

    #[test]
    fn stateless_answers_follow_the_grammar() {
        let name = ServerName::new("E").unwrap();
        let json = json!({"results": [1, 2, 3], "status": "OK"});
        let places = FixedPlaces::new(json.clone());
        for n in 0..=MaxItems::MAX {
            let Ok(max) = MaxItems::new(n) else { continue };
            let (mut fixed, mut direct) = (Vec::new(), Vec::new());
            places.write(b"AT x", max, &mut fixed);
            write_whatsat_reply(b"AT x", Ok(json.clone()), max, &mut direct);
            assert_eq!(fixed, direct, "max {n}");
        }
        let mut out = Vec::new();
        let now = Timestamp(12_000_000_000);
        write_stateless_answer(&name, now, b"IAMAT k +1+2 10.5", &places, &mut out);
        assert_eq!(out, b"AT E +1.500000000 k +1+2 10.5\n");
        out.clear();
        write_stateless_answer(&name, now, b"WHATSAT k 1 2", &places, &mut out);
        let want = "AT E +0.000000000 k +0+0 0\n{\n   \"results\" : [\n      1,\n      2\n   ],\n   \"status\" : \"OK\"\n}\n\n";
        assert_eq!(String::from_utf8_lossy(&out), want);
        out.clear();
        write_stateless_answer(&name, now, b" \t", &places, &mut out);
        assert!(out.is_empty());
        write_stateless_answer(&name, now, b"WHATSAT k 99 2", &places, &mut out);
        assert_eq!(out, b"? WHATSAT k 99 2\n");
    }
}
