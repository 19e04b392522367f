//! `deploy/run-herd.sh` with real herd-server processes on free loopback ports: a server whose
//! port is taken is named, the ones already started are stopped and the script fails; SIGINT
//! (to the script alone, or to its whole process group as a terminal's Ctrl-C) stops every
//! server and the script exits only once all of them have; a server that never comes up is
//! given up on after `RUN_HERD_START_TIMEOUT`. The script runs the binary `HERD_SERVER_BIN`
//! names (the one `common::server_bin` finds), so it builds nothing.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// Longest wait for the script to start the servers, or to exit.
const LIMIT: Duration = Duration::from_secs(60);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/run-herd.sh")
}

/// Writes a herd config of `names` on free loopback addresses, linked in a chain.
fn write_config(dir: &Path, names: &[&str]) -> (PathBuf, BTreeMap<String, String>) {
    let addrs: BTreeMap<String, String> =
        names.iter().map(|n| (n.to_string(), free_addr())).collect();
    let servers: Vec<String> = names
        .iter()
        .map(|n| format!("\"{n}\": \"{}\"", addrs[*n]))
        .collect();
    let links: Vec<String> = names
        .windows(2)
        .map(|w| format!("[\"{}\", \"{}\"]", w[0], w[1]))
        .collect();
    let path = dir.join("herd.json");
    std::fs::write(
        &path,
        format!(
            "{{\"servers\": {{{}}}, \"links\": [{}]}}",
            servers.join(", "),
            links.join(", ")
        ),
    )
    .unwrap();
    (path, addrs)
}

/// Runs `bash -c SCRIPT` (a signal to a process group, or a check that one is empty).
fn sh(script: &str) -> bool {
    Command::new("bash")
        .args(["-c", script])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The script in a process group of its own (what it starts is in that group too, so a
/// test can signal them as a Ctrl-C would, see whether any outlived the script, and kill
/// whatever is left when it fails). Its stderr lines are collected.
struct RunHerd {
    child: Option<Child>,
    pgid: u32,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl RunHerd {
    fn start(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new("bash")
            .arg(script())
            .args(args)
            .env("HERD_SERVER_BIN", bin)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("start deploy/run-herd.sh");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[run-herd] {line}");
                let _ = tx.send(line);
            }
        });
        let pgid = child.id();
        Self {
            child: Some(child),
            pgid,
            lines,
            seen: Vec::new(),
        }
    }

    /// Collects stderr lines until one contains `needle`; false at `limit` or at the end.
    fn wait_for(&mut self, needle: &str, limit: Duration) -> bool {
        let started = Instant::now();
        while let Some(left) = limit.checked_sub(started.elapsed()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.seen.push(line);
                    if hit {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Waits for the script to exit (failing the test after `limit`), then for the rest of
    /// its stderr.
    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < limit,
                "run-herd.sh ran over {limit:?}; stderr so far:\n{}",
                self.seen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The pipe closes once every process holding it is gone; wait at most 10 s more.
        let drained = Instant::now();
        while drained.elapsed() < Duration::from_secs(10) {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        status
    }

    /// Sends `sig` to the script alone, or to its whole process group.
    fn signal(&self, sig: &str, whole_group: bool) {
        let target = if whole_group {
            format!("-- -{}", self.pgid)
        } else {
            self.pgid.to_string()
        };
        assert!(sh(&format!("kill -s {sig} {target}")), "kill {sig} failed");
    }

    /// Whether any process of the script's group is still there.
    fn group_alive(&self) -> bool {
        sh(&format!("kill -0 -- -{}", self.pgid))
    }

    fn text(&self) -> String {
        self.seen.join("\n")
    }
}

impl Drop for RunHerd {
    fn drop(&mut self) {
        // Whatever the script left behind (a failing test) goes with it.
        let _ = sh(&format!("kill -s KILL -- -{}", self.pgid));
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn a_server_whose_port_is_taken_is_named_and_the_others_are_stopped() {
    let Some(bin) = server_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (config, addrs) = write_config(dir.path(), &["A", "B", "C"]);
    let _taken = TcpListener::bind(&addrs["B"]).unwrap();
    let logs = dir.path().join("logs");
    let mut rh = RunHerd::start(
        &bin,
        &[
            config.to_str().unwrap(),
            "--places",
            "offline",
            "--log-dir",
            logs.to_str().unwrap(),
        ],
        &[],
    );
    let status = rh.wait_exit(LIMIT);
    let text = rh.text();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("herd-server: A listening on"), "{text}");
    assert!(text.contains("server B: cannot listen on"), "{text}");
    assert!(
        text.contains(
            "run-herd: server B did not start (herd-server exited with status 1); stopping A"
        ),
        "{text}"
    );
    assert!(text.contains("run-herd: server A stopped"), "{text}");
    assert!(!text.contains("C listening"), "C must not start: {text}");
    assert!(!rh.group_alive(), "a process outlived the script");
    assert!(TcpStream::connect(&addrs["A"]).is_err(), "A still listens");
}

#[test]
fn sigint_stops_every_server_and_the_script_waits_for_all_of_them() {
    let Some(bin) = server_bin() else { return };
    // SIGINT to the script alone (it passes SIGTERM on), then to its whole process group as
    // a terminal's Ctrl-C does (every server gets it too).
    for whole_group in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let names = ["A", "B", "C"];
        let (config, addrs) = write_config(dir.path(), &names);
        let logs = dir.path().join("logs");
        // Options first and the config as an option: no CONFIG argument is needed.
        let mut rh = RunHerd::start(
            &bin,
            &[
                "--places",
                "offline",
                "--config",
                config.to_str().unwrap(),
                "--log-dir",
                logs.to_str().unwrap(),
            ],
            &[],
        );
        assert!(
            rh.wait_for("run-herd: 3 servers up", LIMIT),
            "the herd did not start: {}",
            rh.text()
        );
        for name in names {
            assert!(TcpStream::connect(&addrs[name]).is_ok(), "{name} is not up");
        }
        rh.signal("INT", whole_group);
        let status = rh.wait_exit(LIMIT);
        let text = rh.text();
        assert!(status.success(), "{status:?}: {text}");
        // Once the script has exited, every server has: none of its processes is left, and
        // every server's log ends with what a server logs as it finishes its shutdown.
        assert!(!rh.group_alive(), "a process outlived the script: {text}");
        for name in names {
            assert!(TcpStream::connect(&addrs[name]).is_err(), "{name} listens");
            let log = std::fs::read_to_string(logs.join(format!("{name}.log"))).unwrap();
            let down = log
                .find("shutting down")
                .unwrap_or_else(|| panic!("{name}: {log}"));
            assert!(log[down..].contains(" counters "), "{name}: {log}");
            assert!(
                text.contains(&format!("run-herd: server {name} stopped")),
                "{text}"
            );
        }
        assert_eq!(text.matches("herd-server: stopped").count(), 3, "{text}");
        assert!(text.ends_with("run-herd: all servers stopped"), "{text}");
        // The start-up lines came one server at a time, whole, in config order.
        let ups: Vec<&str> = rh
            .seen
            .iter()
            .filter(|l| l.contains(" listening on "))
            .map(String::as_str)
            .collect();
        assert_eq!(ups.len(), 3, "{text}");
        for (line, name) in ups.iter().zip(names) {
            assert!(
                line.starts_with(&format!("herd-server: {name} listening on {}", addrs[name])),
                "{line}"
            );
        }
    }
}

#[test]
fn a_server_that_never_comes_up_is_given_up_on_after_the_start_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // A "server" that prints nothing and would sleep for a minute.
    let fake = dir.path().join("silent-server");
    std::fs::write(&fake, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (config, _) = write_config(dir.path(), &["A", "B"]);
    let cfg = config.to_str().unwrap();
    let started = Instant::now();
    let mut rh = RunHerd::start(&fake, &[cfg], &[("RUN_HERD_START_TIMEOUT", "1")]);
    let status = rh.wait_exit(LIMIT);
    let text = rh.text();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(
        text.contains("run-herd: server A did not start within 1s"),
        "{text}"
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(!rh.group_alive(), "the silent server outlived the script");
    // Bad settings are usage errors, before anything starts.
    for (env, args) in [
        (vec![("RUN_HERD_START_TIMEOUT", "soon")], vec![cfg]),
        (vec![], vec!["/nonexistent/herd.json"]),
        (vec![], vec!["--config"]),
    ] {
        let mut rh = RunHerd::start(&fake, &args, &env);
        let status = rh.wait_exit(LIMIT);
        assert_eq!(status.code(), Some(64), "{env:?} {args:?}: {}", rh.text());
    }
}
