//! The deployment files carry configs that herd-server accepts, and the server takes its name
//! the ways the container image and the StatefulSet give it (HERD_NAME, the host name), with a
//! health probe for images without a shell. Real `herd-server` processes on 127.0.0.1.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use herd_server::config::HerdConfig;

const BIN: &str = env!("CARGO_BIN_EXE_herd-server");
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The block under `key: |` of a YAML file, de-indented (the ConfigMap's herd.json).
fn yaml_block(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    assert!(lines.next().is_some(), "no `{key}: |` block");
    let block: Vec<&str> = lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .collect();
    let indent = block
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap();
    block
        .iter()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_kubernetes_configmap_names_the_statefulset_pods_by_their_stable_dns_names() {
    let json = yaml_block(&read("deploy/k8s/configmap.yaml"), "herd.json");
    let c = HerdConfig::parse(&json).unwrap_or_else(|e| panic!("ConfigMap herd.json: {e}"));
    let sts = read("deploy/k8s/statefulset.yaml");
    let replicas: usize = sts
        .lines()
        .find_map(|l| l.trim().strip_prefix("replicas: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(c.servers.len(), replicas, "one server per pod");
    for (i, s) in c.servers.iter().enumerate() {
        assert_eq!(s.name.as_str(), format!("herd-{i}"));
        assert_eq!(
            s.addr,
            format!("herd-{i}.herd:12000"),
            "the headless Service's name"
        );
        assert_eq!(s.listen, "0.0.0.0:12000".parse().unwrap());
        let tls = c.tls.as_ref().unwrap().paths(&s.name);
        assert_eq!(
            tls.cert,
            std::path::PathBuf::from(format!("/etc/herd/tls/herd-{i}.pem"))
        );
    }
    // The default herd's topology, Goloman ... Wilkes as herd-0 ... herd-4.
    let default = HerdConfig::default_herd();
    let index =
        |n: &herd_core::ServerName| default.servers.iter().position(|s| &s.name == n).unwrap();
    let mut want: Vec<(String, String)> = default
        .links
        .iter()
        .map(|(a, b)| (format!("herd-{}", index(a)), format!("herd-{}", index(b))))
        .collect();
    let mut got: Vec<(String, String)> = c
        .links
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    assert!(c.check_peer_security().is_ok(), "TLS on every peer link");
    assert!(sts.contains("args: [\"--name-from-hostname\"]"));
    assert!(sts.contains("/etc/herd/config/herd.json"));
}

#[test]
fn the_compose_services_are_the_servers_of_its_config() {
    let c = HerdConfig::parse(&read("deploy/herd-container.json")).unwrap();
    let compose = read("deploy/compose.yaml");
    for s in &c.servers {
        let host = s.addr.rsplit_once(':').unwrap().0;
        assert!(
            compose.contains(&format!("\n  {host}:\n")),
            "no service {host} in compose.yaml"
        );
        assert!(
            compose.contains(&format!("environment: {{HERD_NAME: {}}}", s.name)),
            "no service with HERD_NAME {}",
            s.name
        );
        assert_eq!(s.listen, "0.0.0.0:12000".parse().unwrap());
    }
    assert!(c.tls.is_some() && c.data_dir.is_some());
}

/// A running herd-server whose stderr lines arrive on a channel.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(dir)
            .env_remove("HERD_NAME")
            .env_remove("HERD_CONFIG")
            .env_remove("HERD_SECRET")
            .env_remove("PLACES_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines }
    }

    /// The first stderr line containing `want`, within 20 s.
    fn wait_line(&self, want: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(want) => return l,
                Ok(_) => {}
                Err(e) => panic!("no stderr line with {want:?}: {e}"),
            }
        }
    }

    /// SIGTERM, then the exit status within 20 s.
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(ok.success());
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.child.kill().ok();
        panic!("herd-server did not exit within 20 s of SIGTERM");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn a_server_takes_its_name_from_the_host_name_or_herd_name_and_its_config_from_herd_config() {
    let dir = tempfile::tempdir().unwrap();
    let host = hostname();
    let (a, b) = (common::free_addr(), common::free_addr());
    let config = serde_json::json!({
        "servers": {host.as_str(): a.to_string(), "B": b.to_string()},
        "links": [[host.as_str(), "B"]],
    });
    let path = dir.path().join("herd.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let path = path.to_str().unwrap();

    let by_host = Proc::spawn(&["--config", path, "--name-from-hostname"], &[], dir.path());
    let line = by_host.wait_line("listening on");
    assert!(
        line.starts_with(&format!("herd-server: {host} listening on {a}")),
        "{line}"
    );
    assert!(by_host.stop().success());

    let by_env = Proc::spawn(
        &[],
        &[("HERD_NAME", "B"), ("HERD_CONFIG", path)],
        dir.path(),
    );
    let line = by_env.wait_line("listening on");
    assert!(
        line.starts_with(&format!("herd-server: B listening on {b}")),
        "{line}"
    );
    assert!(by_env.stop().success());

    // Names on the command line win over HERD_NAME.
    let both = Proc::spawn(
        &["--config", path, &host],
        &[("HERD_NAME", "B")],
        dir.path(),
    );
    let line = both.wait_line("listening on");
    assert!(
        line.starts_with(&format!("herd-server: {host} listening")),
        "{line}"
    );
    assert!(both.stop().success());

    // No name at all, or one that is not in the config: exit 64 with one line.
    for env in [&[][..], &[("HERD_NAME", "Nobody")][..]] {
        let out = Command::new(BIN)
            .args(["--config", path])
            .env_remove("HERD_NAME")
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{env:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        let want = if env.is_empty() {
            "no server to start"
        } else {
            "unknown server \"Nobody\""
        };
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn the_readiness_probe_fails_in_one_line_when_nothing_answers() {
    let closed = common::free_addr();
    for addr in [closed.to_string(), "not-an-address".to_owned()] {
        let out = Command::new(BIN)
            .args(["--probe-ready", &addr])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{addr}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}

#[test]
fn the_readiness_probe_passes_once_the_server_is_ready_and_says_why_not_before() {
    let dir = tempfile::tempdir().unwrap();
    // A has no neighbour: ready at once. B's neighbour C never runs: B stays not ready.
    let (a, b, c) = (
        common::free_addr(),
        common::free_addr(),
        common::free_addr(),
    );
    let (a_admin, b_admin) = (common::free_addr(), common::free_addr());
    let config = serde_json::json!({
        "servers": {
            "A": {"addr": a.to_string(), "admin": a_admin.to_string()},
            "B": {"addr": b.to_string(), "admin": b_admin.to_string()},
            "C": c.to_string(),
        },
        "links": [["B", "C"]],
    });
    let path = dir.path().join("herd.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let path = path.to_str().unwrap();
    let servers = Proc::spawn(&["--config", path, "A", "B"], &[], dir.path());
    servers.wait_line("B listening on");
    let probe = |addr: std::net::SocketAddr| {
        // HERD_CONFIG set, as in the image: the probe ignores it.
        Command::new(BIN)
            .args(["--probe-ready", &addr.to_string()])
            .env("HERD_CONFIG", path)
            .output()
            .unwrap()
    };
    let mut ready = false;
    for _ in 0..100 {
        if probe(a_admin).status.success() {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ready, "A (no neighbours) never probed ready");
    let out = probe(b_admin);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not ready: no reconciliation with a neighbour has finished yet"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(servers.stop().success());
}
