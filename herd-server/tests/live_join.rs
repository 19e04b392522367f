//! A server joins a running herd without restarts (real `herd-server` processes): the herd
//! under load, a config with a sixth server linked to two of it, SIGHUP, the sixth started on
//! its own, every server ending with every record; then the sixth removed again. And a bad
//! config on SIGHUP: the herd runs on as before, one log line says why.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_addr, HERD, LINKS};

const BIN: &str = env!("CARGO_BIN_EXE_herd-server");

/// Servers on free loopback addresses, each with a stats address, and configs of them.
struct Layout {
    dir: tempfile::TempDir,
    addrs: HashMap<String, SocketAddr>,
    stats: HashMap<String, SocketAddr>,
    secret: String,
}

impl Layout {
    fn new(names: &[&str]) -> Self {
        let mut addrs = HashMap::new();
        let mut stats = HashMap::new();
        for n in names {
            addrs.insert(n.to_string(), free_addr());
            stats.insert(n.to_string(), free_addr());
        }
        Self {
            dir: tempfile::tempdir().unwrap(),
            addrs,
            stats,
            secret: common::unique_secret(),
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("herd.json")
    }

    /// Writes the config of servers `names` with `links` (and `extra` top-level JSON).
    fn write(&self, names: &[&str], links: &[(&str, &str)], extra: &str) {
        let servers: Vec<String> = names
            .iter()
            .map(|n| {
                format!(
                    "\"{n}\": {{\"addr\": \"{}\", \"stats\": \"{}\"}}",
                    self.addrs[*n], self.stats[*n]
                )
            })
            .collect();
        let links: Vec<String> = links
            .iter()
            .map(|(a, b)| format!("[\"{a}\", \"{b}\"]"))
            .collect();
        let json = format!(
            "{{\"servers\": {{{}}}, \"links\": [{}], \"secret\": \"{}\"{extra}}}",
            servers.join(", "),
            links.join(", "),
            self.secret
        );
        write_atomically(&self.config(), &json);
    }

    fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Starts one process running `names`; waits until each listens.
    fn spawn(&self, names: &[&str]) -> Process {
        let tag = names.join("-");
        let err = std::fs::File::create(self.dir.path().join(format!("{tag}.stderr"))).unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(self.config())
            .arg("--log-dir")
            .arg(self.logs())
            .arg("--places")
            .arg("offline")
            .args(names)
            .env_remove("HERD_SECRET")
            .env_remove("PLACES_API_KEY")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        let mut p = Process {
            child,
            stderr: self.dir.path().join(format!("{tag}.stderr")),
        };
        for n in names {
            let start = Instant::now();
            while TcpStream::connect_timeout(&self.addrs[*n], Duration::from_millis(200)).is_err() {
                if let Some(status) = p.child.try_wait().unwrap() {
                    panic!("{tag} exited at start ({status}): {}", p.stderr());
                }
                assert!(
                    start.elapsed() < Duration::from_secs(15),
                    "{n} never listened"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        p
    }

    fn stats(&self, name: &str) -> Option<serde_json::Value> {
        let mut s = TcpStream::connect_timeout(&self.stats[name], Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn links_up(&self, name: &str) -> Vec<String> {
        let Some(s) = self.stats(name) else {
            return Vec::new();
        };
        let mut names: Vec<String> = s["links_up"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Whether every server of `names` holds `records` records, all with the same digest.
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
}

/// Replaces `path` whole (a reader never sees half a file).
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("json.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A `herd-server` process, killed when dropped.
struct Process {
    child: Child,
    stderr: PathBuf,
}

impl Process {
    fn hup(&self) {
        let ok = Command::new("kill")
            .arg("-HUP")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success(), "kill -HUP");
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// Sends `data`, half-closes, reads until the server closes (bounded by 20 s).
fn exchange(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(data).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

/// Sends IAMATs for clients `from..to` to `addr` in one connection; every one is answered.
fn iamats(addr: SocketAddr, prefix: &str, from: u64, to: u64) {
    let mut input = Vec::new();
    for i in from..to {
        input.extend_from_slice(format!("IAMAT {prefix}{i} +34.06-118.44 {i}.5\n").as_bytes());
    }
    let out = exchange(addr, &input);
    let answered = out
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"AT "))
        .count();
    assert_eq!(answered as u64, to - from, "every IAMAT is answered");
}

fn degree(name: &str, links: &[(&str, &str)]) -> usize {
    links
        .iter()
        .filter(|(a, b)| *a == name || *b == name)
        .count()
}

/// A bounded load: batches of `batch` IAMATs (new clients each) round-robin over `targets`,
/// until `max_batches` are sent or `stop` is set; returns how many clients it sent.
fn load(
    targets: Vec<SocketAddr>,
    batch: u64,
    max_batches: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut sent = 0;
        for b in 0..max_batches {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let addr = targets[(b as usize) % targets.len()];
            iamats(addr, "load", sent, sent + batch);
            sent += batch;
            std::thread::sleep(Duration::from_millis(20));
        }
        sent
    })
}

const FRANK_LINKS: [(&str, &str); 2] = [("Frank", "Goloman"), ("Frank", "Welsh")];

#[test]
fn a_sixth_server_joins_the_running_herd_under_load_and_leaves_it_again() {
    let mut all: Vec<&str> = HERD.to_vec();
    all.push("Frank");
    let layout = Layout::new(&all);
    layout.write(&HERD, &LINKS, "");
    // The five old servers in two processes.
    let mut first = layout.spawn(&["Goloman", "Hands", "Holiday"]);
    let mut second = layout.spawn(&["Welsh", "Wilkes"]);
    assert!(
        poll(Duration::from_secs(15), || HERD
            .iter()
            .all(|n| layout.links_up(n).len() == degree(n, &LINKS))),
        "the herd did not link"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let targets: Vec<SocketAddr> = HERD.iter().map(|n| layout.addrs[*n]).collect();
    let loader = load(targets, 20, 400, stop.clone());
    std::thread::sleep(Duration::from_millis(300));

    // The new config: Frank, linked to Goloman (first process) and Welsh (second).
    let mut links: Vec<(&str, &str)> = LINKS.to_vec();
    links.extend(FRANK_LINKS);
    layout.write(&all, &links, "");
    first.hup();
    second.hup();
    for (server, line) in [
        ("Goloman", "reloaded: Goloman +link Frank"),
        ("Welsh", "reloaded: Welsh +link Frank"),
    ] {
        assert!(
            poll(Duration::from_secs(10), || layout
                .log(server)
                .contains(line)),
            "no {line:?} in {server}.log:\n{}",
            layout.log(server)
        );
    }
    assert!(
        poll(Duration::from_secs(5), || layout
            .log("Hands")
            .contains("reloaded: Goloman +link Frank")),
        "a process-wide line reaches each of its servers' logs"
    );
    let mut frank = layout.spawn(&["Frank"]);
    assert!(
        poll(Duration::from_secs(15), || {
            layout.links_up("Frank") == ["Goloman", "Welsh"]
                && layout.links_up("Goloman").contains(&"Frank".to_owned())
                && layout.links_up("Welsh").contains(&"Frank".to_owned())
        }),
        "Frank did not link: Frank {:?}, Goloman {:?}, Welsh {:?}\n{}",
        layout.links_up("Frank"),
        layout.links_up("Goloman"),
        layout.links_up("Welsh"),
        frank.stderr()
    );
    // Frank takes clients of its own while the load goes on.
    iamats(layout.addrs["Frank"], "frank", 0, 50);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let sent = loader.join().unwrap();
    assert!(sent > 0);
    let records = sent + 50;
    assert!(
        poll(Duration::from_secs(20), || layout.all_hold(&all, records)),
        "not every server holds all {records} records: {:?}",
        all.iter()
            .map(|n| (n, layout.records(n)))
            .collect::<Vec<_>>()
    );
    for n in HERD {
        assert_eq!(
            layout.links_up(n).len(),
            degree(n, &links),
            "{n}'s old links stayed up"
        );
    }

    // Frank leaves the config: the old servers close its links.
    layout.write(&HERD, &LINKS, "");
    first.hup();
    second.hup();
    assert!(
        poll(Duration::from_secs(10), || {
            !layout.links_up("Goloman").contains(&"Frank".to_owned())
                && !layout.links_up("Welsh").contains(&"Frank".to_owned())
                && layout.links_up("Frank").is_empty()
        }),
        "Frank's links stayed up: Goloman {:?}, Welsh {:?}, Frank {:?}",
        layout.links_up("Goloman"),
        layout.links_up("Welsh"),
        layout.links_up("Frank")
    );
    // The log writer is a thread of its own: the line may land a moment after the links close.
    assert!(
        poll(Duration::from_secs(5), || layout
            .log("Goloman")
            .contains("reloaded: Goloman -link Frank")),
        "no reload line in Goloman's log"
    );
    // The old herd goes on without it: a new record reaches every old server, not Frank.
    iamats(layout.addrs["Hands"], "after", 0, 1);
    assert!(
        poll(Duration::from_secs(10), || layout
            .all_hold(&HERD, records + 1)),
        "the old herd does not converge without Frank"
    );
    assert_eq!(layout.records("Frank"), Some(records));
    for n in HERD {
        assert_eq!(layout.links_up(n).len(), degree(n, &LINKS), "{n}");
    }
    assert!(first.alive() && second.alive() && frank.alive());
}

#[test]
fn a_bad_config_on_sighup_leaves_the_herd_running_as_before_and_says_why_in_one_line() {
    let layout = Layout::new(&["A", "B"]);
    layout.write(&["A", "B"], &[("A", "B")], "");
    let mut p = layout.spawn(&["A", "B"]);
    assert!(poll(Duration::from_secs(15), || layout.links_up("A") == ["B"]));
    iamats(layout.addrs["A"], "before", 0, 5);
    assert!(poll(Duration::from_secs(10), || layout.all_hold(&["A", "B"], 5)));

    let bad = |text: &str, expect: &str, count: usize| {
        write_atomically(&layout.config(), text);
        p.hup();
        let found = poll(Duration::from_secs(10), || {
            layout.log("A").matches("config not reloaded").count() == count
        });
        let log = layout.log("A");
        assert!(found, "no line for {text:?}:\n{log}");
        let line = log
            .lines()
            .rfind(|l| l.contains("config not reloaded"))
            .unwrap_or_default()
            .to_owned();
        assert!(line.contains(expect), "{line}");
        assert!(line.contains("WARN"), "{line}");
    };
    bad("{\"servers\": ", "invalid config", 1);
    // Removing a running server, or moving its address, needs a restart.
    let a_only = format!(
        "{{\"servers\": {{\"A\": {{\"addr\": \"{}\", \"stats\": \"{}\"}}}}, \"secret\": \"{}\"}}",
        layout.addrs["A"], layout.stats["A"], layout.secret
    );
    bad(&a_only, "server B runs in this process", 2);
    let moved = format!(
        "{{\"servers\": {{\"A\": {{\"addr\": \"{}\", \"stats\": \"{}\"}}, \
         \"B\": {{\"addr\": \"{}\", \"stats\": \"{}\"}}}}, \"links\": [[\"A\", \"B\"]], \
         \"secret\": \"{}\"}}",
        layout.addrs["A"],
        free_addr(),
        layout.addrs["B"],
        layout.stats["B"],
        layout.secret
    );
    bad(&moved, "stats address changes", 3);
    assert!(p.alive(), "the process runs on: {}", p.stderr());

    // Nothing changed: the link is up, updates still flood.
    assert_eq!(layout.links_up("A"), ["B"]);
    assert_eq!(layout.links_up("B"), ["A"]);
    iamats(layout.addrs["B"], "after", 0, 5);
    assert!(poll(Duration::from_secs(10), || layout.all_hold(&["A", "B"], 10)));

    // A good config is applied by the next SIGHUP.
    layout.write(
        &["A", "B"],
        &[("A", "B")],
        ", \"limits\": {\"max_records\": 10}",
    );
    p.hup();
    assert!(
        poll(Duration::from_secs(10), || layout
            .log("A")
            .contains("reloaded: limits changed")),
        "{}",
        layout.log("A")
    );
    iamats(layout.addrs["A"], "full", 0, 1);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        layout.records("A"),
        Some(10),
        "the new bound applies at once"
    );
    assert_eq!(layout.log("A").matches("config not reloaded").count(), 3);
}

#[test]
fn check_config_prints_the_resolved_herd_or_the_error_and_version_names_the_commit() {
    let layout = Layout::new(&["A", "B"]);
    layout.write(
        &["A", "B"],
        &[("A", "B")],
        ", \"limits\": {\"record_ttl_ms\": 5000}",
    );
    let out = Command::new(BIN)
        .arg("--check-config")
        .arg("--config")
        .arg(layout.config())
        .env_remove("HERD_SECRET")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        "herd: 2 servers, 1 links".to_owned(),
        format!(
            "server A: addr {}, listen {}, admin none, stats {}",
            layout.addrs["A"], layout.addrs["A"], layout.stats["A"]
        ),
        "link A B".to_owned(),
        "limits.record_ttl_ms: 5000".to_owned(),
        "limits.max_clients: 10000".to_owned(),
        "secret: set (from the config)".to_owned(),
    ] {
        assert!(text.contains(&want), "{want:?} missing:\n{text}");
    }
    write_atomically(&layout.config(), "{\"servers\": {}}");
    let out = Command::new(BIN)
        .arg("--check-config")
        .arg("--config")
        .arg(layout.config())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("config has no servers"), "{err}");

    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(&format!(
            "herd-server {} (commit ",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
}
