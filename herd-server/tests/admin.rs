//! The admin HTTP listener of real `herd-server` processes: health, metrics, stats, the
//! herd view, tokens, limits.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_addr, HERD, LINKS};

const BIN: &str = env!("CARGO_BIN_EXE_herd-server");

/// A config on free loopback ports with an admin address per server.
struct Layout {
    dir: tempfile::TempDir,
    addrs: HashMap<String, SocketAddr>,
    admin: HashMap<String, SocketAddr>,
}

impl Layout {
    fn new(names: &[&str], links: &[(&str, &str)], extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (mut addrs, mut admin, mut servers) = (HashMap::new(), HashMap::new(), Vec::new());
        for n in names {
            let (a, m) = (free_addr(), free_addr());
            servers.push(format!(
                "\"{n}\": {{\"addr\": \"{a}\", \"admin\": \"{m}\"}}"
            ));
            addrs.insert(n.to_string(), a);
            admin.insert(n.to_string(), m);
        }
        let links: Vec<String> = links
            .iter()
            .map(|(a, b)| format!("[\"{a}\", \"{b}\"]"))
            .collect();
        let json = format!(
            "{{\"servers\": {{{}}}, \"links\": [{}], \"secret\": \"{}\"{extra}}}",
            servers.join(", "),
            links.join(", "),
            common::unique_secret()
        );
        std::fs::write(dir.path().join("herd.json"), json).unwrap();
        Self { dir, addrs, admin }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("herd.json")
    }

    /// Starts `names` (or `--all`) in one process and waits until every client port listens.
    fn spawn(&self, names: &[&str], env: &[(&str, &str)]) -> Proc {
        let err = self.dir.path().join("stderr");
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(self.config())
            .arg("--log-dir")
            .arg(self.dir.path().join("logs"))
            .arg("--places")
            .arg("offline");
        if names.is_empty() {
            cmd.arg("--all");
        } else {
            cmd.args(names);
        }
        cmd.env_remove("HERD_SECRET")
            .env_remove("HERD_ADMIN_TOKEN")
            .env_remove("PLACES_API_KEY");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let mut p = Proc { child };
        let wanted: Vec<&String> = if names.is_empty() {
            self.addrs.keys().collect()
        } else {
            names
                .iter()
                .map(|n| self.addrs.keys().find(|k| k == n).unwrap())
                .collect()
        };
        let start = Instant::now();
        for n in wanted {
            while TcpStream::connect_timeout(&self.admin[n], Duration::from_millis(200)).is_err() {
                if let Some(status) = p.child.try_wait().unwrap() {
                    panic!(
                        "exited at start ({status}): {}",
                        std::fs::read_to_string(&err).unwrap_or_default()
                    );
                }
                assert!(
                    start.elapsed() < Duration::from_secs(15),
                    "{n}'s admin never listened"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        p
    }
}

struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 exchange: (status, headers in lower case, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, HashMap<String, String>, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = http(addr, "GET", path, &[]);
    (status, body)
}

fn json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = get(addr, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

fn send(addr: SocketAddr, lines: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(lines.as_bytes()).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The value of the sample `series` (name with its labels, as written) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Checks the exposition's shape: every sample belongs to a declared family, names are
/// valid, families are declared once, the text ends with `# EOF`.
fn check_exposition(text: &str) {
    assert!(text.ends_with("# EOF\n"), "no EOF marker");
    let mut families = HashSet::new();
    let valid = |n: &str| {
        n.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            assert!(valid(name), "{line}");
            assert!(families.insert(name.to_owned()), "{name} declared twice");
        } else if line.starts_with('#') {
            continue;
        } else {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(valid(name), "{line}");
            let family = families.iter().any(|f| {
                name == f
                    || name.strip_prefix(f.as_str()).is_some_and(|s| {
                        ["_total", "_bucket", "_sum", "_count", "_created", "_info"].contains(&s)
                    })
            });
            assert!(family, "sample {line} outside a declared family");
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}

#[test]
fn a_herd_serves_health_metrics_stats_and_its_view() {
    let layout = Layout::new(&HERD, &LINKS, "");
    let _p = layout.spawn(&[], &[]);
    let admin = |n: &str| layout.admin[n];
    assert_eq!(get(admin("Goloman"), "/livez"), (200, "ok\n".to_owned()));
    assert!(
        eventually(Duration::from_secs(15), || HERD.iter().all(|n| get(
            admin(n),
            "/readyz"
        )
        .0 == 200)),
        "every server becomes ready once it has reconciled with a neighbour"
    );
    let replies = send(
        layout.addrs["Goloman"],
        "IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997\n\
         IAMAT apple +51.5-000.12 1520023935.0\n\
         IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023930.0\n\
         nonsense\n\
         WHATSAT kiwi.cs.ucla.edu 10 5\n",
    );
    assert!(replies.starts_with("AT Goloman"), "{replies}");
    assert!(eventually(Duration::from_secs(10), || HERD
        .iter()
        .all(|n| json(admin(n), "/stats")["records"] == 2)));

    let (status, headers, text) = http(admin("Goloman"), "GET", "/metrics", &[]);
    assert_eq!(status, 200);
    assert!(
        headers["content-type"].starts_with("application/openmetrics-text"),
        "{headers:?}"
    );
    check_exposition(&text);
    let at = |s: &str| sample(&text, s).unwrap_or_else(|| panic!("no {s} in\n{text}"));
    assert_eq!(
        at(r#"herd_client_messages_total{command="IAMAT",outcome="stored"}"#),
        2.0
    );
    assert_eq!(
        at(r#"herd_client_messages_total{command="IAMAT",outcome="stale"}"#),
        1.0
    );
    assert_eq!(
        at(r#"herd_client_messages_total{command="invalid",outcome="invalid"}"#),
        1.0
    );
    assert_eq!(
        at(r#"herd_client_messages_total{command="WHATSAT",outcome="local"}"#),
        1.0
    );
    assert_eq!(
        at(r#"herd_places_requests_total{backend="offline",outcome="ok"}"#),
        1.0
    );
    assert_eq!(
        at(r#"herd_places_request_duration_seconds_count{backend="offline",outcome="ok"}"#),
        1.0
    );
    assert_eq!(at("herd_records"), 2.0);
    assert!(at("herd_store_line_bytes") > 60.0);
    for peer in ["Hands", "Holiday", "Wilkes"] {
        assert_eq!(at(&format!(r#"herd_link_up{{peer="{peer}"}}"#)), 1.0);
        assert_eq!(
            at(&format!(r#"herd_link_state{{peer="{peer}",state="up"}}"#)),
            1.0
        );
        assert!(
            at(&format!(
                r#"herd_peer_messages_sent_total{{peer="{peer}"}}"#
            )) >= 2.0
        );
        assert!(
            at(&format!(
                r#"herd_peer_messages_received_total{{peer="{peer}"}}"#
            )) >= 1.0
        );
    }
    assert!(at("herd_reconciliations_total") >= 3.0);
    assert_eq!(at("herd_ready"), 1.0);
    assert!(text.contains("herd_build_info{version=\""), "{text}");
    assert!(!text.contains("kiwi"), "no metric has a per-client label");
    // A neighbour's records came by flooding: its updates are counted.
    let hands = get(admin("Hands"), "/metrics").1;
    assert!(sample(&hands, "herd_updates_received_total").unwrap() >= 2.0);

    let status = json(admin("Goloman"), "/status");
    assert_eq!(status["server"], "Goloman");
    assert_eq!(status["ready"], true);
    assert_eq!(status["clients"]["total"], 2);
    assert_eq!(status["clients"]["shown"].as_array().unwrap().len(), 2);
    assert_eq!(status["links"].as_array().unwrap().len(), 3);
    assert!(status["links"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["state"] == "up"));

    let herd = json(admin("Welsh"), "/herd");
    assert_eq!(herd["self"], "Welsh");
    let servers = herd["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 5);
    assert!(
        servers
            .iter()
            .all(|s| s["reachable"] == true && s["status"]["stats"]["records"] == 2),
        "{herd}"
    );
    assert_eq!(herd["links"].as_array().unwrap().len(), 6);

    let map = json(admin("Welsh"), "/map");
    assert!(map["places"].as_array().unwrap().len() > 1000);
    let (status, page) = get(admin("Welsh"), "/");
    assert_eq!(status, 200);
    assert!(page.contains("<html"), "{page}");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "the page loads nothing from elsewhere"
    );

    assert_eq!(get(admin("Welsh"), "/nope").0, 404);
    let (status, headers, _) = http(admin("Welsh"), "GET", "/reload", &[]);
    assert_eq!(
        (status, headers.get("allow").map(String::as_str)),
        (405, Some("POST"))
    );
    assert_eq!(http(admin("Welsh"), "POST", "/metrics", &[]).0, 405);
}

#[test]
fn readiness_waits_for_a_reconciliation_and_a_lone_server_is_ready() {
    let layout = Layout::new(&["A", "B", "C"], &[("A", "B")], "");
    // C has no neighbours: ready at once. A's neighbour B is not running: not ready.
    let _p = layout.spawn(&["A", "C"], &[]);
    assert_eq!(
        get(layout.admin["C"], "/readyz"),
        (200, "ready\n".to_owned())
    );
    let (status, reason) = get(layout.admin["A"], "/readyz");
    assert_eq!(status, 503);
    assert!(
        reason.starts_with("not ready: ") && reason.ends_with('\n') && reason.lines().count() == 1,
        "{reason}"
    );
    assert_eq!(
        get(layout.admin["A"], "/livez").0,
        200,
        "alive while not ready"
    );
    let herd = json(layout.admin["A"], "/herd");
    let b = herd["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "B")
        .unwrap()
        .clone();
    assert_eq!(
        (b["reachable"].clone(), b["status"].clone()),
        (false.into(), serde_json::Value::Null)
    );
    let _b = layout.spawn(&["B"], &[]);
    assert!(eventually(Duration::from_secs(15), || get(
        layout.admin["A"],
        "/readyz"
    )
    .0 == 200));
}

#[test]
fn a_token_guards_everything_but_health() {
    let layout = Layout::new(&["A"], &[], ", \"admin_token\": \"s3cret tok\"");
    let _p = layout.spawn(&["A"], &[]);
    let a = layout.admin["A"];
    assert_eq!(get(a, "/livez").0, 200);
    assert_eq!(get(a, "/readyz").0, 200);
    for path in ["/metrics", "/stats", "/", "/status", "/herd", "/map"] {
        let (status, headers, _) = http(a, "GET", path, &[]);
        assert_eq!(status, 401, "{path}");
        assert_eq!(headers["www-authenticate"], "Bearer");
        assert_eq!(
            http(a, "GET", path, &[("Authorization", "Bearer wrong")]).0,
            401
        );
        assert_eq!(
            http(a, "GET", path, &[("Authorization", "Bearer s3cret tok")]).0,
            200,
            "{path}"
        );
    }
    assert_eq!(get(a, "/stats?token=s3cret%20tok").0, 200);
    assert_eq!(get(a, "/stats?token=s3cret").0, 401);
    assert_eq!(http(a, "POST", "/reload", &[]).0, 401);
}

#[test]
fn an_admin_address_beyond_loopback_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herd.json");
    let addr = free_addr();
    std::fs::write(
        &path,
        format!(r#"{{"servers": {{"A": {{"addr": "{addr}", "admin": "0.0.0.0:0"}}}}}}"#),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--config", path.to_str().unwrap(), "--log-dir"])
        .arg(dir.path().join("logs"))
        .arg("A")
        .env_remove("HERD_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin_token") && err.contains("HERD_ADMIN_TOKEN"),
        "{err}"
    );
}

#[test]
fn admin_connections_and_header_time_are_bounded() {
    let layout = Layout::new(
        &["A"],
        &[],
        ", \"limits\": {\"admin_max_connections\": 2, \"admin_header_timeout_ms\": 300}",
    );
    let _p = layout.spawn(&["A"], &[]);
    let a = layout.admin["A"];
    // The readiness poll of `spawn` has closed its connections; wait until they are gone.
    std::thread::sleep(Duration::from_millis(100));
    let idle: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(a).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut third = TcpStream::connect(a).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    let _ = third.write_all(b"GET /livez HTTP/1.1\r\nHost: a\r\n\r\n");
    let n = third.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "a connection over the limit is closed at once");
    // An idle connection is closed once the header timeout passes, freeing its slot.
    let start = Instant::now();
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "idle connections were closed by the header timeout"
    );
    assert!(eventually(Duration::from_secs(5), || {
        TcpStream::connect(a)
            .ok()
            .map(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2))).ok();
                s.write_all(b"GET /livez HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                    .is_ok()
                    && {
                        let mut out = String::new();
                        s.read_to_string(&mut out).is_ok() && out.starts_with("HTTP/1.1 200")
                    }
            })
            .unwrap_or(false)
    }));
}

#[test]
fn post_reload_applies_the_config_file_or_refuses_it_whole() {
    let layout = Layout::new(&["A", "B"], &[], "");
    let _p = layout.spawn(&[], &[]);
    let a = layout.admin["A"];
    let text = std::fs::read_to_string(layout.config()).unwrap();
    let linked = text.replace("\"links\": []", "\"links\": [[\"A\", \"B\"]]");
    assert_ne!(text, linked);
    std::fs::write(layout.config(), &linked).unwrap();
    let (status, _, body) = http(a, "POST", "/reload", &[]);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("reloaded: ") && body.contains("+link B"),
        "{body}"
    );
    assert!(
        eventually(Duration::from_secs(10), || json(a, "/stats")["links_up"]
            == serde_json::json!(["B"])),
        "the new link comes up"
    );
    let herd = json(layout.admin["B"], "/herd");
    assert_eq!(
        herd["links"],
        serde_json::json!([["A", "B"]]),
        "the admin view follows the reload"
    );
    std::fs::write(layout.config(), "{ not json").unwrap();
    let (status, _, body) = http(a, "POST", "/reload", &[]);
    assert_eq!(status, 422, "{body}");
    assert!(
        body.starts_with("reload refused, the running config stays: "),
        "{body}"
    );
    assert_eq!(
        json(a, "/stats")["links_up"],
        serde_json::json!(["B"]),
        "nothing changed"
    );
}
