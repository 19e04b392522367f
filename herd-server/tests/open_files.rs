//! A real `herd-server` process under a low open-file limit: it raises the soft limit to the
//! hard one, says in one line that `max_clients` does not fit, lowers it, and serves.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::free_addr;

const BIN: &str = env!("CARGO_BIN_EXE_herd-server");

/// The server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn poll(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

fn stats(addr: SocketAddr) -> Option<serde_json::Value> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// A connection to `to` from source address `src` (any 127.0.0.0/8 address is local).
fn connect_from(rt: &tokio::runtime::Runtime, src: [u8; 4], to: SocketAddr) -> TcpStream {
    rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(SocketAddr::from((src, 0))).unwrap();
        s.connect(to).await.unwrap().into_std().unwrap()
    })
}

/// `text` without its terminal colour sequences (`ESC [ ... m`).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn under_a_low_open_file_limit_max_clients_is_lowered_in_one_line_and_clients_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stats_addr) = (free_addr(), free_addr());
    let config = dir.path().join("herd.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"servers": {{"A": {{"addr": "{addr}", "stats": "{stats_addr}"}}}},
                "limits": {{"max_clients": 10000}}}}"#
        ),
    )
    .unwrap();
    let err_path = dir.path().join("A.stderr");
    let err = std::fs::File::create(&err_path).unwrap();
    // Soft 256 under a hard 1024: raised to 1024, still too few for 10000 clients.
    let child = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -Sn 256 && ulimit -Hn 1024 && exec "$0" "$@""#)
        .arg(BIN)
        .arg("--config")
        .arg(&config)
        .arg("--log-dir")
        .arg(dir.path().join("logs"))
        .arg("--places")
        .arg("offline")
        .arg("A")
        .env_remove("HERD_SECRET")
        .env_remove("PLACES_API_KEY")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let stderr = || plain(&std::fs::read_to_string(&err_path).unwrap_or_default());
    let up = poll(Duration::from_secs(15), || {
        assert!(
            server.0.try_wait().unwrap().is_none(),
            "exited at start: {}",
            stderr()
        );
        stats(stats_addr).is_some()
    });
    assert!(up, "never listened: {}", stderr());

    // One line says so, with the numbers.
    let text = stderr();
    let said: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("open-file limit"))
        .collect();
    assert_eq!(said.len(), 1, "{text}");
    for want in [
        "soft_limit_found=256",
        "soft_limit=1024",
        "hard_limit=1024",
        "max_clients=10000",
        "lowered_to=",
    ] {
        assert!(said[0].contains(want), "{want}: {}", said[0]);
    }
    let lowered: usize = said[0]
        .split("lowered_to=")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("lowered_to=N");
    assert!((1..1024).contains(&lowered), "{lowered}");
    // The soft limit was raised.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.0.id())).unwrap();
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        files.split_whitespace().collect::<Vec<_>>()[3..5],
        ["1024", "1024"],
        "{files}"
    );

    // A client is served.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"IAMAT kiwi +1+1 1\n").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("AT A ") && out.ends_with(" kiwi +1+1 1\n"),
        "{out:?}"
    );

    // The lowered limit is the one in force: connections past it are refused, not failed
    // with an out-of-descriptors error (from several addresses, each under its own limit).
    let want = lowered + 20;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let held: Vec<TcpStream> = (0..want)
        .map(|i| connect_from(&rt, [127, 0, 0, 1 + (i % 8) as u8], addr))
        .collect();
    let full = poll(Duration::from_secs(20), || {
        stats(stats_addr).is_some_and(|s| {
            s["clients"] == lowered && s["refused_max_clients"].as_u64() >= Some(20)
        })
    });
    let last = stats(stats_addr);
    assert!(full, "{last:?}");
    assert_eq!(last.unwrap()["accept_errors"], 0);
    drop(held);
}
