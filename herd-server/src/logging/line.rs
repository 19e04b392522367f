//! The layout of one log line, in either format.
//!
//! **text** (the default): `STAMP LEVEL MESSAGE key=value …`, e.g.
//! `2026-11-26T05:09:53.527806Z  INFO server started server=Hands places=offline`. A value
//! that is empty, holds a space or a control character, or starts with `"` is written in
//! double quotes, with `"` as `\"` and control characters as `\n`, `\r`, `\t` or `\xNN`; any
//! other value is written as it is (up to the next space). The message is quoted the same way
//! when it holds a `"`, an `=` or a control character (never for spaces: it ends where the
//! first `key=` begins). So every field of every line is one `key=value` or `key="…"` token.
//!
//! **json**: one JSON object per line, `{"timestamp": STAMP, "level": LEVEL, "message":
//! MESSAGE, key: value, …}`, numbers and booleans as JSON numbers and booleans.

use std::io::Write as _;
use std::str::FromStr;

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `STAMP LEVEL MESSAGE key=value …`, values quoted when they need it.
    #[default]
    Text,
    /// One JSON object per line, the fields as keys.
    Json,
}

impl LogFormat {
    /// The name on the command line: `text` or `json`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(format!("unknown log format {s:?} (expected text or json)")),
        }
    }
}

/// The value of one field.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value<'a> {
    Str(&'a str),
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
}

/// Whether a text value must be quoted: it is empty, holds a space or a control character,
/// or starts with a quote (a `"` or `=` further in is no ambiguity: the value runs to the
/// next space, the key to the first `=`).
fn text_needs_quotes(v: &str) -> bool {
    v.is_empty() || v.starts_with('"') || v.bytes().any(|b| b <= b' ' || b == 0x7f)
}

/// Whether a text message must be quoted (spaces are fine: it ends at the first `key=`).
fn message_needs_quotes(v: &str) -> bool {
    v.bytes()
        .any(|b| b < b' ' || b == b'"' || b == b'=' || b == 0x7f)
}

/// Appends `v` in double quotes, `"` as `\"` and control characters escaped.
fn push_quoted(out: &mut Vec<u8>, v: &str) {
    out.reserve(v.len() + 2);
    out.push(b'"');
    let mut plain = 0;
    let bytes = v.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            b if b < b' ' || b == 0x7f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain..i]);
        plain = i + 1;
        if esc.is_empty() {
            // Writing into a Vec cannot fail.
            let _ = write!(out, "\\x{b:02x}");
        } else {
            out.extend_from_slice(esc);
        }
    }
    out.extend_from_slice(&bytes[plain..]);
    out.push(b'"');
}

fn push_json_str(out: &mut Vec<u8>, v: &str) {
    // A str always serialises; writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// Appends the start of a line: the timestamp `stamp`, the level and the message.
pub(crate) fn push_head(
    out: &mut Vec<u8>,
    format: LogFormat,
    stamp: &[u8],
    level: &str,
    message: Option<&str>,
) {
    match format {
        LogFormat::Text => {
            out.extend_from_slice(stamp);
            let _ = write!(out, " {level:>5}");
            if let Some(m) = message.filter(|m| !m.is_empty()) {
                out.push(b' ');
                if message_needs_quotes(m) {
                    push_quoted(out, m);
                } else {
                    out.extend_from_slice(m.as_bytes());
                }
            }
        }
        LogFormat::Json => {
            out.extend_from_slice(b"{\"timestamp\":\"");
            out.extend_from_slice(stamp);
            out.extend_from_slice(b"\",\"level\":");
            push_json_str(out, level);
            if let Some(m) = message {
                out.extend_from_slice(b",\"message\":");
                push_json_str(out, m);
            }
        }
    }
}

/// Appends one field (after [`push_head`] and the fields before it).
pub(crate) fn push_field(out: &mut Vec<u8>, format: LogFormat, key: &str, value: Value<'_>) {
    match format {
        LogFormat::Text => {
            out.push(b' ');
            out.extend_from_slice(key.as_bytes());
            out.push(b'=');
            let _ = match value {
                Value::Str(s) if text_needs_quotes(s) => {
                    push_quoted(out, s);
                    Ok(())
                }
                Value::Str(s) => {
                    out.extend_from_slice(s.as_bytes());
                    Ok(())
                }
                Value::U64(n) => write!(out, "{n}"),
                Value::I64(n) => write!(out, "{n}"),
                Value::F64(n) => write!(out, "{n}"),
                Value::Bool(b) => write!(out, "{b}"),
            };
        }
        LogFormat::Json => {
            out.push(b',');
            push_json_str(out, key);
            out.push(b':');
            let _ = match value {
                Value::Str(s) => {
                    push_json_str(out, s);
                    Ok(())
                }
                Value::U64(n) => write!(out, "{n}"),
                Value::I64(n) => write!(out, "{n}"),
                // NaN and the infinities become null.
                Value::F64(n) => {
                    serde_json::to_writer(&mut *out, &n).map_err(std::io::Error::other)
                }
                Value::Bool(b) => write!(out, "{b}"),
            };
        }
    }
}

/// Ends a line (after its fields), with its newline.
pub(crate) fn push_tail(out: &mut Vec<u8>, format: LogFormat) {
    if format == LogFormat::Json {
        out.push(b'}');
    }
    out.push(b'\n');
}

/// A whole line.
pub(crate) fn line(
    format: LogFormat,
    stamp: &[u8],
    level: &str,
    message: &str,
    fields: &[(&str, Value<'_>)],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    push_head(&mut out, format, stamp, level, Some(message));
    for (k, v) in fields {
        push_field(&mut out, format, k, *v);
    }
    push_tail(&mut out, format);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(message: &str, fields: &[(&str, Value<'_>)]) -> String {
        String::from_utf8(line(LogFormat::Text, b"T", "INFO", message, fields)).unwrap()
    }

    #[test]
    fn text_values_are_quoted_only_when_they_need_it() {
        assert_eq!(
            text(
                "client message",
                &[
                    ("addr", Value::Str("127.0.0.1:9")),
                    ("msg", Value::Str("IAMAT a +1+1 1")),
                    ("reply", Value::Str("say \"hi\"\\n")),
                    ("empty", Value::Str("")),
                    ("eq", Value::Str("a=b")),
                    ("json", Value::Str("{\"a\":1}")),
                    ("q", Value::Str("\"a")),
                    ("ctl", Value::Str("a\nb\u{1}")),
                    ("n", Value::U64(7)),
                    ("i", Value::I64(-7)),
                    ("ok", Value::Bool(true)),
                ]
            ),
            "T  INFO client message addr=127.0.0.1:9 msg=\"IAMAT a +1+1 1\" \
             reply=\"say \\\"hi\\\"\\n\" empty=\"\" eq=a=b json={\"a\":1} q=\"\\\"a\" ctl=\"a\\nb\\x01\" n=7 i=-7 ok=true\n"
        );
        assert_eq!(text("a=b", &[]), "T  INFO \"a=b\"\n");
        assert_eq!(
            String::from_utf8(line(
                LogFormat::Text,
                b"T",
                "WARN",
                "",
                &[("x", Value::U64(1))]
            ))
            .unwrap(),
            "T  WARN x=1\n"
        );
    }

    #[test]
    fn json_lines_are_one_object_with_the_fields_as_keys() {
        let l = line(
            LogFormat::Json,
            b"2026-01-01T00:00:00.000000Z",
            "WARN",
            "a \"b\"",
            &[
                ("s", Value::Str("x\ny")),
                ("n", Value::U64(u64::MAX)),
                ("f", Value::F64(f64::NAN)),
                ("b", Value::Bool(false)),
            ],
        );
        assert_eq!(l.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&l).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"timestamp": "2026-01-01T00:00:00.000000Z", "level": "WARN",
                "message": "a \"b\"", "s": "x\ny", "n": u64::MAX, "f": null, "b": false})
        );
    }

    #[test]
    fn formats_parse_by_name() {
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert!("JSON".parse::<LogFormat>().is_err());
    }
}
