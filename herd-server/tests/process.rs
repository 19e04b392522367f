//! Real `herd-server` processes: kills, restarts, reconciliation, signals, config errors, logs.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{free_addr, HERD, LINKS};

const BIN: &str = env!("CARGO_BIN_EXE_herd-server");

/// A herd config on free ports, each server with a stats port.
struct Layout {
    dir: tempfile::TempDir,
    addrs: HashMap<String, SocketAddr>,
    stats: HashMap<String, SocketAddr>,
}

impl Layout {
    fn new(names: &[&str], links: &[(&str, &str)], extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut addrs = HashMap::new();
        let mut stats = HashMap::new();
        let mut servers = Vec::new();
        for n in names {
            let (a, s) = (free_addr(), free_addr());
            servers.push(format!(
                "\"{n}\": {{\"addr\": \"{a}\", \"stats\": \"{s}\"}}"
            ));
            addrs.insert(n.to_string(), a);
            stats.insert(n.to_string(), s);
        }
        let links: Vec<String> = links
            .iter()
            .map(|(a, b)| format!("[\"{a}\", \"{b}\"]"))
            .collect();
        let mut extra = if extra.is_empty() {
            String::new()
        } else {
            format!(", {extra}")
        };
        if !extra.contains("\"secret\"") {
            extra.push_str(&format!(", \"secret\": \"{}\"", common::unique_secret()));
        }
        let json = format!(
            "{{\"servers\": {{{}}}, \"links\": [{}]{extra}}}",
            servers.join(", "),
            links.join(", ")
        );
        std::fs::write(dir.path().join("herd.json"), json).unwrap();
        Self { dir, addrs, stats }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("herd.json")
    }

    fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    fn spawn(&self, name: &str, env: &[(&str, &str)]) -> Server {
        let err = std::fs::File::create(self.dir.path().join(format!("{name}.stderr"))).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(self.config())
            .arg("--log-dir")
            .arg(self.logs())
            .arg("--places")
            .arg("offline")
            .arg(name);
        cmd.env_remove("HERD_SECRET")
            .env_remove("PLACES_API_KEY")
            .env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        let mut server = Server {
            child,
            name: name.to_owned(),
        };
        let start = Instant::now();
        while TcpStream::connect_timeout(&self.addrs[name], Duration::from_millis(200)).is_err() {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("{name} exited at start ({status}): {}", self.stderr(name));
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{name} never listened"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    fn stats(&self, name: &str) -> Option<serde_json::Value> {
        let mut s = TcpStream::connect_timeout(&self.stats[name], Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Whether every server of `names` answers its stats with `records` records and all
    /// with the same store digest.
    fn all_hold(&self, names: &[&str], records: u64) -> bool {
        let all: Vec<_> = names.iter().map(|n| self.stats(n)).collect();
        let digests: HashSet<String> = all
            .iter()
            .map(|s| {
                s.as_ref()
                    .map(|v| v["digest"].to_string())
                    .unwrap_or_default()
            })
            .collect();
        digests.len() == 1
            && all
                .iter()
                .all(|s| s.as_ref().and_then(|v| v["records"].as_u64()) == Some(records))
    }

    fn records(&self, name: &str) -> Option<u64> {
        self.stats(name).and_then(|s| s["records"].as_u64())
    }

    fn links_up(&self, name: &str) -> usize {
        self.stats(name)
            .and_then(|s| s["links_up"].as_array().map(Vec::len))
            .unwrap_or(0)
    }

    fn stderr(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.stderr"))).unwrap_or_default()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs().join(format!("{name}.log"))).unwrap_or_default()
    }
}

/// A server process, killed when dropped.
struct Server {
    child: Child,
    name: String,
}

impl Server {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{sig} {}", self.name);
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
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
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

fn exchange(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(data).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

fn degree(name: &str) -> usize {
    LINKS
        .iter()
        .filter(|(a, b)| *a == name || *b == name)
        .count()
}

fn start_herd(layout: &Layout) -> HashMap<String, Server> {
    let servers: HashMap<String, Server> = HERD
        .iter()
        .map(|n| (n.to_string(), layout.spawn(n, &[])))
        .collect();
    wait_all_linked(layout, &HERD);
    servers
}

fn wait_all_linked(layout: &Layout, names: &[&str]) {
    let ok = poll(Duration::from_secs(15), || {
        names.iter().all(|n| layout.links_up(n) == degree(n))
    });
    assert!(ok, "links did not all come up");
}

/// The survivors reachable from `from` when `down` are down.
fn component(from: &str, down: &[&str]) -> HashSet<String> {
    let mut seen = HashSet::from([from.to_owned()]);
    let mut todo = VecDeque::from([from.to_owned()]);
    while let Some(n) = todo.pop_front() {
        for (a, b) in LINKS {
            let other = if a == n {
                b
            } else if b == n {
                a
            } else {
                continue;
            };
            if !down.contains(&other) && seen.insert(other.to_owned()) {
                todo.push_back(other.to_owned());
            }
        }
    }
    seen
}

#[test]
fn any_two_servers_down_updates_reach_exactly_the_connected_survivors_and_restarts_reconcile() {
    let layout = Layout::new(&HERD, &LINKS, "");
    let mut servers = start_herd(&layout);
    let mut total = 0u64;
    let mut client = 0u32;
    for (i, first) in HERD.iter().enumerate() {
        for second in &HERD[i + 1..] {
            let down = [*first, *second];
            for d in down {
                servers.get_mut(d).unwrap().kill();
            }
            let survivors: Vec<&str> = HERD.iter().copied().filter(|n| !down.contains(n)).collect();
            for s in &survivors {
                client += 1;
                let at = exchange(
                    layout.addrs[*s],
                    format!("IAMAT c{client} +1+1 {client}\n").as_bytes(),
                );
                assert!(at.starts_with(format!("AT {s} ").as_bytes()));
            }
            let want: HashMap<&str, u64> = survivors
                .iter()
                .map(|s| (*s, total + component(s, &down).len() as u64))
                .collect();
            let reached = poll(Duration::from_secs(5), || {
                survivors.iter().all(|s| layout.records(s) == Some(want[s]))
            });
            let got: Vec<_> = survivors.iter().map(|s| (s, layout.records(s))).collect();
            assert!(reached, "down {down:?}: want {want:?}, got {got:?}");
            std::thread::sleep(Duration::from_millis(300));
            for s in &survivors {
                assert_eq!(
                    layout.records(s),
                    Some(want[s]),
                    "down {down:?}: {s} got an update it cannot reach"
                );
            }
            total += survivors.len() as u64;
            for d in down {
                servers.insert(d.to_owned(), layout.spawn(d, &[]));
            }
            let restarted = Instant::now();
            let converged = poll(Duration::from_secs(10), || layout.all_hold(&HERD, total));
            let took = restarted.elapsed();
            assert!(converged, "down {down:?}: no convergence after restart");
            assert!(
                took < Duration::from_secs(2),
                "down {down:?}: reconciliation took {took:?}"
            );
            wait_all_linked(&layout, &HERD);
        }
    }
}

#[test]
fn a_server_killed_mid_flood_and_restarted_converges_with_the_rest() {
    let layout = Layout::new(&HERD, &LINKS, "");
    let mut servers = start_herd(&layout);
    let flood = |addr: SocketAddr, tag: u32| {
        std::thread::spawn(move || {
            for round in 0..10u32 {
                let mut input = Vec::new();
                for i in 0..1000u32 {
                    input.extend_from_slice(
                        format!("IAMAT f{} +1+1 {}.{tag}\n", i % 500, round * 1000 + i).as_bytes(),
                    );
                }
                let out = exchange(addr, &input);
                assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1000);
            }
        })
    };
    let a = flood(layout.addrs["Goloman"], 1);
    let b = flood(layout.addrs["Welsh"], 2);
    std::thread::sleep(Duration::from_millis(100));
    servers.get_mut("Holiday").unwrap().kill();
    std::thread::sleep(Duration::from_millis(200));
    servers.insert("Holiday".to_owned(), layout.spawn("Holiday", &[]));
    a.join().unwrap();
    b.join().unwrap();
    let converged = poll(Duration::from_secs(15), || layout.all_hold(&HERD, 500));
    let all: Vec<_> = HERD
        .iter()
        .map(|n| {
            (
                n,
                layout
                    .stats(n)
                    .map(|v| (v["records"].clone(), v["digest"].clone())),
            )
        })
        .collect();
    assert!(converged, "stores differ: {all:?}");
}

#[test]
fn sigterm_exits_zero_within_the_grace_period_and_the_log_tells_the_story() {
    let layout = Layout::new(&["A"], &[], "\"limits\": {\"shutdown_grace_ms\": 2000}");
    let mut a = layout.spawn("A", &[]);
    let addr = layout.addrs["A"];
    let reply = exchange(addr, b"IAMAT kiwi +1+1 1\nWHATSAT kiwi 10 1\n");
    assert!(reply.starts_with(b"AT A "));
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.write_all(b"IAMAT half").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let sent = Instant::now();
    a.signal("TERM");
    let status = a
        .wait_timeout(Duration::from_secs(3))
        .expect("exits within the grace period");
    assert!(status.success(), "{status:?}");
    assert!(sent.elapsed() < Duration::from_secs(3));
    let err = layout.stderr("A");
    assert!(
        err.contains(&format!("A listening on {addr}")) && err.contains("places backend offline"),
        "{err}"
    );
    let log = layout.log("A");
    for want in [
        "server started",
        "client message",
        "IAMAT kiwi +1+1 1",
        "reply=\"AT A ",
        "client reply",
        "SIGTERM received",
        "shutting down",
        "counters",
    ] {
        assert!(log.contains(want), "log lacks {want:?}:\n{log}");
    }
    let first = log.lines().next().unwrap();
    assert!(
        first.starts_with("20") && first.contains("Z "),
        "timestamped: {first}"
    );
}

#[test]
fn sigusr1_logs_the_counters() {
    let layout = Layout::new(&["A"], &[], "");
    let a = layout.spawn("A", &[]);
    exchange(layout.addrs["A"], b"IAMAT x +1+1 1\n");
    a.signal("USR1");
    assert!(poll(Duration::from_secs(5), || layout
        .log("A")
        .contains("\"iamats\":1")));
}

#[test]
fn a_peer_with_a_wrong_secret_is_refused_and_logged() {
    let layout = Layout::new(&["A", "B"], &[("A", "B")], "\"secret\": \"from-file\"");
    let _a = layout.spawn("A", &[]);
    let _b = layout.spawn("B", &[("HERD_SECRET", "other")]);
    let logged = poll(Duration::from_secs(10), || {
        layout.log("A").contains("peer handshake refused")
            && layout.log("B").contains("peer handshake refused")
    });
    assert!(logged, "A:\n{}\nB:\n{}", layout.log("A"), layout.log("B"));
    assert_eq!(layout.links_up("A"), 0);
    assert_eq!(layout.links_up("B"), 0);
    assert!(
        !layout.log("A").contains("from-file") && !layout.log("B").contains("other"),
        "secrets never logged"
    );
}

#[test]
fn the_secret_from_the_environment_links_peers() {
    let layout = Layout::new(&["A", "B"], &[("A", "B")], "");
    let same = common::unique_secret();
    let _a = layout.spawn("A", &[("HERD_SECRET", &same)]);
    let _b = layout.spawn("B", &[("HERD_SECRET", &same)]);
    assert!(poll(Duration::from_secs(10), || layout.links_up("A") == 1
        && layout.links_up("B") == 1));
}

fn run_fail(args: &[&str], dir: &Path) -> (ExitStatus, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("PLACES_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status, err);
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("{args:?} did not exit at once");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn bad_command_lines_and_configs_exit_non_zero_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("bad-link.json"),
        r#"{"servers": {"A": "127.0.0.1:1"}, "links": [["A", "Z"]]}"#,
    )
    .unwrap();
    std::fs::write(
        p.join("unknown-key.json"),
        r#"{"servers": {"A": "127.0.0.1:1"}, "colour": 1}"#,
    )
    .unwrap();
    std::fs::write(p.join("not-json.json"), "{").unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    std::fs::write(
        p.join("busy.json"),
        format!(r#"{{"servers": {{"A": "127.0.0.1:{port}"}}}}"#),
    )
    .unwrap();
    let cases: [(&[&str], &str); 8] = [
        (&["Nobody"], "unknown server"),
        (&["--config", "bad-link.json", "A"], "not in \"servers\""),
        (&["--config", "unknown-key.json", "A"], "unknown field"),
        (&["--config", "not-json.json", "A"], "invalid config"),
        (&["--config", "missing.json", "A"], "cannot read config"),
        (&["--config", "busy.json", "A"], "cannot listen"),
        (&["--places", "bogus", "Goloman"], "bogus"),
        (&["Goloman", "Goloman"], "twice"),
    ];
    for (args, want) in cases {
        let (status, err) = run_fail(args, p);
        assert!(!status.success(), "{args:?} must fail");
        assert!(err.contains(want), "{args:?}: {err:?}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: one line: {err:?}"
        );
    }
}

#[test]
fn with_a_journal_every_acknowledged_update_survives_sigkill_of_an_isolated_server() {
    // A is cut off from the herd (B not running): what it acknowledges exists only at A.
    let data = tempfile::tempdir().unwrap();
    let extra = format!("\"data_dir\": \"{}\"", data.path().display());
    let layout = Layout::new(&["A", "B"], &[("A", "B")], &extra);
    let mut a = layout.spawn("A", &[]);
    let mut s = TcpStream::connect(layout.addrs["A"]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for chunk in 0..40u32 {
            let mut input = Vec::new();
            for i in 0..500u32 {
                input.extend_from_slice(format!("IAMAT j{chunk}x{i} +1+1 5\n").as_bytes());
            }
            if w.write_all(&input).is_err() {
                break;
            }
        }
    });
    // Kill A with SIGKILL in the middle of the stream, once 5000 replies have arrived.
    let mut acked = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    while acked < 5000 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "A closed early");
        acked += buf[..n].iter().filter(|&&b| b == b'\n').count();
    }
    a.kill();
    // Replies already in the socket buffer were acknowledged too.
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        acked += buf[..n].iter().filter(|&&b| b == b'\n').count();
    }
    let _ = writer.join();
    assert!(
        acked < 20_000,
        "the kill came mid-stream ({acked} acknowledged)"
    );

    let _a = layout.spawn("A", &[]);
    let restored = layout.records("A").unwrap_or(0);
    assert!(
        restored >= acked as u64,
        "{acked} acknowledged, {restored} restored"
    );
    assert!(layout.log("A").contains("journal restored"));
    // The neighbour, started only now, gets them all from A.
    let _b = layout.spawn("B", &[]);
    assert!(
        poll(Duration::from_secs(20), || layout.records("B")
            == Some(restored)),
        "B holds {:?} of {restored}",
        layout.records("B")
    );
}

#[test]
fn without_a_journal_an_isolated_server_killed_loses_what_it_acknowledged() {
    // The control for the test above: the same kill with no data_dir loses the updates.
    let layout = Layout::new(&["A", "B"], &[("A", "B")], "");
    let mut a = layout.spawn("A", &[]);
    let mut input = Vec::new();
    for i in 0..100u32 {
        input.extend_from_slice(format!("IAMAT k{i} +1+1 5\n").as_bytes());
    }
    let out = exchange(layout.addrs["A"], &input);
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 100);
    a.kill();
    let _a = layout.spawn("A", &[]);
    assert_eq!(layout.records("A"), Some(0));
}

#[test]
fn an_unusable_data_dir_stops_the_start_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let port = free_addr();
    std::fs::write(
        dir.path().join("c.json"),
        format!(r#"{{"servers": {{"A": "{port}"}}}}"#),
    )
    .unwrap();
    let data = file.display().to_string();
    let (status, err) = run_fail(
        &[
            "--config",
            "c.json",
            "--data-dir",
            &data,
            "--places",
            "offline",
            "A",
        ],
        dir.path(),
    );
    assert!(!status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("journal") && err.contains("plain-file"),
        "{err}"
    );
}

/// Threads of process `pid` whose name is `name` (from /proc).
fn threads_named(pid: u32, name: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

#[test]
fn workers_sets_the_runtime_threads_and_a_one_worker_server_floods_like_any_other() {
    let layout = Layout::new(&["A", "B"], &[("A", "B")], "");
    let a = layout.spawn("A", &[("HERD_WORKERS", "1")]);
    let b = layout.spawn("B", &[("HERD_WORKERS", "3")]);
    assert_eq!(threads_named(a.child.id(), "tokio-rt-worker"), 1);
    assert_eq!(threads_named(b.child.id(), "tokio-rt-worker"), 3);
    assert!(poll(Duration::from_secs(10), || layout.links_up("A") == 1
        && layout.links_up("B") == 1));
    let reply = exchange(
        layout.addrs["A"],
        b"IAMAT one-worker +34.068930-118.445127 1621464827.959498503\n",
    );
    assert!(
        reply.starts_with(b"AT A "),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert!(poll(Duration::from_secs(10), || layout.records("B") == Some(1)));

    let dir = tempfile::tempdir().unwrap();
    for bad in ["0", "1025", "many", "-1"] {
        let arg = format!("--workers={bad}");
        let (status, err) = run_fail(&[&arg, "Goloman"], dir.path());
        assert!(!status.success(), "--workers {bad} must fail");
        assert!(
            err.contains("worker threads from 1 to 1024"),
            "{bad}: {err:?}"
        );
    }
}
