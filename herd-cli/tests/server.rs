//! herd-cli against real `herd-server` processes on loopback (offline Places backend).
//!
//! The server binary is found next to this test's own executable (`<target>/<profile>/`,
//! see `common::server_bin`). Only when it cannot be had at all is a test skipped, with a
//! message.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

/// A herd-server process running every server of a temp config; killed on drop.
struct Herd {
    addrs: BTreeMap<String, String>,
    config: PathBuf,
    _proc: Killer,
    _dir: tempfile::TempDir,
}

impl Herd {
    /// Starts `names` with `links`, each on a free loopback port, and waits for every
    /// "listening" line; a start that fails (a port taken meanwhile) is retried on new ports.
    fn start(names: &[&str], links: &[(&str, &str)]) -> Option<Self> {
        let bin = server_bin()?;
        for _ in 0..5 {
            if let Some(herd) = Self::try_start(&bin, names, links) {
                return Some(herd);
            }
        }
        panic!("herd-server did not start in 5 attempts");
    }

    fn try_start(bin: &std::path::Path, names: &[&str], links: &[(&str, &str)]) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let addrs: BTreeMap<String, String> =
            names.iter().map(|n| (n.to_string(), free_addr())).collect();
        let servers: Vec<String> = names
            .iter()
            .map(|n| format!("\"{n}\": \"{}\"", addrs[*n]))
            .collect();
        let links: Vec<String> = links
            .iter()
            .map(|(a, b)| format!("[\"{a}\", \"{b}\"]"))
            .collect();
        let config = dir.path().join("herd.json");
        let text = format!(
            "{{\"servers\": {{{}}}, \"links\": [{}]}}",
            servers.join(", "),
            links.join(", ")
        );
        std::fs::write(&config, text).unwrap();
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .args(["--places", "offline", "--log-dir"])
            .arg(dir.path().join("logs"))
            .arg("--all")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start herd-server");
        let stderr = child.stderr.take().unwrap();
        let proc = Killer(Some(child));
        // Forward the server's stderr to the test's, and count its "listening" lines.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[herd-server] {line}");
                let _ = tx.send(line);
            }
        });
        let mut listening = 0;
        while listening < names.len() {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => listening += usize::from(line.contains(" listening on ")),
                // Closed stderr: the server exited (a port was taken); try again.
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("herd-server did not start in 30 s"),
            }
        }
        Some(Self {
            addrs,
            config,
            _proc: proc,
            _dir: dir,
        })
    }

    fn one(name: &str) -> Option<Self> {
        Self::start(&[name], &[])
    }

    fn addr(&self, name: &str) -> &str {
        &self.addrs[name]
    }

    fn config(&self) -> &str {
        self.config.to_str().unwrap()
    }
}

macro_rules! herd_or_skip {
    ($e:expr) => {
        match $e {
            Some(h) => h,
            None => return,
        }
    };
}

#[test]
fn iamat_then_whatsat_against_a_real_server() {
    let herd = herd_or_skip!(Herd::one("Goloman"));
    let time = "1520023934.918963997";
    let out = run(&[
        "--config",
        herd.config(),
        "--to",
        "Goloman",
        "iamat",
        "kiwi",
        "+34.068930-118.445127",
        "--time",
        time,
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let at = stdout(&out);
    let f: Vec<&str> = at.trim_end().split(' ').collect();
    assert_eq!(
        (f[0], f[1], f[3], f[4], f[5]),
        ("AT", "Goloman", "kiwi", "+34.068930-118.445127", time),
        "{at}"
    );
    // The whole reply's shape: the stored AT line, JSON, an empty line.
    let out = run(&["--config", herd.config(), "whatsat", "kiwi", "10", "3"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let reply = stdout(&out);
    assert!(reply.starts_with(&at), "{reply}");
    assert!(reply.ends_with("}\n\n"), "{reply:?}");
    let json = &reply[at.len()..reply.len() - 2];
    let places: serde_json::Value = serde_json::from_str(json).unwrap();
    assert!(places["results"].as_array().unwrap().len() <= 3);
    // The same through --json.
    let out = run(&[
        "--config",
        herd.config(),
        "--json",
        "whatsat",
        "kiwi",
        "10",
        "3",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = &json_lines(&out)[0];
    assert_eq!(v["reply"], "places");
    assert_eq!(v["line"], at.trim_end());
    assert_eq!(v["places"], places);
}

#[test]
fn whatsat_for_an_unknown_client_exits_1() {
    let herd = herd_or_skip!(Herd::one("Goloman"));
    let out = run(&[
        "--server",
        herd.addr("Goloman"),
        "whatsat",
        "nobody",
        "10",
        "5",
    ]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert_eq!(stdout(&out), "? WHATSAT nobody 10 5\n");
    // The server answers `? ` to a malformed line too; herd-cli knows this WHATSAT is
    // well-formed, so it says what the `? ` means here.
    let err = stderr(&out);
    assert!(
        err.contains("the herd does not know client nobody"),
        "{err}"
    );
    assert!(!err.contains("invalid"), "{err}");
    let out = run(&[
        "--server",
        herd.addr("Goloman"),
        "--json",
        "whatsat",
        "nobody",
        "10",
        "5",
    ]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let v = &json_lines(&out)[0];
    assert_eq!(v["reply"], "invalid");
    assert_eq!(v["error"], "the herd does not know client nobody");
    // An id over the server's default max_client_id_bytes (256) is refused as such: the
    // message gives both readings.
    let long = "x".repeat(300);
    let out = run(&[
        "--server",
        herd.addr("Goloman"),
        "whatsat",
        &long,
        "10",
        "5",
    ]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("max_client_id_bytes"),
        "{}",
        stderr(&out)
    );
    let out = run(&[
        "--server",
        herd.addr("Goloman"),
        "--json",
        "iamat",
        "k",
        "+1+2",
        "--time",
        "99999999999999999999",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(json_lines(&out)[0]["diff"]
        .as_str()
        .unwrap()
        .starts_with('-'));
}

#[test]
fn send_from_stdin_against_a_real_server() {
    let herd = herd_or_skip!(Herd::one("Goloman"));
    let input = b"IAMAT kiwi +34.068930-118.445127 1520023934.918963997\n\n\
                  IAMAT Clark +12-118\r\n   \nWHATSAT kiwi 1 1\nWHATSAT ghost 1 1";
    let out = run_with(
        &["--server", herd.addr("Goloman"), "send"],
        input,
        Duration::from_secs(60),
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    assert!(lines[0].starts_with("AT Goloman "), "{text}");
    assert_eq!(lines[1], "? IAMAT Clark +12-118\n");
    assert_eq!(
        lines[2], lines[0],
        "WHATSAT gives the stored AT line: {text}"
    );
    assert!(text.ends_with("}\n\n? WHATSAT ghost 1 1\n"), "{text:?}");
    assert!(
        stderr(&out).contains("`? ` to 2 of 4 requests (1 of them a WHATSAT for a client the herd does not know: ghost)"),
        "{}",
        stderr(&out)
    );
    // JSON mode: one object per reply, in order.
    let out = run_with(
        &["--server", herd.addr("Goloman"), "--json", "send"],
        input,
        Duration::from_secs(60),
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let kinds: Vec<String> = json_lines(&out)
        .iter()
        .map(|v| v["reply"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["at", "invalid", "places", "invalid"]);
}

#[test]
fn load_pipelined_and_classic_against_a_real_server() {
    let herd = herd_or_skip!(Herd::one("Goloman"));
    let a = herd.addr("Goloman");
    let out = run(&[
        "--server",
        a,
        "--json",
        "load",
        "--requests",
        "2000",
        "-c",
        "4",
        "-d",
        "8",
        "-k",
        "50",
        "--fresh",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = &json_lines(&out)[0];
    assert_eq!(v["ok"], 2000, "{v}");
    assert!(
        v["errors"].as_object().unwrap().values().all(|n| n == 0),
        "{v}"
    );
    let out = run(&[
        "--server",
        a,
        "--json",
        "load",
        "--mode",
        "classic",
        "--requests",
        "200",
        "-c",
        "4",
        "--whatsat-ratio",
        "0.3",
        "-k",
        "20",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = &json_lines(&out)[0];
    assert_eq!(v["ok"], 200, "{v}");
}

#[test]
fn load_with_a_rate_sends_no_faster_than_asked() {
    let herd = herd_or_skip!(Herd::one("Goloman"));
    let a = herd.addr("Goloman");
    // 200 requests/s for 1.5 s over 4 connections: at most 300 (plus one turn per
    // connection at the start). Unpaced, this server answers tens of thousands in that time.
    // The lower bound only checks that the run did send: a loaded machine may fall behind.
    for mode in ["pipelined", "classic"] {
        let out = run(&[
            "--server",
            a,
            "--json",
            "load",
            "--mode",
            mode,
            "--rate",
            "200",
            "--duration",
            "1500ms",
            "-c",
            "4",
            "-d",
            "4",
            "-k",
            "40",
            "--fresh",
        ]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let v = &json_lines(&out)[0];
        let ok = v["ok"].as_u64().unwrap();
        assert!((30..=304).contains(&ok), "{mode}: {v}");
        assert_eq!(v["rate_limit"], 200, "{v}");
        assert!(
            v["errors"].as_object().unwrap().values().all(|n| n == 0),
            "{v}"
        );
    }
    // A count at a rate: 60 requests at 100/s cannot end before the 60th is due (0.59 s).
    let out = run(&[
        "--server", a, "--json", "load", "--rate", "100", "-n", "60", "-c", "3", "-k", "30",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = &json_lines(&out)[0];
    assert_eq!(v["ok"], 60, "{v}");
    assert!(v["elapsed_s"].as_f64().unwrap() >= 0.55, "{v}");
    // A rate of 0 is refused.
    let out = run(&["--server", a, "load", "--rate", "0", "-n", "1"]);
    assert_eq!(code(&out), 64, "{}", stderr(&out));
    assert!(stderr(&out).contains("--rate"), "{}", stderr(&out));
}

#[test]
fn load_all_spreads_over_a_herd_and_floods() {
    let names = ["A", "B", "C"];
    let herd = herd_or_skip!(Herd::start(&names, &[("A", "B"), ("B", "C")]));
    let out = run(&[
        "--config",
        herd.config(),
        "--json",
        "load",
        "--all",
        "--duration",
        "1s",
        "-c",
        "6",
        "-d",
        "4",
        "--fresh",
        "-k",
        "60",
        "--whatsat-ratio",
        "0.1",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = &json_lines(&out)[0];
    assert_eq!(v["targets"], serde_json::json!(["A", "B", "C"]));
    assert!(v["ok"].as_u64().unwrap() > 0, "{v}");
    let out = run(&[
        "--config",
        herd.config(),
        "--to",
        "A,C",
        "--json",
        "load",
        "--requests",
        "500",
        "-c",
        "4",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = &json_lines(&out)[0];
    assert_eq!(v["targets"], serde_json::json!(["A", "C"]));
    assert_eq!(v["ok"], 500, "{v}");
    assert!(v["ok"].as_u64().unwrap() > 0, "{v}");
    assert!(
        v["errors"].as_object().unwrap().values().all(|n| n == 0),
        "{v}"
    );
}

#[test]
fn probe_measures_propagation_two_hops_away() {
    let herd = herd_or_skip!(Herd::start(&["A", "B", "C"], &[("A", "B"), ("B", "C")]));
    let out = run_with(
        &[
            "--config",
            herd.config(),
            "--json",
            "probe",
            "A",
            "C",
            "--repeat",
            "5",
            "--deadline",
            "20s",
        ],
        b"",
        Duration::from_secs(120),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = &json_lines(&out)[0];
    assert_eq!(v["rounds"], 5);
    assert_eq!(
        (v["from"].as_str(), v["to"].as_str()),
        (Some("A"), Some("C"))
    );
    let p = &v["propagation_us"];
    let (p50, max) = (p["p50"].as_f64().unwrap(), p["max"].as_f64().unwrap());
    assert!(p50 > 0.0 && p50 <= max, "{v}");
    assert!(v["includes"]
        .as_str()
        .unwrap()
        .contains("WHATSAT round trip"));
    // Text mode says what the figure includes.
    let out = run(&[
        "--config",
        herd.config(),
        "probe",
        "A",
        "B",
        "--repeat",
        "2",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("polling granularity"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_stopped_server_gives_exit_2() {
    let herd = herd_or_skip!(Herd::one("Goloman"));
    let addr = herd.addr("Goloman").to_string();
    drop(herd);
    let out = run(&["--server", &addr, "--timeout", "2s", "iamat", "k", "+1+2"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
}

#[test]
fn a_line_over_the_server_limit_ends_with_exit_2_after_the_earlier_replies() {
    let herd = herd_or_skip!(Herd::one("Goloman"));
    let long = format!("IAMAT {} +1+2 3", "x".repeat(70 * 1024));
    let out = run(&[
        "--server",
        herd.addr("Goloman"),
        "send",
        "IAMAT first +1+2 3",
        &long,
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stdout(&out).starts_with("AT Goloman "), "{}", stdout(&out));
    assert!(
        stdout(&out).ends_with(" first +1+2 3\n"),
        "{}",
        stdout(&out)
    );
    // The server closes with bytes of the long line unread, so the close may be a reset.
    let err = stderr(&out);
    assert!(
        err.contains("closed the connection") || err.contains("reset"),
        "{err}"
    );
}

#[test]
fn certs_then_tls_iamat_and_whatsat_against_a_real_server_match_plain() {
    let Some(bin) = server_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (plain, tls_addr) = (free_addr(), free_addr());
    let config = dir.path().join("herd.json");
    let tls_dir = dir.path().join("tls");
    // The certificates come from herd-cli itself, for the config's servers.
    std::fs::write(
        &config,
        format!(
            r#"{{"servers": {{"Goloman": {{"addr": "{plain}", "tls_listen": "{tls_addr}"}}}}}}"#
        ),
    )
    .unwrap();
    let made = run(&[
        "--config",
        config.to_str().unwrap(),
        "certs",
        "--out",
        tls_dir.to_str().unwrap(),
    ]);
    assert_eq!(code(&made), 0, "{}", stderr(&made));
    let t = tls_dir.display();
    std::fs::write(
        &config,
        format!(
            r#"{{"servers": {{"Goloman": {{"addr": "{plain}", "tls_listen": "{tls_addr}"}}}},
                "tls": {{"ca": "{t}/ca.pem", "cert": "{t}/{{name}}.pem", "key": "{t}/{{name}}.key"}}}}"#
        ),
    )
    .unwrap();
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .args(["--places", "offline", "--log-dir"])
        .arg(dir.path().join("logs"))
        .arg("--all")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start herd-server");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let up = lines.next().and_then(Result::ok).unwrap_or_default();
    let _proc = Killer(Some(child));
    assert!(
        up.contains(" listening on "),
        "herd-server did not start: {up}"
    );
    let cfg = config.to_str().unwrap();
    let ca = format!("{t}/ca.pem");
    let over_tls = run(&[
        "--config",
        cfg,
        "--tls",
        "--ca",
        &ca,
        "--to",
        "Goloman",
        "iamat",
        "kiwi",
        "+34.068930-118.445127",
        "--time",
        "1520023934.918963997",
    ]);
    assert_eq!(code(&over_tls), 0, "{}", stderr(&over_tls));
    assert!(
        stdout(&over_tls).starts_with("AT Goloman "),
        "{}",
        stdout(&over_tls)
    );
    let tls_whatsat = run(&[
        "--config", cfg, "--tls", "--ca", &ca, "--to", "Goloman", "whatsat", "kiwi", "10", "2",
    ]);
    let plain_whatsat = run(&[
        "--config", cfg, "--to", "Goloman", "whatsat", "kiwi", "10", "2",
    ]);
    assert_eq!(code(&tls_whatsat), 0, "{}", stderr(&tls_whatsat));
    assert_eq!(
        stdout(&tls_whatsat),
        stdout(&plain_whatsat),
        "TLS and plain replies differ"
    );
    // A CA the server's certificate does not chain to is a connection failure (2).
    let other = dir.path().join("other");
    let made = run(&["--config", cfg, "certs", "--out", other.to_str().unwrap()]);
    assert_eq!(code(&made), 0, "{}", stderr(&made));
    let wrong_ca = format!("{}/ca.pem", other.display());
    let refused = run(&[
        "--config", cfg, "--tls", "--ca", &wrong_ca, "--to", "Goloman", "whatsat", "kiwi", "10",
        "2",
    ]);
    assert_eq!(code(&refused), 2, "{}", stderr(&refused));
}

#[test]
fn nearby_a_client_and_a_point_against_a_real_server() {
    let herd = herd_or_skip!(Herd::one("Goloman"));
    let addr = herd.addr("Goloman");
    for (client, loc) in [
        ("kiwi.cs.ucla.edu", "+34.068930-118.445127"),
        ("boelter", "+34.069072-118.442781"),
    ] {
        assert_eq!(code(&run(&["--server", addr, "iamat", client, loc])), 0);
    }
    let out = run(&["--server", addr, "nearby", "kiwi.cs.ucla.edu", "1", "5"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(
        lines[0].starts_with("AT Goloman ") && lines[0].contains(" kiwi.cs.ucla.edu "),
        "{text}"
    );
    let doc: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(doc["results"][0]["client"], "boelter");
    assert_eq!((lines[2], lines.len()), ("", 4), "{text:?}");
    let out = run(&[
        "--server",
        addr,
        "--json",
        "nearby",
        "--point",
        "+34.069-118.4428",
        "0.5",
        "5",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = &json_lines(&out)[0];
    assert_eq!(v["reply"], "nearby");
    assert!(v.get("subject").is_none());
    assert_eq!(v["nearby"]["count"], 2);
    let out = run(&["--server", addr, "nearby", "nobody", "1", "5"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("this server does not hold client nobody"),
        "{}",
        stderr(&out)
    );
    for bad in [
        ["kiwi", "0", "5"],
        ["kiwi", "1", "1001"],
        ["kiwi", "51", "5"],
    ] {
        let mut args = vec!["--server", addr, "nearby"];
        args.extend(bad);
        assert_eq!(code(&run(&args)), 64, "{bad:?}");
    }
    let out = run(&["--server", addr, "nearby", "--point", "34-118", "1", "5"]);
    assert_eq!(code(&out), 64);
}

#[test]
fn load_nearby_mix_in_an_area_against_a_real_server() {
    let herd = herd_or_skip!(Herd::one("Goloman"));
    let a = herd.addr("Goloman");
    let out = run(&[
        "--server",
        a,
        "--json",
        "load",
        "-n",
        "1500",
        "-c",
        "3",
        "-d",
        "4",
        "-k",
        "2000",
        "--fresh",
        "--area",
        "4",
        "--nearby-ratio",
        "0.4",
        "--nearby-km",
        "1",
        "--nearby-count",
        "50",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = &json_lines(&out)[0];
    assert_eq!(v["ok"], 1500, "{v}");
    assert!(
        v["errors"].as_object().unwrap().values().all(|n| n == 0),
        "{v}"
    );
    let nearby = v["nearby"]["ok"].as_u64().unwrap();
    assert!((300..1000).contains(&nearby), "{v}");
    // The warm-up put 2000 clients in the 4 km square: a 1 km NEARBY at its centre finds 50.
    let out = run(&[
        "--server",
        a,
        "--json",
        "nearby",
        "--point",
        "+34.068930-118.445127",
        "1",
        "50",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(json_lines(&out)[0]["nearby"]["count"], 50);
}

#[test]
fn fence_reports_enter_and_exit_from_anywhere_in_the_herd() {
    let herd = herd_or_skip!(Herd::start(&["A", "B"], &[("A", "B")]));
    let mut child = cli()
        .args(["--server", herd.addr("A"), "--json", "fence"])
        .args(["ucla", "+34.068930-118.445127", "1", "--count", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start herd-cli fence");
    let stdout = child.stdout.take().unwrap();
    let guard = Killer(Some(child));
    let mut lines = BufReader::new(stdout).lines();
    let ack: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(ack["reply"], "fenced", "{ack}");
    // A client inside the circle at B (another server), then far away.
    let inside = run(&[
        "--server",
        herd.addr("B"),
        "iamat",
        "kiwi",
        "+34.0690-118.4450",
    ]);
    assert_eq!(code(&inside), 0, "{}", stderr(&inside));
    let outside = run(&["--server", herd.addr("B"), "iamat", "kiwi", "+35.0-118.0"]);
    assert_eq!(code(&outside), 0, "{}", stderr(&outside));
    let events: Vec<serde_json::Value> = lines
        .take(2)
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let out = guard.wait(Duration::from_secs(30));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(events.len(), 2, "{events:?}");
    for (e, (kind, loc)) in events
        .iter()
        .zip([("enter", "+34.0690-118.4450"), ("exit", "+35.0-118.0")])
    {
        assert_eq!(e["kind"], kind, "{e}");
        assert_eq!(e["fence"], "ucla");
        assert_eq!(e["client"], "kiwi");
        assert_eq!(e["server"], "B");
        assert_eq!(e["location"], loc);
    }
}

#[test]
fn load_with_fences_matches_events_to_their_iamats() {
    let herd = herd_or_skip!(Herd::one("Goloman"));
    let a = herd.addr("Goloman");
    // 40 fences of 300 m in a 2 km square, 200 clients moving at random in it: many
    // crossings, each matched to the IAMAT whose AT reply it follows.
    let out = run(&[
        "--server",
        a,
        "--json",
        "load",
        "-n",
        "3000",
        "-c",
        "4",
        "-d",
        "4",
        "-k",
        "200",
        "--fresh",
        "--area",
        "2",
        "--fences",
        "40",
        "--fences-per-conn",
        "16",
        "--fence-km",
        "0.3",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = &json_lines(&out)[0];
    let f = &v["fences"];
    assert_eq!(
        (f["open"].as_u64(), f["connections"].as_u64()),
        (Some(40), Some(3)),
        "{v}"
    );
    assert_eq!(f["lost_connections"], 0, "{v}");
    let events = f["events"].as_u64().unwrap();
    assert!(events > 100, "{v}");
    assert_eq!(f["matched"].as_u64(), Some(events), "{v}");
    assert_eq!(f["foreign"], 0, "{v}");
    assert!(f["latency_us"]["p99"].as_f64().unwrap() > 0.0, "{v}");
}
