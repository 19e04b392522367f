//! Shared helpers of herd-cli's tests: the binary, an echo-server process, fake servers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// The herd-cli binary under test.
pub(crate) fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_herd-cli"))
}

/// Runs herd-cli with `args` and `stdin`, bounded: the test fails if it runs over `limit`.
pub(crate) fn run_with(args: &[&str], stdin: &[u8], limit: Duration) -> Output {
    let mut child = cli()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start herd-cli");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let feeder = thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let guard = Killer(Some(child));
    let out = guard.wait(limit);
    feeder.join().unwrap();
    out
}

/// Runs herd-cli with `args`, empty stdin, at most 60 s.
pub(crate) fn run(args: &[&str]) -> Output {
    run_with(args, b"", Duration::from_secs(60))
}

/// Kills its process when dropped (a failing test must not leave one behind).
pub(crate) struct Killer(pub(crate) Option<Child>);

impl Killer {
    /// Waits for the process to exit, killing it (and failing) after `limit`.
    pub(crate) fn wait(mut self, limit: Duration) -> Output {
        let mut child = self.0.take().unwrap();
        let started = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                return child.wait_with_output().unwrap();
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "herd-cli ran over {limit:?}; stderr: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Killer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `herd-cli echo-server` on a free loopback port, killed on drop.
pub(crate) struct EchoServer {
    /// Its address.
    pub(crate) addr: SocketAddr,
    _proc: Killer,
}

impl EchoServer {
    /// Starts one and waits for its "listening on" line.
    pub(crate) fn start() -> Self {
        let mut child = cli()
            .args(["echo-server", "--listen", "127.0.0.1:0", "--threads", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start echo-server");
        let stdout = child.stdout.take().unwrap();
        let guard = Killer(Some(child));
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Self { addr, _proc: guard }
    }

    /// Its address as text.
    pub(crate) fn addr(&self) -> String {
        self.addr.to_string()
    }
}

/// A loopback address where nothing listens (bound, then released).
pub(crate) fn dead_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr.to_string()
}

/// A server that accepts connections and never answers; stops when dropped.
pub(crate) struct SilentServer {
    /// Its address.
    pub(crate) addr: String,
    _listener: TcpListener,
    held: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl SilentServer {
    /// Starts one on a free port.
    pub(crate) fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let accept = listener.try_clone().unwrap();
        let keep = held.clone();
        thread::spawn(move || {
            for s in accept.incoming().flatten() {
                keep.lock().unwrap().push(s);
            }
        });
        Self {
            addr,
            _listener: listener,
            held,
        }
    }
}

/// A server that, for each connection, reads one line and answers `reply` verbatim, then
/// closes. Runs for the test's life (a detached thread on a leaked listener).
pub(crate) fn fixed_reply_server(reply: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while s.read(&mut byte).map(|n| n == 1).unwrap_or(false) {
                if byte[0] == b'\n' {
                    break;
                }
                line.push(byte[0]);
            }
            let _ = s.write_all(reply);
        }
    });
    addr
}

/// stdout as text.
pub(crate) fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr as text.
pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The exit code (panics on a signal).
pub(crate) fn code(out: &Output) -> i32 {
    out.status.code().expect("exited by a signal")
}

/// Every stdout line parsed as JSON.
pub(crate) fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// `<target>/<profile>` of this test executable (which lives in `<target>/<profile>/deps`).
pub(crate) fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("test executable is in <target>/<profile>/deps")
        .to_path_buf()
}

/// The herd-server binary, built if needed; `None` (with a message) when it cannot be had.
///
/// `.ci/run` builds it first (`cargo build --workspace --bins`); this also runs `cargo build
/// -p herd-server` into the test's own target dir, a no-op when it is fresh.
/// `HERD_SERVER_BIN` names another binary.
pub(crate) fn server_bin() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("HERD_SERVER_BIN") {
            return Some(PathBuf::from(p));
        }
        let dir = profile_dir();
        let bin = dir.join("herd-server");
        let target = dir.parent().expect("target dir");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args([
                "build",
                "--quiet",
                "-p",
                "herd-server",
                "--bin",
                "herd-server",
                "--target-dir",
            ])
            .arg(target)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let built = build.status().map(|s| s.success()).unwrap_or(false);
        if !built {
            eprintln!(
                "warning: `cargo build -p herd-server` failed; using {} if it exists",
                bin.display()
            );
        }
        if bin.exists() {
            Some(bin)
        } else {
            eprintln!(
                "SKIPPED: no herd-server binary at {} (run `cargo build --workspace --bins`)",
                bin.display()
            );
            None
        }
    })
    .clone()
}

/// A free loopback address: a random address in 127.0.0.0/8 (other than 127.0.0.x, where the
/// kernel's ephemeral binds live) and a port below the ephemeral range (32768 and up on Linux).
/// Parallel tests each draw their own address, so two of them cannot pick the same one between
/// this check and the server's bind.
pub(crate) fn free_addr() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    loop {
        let n = seed
            .wrapping_mul(2_654_435_761)
            .wrapping_add(NEXT.fetch_add(7919, Ordering::Relaxed).wrapping_mul(40_503));
        let [a, b, c, _] = n.to_le_bytes();
        let ip = std::net::Ipv4Addr::new(127, 1 + a % 254, 1 + b % 254, 1 + c % 254);
        let port = 20_000 + u16::try_from((n >> 8) % 12_000).unwrap();
        if TcpListener::bind((ip, port)).is_ok() {
            return format!("{ip}:{port}");
        }
    }
}
