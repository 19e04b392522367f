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
