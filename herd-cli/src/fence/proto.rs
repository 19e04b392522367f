//! The fence lines of the client protocol (herd extension), as this client speaks them:
//! `FENCE <fence-id> <location> <radius-km>` answered `FENCED <fence-id> <location>
//! <radius-km>`, `UNFENCE <fence-id>` answered `UNFENCED <fence-id>`, and the lines the server
//! pushes at any moment afterwards, `ENTER <fence-id> <AT line>` and `EXIT <fence-id> <AT
//! line>`. Any of the requests may get `? <line>` instead. The AT line is read with
//! herd-core's [`Record`] parser, like every other AT line herd-cli reads.

use herd_core::types::is_space;
use herd_core::{Location, RadiusKm, Record};
use serde_json::{json, Map, Value};

/// Longest fence id, in bytes.
pub(crate) const MAX_FENCE_ID: usize = 64;

/// One fence as asked for: its id, centre and radius, each as it goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fence {
    /// 1 to 64 bytes, no white space.
    pub(crate) id: Vec<u8>,
    /// ISO 6709, as in IAMAT.
    pub(crate) location: Vec<u8>,
    /// As WHATSAT's radius: more than 0, at most 50.
    pub(crate) radius_km: Vec<u8>,
}

/// Why a fence given on the command line is not one.
pub(crate) fn check(id: &str, location: &str, radius_km: &str) -> Result<Fence, String> {
    if id.is_empty() || id.len() > MAX_FENCE_ID || id.bytes().any(is_space) {
        return Err(format!(
            "bad fence id {id:?}: 1 to {MAX_FENCE_ID} bytes, no white space"
        ));
    }
    Location::parse(location.as_bytes()).map_err(|_| {
        format!("bad fence location {location:?}: expected ISO 6709 like +34.068930-118.445127")
    })?;
    RadiusKm::parse(radius_km.as_bytes()).map_err(|_| {
        format!("bad fence radius {radius_km:?}: expected km, more than 0 and at most 50")
    })?;
    Ok(Fence {
        id: id.as_bytes().to_vec(),
        location: location.as_bytes().to_vec(),
        radius_km: radius_km.as_bytes().to_vec(),
    })
}

impl Fence {
    /// Appends `FENCE <id> <location> <radius-km>\n`.
    pub(crate) fn write_request(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"FENCE ");
        self.write_fields(out);
        out.push(b'\n');
    }

    /// The three fields, as the request carries them and the acknowledgement echoes them.
    fn write_fields(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id);
        out.push(b' ');
        out.extend_from_slice(&self.location);
        out.push(b' ');
        out.extend_from_slice(&self.radius_km);
    }

    /// The request line, without terminator.
    pub(crate) fn request(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_request(&mut out);
        out.pop();
        out
    }

    /// Whether `line` is this fence's acknowledgement: `FENCED` and the three fields echoed
    /// byte for byte.
    pub(crate) fn is_ack(&self, line: &[u8]) -> bool {
        let mut want = b"FENCED ".to_vec();
        self.write_fields(&mut want);
        line == want.as_slice()
    }
}

/// Whether a client crossed into a fence or out of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Crossing {
    /// `ENTER`.
    Enter,
    /// `EXIT`.
    Exit,
}

impl Crossing {
    /// `"enter"` or `"exit"`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Crossing::Enter => "enter",
            Crossing::Exit => "exit",
        }
    }
}

/// A line from a fence connection.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Line {
    /// `FENCED <id> <location> <radius-km>`: the whole line (matched with [`Fence::is_ack`]).
    Fenced(Vec<u8>),
    /// `UNFENCED <id>`.
    Unfenced(Vec<u8>),
    /// `ENTER <id> <AT line>` or `EXIT <id> <AT line>`.
    Event {
        /// Which way.
        crossing: Crossing,
        /// The fence id.
        fence: Vec<u8>,
        /// The client's record.
        record: Record,
    },
    /// `? <line>`: the echoed request.
    Invalid(Vec<u8>),
}

/// Reads one line (without terminator) from a fence connection; `Err` names what is wrong.
pub(crate) fn parse(line: &[u8]) -> Result<Line, String> {
    if let Some(echo) = line.strip_prefix(b"? ") {
        return Ok(Line::Invalid(echo.to_vec()));
    }
    if line.starts_with(b"FENCED ") {
        return Ok(Line::Fenced(line.to_vec()));
    }
    if let Some(id) = line.strip_prefix(b"UNFENCED ") {
        return Ok(Line::Unfenced(id.to_vec()));
    }
    let (crossing, rest) = if let Some(rest) = line.strip_prefix(b"ENTER ") {
        (Crossing::Enter, rest)
    } else if let Some(rest) = line.strip_prefix(b"EXIT ") {
        (Crossing::Exit, rest)
    } else {
        return Err("neither FENCED, UNFENCED, ENTER, EXIT nor `? `".into());
    };
    let Some(space) = rest.iter().position(|&b| b == b' ') else {
        return Err("an event without an AT line".into());
    };
    let (fence, at) = (&rest[..space], &rest[space + 1..]);
    if fence.is_empty() || fence.len() > MAX_FENCE_ID {
        return Err("an event with a bad fence id".into());
    }
    let record = Record::parse(at).map_err(|e| format!("an event with a bad AT line ({e})"))?;
    Ok(Line::Event {
        crossing,
        fence: fence.to_vec(),
        record,
    })
}

fn text(bytes: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(bytes).into_owned())
}

/// The JSON object of an event received at `received_at` (POSIX seconds, nine decimals):
/// `{"kind", "fence", "client", "server", "diff", "location", "time", "latitude",
/// "longitude", "line", "received_at"}`.
pub(crate) fn event_json(
    crossing: Crossing,
    fence: &[u8],
    record: &Record,
    received_at: &str,
) -> Value {
    // A parsed record's AT line is exactly six fields separated by single spaces.
    let mut f = record.at_line().split(|&b| b == b' ').skip(1);
    let mut next = || f.next().map_or(Value::Null, text);
    let mut m = Map::new();
    m.insert("kind".into(), json!(crossing.name()));
    m.insert("fence".into(), text(fence));
    m.insert("server".into(), next());
    m.insert("diff".into(), next());
    m.insert("client".into(), next());
    m.insert("location".into(), next());
    m.insert("time".into(), next());
    m.insert("latitude".into(), json!(record.lat()));
    m.insert("longitude".into(), json!(record.lon()));
    m.insert("line".into(), text(record.at_line()));
    m.insert("received_at".into(), json!(received_at));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_are_checked_and_written_as_given() {
        let f = check("pauley", "+34.070-118.447", "0.5").unwrap();
        assert_eq!(f.request(), b"FENCE pauley +34.070-118.447 0.5");
        assert!(f.is_ack(b"FENCED pauley +34.070-118.447 0.5"));
        assert!(!f.is_ack(b"FENCED pauley +34.07-118.447 0.5"));
        assert!(!f.is_ack(b"FENCED pauley +34.070-118.447 0.50"));
        let long = "x".repeat(65);
        for (id, loc, km) in [
            ("", "+1+1", "1"),
            ("a b", "+1+1", "1"),
            (long.as_str(), "+1+1", "1"),
            ("a", "1+1", "1"),
            ("a", "+1+1", "0"),
            ("a", "+1+1", "51"),
        ] {
            assert!(check(id, loc, km).is_err(), "{id:?} {loc} {km}");
        }
        assert!(check(&"x".repeat(64), "+90-180", "50").is_ok());
    }

    #[test]
    fn pushed_lines_are_told_apart() {
        let at = "AT Hands +0.000123456 kiwi +34.068930-118.445127 1520023934.918963997";
        let Line::Event {
            crossing,
            fence,
            record,
        } = parse(format!("ENTER f1 {at}").as_bytes()).unwrap()
        else {
            panic!("not an event")
        };
        assert_eq!((crossing, fence.as_slice()), (Crossing::Enter, &b"f1"[..]));
        assert_eq!(record.client(), b"kiwi");
        let v = event_json(crossing, &fence, &record, "1.000000000");
        assert_eq!(v["kind"], "enter");
        assert_eq!(v["server"], "Hands");
        assert_eq!(v["diff"], "+0.000123456");
        assert_eq!(v["time"], "1520023934.918963997");
        assert_eq!(v["received_at"], "1.000000000");
        assert!(matches!(
            parse(format!("EXIT f1 {at}").as_bytes()),
            Ok(Line::Event {
                crossing: Crossing::Exit,
                ..
            })
        ));
        assert_eq!(
            parse(b"? FENCE f1 +1+1 99"),
            Ok(Line::Invalid(b"FENCE f1 +1+1 99".to_vec()))
        );
        assert_eq!(parse(b"UNFENCED f1"), Ok(Line::Unfenced(b"f1".to_vec())));
        assert!(matches!(parse(b"FENCED f1 +1+1 1"), Ok(Line::Fenced(_))));
        assert!(parse(b"ENTER f1").is_err());
        assert!(parse(b"ENTER f1 AT nonsense").is_err());
        assert!(parse(b"HELLO").is_err());
    }
}
