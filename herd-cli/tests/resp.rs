//! `herd-cli load --resp` against a real `redis-server` (when one is on the PATH) and against
//! small fake servers: GEOADD and GEOSEARCH with the same client ids, window and connections
//! as the herd mode, RESP error replies and connect failures counted as errors.
//!
//! Without `redis-server` on the PATH the Redis test says it did not run and passes, so
//! `cargo nextest run --workspace` works anywhere; `HERD_REQUIRE_REDIS=1` makes it fail
//! instead (as `HERD_REQUIRE_BROWSER=1` does for the status page test).

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// `redis-server` on the PATH, or `None` with a message (a panic under HERD_REQUIRE_REDIS=1).
fn redis_bin() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("redis-server"))
            .find(|p| p.is_file())
    });
    let help = "the Redis test needs redis-server on the PATH (`apt-get install -y redis-server`)";
    match found {
        Some(p) => Some(p),
        None if std::env::var("HERD_REQUIRE_REDIS").is_ok_and(|v| v == "1") => {
            panic!("{help} (HERD_REQUIRE_REDIS=1)")
        }
        None => {
            eprintln!("resp: NOT RUN: {help}");
            None
        }
    }
}

/// Sends one RESP command and reads one reply line (enough for PING and ZCARD).
fn command(addr: &str, args: &[&str]) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(out.as_bytes())?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n") {
        if s.read(&mut byte)? == 0 {
            break;
        }
        buf.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&buf).trim_end().to_owned())
}

/// A redis-server on a free loopback address, persistence off; killed on drop.
struct Redis {
    addr: String,
    _proc: Killer,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start(bin: &std::path::Path) -> Self {
        for _ in 0..5 {
            let addr = free_addr();
            let (ip, port) = addr.rsplit_once(':').unwrap();
            let dir = tempfile::tempdir().unwrap();
            let child = Command::new(bin)
                .args([
                    "--bind",
                    ip,
                    "--port",
                    port,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                // herd-cli load dials from several loopback source addresses.
                .args(["--protected-mode", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            let proc = Killer(Some(child));
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if command(&addr, &["PING"]).is_ok_and(|r| r == "+PONG") {
                    return Self {
                        addr,
                        _proc: proc,
                        _dir: dir,
                    };
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("redis-server did not start in 5 attempts");
    }
}

#[test]
fn load_resp_drives_a_real_redis_with_geoadd_and_geosearch() {
    let Some(bin) = redis_bin() else { return };
    let redis = Redis::start(&bin);
    let a = redis.addr.as_str();
    // The warm-up alone: one GEOADD per client of the pool.
    let out = run(&[
        "--server",
        a,
        "--json",
        "load",
        "--resp",
        "--warmup-only",
        "-k",
        "500",
        "--area",
        "10",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(json_lines(&out)[0]["warmup"]["clients"], 500);
    assert_eq!(command(a, &["ZCARD", "herd"]).unwrap(), ":500");
    // Pipelined GEOADDs and GEOSEARCHes on the same key.
    let out = run(&[
        "--server",
        a,
        "--json",
        "load",
        "--resp",
        "-n",
        "3000",
        "-c",
        "4",
        "-d",
        "8",
        "-k",
        "500",
        "--fresh",
        "--area",
        "10",
        "--nearby-ratio",
        "0.3",
        "--nearby-km",
        "2",
        "--nearby-count",
        "10",
        "--no-warmup",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = &json_lines(&out)[0];
    assert_eq!(v["protocol"], "resp");
    assert_eq!(v["ok"], 3000, "{v}");
    assert!(
        v["errors"].as_object().unwrap().values().all(|n| n == 0),
        "{v}"
    );
    let nearby = v["nearby"]["ok"].as_u64().unwrap();
    assert!((500..2000).contains(&nearby), "{v}");
    assert!(
        v["nearby"]["latency_us"]["p99"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    // Classic connections to Redis, another key.
    let out = run(&[
        "--server",
        a,
        "--json",
        "load",
        "--resp",
        "--resp-key",
        "other",
        "--mode",
        "classic",
        "-n",
        "200",
        "-c",
        "4",
        "-k",
        "50",
        "--fresh",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(json_lines(&out)[0]["ok"], 200);
    let card: u64 = command(a, &["ZCARD", "other"]).unwrap()[1..]
        .parse()
        .unwrap();
    assert!((1..=50).contains(&card), "{card}");
}

/// A server answering every RESP command of each connection with `-ERR no`.
fn erring_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut buf = [0u8; 65536];
                let mut stars = 0usize;
                // Count the commands by their leading `*` at a line start (bulk strings in
                // these commands never start with `*`).
                let mut at_line_start = true;
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    for &b in &buf[..n] {
                        if at_line_start && b == b'*' {
                            stars += 1;
                        }
                        at_line_start = b == b'\n';
                    }
                    let reply = "-ERR no\r\n".repeat(stars);
                    stars = 0;
                    if s.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn resp_errors_and_connect_failures_count_as_errors() {
    let addr = erring_server();
    let out = run(&[
        "--server", &addr, "--json", "load", "--resp", "-n", "400", "-c", "2", "-d", "4",
    ]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let v = &json_lines(&out)[0];
    assert_eq!(
        (v["ok"].as_u64(), v["errors"]["invalid"].as_u64()),
        (Some(0), Some(400)),
        "{v}"
    );
    // Nothing listening: every request is a connect error, in both protocols and modes.
    let dead = dead_addr();
    for extra in [
        &["--resp"][..],
        &[],
        &["--mode", "classic"],
        &["--resp", "--mode", "classic"],
    ] {
        let mut args = vec![
            "--server",
            dead.as_str(),
            "--json",
            "load",
            "-n",
            "5",
            "-c",
            "1",
        ];
        args.extend(extra);
        let out = run(&args);
        assert_eq!(code(&out), 2, "{extra:?}: {}", stderr(&out));
        let v = &json_lines(&out)[0];
        assert_eq!(v["errors"]["connect"], 5, "{extra:?}: {v}");
        assert_eq!(v["ok"], 0);
    }
    // RESP has no WHATSAT.
    let out = run(&[
        "--server",
        &addr,
        "load",
        "--resp",
        "--whatsat-ratio",
        "0.5",
        "-n",
        "1",
    ]);
    assert_eq!(code(&out), 64);
}
