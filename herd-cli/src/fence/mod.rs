//! `fence`: geofences (herd extension). Sends `FENCE <id> <location> <radius-km>` for each
//! fence given, waits for each acknowledgement (`FENCED`, the three fields echoed), then
//! prints the `ENTER`/`EXIT` lines the server pushes, as they come, until interrupted, `--count`
//! events or `--duration`. The wire forms are in [`proto`], shared with `load --fences`.

pub(crate) mod proto;

use std::io::Write;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use self::proto::{Fence, Line};
use crate::config::single_target;
use crate::conn::{Conn, ReplyReader};
use crate::error::{Failure, EXIT_INVALID};
use crate::util::{now_nanos, write_posix};
use crate::Global;

/// Arguments of `fence`.
#[derive(Debug, Args)]
pub(crate) struct FenceArgs {
    /// Fences, three values each: ID (1 to 64 bytes, no white space), LOCATION (ISO 6709, e.g.
    /// +34.068930-118.445127) and KM (radius, more than 0, at most 50); several fences one
    /// after another.
    #[arg(
        required = true,
        allow_hyphen_values = true,
        value_name = "ID LOCATION KM"
    )]
    fences: Vec<String>,
    /// Stop after this many events (0: once every fence is acknowledged).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Stop after this long (from the connect), e.g. 500ms, 30s; without it (and without
    /// --count) events are printed until Ctrl-C.
    #[arg(long, value_name = "DUR", value_parser = crate::util::parse_timeout)]
    duration: Option<Duration>,
}

/// The options of `fence` (and those before a command) that take a value.
const VALUE_OPTIONS: [&str; 7] = [
    "--server",
    "--to",
    "--config",
    "--timeout",
    "--ca",
    "--count",
    "--duration",
];

/// Whether `arg` is an option taking its value from the next argument.
fn takes_value(arg: &std::ffi::OsStr) -> bool {
    VALUE_OPTIONS.iter().any(|o| arg == *o)
}

/// `fence`'s fences are values that may start with `-` (a location like `-33.9+18.4`), so
/// clap would take every argument after the first fence as one more value, options
/// included. This moves the options given after the first fence before it and puts `--`
/// before the fences, so `fence f1 +34-118 1 --count 2` means what it says. Arguments of
/// other commands, and everything after a `--` given by the caller, are left as they are.
pub(crate) fn hoist_options(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut i = 1;
    while i < args.len() {
        let a = args[i].as_os_str();
        if a == "--" || !a.to_string_lossy().starts_with('-') {
            break;
        }
        i += if takes_value(a) { 2 } else { 1 };
    }
    if args.get(i).is_none_or(|a| a != "fence") {
        return args;
    }
    let (head, tail) = args.split_at(i + 1);
    let (mut options, mut values) = (Vec::new(), Vec::new());
    let mut rest = tail.iter();
    while let Some(a) = rest.next() {
        let text = a.to_string_lossy();
        if text == "--" {
            values.extend(rest.by_ref().cloned());
            break;
        }
        if text.starts_with("--") || text == "-h" {
            options.push(a.clone());
            if takes_value(a) {
                options.extend(rest.next().cloned());
            }
        } else {
            values.push(a.clone());
        }
    }
    let mut out = head.to_vec();
    out.extend(options);
    out.push("--".into());
    out.extend(values);
    out
}

/// The fences of the command line, checked.
fn fences_of(args: &[String]) -> Result<Vec<Fence>, Failure> {
    if !args.len().is_multiple_of(3) {
        return Err(Failure::usage(format!(
            "fences are given as ID LOCATION KM triples; {} value(s) is not a whole number of them",
            args.len()
        )));
    }
    args.chunks(3)
        .map(|t| proto::check(&t[0], &t[1], &t[2]).map_err(Failure::usage))
        .collect()
}

/// Prints one line of output and flushes it (a watcher's output goes to pipes, line by line).
fn emit(as_json: bool, value: impl FnOnce() -> Value, wire: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    let written = if as_json {
        writeln!(out, "{}", value())
    } else {
        out.write_all(wire).and_then(|()| out.write_all(b"\n"))
    };
    written
        .and_then(|()| out.flush())
        .map_err(|e| Failure::net(format!("writing to stdout: {e}")))
}

/// The time now as POSIX seconds with nine decimals.
fn now_text() -> String {
    let mut t = Vec::new();
    write_posix(now_nanos(), &mut t);
    String::from_utf8_lossy(&t).into_owned()
}

/// The output of a pushed event (`Ok(true)`) or `Ok(false)` for any other line.
fn print_event(line: &[u8], parsed: &Line, as_json: bool) -> Result<bool, Failure> {
    let Line::Event {
        crossing,
        fence,
        record,
    } = parsed
    else {
        return Ok(false);
    };
    let at = now_text();
    emit(
        as_json,
        || proto::event_json(*crossing, fence, record, &at),
        line,
    )?;
    Ok(true)
}

/// Reads the next line, bounded by `deadline`; `Ok(None)` when the deadline passed.
async fn next_line<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut ReplyReader<R>,
    deadline: Option<Instant>,
    peer: &str,
) -> Result<Option<Vec<u8>>, Failure> {
    let read = reader.line();
    let line = match deadline {
        Some(d) => match tokio::time::timeout_at(d.into(), read).await {
            Ok(r) => r?,
            Err(_) => return Ok(None),
        },
        None => read.await?,
    };
    match line {
        Some(l) => Ok(Some(l)),
        None => Err(Failure::net(format!("{peer} closed the connection"))),
    }
}

/// `fence`: the fences made, then their events printed.
pub(crate) async fn run(g: &Global, a: FenceArgs) -> Result<u8, Failure> {
    let fences = fences_of(&a.fences)?;
    let target = single_target(&g.server, &g.to, g.config.as_deref())?;
    let started = Instant::now();
    let deadline = a.duration.map(|d| started + d);
    let mut conn = Conn::to(&target, g.client_tls()?.as_ref(), g.timeout).await?;
    let peer = target.label.clone();
    let mut requests = Vec::new();
    for f in &fences {
        f.write_request(&mut requests);
    }
    conn.writer.write(&requests).await?;
    // Acknowledgements, in order; events for fences already made may come between them.
    let (mut events, mut refused) = (0u64, 0usize);
    for f in &fences {
        loop {
            let Some(line) = conn.reader.line().await? else {
                return Err(Failure::net(format!(
                    "{peer} closed the connection before acknowledging {:?}",
                    String::from_utf8_lossy(&f.id)
                )));
            };
            let parsed = proto::parse(&line).map_err(|e| {
                Failure::net(format!(
                    "malformed reply from {peer} ({e}): {:?}",
                    String::from_utf8_lossy(&line)
                ))
            })?;
            if print_event(&line, &parsed, g.json)? {
                events += 1;
                continue;
            }
            let request = f.request();
            match parsed {
                Line::Fenced(l) if f.is_ack(&l) => emit(
                    g.json,
                    || {
                        json!({
                            "reply": "fenced",
                            "fence": String::from_utf8_lossy(&f.id),
                            "location": String::from_utf8_lossy(&f.location),
                            "radius_km": String::from_utf8_lossy(&f.radius_km),
                            "line": String::from_utf8_lossy(&l),
                        })
                    },
                    &l,
                )?,
                Line::Invalid(echo) if echo == request => {
                    refused += 1;
                    let mut wire = b"? ".to_vec();
                    wire.extend_from_slice(&echo);
                    emit(
                        g.json,
                        || {
                            json!({
                                "reply": "invalid",
                                "line": String::from_utf8_lossy(&echo),
                                "request": String::from_utf8_lossy(&request),
                                "error": "the server refused the fence (no FENCE support, or \
                                          over its fence limits)",
                            })
                        },
                        &wire,
                    )?;
                }
                _ => {
                    return Err(Failure::net(format!(
                        "malformed reply from {peer}: {:?} is not the answer to {:?}",
                        String::from_utf8_lossy(&line),
                        String::from_utf8_lossy(&request)
                    )))
                }
            }
            break;
        }
    }
    if refused > 0 {
        eprintln!(
            "herd-cli: the server answered `? ` to {refused} of {} FENCE requests (a server \
             without FENCE support answers every one so; otherwise over its fence limits)",
            fences.len()
        );
        return Ok(EXIT_INVALID);
    }
    // Events wait for the server, not for a reply: no --timeout on them.
    conn.reader
        .set_timeout(Duration::from_secs(100 * 365 * 24 * 3600));
    let done = |events: u64| a.count.is_some_and(|n| events >= n);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    while !done(events) {
        let line = tokio::select! {
            r = next_line(&mut conn.reader, deadline, &peer) => match r? {
                Some(line) => line,
                None => break,
            },
            _ = &mut interrupted => break,
        };
        let parsed = proto::parse(&line).map_err(|e| {
            Failure::net(format!(
                "malformed line from {peer} ({e}): {:?}",
                String::from_utf8_lossy(&line)
            ))
        })?;
        if !print_event(&line, &parsed, g.json)? {
            return Err(Failure::net(format!(
                "unexpected line from {peer} (no request is waiting): {:?}",
                String::from_utf8_lossy(&line)
            )));
        }
        events += 1;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_after_the_fences_are_moved_before_them() {
        let v = |s: &[&str]| s.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert_eq!(
            hoist_options(v(&[
                "herd-cli",
                "--to",
                "Hands",
                "fence",
                "a",
                "-33.9+18.4",
                "1",
                "--count",
                "2",
                "--json",
                "b",
                "+1+1",
                "0.5"
            ])),
            v(&[
                "herd-cli",
                "--to",
                "Hands",
                "fence",
                "--count",
                "2",
                "--json",
                "--",
                "a",
                "-33.9+18.4",
                "1",
                "b",
                "+1+1",
                "0.5"
            ])
        );
        let other = v(&["herd-cli", "nearby", "--point", "-1+1", "1", "5"]);
        assert_eq!(hoist_options(other.clone()), other);
        assert_eq!(
            hoist_options(v(&["herd-cli", "fence", "--", "--x", "+1+1", "1"])),
            v(&["herd-cli", "fence", "--", "--x", "+1+1", "1"])
        );
    }

    #[test]
    fn fences_come_in_triples() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let two = fences_of(&args(&["a", "+1+1", "1", "b", "-1-1", "0.5"])).unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two[1].id, b"b");
        assert_eq!(fences_of(&args(&["a", "+1+1"])).unwrap_err().code, 64);
        assert_eq!(
            fences_of(&args(&["a", "+1+1", "1", "b"])).unwrap_err().code,
            64
        );
        assert_eq!(fences_of(&args(&["a", "+1+1", "99"])).unwrap_err().code, 64);
    }
}
