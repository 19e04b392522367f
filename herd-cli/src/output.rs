//! Printing replies: the protocol's own bytes, or one JSON object per reply.
//!
//! JSON objects, made by [`Reply::to_json`]:
//! - `{"reply": "at", "server", "diff", "client", "location", "time", "latitude", "longitude",
//!   "line", "request"}` for an IAMAT's AT line;
//! - the same with `"reply": "places"` and `"places": <the JSON>` for a WHATSAT;
//! - `{"reply": "invalid", "line": <the echoed line>, "request"}` for `? `.
//!
//! Byte strings that are not UTF-8 are shown with U+FFFD replacements.

use std::io::Write;

use serde_json::Value;

use crate::error::Failure;
use crate::reply::Reply;

/// The JSON object for one reply to `request` (see [`Reply::to_json`]).
///
/// # Errors
/// A WHATSAT reply whose places text is not JSON (a malformed reply, exit 2).
pub(crate) fn reply_json(reply: &Reply, request: &[u8]) -> Result<Value, Failure> {
    reply.to_json(request).map_err(|e| {
        Failure::net(format!(
            "malformed reply: the places text is not JSON ({e})"
        ))
    })
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
    use herd_core::Record;

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
