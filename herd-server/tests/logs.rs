//! Log files of a real `herd-server` process: SIGHUP reopens them, size-based rotation.

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
        let dir = tempfile::tempdir().unwrap();
        let addr = free_addr();
        let json = format!(
            r#"{{"servers": {{"A": "{addr}"}}, "secret": "{}"}}"#,
            common::unique_secret()
        );
        std::fs::write(dir.path().join("herd.json"), json).unwrap();
        let err = std::fs::File::create(dir.path().join("A.stderr")).unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(dir.path().join("herd.json"))
            .arg("--log-dir")
            .arg(dir.path().join("logs"))
            .arg("--places")
            .arg("offline")
            .args(args)
            .arg("A")
            .env_remove("HERD_SECRET")
            .env_remove("PLACES_API_KEY")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        let mut one = Self { dir, addr, child };
        let start = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = one.child.try_wait().unwrap() {
                panic!("A exited at start ({status}): {}", one.stderr());
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "A never listened"
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
        std::fs::read_to_string(self.dir.path().join("A.stderr")).unwrap_or_default()
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
        .contains("msg=IAMAT after +1+1 2 reply=AT A ")));
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
    assert!(kept.contains("msg=IAMAT r5x49 "), "{kept}");
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
