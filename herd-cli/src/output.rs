//! Printing replies: the protocol's own bytes, or one JSON object per reply.
//!
//! JSON objects:
//! - `{"reply": "at", "server", "diff", "client", "location", "time", "latitude", "longitude",
//!   "line", "request"}` for an IAMAT's AT line;
//! - the same with `"reply": "places"` and `"places": <the JSON>` for a WHATSAT;
//! - `{"reply": "invalid", "line": <the echoed line>, "request"}` for `? `.
//!
//! Byte strings that are not UTF-8 are shown with U+FFFD replacements.

use std::io::Write;

use herd_core::Record;
use serde_json::{json, Map, Value};

use crate::conn::Reply;
use crate::error::Failure;

fn text(bytes: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(bytes).into_owned())
}

/// The fields of a record's AT line, as a JSON object.
fn record_fields(record: &Record) -> Map<String, Value> {
    // `Record::parse` has validated the line: exactly six fields separated by single spaces.
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

/// The JSON object for one reply to `request`.
///
/// # Errors
/// A WHATSAT reply whose places text is not JSON (a malformed reply, exit 2).
pub(crate) fn reply_json(reply: &Reply, request: &[u8]) -> Result<Value, Failure> {
    let mut m = Map::new();
    match reply {
        Reply::At(record) => {
            m.insert("reply".into(), json!("at"));
            m.extend(record_fields(record));
        }
        Reply::Places { record, json } => {
            let places: Value = serde_json::from_slice(json).map_err(|e| {
                Failure::net(format!(
                    "malformed reply: the places text is not JSON ({e})"
                ))
            })?;
            m.insert("reply".into(), json!("places"));
            m.extend(record_fields(record));
            m.insert("places".into(), places);
        }
        Reply::Invalid(line) => {
            m.insert("reply".into(), json!("invalid"));
            m.insert("line".into(), text(line));
        }
    }
    m.insert("request".into(), text(request));
    Ok(Value::Object(m))
}

/// Prints one reply to stdout: its wire bytes, or its JSON object on one line.
///
/// # Errors
/// A malformed places JSON in JSON mode, or stdout failing.
pub(crate) fn print_reply(reply: &Reply, request: &[u8], as_json: bool) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    let written = if as_json {
        let v = reply_json(reply, request)?;
        writeln!(stdout, "{v}")
    } else {
        stdout.write_all(&reply.wire())
    };
    written
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::net(format!("writing to stdout: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_reply_fields_are_named() {
        let record = Record::parse(
            b"AT Goloman +0.263873386 kiwi +34.068930-118.445127 1520023934.918963997",
        )
        .unwrap();
        let v = reply_json(
            &Reply::At(record),
            b"IAMAT kiwi +34.068930-118.445127 1520023934.918963997",
        )
        .unwrap();
        assert_eq!(v["reply"], "at");
        assert_eq!(v["server"], "Goloman");
        assert_eq!(v["diff"], "+0.263873386");
        assert_eq!(v["client"], "kiwi");
        assert_eq!(v["location"], "+34.068930-118.445127");
        assert_eq!(v["time"], "1520023934.918963997");
        assert_eq!(v["latitude"], 34.06893);
    }

    #[test]
    fn places_json_must_be_json_in_json_mode() {
        let record = Record::parse(b"AT A +0.000000000 c +1+2 3").unwrap();
        let ok = Reply::Places {
            record: record.clone(),
            json: b"{\n   \"status\" : \"OK\"\n}".to_vec(),
        };
        assert_eq!(
            reply_json(&ok, b"WHATSAT c 1 1").unwrap()["places"]["status"],
            "OK"
        );
        let bad = Reply::Places {
            record,
            json: b"{".to_vec(),
        };
        assert_eq!(reply_json(&bad, b"WHATSAT c 1 1").unwrap_err().code, 2);
    }
}
