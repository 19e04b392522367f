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
