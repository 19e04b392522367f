//! herd-cli against its own echo server and small fake servers on loopback: exit codes,
//! output bytes, `--json`, stdin mode, a server that is down, a server that never answers.

mod common;

use std::time::{Duration, Instant};

use common::*;

const KIWI: &str = "IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997";

#[test]
fn iamat_prints_the_at_line_and_exits_0() {
    let echo = EchoServer::start();
    let out = run(&[
        "--server",
        &echo.addr(),
        "iamat",
        "kiwi.cs.ucla.edu",
        "+34.068930-118.445127",
        "--time",
        "1520023934.918963997",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let fields: Vec<&str> = text.strip_suffix('\n').unwrap().split(' ').collect();
    assert_eq!(fields.len(), 6, "{text:?}");
    assert_eq!(fields[..2], ["AT", "Echo"]);
    assert!(fields[2].starts_with('+') && fields[2].len() - fields[2].find('.').unwrap() == 10);
    assert_eq!(
        fields[3..],
        [
            "kiwi.cs.ucla.edu",
            "+34.068930-118.445127",
            "1520023934.918963997"
        ]
    );
}

#[test]
fn iamat_without_time_sends_now_to_the_nanosecond() {
    let echo = EchoServer::start();
    let out = run(&["--server", &echo.addr(), "--json", "iamat", "k", "+1-2"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = &json_lines(&out)[0];
    let time = v["time"].as_str().unwrap();
    let (secs, frac) = time.split_once('.').unwrap();
    assert_eq!(frac.len(), 9, "{time}");
    let secs: u64 = secs.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(secs) < 120, "{time} is not now");
    // The echo server's diff is its clock minus ours: small, never a minute.
    assert!(
        v["diff"].as_str().unwrap().starts_with("+0.")
            || v["diff"].as_str().unwrap().starts_with("-0.")
    );
}

#[test]
fn iamat_json_names_every_field() {
    let echo = EchoServer::start();
    let out = run(&[
        "--server",
        &echo.addr(),
        "--json",
        "iamat",
        "kiwi",
        "+34.068930-118.445127",
        "--time",
        "1520023934.5",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = json_lines(&out);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["reply"], "at");
    assert_eq!(v[0]["server"], "Echo");
    assert_eq!(v[0]["client"], "kiwi");
    assert_eq!(v[0]["location"], "+34.068930-118.445127");
    assert_eq!(v[0]["time"], "1520023934.5");
    assert_eq!(v[0]["latitude"], 34.06893);
    assert_eq!(v[0]["longitude"], -118.445127);
    assert_eq!(
        v[0]["request"],
        "IAMAT kiwi +34.068930-118.445127 1520023934.5"
    );
}

#[test]
fn whatsat_prints_the_reply_bytes_exactly() {
    let echo = EchoServer::start();
    let out = run(&["--server", &echo.addr(), "whatsat", "kiwi", "10", "5"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "AT Echo +0.000000000 kiwi +0+0 0\n{\n   \"html_attributions\" : [],\n   \"results\" : [],\n   \"status\" : \"ZERO_RESULTS\"\n}\n\n"
    );
}

#[test]
fn whatsat_json_carries_the_places_object() {
    let echo = EchoServer::start();
    let out = run(&[
        "--server",
        &echo.addr(),
        "--json",
        "whatsat",
        "kiwi",
        "10",
        "5",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = json_lines(&out);
    assert_eq!(v[0]["reply"], "places");
    assert_eq!(v[0]["client"], "kiwi");
    assert_eq!(v[0]["places"]["status"], "ZERO_RESULTS");
    assert_eq!(v[0]["places"]["results"], serde_json::json!([]));
}

#[test]
fn question_mark_reply_exits_1() {
    let addr = fixed_reply_server(b"? WHATSAT nobody 10 5\n");
    let out = run(&["--server", &addr, "whatsat", "nobody", "10", "5"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert_eq!(stdout(&out), "? WHATSAT nobody 10 5\n");
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    let out = run(&["--server", &addr, "--json", "whatsat", "nobody", "10", "5"]);
    assert_eq!(code(&out), 1);
    let v = json_lines(&out);
    assert_eq!(v[0]["reply"], "invalid");
    assert_eq!(v[0]["line"], "WHATSAT nobody 10 5");
}

#[test]
fn send_prints_each_reply_in_order_and_exits_1_on_an_invalid_line() {
    let echo = EchoServer::start();
    let out = run(&[
        "--server",
        &echo.addr(),
        "send",
        KIWI,
        "HELLO  there",
        "WHATSAT kiwi 1 1",
    ]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("AT Echo "), "{text}");
    assert!(lines[0].ends_with(" kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997"));
    assert_eq!(lines[1], "? HELLO  there");
    assert_eq!(lines[2], "AT Echo +0.000000000 kiwi +0+0 0");
    assert!(text.ends_with("}\n\n"), "{text:?}");
}

#[test]
fn send_reads_stdin_and_skips_blank_lines() {
    let echo = EchoServer::start();
    let input = format!("{KIWI}\n\n   \nWHATSAT kiwi 2 3\r\nIAMAT last +0+0 1");
    let out = run_with(
        &["--server", &echo.addr(), "--json", "send"],
        input.as_bytes(),
        Duration::from_secs(60),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = json_lines(&out);
    assert_eq!(v.len(), 3, "{}", stdout(&out));
    assert_eq!(v[0]["reply"], "at");
    assert_eq!(v[0]["client"], "kiwi.cs.ucla.edu");
    assert_eq!(v[1]["reply"], "places");
    assert_eq!(v[1]["request"], "WHATSAT kiwi 2 3");
    assert_eq!(v[2]["client"], "last");
    assert_eq!(v[2]["time"], "1");
}

#[test]
fn send_with_only_blank_lines_prints_nothing() {
    let echo = EchoServer::start();
    let out = run_with(
        &["--server", &echo.addr(), "send"],
        b"\n \t\n",
        Duration::from_secs(60),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
}

#[test]
fn a_server_that_is_down_exits_2_with_one_line() {
    let addr = dead_addr();
    for args in [
        vec!["iamat", "k", "+1+2"],
        vec!["whatsat", "k", "1", "1"],
        vec!["send", "IAMAT k +1+2 3"],
        vec!["load", "--requests", "10", "-c", "2"],
        vec!["probe", "A", "B"],
    ] {
        let mut all = vec!["--server", addr.as_str(), "--timeout", "2s"];
        if args[0] == "probe" {
            all = vec!["--timeout", "2s", "probe", &addr, &addr];
        } else {
            all.extend(&args);
        }
        let out = run(&all);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("herd-cli: "), "{err}");
    }
}

#[test]
fn a_server_that_never_answers_exits_2_within_the_timeout() {
    let silent = SilentServer::start();
    for args in [
        vec!["iamat", "k", "+1+2"],
        vec!["whatsat", "k", "1", "1"],
        vec!["send", "IAMAT k +1+2 3"],
        vec!["load", "--requests", "4", "-c", "1", "-d", "4"],
        vec!["probe"],
    ] {
        let started = Instant::now();
        let mut all = vec!["--server", silent.addr.as_str(), "--timeout", "300ms"];
        all.extend(&args);
        if args[0] == "probe" {
            all = vec!["--timeout", "300ms", "probe", &silent.addr, &silent.addr];
        }
        let out = run_with(&all, b"", Duration::from_secs(30));
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(started.elapsed() >= Duration::from_millis(300));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("no reply") || err.contains("failed"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn send_from_stdin_times_out_on_a_silent_server_even_while_stdin_is_open() {
    let silent = SilentServer::start();
    let mut child = cli()
        .args(["--server", &silent.addr, "--timeout", "300ms", "send"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"IAMAT k +1+2 3\n").unwrap();
    // stdin stays open: the reply's timeout alone must end the command.
    let out = Killer(Some(child)).wait(Duration::from_secs(30));
    drop(stdin);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("no reply"), "{}", stderr(&out));
}

#[test]
fn malformed_replies_exit_2() {
    for reply in [&b"HELLO\n"[..], b"AT not an at line\n", b""] {
        let addr = fixed_reply_server(reply);
        let out = run(&["--server", &addr, "--timeout", "5s", "iamat", "k", "+1+2"]);
        assert_eq!(code(&out), 2, "{:?}: {}", reply, stderr(&out));
        assert_eq!(stderr(&out).lines().count(), 1);
    }
    let addr = fixed_reply_server(b"AT A +0.000000000 k +1+2 3\nnot json\n\n");
    let out = run(&["--server", &addr, "--json", "whatsat", "k", "1", "1"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("not JSON"), "{}", stderr(&out));
}

#[test]
fn bad_arguments_exit_64_before_connecting() {
    let addr = dead_addr();
    for args in [
        vec!["iamat", "k", "34-118"],
        vec!["iamat", "k", "+1+2", "--time", "-5"],
        vec!["whatsat", "k", "51", "1"],
        vec!["whatsat", "k", "1", "21"],
        vec!["--timeout", "soon", "iamat", "k", "+1+2"],
        vec!["load", "--whatsat-ratio", "2"],
        vec!["load", "--fresh", "-k", "2", "-c", "4"],
        vec!["nonsense"],
    ] {
        let mut all = vec!["--server", addr.as_str()];
        all.extend(&args);
        let out = run(&all);
        assert_eq!(code(&out), 64, "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty());
    }
}

#[test]
fn to_resolves_names_through_the_config() {
    let echo = EchoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herd.json");
    let config = format!(
        r#"{{"servers": {{"Alpha": {{"addr": "{}"}}, "Beta": "{}"}}, "links": [["Alpha", "Beta"]]}}"#,
        echo.addr(),
        dead_addr()
    );
    std::fs::write(&path, config).unwrap();
    let p = path.to_str().unwrap();
    let out = run(&["--config", p, "--to", "Alpha", "iamat", "k", "+1+2"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // The first server of the config is the default target.
    let out = run(&["--config", p, "iamat", "k", "+1+2"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = run(&[
        "--config",
        p,
        "--to",
        "Beta",
        "--timeout",
        "2s",
        "iamat",
        "k",
        "+1+2",
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let out = run(&["--config", p, "--to", "Gamma", "iamat", "k", "+1+2"]);
    assert_eq!(code(&out), 64, "{}", stderr(&out));
    assert!(stderr(&out).contains("Alpha, Beta"), "{}", stderr(&out));
}

#[test]
fn load_pipelined_against_the_in_process_echo_server_answers_every_request() {
    let out = run(&[
        "--json",
        "load",
        "--echo-server",
        "--requests",
        "5000",
        "-c",
        "8",
        "-d",
        "16",
        "--threads",
        "2",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = &json_lines(&out)[0];
    assert_eq!(v["ok"], 5000, "{v}");
    assert!(
        v["errors"].as_object().unwrap().values().all(|n| n == 0),
        "{v}"
    );
    assert_eq!(v["mode"], "pipelined");
    for q in ["p50", "p90", "p99", "p99_9", "max"] {
        assert!(v["latency_us"][q].as_f64().unwrap() > 0.0, "{v}");
    }
    assert!(v["requests_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn load_classic_with_whatsat_mix_against_an_echo_process() {
    let echo = EchoServer::start();
    let out = run(&[
        "--server",
        &echo.addr(),
        "--json",
        "load",
        "--mode",
        "classic",
        "--requests",
        "300",
        "-c",
        "4",
        "--whatsat-ratio",
        "0.5",
        "-k",
        "20",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = &json_lines(&out)[0];
    assert_eq!(v["ok"], 300, "{v}");
    assert_eq!(v["mode"], "classic");
}

#[test]
fn load_by_duration_spreads_over_several_targets_and_prints_a_text_summary() {
    let (a, b) = (EchoServer::start(), EchoServer::start());
    let servers = format!("{},{}", a.addr(), b.addr());
    let out = run(&[
        "--server",
        &servers,
        "load",
        "--duration",
        "500ms",
        "-c",
        "4",
        "--fresh",
        "-k",
        "100",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&a.addr()) && text.contains(&b.addr()),
        "{text}"
    );
    assert!(text.contains("requests/s"), "{text}");
    assert!(text.contains("errors: none"), "{text}");
    assert!(text.contains("p99.9"), "{text}");
}

#[test]
fn load_counts_invalid_replies_as_errors() {
    let addr = fixed_reply_server(b"? nope\n");
    let out = run(&[
        "--server",
        &addr,
        "--json",
        "load",
        "--mode",
        "classic",
        "--requests",
        "5",
        "-c",
        "1",
    ]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let v = &json_lines(&out)[0];
    assert_eq!(v["errors"]["invalid"], 5, "{v}");
    assert_eq!(v["ok"], 0);
}

#[test]
fn probe_gives_up_at_its_deadline_when_b_never_holds_the_record() {
    // The echo server stores nothing, so B's AT line never becomes A's.
    let echo = EchoServer::start();
    let started = Instant::now();
    let out = run(&[
        "probe",
        &echo.addr(),
        &echo.addr(),
        "--repeat",
        "1",
        "--deadline",
        "300ms",
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("did not hold the record"),
        "{}",
        stderr(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn certs_makes_a_ca_and_a_certificate_per_server_and_reuses_the_ca() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("tls");
    let out_arg = out_dir.to_str().unwrap();
    let out = run(&["certs", "--out", out_arg, "--host", "herd.example"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    for name in ["ca", "Goloman", "Hands", "Holiday", "Welsh", "Wilkes"] {
        let pem = std::fs::read_to_string(out_dir.join(format!("{name}.pem"))).unwrap();
        assert!(
            pem.starts_with("-----BEGIN CERTIFICATE-----"),
            "{name}: {pem}"
        );
        let key = out_dir.join(format!("{name}.key"));
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{name}.key is readable by others");
    }
    assert!(
        stdout(&out).contains("Hands, 127.0.0.1, herd.example"),
        "{}",
        stdout(&out)
    );
    let ca_before = std::fs::read(out_dir.join("ca.pem")).unwrap();
    let again = run(&["--json", "certs", "--out", out_arg, "--name", "Hands"]);
    assert_eq!(code(&again), 0, "{}", stderr(&again));
    let v: serde_json::Value = serde_json::from_str(&stdout(&again)).unwrap();
    assert_eq!(v["ca_made"], false);
    assert_eq!(v["servers"][0]["server"], "Hands");
    assert_eq!(std::fs::read(out_dir.join("ca.pem")).unwrap(), ca_before);
    let bad = run(&["certs", "--out", out_arg, "--name", "Nobody"]);
    assert_eq!(code(&bad), 64);
}

/// A listening socket that nothing should connect to: a connection made to it waits in its
/// backlog (the kernel completes the handshake before `connect` returns), so once a command
/// has exited, an empty backlog proves it never connected.
struct Untouched {
    listener: std::net::TcpListener,
    addr: String,
}

impl Untouched {
    fn new() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        Self { listener, addr }
    }

    fn assert_untouched(&self, what: &str) {
        match self.listener.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok(_) => panic!("{what}: herd-cli connected before refusing its arguments"),
            Err(e) => panic!("{what}: accept failed: {e}"),
        }
    }
}

/// A herd config naming `servers` (name, address) in a temp dir.
fn config_file(servers: &[(&str, &str)]) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herd.json");
    let entries: Vec<String> = servers
        .iter()
        .map(|(n, a)| format!("\"{n}\": {{\"addr\": \"{a}\", \"admin\": \"127.0.0.1:1\"}}"))
        .collect();
    std::fs::write(
        &path,
        format!("{{\"servers\": {{{}}}, \"links\": []}}", entries.join(", ")),
    )
    .unwrap();
    let p = path.to_str().unwrap().to_owned();
    (dir, p)
}

#[test]
fn usage_errors_exit_64_before_any_connect() {
    let s = Untouched::new();
    let (_dir, cfg) = config_file(&[("Alpha", &s.addr), ("Beta", &s.addr)]);
    let both = format!("{},127.0.0.1", s.addr);
    let cases: Vec<Vec<&str>> = vec![
        // Addresses: no port, port 0, a port out of range, no host, a bare IPv6 address.
        vec!["--server", "127.0.0.1", "iamat", "k", "+1+2"],
        vec!["iamat", "--server", "127.0.0.1", "k", "+1+2"],
        vec!["--server", "127.0.0.1:0", "whatsat", "k", "1", "1"],
        vec!["--server", "127.0.0.1:99999", "send", "IAMAT k +1+2 3"],
        vec!["--server", ":12000", "iamat", "k", "+1+2"],
        vec!["--server", "::1:12000", "iamat", "k", "+1+2"],
        vec!["--server", &both, "load", "-n", "1"],
        // Options a command does not take, given before it; contradictions across the two
        // places; a zero timeout; --tls without --ca.
        vec!["--server", &s.addr, "--all", "iamat", "k", "+1+2"],
        vec!["--server", &s.addr, "echo-server"],
        vec!["--server", &s.addr, "probe", "Alpha", "Beta"],
        vec![
            "--server", &s.addr, "--tls", "--ca", "ca.pem", "load", "-n", "1",
        ],
        vec!["--server", &s.addr, "iamat", "--to", "Alpha", "k", "+1+2"],
        vec![
            "--server",
            &s.addr,
            "--timeout",
            "1s",
            "iamat",
            "--timeout",
            "2s",
            "k",
            "+1+2",
        ],
        vec!["--server", &s.addr, "--timeout", "0s", "iamat", "k", "+1+2"],
        vec!["--server", &s.addr, "--tls", "iamat", "k", "+1+2"],
        vec!["--server", &s.addr, "--all", "load", "-n", "1"],
        vec![
            "--config",
            &cfg,
            "--all",
            "load",
            "--echo-server",
            "-n",
            "1",
        ],
        // Names the config does not have, for --to and for probe.
        vec!["--config", &cfg, "--to", "Nobody", "iamat", "k", "+1+2"],
        vec!["--config", &cfg, "probe", "Alpha", "Nobody"],
        vec!["--config", &cfg, "probe", "Nobody", "Alpha"],
        vec!["--config", &cfg, "probe", "Alpha", "127.0.0.1"],
    ];
    for args in &cases {
        // A long timeout: a command that connected to the silent listener would hang for it.
        let mut all = vec!["--timeout", "60s"];
        if args.contains(&"--timeout") {
            all.clear();
        }
        all.extend(args);
        let out = run_with(&all, b"", Duration::from_secs(30));
        assert_eq!(code(&out), 64, "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(!err.is_empty(), "{args:?}");
        assert_eq!(stdout(&out), "", "{args:?}");
        s.assert_untouched(&format!("{args:?}"));
        if args.contains(&"Nobody") {
            assert!(err.contains("Alpha, Beta"), "{args:?}: {err}");
        }
    }
    // The default herd's names are listed the same way.
    let out = run(&["probe", "Welsh", "Nobody"]);
    assert_eq!(code(&out), 64, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Goloman, Hands, Holiday, Welsh, Wilkes"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn json_errors_are_one_object_on_stdout_with_the_exit_code() {
    let echo = EchoServer::start();
    let dead = dead_addr();
    let (_dir, cfg) = config_file(&[("Alpha", &echo.addr())]);
    let cases: Vec<(Vec<&str>, i32)> = vec![
        // clap's own usage errors, with --json before or after the command.
        (vec!["--json", "iamat", "k"], 64),
        (vec!["iamat", "--json", "k"], 64),
        (
            vec!["--json", "--server", "127.0.0.1", "iamat", "k", "+1+2"],
            64,
        ),
        (vec!["--json", "nonsense"], 64),
        // herd-cli's: bad values, names, options the command does not take.
        (
            vec!["--json", "--server", &dead, "iamat", "k", "34-118"],
            64,
        ),
        (
            vec![
                "--json", "--config", &cfg, "--to", "Nobody", "whatsat", "k", "1", "1",
            ],
            64,
        ),
        (
            vec!["--json", "--config", &cfg, "probe", "Alpha", "Nobody"],
            64,
        ),
        (vec!["--json", "--all", "iamat", "k", "+1+2"], 64),
        (
            vec![
                "--config",
                "/nonexistent.json",
                "certs",
                "--out",
                "x",
                "--json",
            ],
            64,
        ),
        // Connection failures.
        (
            vec![
                "--json",
                "--server",
                &dead,
                "--timeout",
                "2s",
                "iamat",
                "k",
                "+1+2",
            ],
            2,
        ),
        (vec!["--timeout", "2s", "probe", "--json", &dead, &dead], 2),
    ];
    for (args, want) in &cases {
        let out = run(args);
        assert_eq!(code(&out), *want, "{args:?}: {}", stderr(&out));
        let v = json_lines(&out);
        assert_eq!(v.len(), 1, "{args:?}: {}", stdout(&out));
        assert_eq!(v[0]["exit_code"], *want, "{args:?}: {}", v[0]);
        let message = v[0]["error"].as_str().unwrap_or_else(|| panic!("{}", v[0]));
        assert!(
            !message.is_empty() && !message.contains('\n'),
            "{message:?}"
        );
        // The same message is on stderr for people.
        assert!(!stderr(&out).is_empty(), "{args:?}");
    }
    // A failure after some replies: the replies' objects, then the error's, last.
    let addr = fixed_reply_server(b"AT A +0.000000000 k +1+2 3\n");
    let out = run(&[
        "--server",
        &addr,
        "--json",
        "send",
        "IAMAT k +1+2 3",
        "IAMAT k +1+2 4",
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let v = json_lines(&out);
    assert_eq!(v.len(), 2, "{}", stdout(&out));
    assert_eq!(v[0]["reply"], "at");
    assert_eq!(v[1]["exit_code"], 2);
    // The server closes with the second line unread: "closed", or a reset.
    assert!(
        v[1]["error"].as_str().unwrap().contains("127.0.0.1"),
        "{}",
        v[1]
    );
}

#[test]
fn each_command_help_lists_only_its_own_options() {
    let help = |cmd: &str| {
        let out = run(&[cmd, "--help"]);
        assert_eq!(code(&out), 0, "{cmd}: {}", stderr(&out));
        stdout(&out)
    };
    let has = |text: &str, flag: &str| {
        text.lines()
            .any(|l| l.trim_start().split([' ', ',']).any(|w| w == flag))
    };
    let load_only = [
        "--all",
        "--connections",
        "--depth",
        "--requests",
        "--duration",
        "--echo-server",
        "--rate",
        "--fresh",
        "--threads",
        "--whatsat-ratio",
        "--nearby-ratio",
        "--area",
        "--resp",
        "--fences",
        "--fence-server",
        "--warmup-only",
    ];
    let request = [
        "--server",
        "--to",
        "--config",
        "--json",
        "--timeout",
        "--tls",
        "--ca",
    ];
    for cmd in ["iamat", "whatsat", "send"] {
        let text = help(cmd);
        for flag in request {
            assert!(has(&text, flag), "{cmd} --help lacks {flag}:\n{text}");
        }
        for flag in load_only.iter().chain(&["--listen", "--out", "--deadline"]) {
            assert!(!has(&text, flag), "{cmd} --help lists {flag}:\n{text}");
        }
    }
    assert!(has(&help("iamat"), "--time"));
    let fence = help("fence");
    for flag in request.iter().chain(&["--count", "--duration"]) {
        assert!(has(&fence, flag), "fence --help lacks {flag}:\n{fence}");
    }
    for flag in [
        "--all",
        "--connections",
        "--fresh",
        "--resp",
        "--fences",
        "--time",
    ] {
        assert!(!has(&fence, flag), "fence --help lists {flag}:\n{fence}");
    }
    let load = help("load");
    for flag in load_only
        .iter()
        .chain(&["--server", "--to", "--config", "--json", "--timeout"])
    {
        assert!(has(&load, flag), "load --help lacks {flag}:\n{load}");
    }
    for flag in ["--tls", "--ca", "--time", "--listen"] {
        assert!(!has(&load, flag), "load --help lists {flag}:\n{load}");
    }
    let probe = help("probe");
    for flag in [
        "--config",
        "--json",
        "--timeout",
        "--tls",
        "--repeat",
        "--deadline",
    ] {
        assert!(has(&probe, flag), "probe --help lacks {flag}:\n{probe}");
    }
    for flag in ["--server", "--to", "--all", "--connections"] {
        assert!(!has(&probe, flag), "probe --help lists {flag}:\n{probe}");
    }
    let echo = help("echo-server");
    for flag in request.iter().chain(&load_only[..6]) {
        assert!(
            !has(&echo, flag),
            "echo-server --help lists {flag}:\n{echo}"
        );
    }
    let certs = help("certs");
    for flag in ["--server", "--to", "--timeout", "--tls", "--all"] {
        assert!(!has(&certs, flag), "certs --help lists {flag}:\n{certs}");
    }
    // The top level lists what may come before a command, --all included.
    let top = run(&["--help"]);
    for flag in request.iter().chain(&["--all"]) {
        assert!(has(&stdout(&top), flag), "--help lacks {flag}");
    }
}

#[test]
fn options_work_before_and_after_the_command_as_the_readme_writes_them() {
    let (a, b) = (EchoServer::start(), EchoServer::start());
    let (_dir, cfg) = config_file(&[("Alpha", &a.addr()), ("Beta", &b.addr())]);
    // README: `herd-cli [--server A,B | --to Goloman,Hands | --all] load ...`.
    let out = run(&[
        "--config", &cfg, "--all", "load", "-n", "200", "-c", "2", "--json",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        json_lines(&out)[0]["targets"],
        serde_json::json!(["Alpha", "Beta"])
    );
    let out = run(&[
        "--config", &cfg, "load", "--all", "-n", "200", "-c", "2", "--json",
    ]);
    assert_eq!(
        json_lines(&out)[0]["targets"],
        serde_json::json!(["Alpha", "Beta"])
    );
    let out = run(&[
        "--config",
        &cfg,
        "--to",
        "Alpha,Beta",
        "--json",
        "load",
        "-n",
        "100",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(json_lines(&out)[0]["ok"], 100);
    // Split between the two places, and all after the command.
    let out = run(&[
        "--config", &cfg, "iamat", "--to", "Beta", "--json", "k", "+1+2",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(json_lines(&out)[0]["server"], "Echo");
    let out = run(&[
        "whatsat",
        "--server",
        &a.addr(),
        "--timeout",
        "5s",
        "k",
        "1",
        "1",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = run(&[
        "--timeout",
        "5s",
        "send",
        "--server",
        &b.addr(),
        "IAMAT k +1+2 3",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // --server given before and after adds up (for load).
    let out = run(&[
        "--server",
        &a.addr(),
        "load",
        "--server",
        &b.addr(),
        "-n",
        "100",
        "-c",
        "2",
        "--json",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(json_lines(&out)[0]["targets"].as_array().unwrap().len(), 2);
}

#[test]
fn a_question_mark_reply_says_why_as_far_as_the_grammar_tells() {
    // A well-formed WHATSAT answered `? `: the herd does not know the client.
    let addr = fixed_reply_server(b"? WHATSAT ghost 10 5\n");
    let out = run(&["--server", &addr, "whatsat", "ghost", "10", "5"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("the herd does not know client ghost"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("invalid request"),
        "{}",
        stderr(&out)
    );
    let out = run(&["--server", &addr, "--json", "whatsat", "ghost", "10", "5"]);
    let v = &json_lines(&out)[0];
    assert_eq!(v["reply"], "invalid");
    assert_eq!(v["error"], "the herd does not know client ghost");
    // A malformed line answered `? `: what the grammar finds wrong with it.
    let echo = EchoServer::start();
    let out = run(&[
        "--server",
        &echo.addr(),
        "--json",
        "send",
        "HELLO there",
        "WHATSAT k 99 1",
    ]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let v = json_lines(&out);
    assert_eq!(v[0]["error"], "the request is invalid (unknown command)");
    assert!(
        v[1]["error"]
            .as_str()
            .unwrap()
            .starts_with("the request is invalid ("),
        "{}",
        v[1]
    );
}
