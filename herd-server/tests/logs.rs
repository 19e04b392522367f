//! Logs of a real `herd-server` process: the text and JSON formats, warnings on stderr (no
//! colour when it is not a terminal), an invalid RUST_LOG, start-up errors, SIGHUP reopening
//! the files, size-based rotation.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::free_addr;

const BIN: &str = env!("CARGO_BIN_EXE_herd-server");

/// One server `A` on a free address, its logs in a temporary directory; killed when dropped.
struct One {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    child: Child,
}

impl One {
    fn start(args: &[&str]) -> Self {
        Self::start_with(args, &[])
    }

    /// With `env` set (after `RUST_LOG=info`, so it may override it).
    fn start_with(args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addr = free_addr();
        let json = format!(
            r#"{{"servers": {{"A": "{addr}"}}, "secret": "{}"}}"#,
            common::unique_secret()
        );
        Self::start_in(dir, &json, "A", addr, args, env)
    }

    /// Server `name` of config `json` (listening on `addr`), in `dir`.
    fn start_in(
        dir: tempfile::TempDir,
        json: &str,
        name: &str,
        addr: SocketAddr,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        std::fs::write(dir.path().join("herd.json"), json).unwrap();
        let err = std::fs::File::create(dir.path().join(format!("{name}.stderr"))).unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(dir.path().join("herd.json"))
            .arg("--log-dir")
            .arg(dir.path().join("logs"))
            .arg("--places")
            .arg("offline")
            .args(args)
            .arg(name)
            .env_remove("HERD_SECRET")
            .env_remove("PLACES_API_KEY")
            .env_remove("NO_COLOR")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        let mut one = Self { dir, addr, child };
        let start = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = one.child.try_wait().unwrap() {
                panic!("{name} exited at start ({status}): {}", one.stderr());
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{name} never listened"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        one
    }

    fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    fn log(&self) -> PathBuf {
        self.logs().join("A.log")
    }

    fn stderr(&self) -> String {
        self.stderr_of("A")
    }

    fn stderr_of(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.stderr"))).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{sig}");
    }

    fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Stops A with SIGTERM; it must exit 0 in time, logs flushed.
    fn stop(&mut self) {
        self.signal("TERM");
        let status = self
            .wait_timeout(Duration::from_secs(10))
            .expect("exits after SIGTERM");
        assert!(status.success(), "{status:?}: {}", self.stderr());
    }
}

impl Drop for One {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn exchange(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(data).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn poll(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One parsed text log line: timestamp, level, message, fields (quoted values unquoted).
#[derive(Debug)]
struct TextLine {
    stamp: String,
    level: String,
    message: String,
    fields: Vec<(String, String)>,
}

/// Parses `line` as the text format promises: `STAMP LEVEL MESSAGE key=value …`, the message
/// bare words without `=`, every other token `key=value` or `key="…"` (`\"` a quote). Panics
/// on anything else.
fn parse_text(line: &str) -> TextLine {
    let (stamp, rest) = line.split_once(' ').expect("a stamp");
    assert!(
        stamp.starts_with("20") && stamp.ends_with('Z'),
        "stamp {stamp:?} in {line:?}"
    );
    let rest = rest.trim_start();
    let (level, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
    assert!(
        ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
        "level {level:?} in {line:?}"
    );
    let mut message = Vec::new();
    let mut fields = Vec::new();
    while !rest.is_empty() {
        let word_end = rest.find(' ').unwrap_or(rest.len());
        let word = &rest[..word_end];
        let Some(eq) = word.find('=').filter(|_| !word.starts_with('"')) else {
            assert!(
                fields.is_empty(),
                "a bare word {word:?} after the fields: {line:?}"
            );
            if word.starts_with('"') {
                // A quoted message.
                let (m, after) = unquote(rest, line);
                message.push(m);
                rest = after.strip_prefix(' ').unwrap_or(after);
            } else {
                message.push(word.to_owned());
                rest = rest[word_end..].strip_prefix(' ').unwrap_or("");
            }
            continue;
        };
        let key = &word[..eq];
        assert!(
            !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.'),
            "key {key:?} in {line:?}"
        );
        let after_eq = &rest[eq + 1..];
        let (value, after) = if after_eq.starts_with('"') {
            unquote(after_eq, line)
        } else {
            let end = after_eq.find(' ').unwrap_or(after_eq.len());
            (after_eq[..end].to_owned(), &after_eq[end..])
        };
        fields.push((key.to_owned(), value));
        assert!(
            after.is_empty() || after.starts_with(' '),
            "junk after a value in {line:?}"
        );
        rest = after.strip_prefix(' ').unwrap_or(after);
    }
    TextLine {
        stamp: stamp.to_owned(),
        level: level.to_owned(),
        message: message.join(" "),
        fields,
    }
}

/// The quoted string at the start of `text` (`\"` is a quote, other escapes kept as they
/// are) and what follows it.
fn unquote<'a>(text: &'a str, line: &str) -> (String, &'a str) {
    let mut out = String::new();
    let mut chars = text.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return (out, &text[i + 1..]),
            '\\' => match chars.next() {
                Some((_, '"')) => out.push('"'),
                Some((_, other)) => {
                    out.push('\\');
                    out.push(other);
                }
                None => break,
            },
            c => out.push(c),
        }
    }
    panic!("an unterminated quote in {line:?}");
}

fn field<'a>(line: &'a TextLine, key: &str) -> Option<&'a str> {
    line.fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[test]
fn text_lines_are_key_value_parseable_and_values_with_spaces_are_quoted() {
    let mut a = One::start(&[]);
    assert!(
        exchange(a.addr, b"IAMAT kiwi\"x +1+1 1\nWHATSAT kiwi\"x 10 1\n").starts_with(b"AT A ")
    );
    a.signal("USR1");
    assert!(poll(Duration::from_secs(5), || read(&a.log())
        .contains("counters")));
    a.stop();
    let log = read(&a.log());
    let lines: Vec<TextLine> = log.lines().map(parse_text).collect();
    let message = lines
        .iter()
        .find(|l| l.message == "client message")
        .unwrap_or_else(|| panic!("no client message line:\n{log}"));
    assert_eq!(field(message, "msg"), Some("IAMAT kiwi\"x +1+1 1"));
    let reply = field(message, "reply").unwrap();
    assert!(
        reply.starts_with("AT A ") && reply.ends_with(" kiwi\"x +1+1 1\\n"),
        "{reply}"
    );
    assert!(
        log.contains(" msg=\"IAMAT kiwi\\\"x +1+1 1\" "),
        "quoted, the quote escaped:\n{log}"
    );
    let places = lines
        .iter()
        .find(|l| l.message == "client message; looking up places")
        .unwrap();
    assert_eq!(field(places, "msg"), Some("WHATSAT kiwi\"x 10 1"));
    let started = lines
        .iter()
        .find(|l| l.message == "server started")
        .unwrap();
    assert_eq!(field(started, "places"), Some("offline"));
    assert_eq!(field(started, "neighbours"), Some(""));
    let counters = lines.iter().find(|l| l.message == "counters").unwrap();
    let stats: serde_json::Value = serde_json::from_str(field(counters, "stats").unwrap()).unwrap();
    assert_eq!(stats["iamats"], 1);
    assert!(lines
        .iter()
        .all(|l| !l.stamp.is_empty() && !l.level.is_empty()));
    assert!(!log.contains('\x1b'), "no colour in files");
}

#[test]
fn json_lines_are_objects_with_the_fields_as_keys() {
    let mut a = One::start(&["--log-format", "json"]);
    assert!(exchange(a.addr, b"IAMAT kiwi +1+1 1\nWHATSAT kiwi 10 1\n").starts_with(b"AT A "));
    // An over-long line: a warning, in the file and on stderr, as JSON.
    let mut long = vec![b'x'; 70_000];
    long.push(b'\n');
    exchange(a.addr, &long);
    a.stop();
    let log = read(&a.log());
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    for l in &lines {
        for key in ["timestamp", "level", "message"] {
            assert!(l[key].is_string(), "{key} in {l}");
        }
    }
    let find = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line:\n{log}"))
    };
    let m = find("client message");
    assert_eq!(m["level"], "INFO");
    assert_eq!(m["msg"], "IAMAT kiwi +1+1 1");
    assert!(m["reply"].as_str().unwrap().starts_with("AT A "), "{m}");
    assert!(m["addr"].as_str().unwrap().starts_with("127."), "{m}");
    assert_eq!(
        find("client message; looking up places")["msg"],
        "WHATSAT kiwi 10 1"
    );
    assert_eq!(find("server started")["server"], "A");
    assert!(find("server started")["max_records"].is_u64());
    let long = find("client line over the length limit; closing connection");
    assert_eq!(long["level"], "WARN");
    assert_eq!(long["max"], 65536);
    let err = a.stderr();
    let warning = err
        .lines()
        .find(|l| l.contains("over the length limit"))
        .unwrap_or_else(|| panic!("not on stderr: {err}"));
    let warning: serde_json::Value = serde_json::from_str(warning).unwrap();
    assert_eq!(warning["level"], "WARN");
}

#[test]
fn warnings_reach_stderr_without_colour_when_it_is_not_a_terminal() {
    let mut a = One::start(&[]);
    // A message first: herd-net checks whether info is enabled before each batch.
    assert!(exchange(a.addr, b"IAMAT kiwi +1+1 1\n").starts_with(b"AT A "));
    let mut long = b"IAMAT kiwi +1+1 2\n".to_vec();
    long.extend(std::iter::repeat_n(b'x', 70_000));
    long.push(b'\n');
    exchange(a.addr, &long);
    assert!(
        poll(Duration::from_secs(5), || a
            .stderr()
            .contains("over the length limit")),
        "the over-long-line warning is not on stderr: {}",
        a.stderr()
    );
    a.stop();
    let err = a.stderr();
    let warning = err
        .lines()
        .find(|l| l.contains("over the length limit"))
        .unwrap();
    let parsed = parse_text(warning);
    assert_eq!(parsed.level, "WARN");
    assert_eq!(field(&parsed, "max"), Some("65536"));
    assert!(
        !err.contains("\x1b["),
        "ANSI codes on a piped stderr: {err:?}"
    );
    // Info lines stay in the file.
    assert!(!err.contains("client message"), "{err}");
    assert!(read(&a.log()).contains("over the length limit"));
}

#[test]
fn a_peer_link_lost_is_a_warning_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let json = format!(
        r#"{{"servers": {{"A": "{a_addr}", "B": "{b_addr}"}}, "links": [["A", "B"]], "secret": "{}"}}"#,
        common::unique_secret()
    );
    let b_dir = tempfile::tempdir().unwrap();
    let mut b = One::start_in(b_dir, &json, "B", b_addr, &[], &[]);
    let mut a = One::start_in(dir, &json, "A", a_addr, &[], &[]);
    assert!(
        poll(Duration::from_secs(15), || read(&a.logs().join("A.log"))
            .contains("peer link up")),
        "no link: {}",
        read(&a.logs().join("A.log"))
    );
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    assert!(
        poll(Duration::from_secs(15), || a
            .stderr_of("A")
            .contains("peer link down")),
        "{}",
        a.stderr_of("A")
    );
    a.stop();
    let err = a.stderr_of("A");
    let down = parse_text(err.lines().find(|l| l.contains("peer link down")).unwrap());
    assert_eq!(down.level, "WARN");
    assert_eq!(field(&down, "peer"), Some("B"));
    // The links closed by the shutdown itself are no warning.
    let log = read(&a.logs().join("A.log"));
    assert!(
        log.lines()
            .filter(|l| l.contains("server shutting down"))
            .all(|l| l.contains(" INFO ")),
        "{log}"
    );
}

/// Runs herd-server with `args` and `env` expecting it to fail at once.
fn run_fail(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(args)
        .arg("--log-dir")
        .arg(dir.path().join("logs"))
        .env_remove("PLACES_API_KEY")
        .env_remove("HERD_SECRET")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_invalid_rust_log_exits_64_with_the_reason() {
    for bad in ["herd=notalevel", "info,herd_net=loud"] {
        let (code, err) = run_fail(&["--places", "offline", "Goloman"], &[("RUST_LOG", bad)]);
        assert_eq!(code, Some(64), "{bad}: {err}");
        assert!(
            err.starts_with("herd-server: invalid RUST_LOG") && err.contains(bad),
            "{bad}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    let (code, err) = run_fail(&["--log-format", "xml", "Goloman"], &[]);
    assert_eq!(code, Some(2), "clap's usage error: {err}");
    assert!(err.contains("xml"), "{err}");
}

#[test]
fn a_port_in_use_is_one_line_with_its_cause_once() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("busy.json");
    std::fs::write(&config, format!(r#"{{"servers": {{"A": "{addr}"}}}}"#)).unwrap();
    let (code, err) = run_fail(
        &[
            "--config",
            config.to_str().unwrap(),
            "--places",
            "offline",
            "A",
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("server A: cannot listen on {addr}: ")),
        "{err}"
    );
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
    assert_eq!(err.matches("os error").count(), 1, "{err}");
}

#[test]
fn sighup_reopens_a_log_file_moved_away_and_the_server_keeps_running() {
    let mut a = One::start(&[]);
    assert!(exchange(a.addr, b"IAMAT before +1+1 1\n").starts_with(b"AT A "));
    assert!(poll(Duration::from_secs(5), || read(&a.log())
        .contains("IAMAT before")));
    let moved = a.logs().join("A.log.moved");
    std::fs::rename(a.log(), &moved).unwrap();
    a.signal("HUP");
    // The writer creates the new file and says so in it.
    assert!(
        poll(Duration::from_secs(5), || read(&a.log())
            .contains("log file reopened")),
        "no new A.log: {}",
        a.stderr()
    );
    assert_eq!(a.child.try_wait().unwrap(), None, "A is alive after SIGHUP");
    assert!(exchange(a.addr, b"IAMAT after +1+1 2\n").starts_with(b"AT A "));
    assert!(poll(Duration::from_secs(5), || read(&a.log())
        .contains("msg=\"IAMAT after +1+1 2\" reply=\"AT A ")));
    let old = read(&moved);
    assert!(
        old.contains("IAMAT before") && old.contains("SIGHUP received"),
        "{old}"
    );
    assert!(!old.contains("IAMAT after"), "{old}");
    // A second SIGHUP with the file in place appends to it.
    a.signal("HUP");
    assert!(poll(Duration::from_secs(5), || read(&a.log())
        .matches("log file reopened")
        .count()
        == 2));
    a.stop();
    let new = read(&a.log());
    assert!(!new.contains("IAMAT before"), "{new}");
    for want in ["IAMAT after", "SIGTERM received", "counters"] {
        assert!(new.contains(want), "new A.log lacks {want:?}:\n{new}");
    }
}

#[test]
fn log_files_rotate_at_the_size_given_keeping_the_number_given() {
    let mut a = One::start(&["--log-max-bytes", "4K", "--log-keep", "2"]);
    // About 180 bytes a message line: 300 messages are about 13 files of 4 KiB.
    for round in 0..6 {
        let mut input = Vec::new();
        for i in 0..50 {
            input.extend_from_slice(format!("IAMAT r{round}x{i} +1+1 {i}\n").as_bytes());
        }
        let out = exchange(a.addr, &input);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 50);
    }
    a.stop();
    let numbered = |n: usize| a.logs().join(format!("A.log.{n}"));
    assert!(!numbered(3).exists(), "at most 2 old files");
    let texts = [read(&numbered(2)), read(&numbered(1)), read(&a.log())];
    for (n, t) in texts.iter().enumerate() {
        assert!(!t.is_empty(), "file {n} exists");
        assert!(t.len() <= 4096, "file {n}: {} bytes", t.len());
        assert!(t.ends_with('\n'), "file {n} ends with a whole line");
        for l in t.lines() {
            assert!(
                l.starts_with("20") && l.contains("Z "),
                "a whole line: {l:?}"
            );
        }
    }
    // The last messages and the shutdown are in the newest files.
    let kept = texts.concat();
    assert!(kept.contains("msg=\"IAMAT r5x49 "), "{kept}");
    assert!(texts[2].contains("counters"), "{}", texts[2]);
    assert!(
        !kept.contains("server started"),
        "the oldest lines were deleted"
    );
}

#[test]
fn bad_log_options_exit_non_zero() {
    for args in [
        ["--log-max-bytes", "12X"],
        ["--log-max-bytes", "1.5G"],
        ["--log-keep", "many"],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .arg("Goloman")
            .env_remove("PLACES_API_KEY")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: clap's usage error");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(args[0]), "{args:?}: {err}");
    }
}
