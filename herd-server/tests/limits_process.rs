//! A real `herd-server` process with hostile-load limits in its config: the reasons for
//! records it did not store reach its log once a second, and the config's log rotation is
//! used.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_addr, unique_secret};

const BIN: &str = env!("CARGO_BIN_EXE_herd-server");

/// Server A on a free address with `limits`, logging to `dir/logs`; killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(dir: &Path, limits: &str, args: &[&str]) -> (Server, SocketAddr) {
    let addr = free_addr();
    let config = dir.join("herd.json");
    std::fs::write(
        &config,
        format!(
            "{{\"servers\": {{\"A\": \"{addr}\"}}, \"secret\": \"{}\", \"limits\": {{{limits}}}}}",
            unique_secret()
        ),
    )
    .unwrap();
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("--log-dir")
        .arg(dir.join("logs"))
        .arg("--places")
        .arg("offline")
        .args(args)
        .arg("A")
        .env_remove("HERD_SECRET")
        .env_remove("PLACES_API_KEY")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    let start = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "A never listened"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (server, addr)
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

fn poll(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn records_refused_by_a_full_store_are_logged_once_a_second_with_their_count() {
    let dir = tempfile::tempdir().unwrap();
    let (_a, addr) = spawn(dir.path(), "\"max_records\": 1", &[]);
    let log = || std::fs::read_to_string(dir.path().join("logs/A.log")).unwrap_or_default();
    let t = now();
    // c0 is stored, c1 refused; then c2 and c3 refused within the same second.
    for batch in [&[0, 1][..], &[2, 3]] {
        let mut lines = String::new();
        for c in batch {
            lines.push_str(&format!("IAMAT c{c} +1+1 {t:.9}\n"));
        }
        let replies = exchange(addr, lines.as_bytes());
        assert_eq!(replies.iter().filter(|&&b| b == b'\n').count(), 2);
    }
    let full = "the store is full";
    // The first refusal logs at once; the two after it within the second are logged, as one
    // line with their count, when the second is up.
    assert!(
        poll(Duration::from_secs(5), || log()
            .lines()
            .filter(|l| l.contains(full))
            .count()
            == 2),
        "{}",
        log()
    );
    let text = log();
    let refused: Vec<&str> = text.lines().filter(|l| l.contains(full)).collect();
    assert!(refused.iter().all(|l| l.contains("WARN")), "{refused:?}");
    assert!(refused[0].contains("count=1"), "{refused:?}");
    assert!(refused[1].contains("count=2"), "{refused:?}");
    assert!(
        text.contains("max_records=1"),
        "the bound is in the start line"
    );
}

#[test]
fn log_rotation_is_read_from_the_config_and_the_command_line_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    let limits = "\"log_max_bytes\": 4000, \"log_keep\": 1";
    let (a, addr) = spawn(dir.path(), limits, &[]);
    let logs = dir.path().join("logs");
    let t = now();
    let mut lines = String::new();
    for c in 0..100 {
        lines.push_str(&format!("IAMAT c{c} +1+1 {t:.9}\n"));
    }
    exchange(addr, lines.as_bytes());
    assert!(
        poll(Duration::from_secs(5), || logs.join("A.log.1").exists()),
        "rotated at the config's size"
    );
    assert!(!logs.join("A.log.2").exists(), "the config keeps one");
    drop(a);

    let dir = tempfile::tempdir().unwrap();
    let (_a, addr) = spawn(dir.path(), limits, &["--log-max-bytes", "0"]);
    exchange(addr, lines.as_bytes());
    std::thread::sleep(Duration::from_millis(300));
    let logs = dir.path().join("logs");
    assert!(logs.join("A.log").exists());
    assert!(
        !logs.join("A.log.1").exists(),
        "--log-max-bytes 0 never rotates"
    );
}
