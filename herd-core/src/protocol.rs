//! The client grammar of PROTOCOL.md §1–2: lines in, typed requests out, replies formatted.
//!
//! Parsing is total and allocation-free: every line becomes a [`ClientLine`], borrowing from
//! the input. A line handed to [`parse_client_line`] has already lost its terminator (`\n`, or
//! `\r\n`); the framing lives in `herd-net`.

use serde_json::Value;

use crate::lookup::LookupError;
use crate::types::{is_space, FieldError, Location, MaxItems, RadiusKm, TimeValue};

/// An `IAMAT` request, borrowing its fields from the line.
#[derive(Debug, Clone, PartialEq)]
pub struct IAmAt<'a> {
    /// Client id bytes.
    pub client: &'a [u8],
    /// Location text as sent.
    pub location: &'a [u8],
    /// Parsed latitude.
    pub lat: f64,
    /// Parsed longitude.
    pub lon: f64,
    /// Client time text as sent.
    pub time: &'a [u8],
    /// Parsed client time.
    pub time_value: TimeValue,
}

/// A `WHATSAT` request, borrowing its client id from the line.
#[derive(Debug, Clone, PartialEq)]
pub struct WhatsAt<'a> {
    /// Client id bytes.
    pub client: &'a [u8],
    /// Radius.
    pub radius: RadiusKm,
    /// Most places wanted.
    pub max_items: MaxItems,
}

/// Most clients one `NEARBY` returns.
pub const MAX_NEARBY: u16 = 1000;

/// What a `NEARBY` is centred on.
#[derive(Debug, Clone, PartialEq)]
pub enum NearbyCenter<'a> {
    /// `NEARBY <client> ...`: the client's stored position (the client is left out).
    Client(&'a [u8]),
    /// `NEARBY POINT <location> ...`: a position.
    Point {
        /// Location text as sent.
        location: &'a [u8],
        /// Parsed latitude.
        lat: f64,
        /// Parsed longitude.
        lon: f64,
    },
}

/// A `NEARBY` request (a herd extension): the clients within the radius, nearest first.
#[derive(Debug, Clone, PartialEq)]
pub struct NearbyRequest<'a> {
    /// The centre.
    pub center: NearbyCenter<'a>,
    /// Radius, as WHATSAT's: (0, 50] km.
    pub radius: RadiusKm,
    /// Most clients wanted, 1 to [`MAX_NEARBY`].
    pub max: u16,
}

/// Longest fence id, in bytes.
pub const MAX_FENCE_ID_BYTES: usize = 64;

/// A `FENCE <fence-id> <location> <radius-km>` request (a herd extension): subscribe the
/// connection to crossings of the circle.
#[derive(Debug, Clone, PartialEq)]
pub struct FenceRequest<'a> {
    /// The fence id, 1 to [`MAX_FENCE_ID_BYTES`] bytes.
    pub id: &'a [u8],
    /// Location text as sent.
    pub location: &'a [u8],
    /// Parsed latitude.
    pub lat: f64,
    /// Parsed longitude.
    pub lon: f64,
    /// Radius text as sent.
    pub radius_text: &'a [u8],
    /// Radius, as WHATSAT's: (0, 50] km.
    pub radius: RadiusKm,
}

/// Why a line is not a valid request (it is answered `? ` + the line either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The first field is not `IAMAT` or `WHATSAT`.
    #[error("unknown command")]
    UnknownCommand,
    /// The command has the wrong number of fields.
    #[error("wrong number of fields: expected {expected}, got {got}")]
    WrongArity {
        /// Fields the command takes, command included.
        expected: usize,
        /// Fields the line has.
        got: usize,
    },
    /// A fence id is longer than [`MAX_FENCE_ID_BYTES`].
    #[error("fence id too long")]
    FenceId,
    /// A field is malformed or out of range.
    #[error(transparent)]
    Field(#[from] FieldError),
}

/// What one client line is.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientLine<'a> {
    /// Empty or only white space: no reply.
    Blank,
    /// An IAMAT.
    IAmAt(IAmAt<'a>),
    /// A WHATSAT.
    WhatsAt(WhatsAt<'a>),
    /// A NEARBY (herd extension).
    Nearby(NearbyRequest<'a>),
    /// A FENCE (herd extension).
    Fence(FenceRequest<'a>),
    /// An `UNFENCE <fence-id>` (herd extension).
    Unfence(&'a [u8]),
    /// Anything else: reply `? ` + the line.
    Invalid(ParseError),
}

/// Splits a line into its white-space separated fields (at most `N`; reports the total count).
fn fields<const N: usize>(line: &[u8]) -> ([&[u8]; N], usize) {
    let mut out: [&[u8]; N] = [&[]; N];
    let mut count = 0;
    for field in line.split(|&b| is_space(b)).filter(|f| !f.is_empty()) {
        if count < N {
            out[count] = field;
        }
        count += 1;
    }
    (out, count)
}

/// Parses one client line (without its terminator).
pub fn parse_client_line(line: &[u8]) -> ClientLine<'_> {
    let (f, count) = fields::<4>(line);
    if count == 0 {
        return ClientLine::Blank;
    }
    let parsed = match f[0] {
        b"IAMAT" => arity(count)
            .and_then(|()| parse_iamat(f))
            .map(ClientLine::IAmAt),
        b"WHATSAT" => arity(count)
            .and_then(|()| parse_whatsat(f))
            .map(ClientLine::WhatsAt),
        b"NEARBY" => parse_nearby(line, count).map(ClientLine::Nearby),
        b"FENCE" => parse_fence(f, count).map(ClientLine::Fence),
        b"UNFENCE" if count == 2 && fence_id_ok(f[1]) => Ok(ClientLine::Unfence(f[1])),
        b"UNFENCE" if count == 2 => Err(ParseError::FenceId),
        b"UNFENCE" => Err(ParseError::WrongArity {
            expected: 2,
            got: count,
        }),
        _ => Err(ParseError::UnknownCommand),
    };
    parsed.unwrap_or_else(ClientLine::Invalid)
}

/// The client id an `IAMAT` or `WHATSAT` line names (its second field, fields split by the
/// protocol's white space), whether or not the rest of the line is valid; `None` for any other
/// line. Cheap: it reads no further than the client id.
pub fn client_of(line: &[u8]) -> Option<&[u8]> {
    let mut fields = line.split(|&b| is_space(b)).filter(|f| !f.is_empty());
    match fields.next() {
        Some(b"IAMAT" | b"WHATSAT") => fields.next(),
        _ => None,
    }
}

fn arity(got: usize) -> Result<(), ParseError> {
    if got == 4 {
        Ok(())
    } else {
        Err(ParseError::WrongArity { expected: 4, got })
    }
}

fn parse_iamat(f: [&[u8]; 4]) -> Result<IAmAt<'_>, ParseError> {
    let (lat, lon) = Location::degrees(f[2])?;
    let time_value = TimeValue::parse(f[3])?;
    Ok(IAmAt {
        client: f[1],
        location: f[2],
        lat,
        lon,
        time: f[3],
        time_value,
    })
}

/// `NEARBY <client> <radius-km> <max>` (4 fields) or `NEARBY POINT <location> <radius-km>
/// <max>` (5 fields): the arity tells them apart, so any client id (`POINT` included) works
/// in the first form.
fn parse_nearby(line: &[u8], count: usize) -> Result<NearbyRequest<'_>, ParseError> {
    let (f, _) = fields::<5>(line);
    let (center, radius, max) = match count {
        4 => (NearbyCenter::Client(f[1]), f[2], f[3]),
        5 if f[1] == b"POINT" => {
            let (lat, lon) = Location::degrees(f[2])?;
            let center = NearbyCenter::Point {
                location: f[2],
                lat,
                lon,
            };
            (center, f[3], f[4])
        }
        got => return Err(ParseError::WrongArity { expected: 4, got }),
    };
    Ok(NearbyRequest {
        center,
        radius: RadiusKm::parse(radius)?,
        max: parse_nearby_max(max).ok_or(FieldError::MaxItems)?,
    })
}

fn fence_id_ok(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_FENCE_ID_BYTES
}

/// `FENCE <fence-id> <location> <radius-km>`.
fn parse_fence(f: [&[u8]; 4], count: usize) -> Result<FenceRequest<'_>, ParseError> {
    arity(count)?;
    if !fence_id_ok(f[1]) {
        return Err(ParseError::FenceId);
    }
    let (lat, lon) = Location::degrees(f[2])?;
    Ok(FenceRequest {
        id: f[1],
        location: f[2],
        lat,
        lon,
        radius_text: f[3],
        radius: RadiusKm::parse(f[3])?,
    })
}

/// Appends the acknowledgement of a FENCE: `FENCED <fence-id> <location> <radius-km>\n`,
/// the three fields as the request had them.
pub fn write_fenced(req: &FenceRequest<'_>, out: &mut Vec<u8>) {
    for (i, part) in [&b"FENCED"[..], req.id, req.location, req.radius_text]
        .iter()
        .enumerate()
    {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(part);
    }
    out.push(b'\n');
}

/// Appends the acknowledgement of an UNFENCE: `UNFENCED <fence-id>\n`.
pub fn write_unfenced(id: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"UNFENCED ");
    out.extend_from_slice(id);
    out.push(b'\n');
}

/// Appends a fence event: `ENTER <fence-id> <AT line>\n` or `EXIT <fence-id> <AT line>\n`.
pub fn write_fence_event(enter: bool, id: &[u8], at_line: &[u8], out: &mut Vec<u8>) {
    out.reserve(id.len() + at_line.len() + 8);
    out.extend_from_slice(if enter { b"ENTER " } else { b"EXIT " });
    out.extend_from_slice(id);
    out.push(b' ');
    out.extend_from_slice(at_line);
    out.push(b'\n');
}

/// 1 to [`MAX_NEARBY`], plain digits (leading zeros allowed, as WHATSAT's count).
fn parse_nearby_max(s: &[u8]) -> Option<u16> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let digits = s.iter().skip_while(|&&b| b == b'0').count();
    if digits > 4 {
        return None;
    }
    let v: u16 = std::str::from_utf8(s).ok()?.parse().ok()?;
    (1..=MAX_NEARBY).contains(&v).then_some(v)
}

/// One client of a `NEARBY` reply.
#[derive(Debug, Clone, PartialEq)]
pub struct NearbyHit<'a> {
    /// Its stored AT line.
    pub at_line: &'a [u8],
    /// The client id.
    pub client: &'a [u8],
    /// Great-circle distance from the centre, metres.
    pub distance_m: f64,
    /// Seconds from its client time to the server's time (negative: ahead).
    pub age_s: f64,
}

/// Appends a whole NEARBY reply: for the client form the subject's AT line; then one line of
/// JSON (`{"center": {"lat", "lng"}, "radius_km", "count", "results": [{"client", "at",
/// "distance_m", "age_s"}, ...]}`, nearest first); then an empty line. Bytes of ids that are
/// not UTF-8 appear as U+FFFD in the JSON.
pub fn write_nearby_reply(
    subject_at: Option<&[u8]>,
    center: (f64, f64),
    radius: RadiusKm,
    hits: &[NearbyHit<'_>],
    out: &mut Vec<u8>,
) {
    if let Some(at) = subject_at {
        out.extend_from_slice(at);
        out.push(b'\n');
    }
    let round = |v: f64, places: i32| {
        let m = 10f64.powi(places);
        (v * m).round() / m
    };
    let results: Vec<Value> = hits
        .iter()
        .map(|h| {
            serde_json::json!({
                "client": String::from_utf8_lossy(h.client),
                "at": String::from_utf8_lossy(h.at_line),
                "distance_m": round(h.distance_m, 1),
                "age_s": round(h.age_s, 3),
            })
        })
        .collect();
    let doc = serde_json::json!({
        "center": {"lat": center.0, "lng": center.1},
        "radius_km": radius.km(),
        "count": hits.len(),
        "results": results,
    });
    write_scalar(&doc, out);
    out.extend_from_slice(b"\n\n");
}

fn parse_whatsat(f: [&[u8]; 4]) -> Result<WhatsAt<'_>, ParseError> {
    Ok(WhatsAt {
        client: f[1],
        radius: RadiusKm::parse(f[2])?,
        max_items: MaxItems::parse(f[3])?,
    })
}

/// Appends the invalid-line reply, `? <line>\n`.
pub fn write_invalid(line: &[u8], out: &mut Vec<u8>) {
    out.reserve(line.len() + 3);
    out.extend_from_slice(b"? ");
    out.extend_from_slice(line);
    out.push(b'\n');
}

/// Appends `IAMAT <client> <location> <time>\n`, the request a client sends.
pub fn write_iamat(client: &[u8], location: &[u8], time: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"IAMAT ");
    out.extend_from_slice(client);
    out.push(b' ');
    out.extend_from_slice(location);
    out.push(b' ');
    out.extend_from_slice(time);
    out.push(b'\n');
}

/// Appends `WHATSAT <client> <radius> <max>\n`; `radius` is the decimal text to send.
pub fn write_whatsat(client: &[u8], radius: &str, max_items: MaxItems, out: &mut Vec<u8>) {
    out.extend_from_slice(b"WHATSAT ");
    out.extend_from_slice(client);
    out.push(b' ');
    out.extend_from_slice(radius.as_bytes());
    out.push(b' ');
    out.extend_from_slice(max_items.get().to_string().as_bytes());
    out.push(b'\n');
}

/// The Places JSON for a failed lookup, per PROTOCOL.md.
pub fn error_places(message: &str) -> Value {
    serde_json::json!({
        "html_attributions": [],
        "results": [],
        "status": "UNKNOWN_ERROR",
        "error_message": message,
    })
}

/// Cuts `results` of a legacy-shape answer to at most `max` entries.
pub fn truncate_results(places: &mut Value, max: MaxItems) {
    if let Some(Value::Array(results)) = places.get_mut("results") {
        results.truncate(max.get());
    }
}

/// Appends a whole WHATSAT reply: the stored AT line, the places JSON, and `\n\n`.
///
/// A lookup error becomes the `UNKNOWN_ERROR` JSON; results are cut to `max`.
pub fn write_whatsat_reply(
    at_line: &[u8],
    places: Result<Value, LookupError>,
    max: MaxItems,
    out: &mut Vec<u8>,
) {
    let mut json = places.unwrap_or_else(|e| error_places(&e.to_string()));
    truncate_results(&mut json, max);
    out.extend_from_slice(at_line);
    out.push(b'\n');
    write_places_json(&json, out);
    out.extend_from_slice(b"\n\n");
}

/// Appends `v` in Google's legacy layout: three-space indent, `"key" : value`, `[]` and `{}`
/// for empty containers, no empty line and no trailing newline. Deterministic.
pub fn write_places_json(v: &Value, out: &mut Vec<u8>) {
    write_value(v, 0, out);
}

fn indent(depth: usize, out: &mut Vec<u8>) {
    out.extend(std::iter::repeat_n(b' ', depth * 3));
}

fn write_value(v: &Value, depth: usize, out: &mut Vec<u8>) {
    match v {
        Value::Array(items) if !items.is_empty() => {
            out.extend_from_slice(b"[\n");
            for (i, item) in items.iter().enumerate() {
                indent(depth + 1, out);
                write_value(item, depth + 1, out);
                out.extend_from_slice(if i + 1 < items.len() { b",\n" } else { b"\n" });
            }
            indent(depth, out);
            out.push(b']');
        }
        Value::Object(map) if !map.is_empty() => {
            out.extend_from_slice(b"{\n");
            for (i, (key, item)) in map.iter().enumerate() {
                indent(depth + 1, out);
                write_scalar(&Value::String(key.clone()), out);
                out.extend_from_slice(b" : ");
                write_value(item, depth + 1, out);
                out.extend_from_slice(if i + 1 < map.len() { b",\n" } else { b"\n" });
            }
            indent(depth, out);
            out.push(b'}');
        }
        other => write_scalar(other, out),
    }
}

fn write_scalar(v: &Value, out: &mut Vec<u8>) {
    // Serializing a Value into a Vec cannot fail: there is no I/O and no map with non-string keys.
    serde_json::to_writer(&mut *out, v).expect("serializing a JSON value into memory");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_split_on_every_protocol_space() {
        let line = b"\x0bIAMAT\tkiwi\r+1+2\x0c 3 ";
        let ClientLine::IAmAt(r) = parse_client_line(line) else {
            panic!("not an IAMAT")
        };
        assert_eq!(
            (r.client, r.location, r.time),
            (&b"kiwi"[..], &b"+1+2"[..], &b"3"[..])
        );
    }

    #[test]
    fn layout_matches_google_legacy() {
        let v: Value = serde_json::from_str(
            r#"{"html_attributions": [], "results": [{"a": 1, "b": {"c": "x"}}], "status": "OK"}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        write_places_json(&v, &mut out);
        let want = "{\n   \"html_attributions\" : [],\n   \"results\" : [\n      {\n         \"a\" : 1,\n         \"b\" : {\n            \"c\" : \"x\"\n         }\n      }\n   ],\n   \"status\" : \"OK\"\n}";
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }
}
