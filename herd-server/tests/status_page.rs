//! The status page in a real browser: five real `herd-server` processes, Debian's `chromium`
//! headless loads `http://ADMIN/` of one of them, and the rendered DOM shows the five servers,
//! the six links up and one marker per client; a screenshot goes to `target/status-page.png`.
//! When a server is killed, the page shows it unreachable and its link not up.
//!
//! Needs `chromium` on the PATH (or `HERD_CHROMIUM=/path/to/chromium`). Without it the test
//! says so and passes, so the README's test command works on a machine without a browser;
//! `.ci/run` installs chromium and sets `HERD_REQUIRE_BROWSER=1`, which makes a missing
//! browser a failure. `HERD_SKIP_BROWSER=1` skips it (it says so and passes).

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_addr, HERD, LINKS};

const BIN: &str = env!("CARGO_BIN_EXE_herd-server");

/// The server whose page the browser loads.
const PAGE_OF: &str = "Goloman";

/// The IAMATs sent to `PAGE_OF`: one client each, spread over the world.
const CLIENTS: [(&str, &str); 7] = [
    ("kiwi.cs.ucla.edu", "+34.068930-118.445127"),
    ("london.example", "+51.507400-000.127800"),
    ("tokyo.example", "+35.676200+139.650300"),
    ("sydney.example", "-33.868800+151.209300"),
    ("nairobi.example", "-01.292100+036.821900"),
    ("saopaulo.example", "-23.555800-046.639600"),
    ("reykjavik.example", "+64.146600-021.942600"),
];

/// The longest any one browser run may take before it is killed and the test fails.
const BROWSER_LIMIT: Duration = Duration::from_secs(90);

/// A server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Five servers on free loopback addresses, each with an admin address, in a temp config.
struct Layout {
    dir: tempfile::TempDir,
    addrs: HashMap<&'static str, SocketAddr>,
    admin: HashMap<&'static str, SocketAddr>,
}

impl Layout {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (mut addrs, mut admin, mut servers) = (HashMap::new(), HashMap::new(), Vec::new());
        for n in HERD {
            let (a, h) = (free_addr(), free_addr());
            servers.push(format!(
                "\"{n}\": {{\"addr\": \"{a}\", \"admin\": \"{h}\"}}"
            ));
            addrs.insert(n, a);
            admin.insert(n, h);
        }
        let links: Vec<String> = LINKS
            .iter()
            .map(|(a, b)| format!("[\"{a}\", \"{b}\"]"))
            .collect();
        let json = format!(
            "{{\"servers\": {{{}}}, \"links\": [{}], \"secret\": \"{}\"}}",
            servers.join(", "),
            links.join(", "),
            common::unique_secret()
        );
        std::fs::write(dir.path().join("herd.json"), json).unwrap();
        Self { dir, addrs, admin }
    }

    fn stderr(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.stderr"))).unwrap_or_default()
    }

    /// Starts `name` and waits until both its client and admin addresses accept.
    fn spawn(&self, name: &'static str) -> Server {
        let err = std::fs::File::create(self.dir.path().join(format!("{name}.stderr"))).unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(self.dir.path().join("herd.json"))
            .arg("--log-dir")
            .arg(self.dir.path().join("logs"))
            .arg("--places")
            .arg("offline")
            .arg(name)
            .env_remove("HERD_SECRET")
            .env_remove("PLACES_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        let mut server = Server(child);
        let start = Instant::now();
        for addr in [self.addrs[name], self.admin[name]] {
            while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                if let Some(status) = server.0.try_wait().unwrap() {
                    panic!("{name} exited at start ({status}): {}", self.stderr(name));
                }
                assert!(
                    start.elapsed() < Duration::from_secs(15),
                    "{name} never listened on {addr}: {}",
                    self.stderr(name)
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        server
    }

    /// `GET path` on `name`'s admin address, as JSON; `None` on any failure.
    fn get_json(&self, name: &str, path: &str) -> Option<serde_json::Value> {
        let (status, body) = http_get(self.admin[name], path).ok()?;
        if status != 200 {
            return None;
        }
        serde_json::from_slice(&body).ok()
    }
}

/// A minimal HTTP/1.1 GET (the test's own client: no HTTP crate in the dev-dependencies).
/// Returns the status code and the body (de-chunked when the answer is chunked).
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let mut body = raw[end + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let (mut out, mut rest) = (Vec::new(), &body[..]);
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("bad chunk"))?;
            let size_text = String::from_utf8_lossy(&rest[..eol]);
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                break;
            }
            let chunk = rest
                .get(eol + 2..eol + 2 + size)
                .ok_or_else(|| bad("short chunk"))?;
            out.extend_from_slice(chunk);
            rest = rest
                .get(eol + 4 + size..)
                .ok_or_else(|| bad("short chunk"))?;
        }
        body = out;
    }
    Ok((status, body))
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
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `/herd` shows every server reachable, every link of every status up, and every
/// server holding `records` records.
fn herd_settled(herd: &serde_json::Value, records: u64) -> bool {
    let Some(servers) = herd["servers"].as_array() else {
        return false;
    };
    servers.len() == HERD.len()
        && servers.iter().all(|s| {
            let st = &s["status"];
            s["reachable"] == true
                && st["stats"]["records"].as_u64() == Some(records)
                && st["links"]
                    .as_array()
                    .is_some_and(|l| !l.is_empty() && l.iter().all(|l| l["state"] == "up"))
        })
}

/// The browser to use, or `None` when the test is to be skipped (`HERD_SKIP_BROWSER=1`);
/// panics with what to do when there is none.
fn browser() -> Option<PathBuf> {
    if std::env::var("HERD_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("status_page: skipped (HERD_SKIP_BROWSER=1)");
        return None;
    }
    if let Some(p) = std::env::var_os("HERD_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("chromium"))
            .find(|p| p.is_file())
    });
    let help = "the status page test needs Debian's chromium on the PATH (`apt-get install -y \
                chromium`, which .ci/run does), or HERD_CHROMIUM=/path/to/chromium";
    match found {
        Some(p) => Some(p),
        None if std::env::var("HERD_REQUIRE_BROWSER").is_ok_and(|v| v == "1") => {
            panic!("{help} (HERD_REQUIRE_BROWSER=1)")
        }
        None => {
            eprintln!("status_page: NOT RUN: {help}; .ci/run installs it and requires it");
            None
        }
    }
}

/// Runs headless chromium on `url` with `args` in a fresh profile; returns its stdout.
/// Killed and failed if it runs longer than [`BROWSER_LIMIT`].
fn chromium(bin: &Path, url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out_file = profile.path().join("stdout");
    let err_file = profile.path().join("stderr");
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1400,900",
            // Lets the page's scripts run (and its first polls answer) before the DOM is dumped
            // or the screenshot taken.
            "--virtual-time-budget=5000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.path().join("profile").display()
        ))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > BROWSER_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish within {BROWSER_LIMIT:?}: {}",
                std::fs::read_to_string(&err_file).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "chromium failed ({status}): {}",
        std::fs::read_to_string(&err_file).unwrap_or_default()
    );
    std::fs::read_to_string(&out_file).unwrap()
}

/// The start tag of the element carrying `attr` (e.g. `data-server="Welsh"`), if any.
fn tag_with<'a>(dom: &'a str, attr: &str) -> Option<&'a str> {
    let at = dom.find(attr)?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    Some(&dom[start..=end])
}

/// The start tag of link `a`–`b` (named in either order).
fn link_tag<'a>(dom: &'a str, a: &str, b: &str) -> &'a str {
    tag_with(dom, &format!("data-link=\"{a}-{b}\""))
        .or_else(|| tag_with(dom, &format!("data-link=\"{b}-{a}\"")))
        .unwrap_or_else(|| panic!("no link {a}-{b} in the page: {dom}"))
}

/// The dumped DOM without its `<style>` and `<script>` elements: only the rendered markup.
fn markup(dom: &str) -> String {
    let mut out = String::with_capacity(dom.len());
    let mut rest = dom;
    loop {
        let next = ["<style", "<script"]
            .iter()
            .filter_map(|open| rest.find(open).map(|at| (at, *open)))
            .min();
        let Some((at, open)) = next else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..at]);
        let close = if open == "<style" {
            "</style>"
        } else {
            "</script>"
        };
        match rest[at..].find(close) {
            Some(end) => rest = &rest[at + end + close.len()..],
            None => return out,
        }
    }
}

fn count(dom: &str, needle: &str) -> usize {
    dom.matches(needle).count()
}

#[test]
fn chromium_renders_the_five_servers_the_six_links_up_and_a_marker_per_client() {
    let Some(bin) = browser() else {
        return;
    };
    let layout = Layout::new();
    let mut servers: HashMap<&str, Server> = HERD.iter().map(|n| (*n, layout.spawn(n))).collect();

    // The clients, all told to the server whose page is loaded.
    let mut input = String::new();
    for (i, (client, loc)) in CLIENTS.iter().enumerate() {
        input.push_str(&format!("IAMAT {client} {loc} 1700000000.{i}\n"));
    }
    let mut s = TcpStream::connect(layout.addrs[PAGE_OF]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(input.as_bytes()).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut replies = String::new();
    s.read_to_string(&mut replies).unwrap();
    assert_eq!(replies.lines().count(), CLIENTS.len(), "{replies}");

    let records = CLIENTS.len() as u64;
    let mut last = None;
    let settled = poll(Duration::from_secs(30), || {
        last = layout.get_json(PAGE_OF, "/herd");
        last.as_ref().is_some_and(|h| herd_settled(h, records))
    });
    assert!(
        settled,
        "the herd never showed every link up and {records} records everywhere; last /herd: {last:?}"
    );

    let url = format!("http://{}/", layout.admin[PAGE_OF]);
    let dom = markup(&chromium(&bin, &url, &["--dump-dom"]));
    assert!(dom.contains("id=\"updated\""), "{dom}");
    assert!(
        tag_with(&dom, "id=\"updated\"").is_some_and(|t| t.contains("class=\"live\"")),
        "the page never loaded /herd: {dom}"
    );
    assert_eq!(count(&dom, "data-server=\""), HERD.len(), "{dom}");
    for name in HERD {
        let node = tag_with(&dom, &format!("data-server=\"{name}\"")).expect(name);
        assert!(node.contains("data-reachable=\"true\""), "{node}");
    }
    assert_eq!(count(&dom, "data-link=\""), LINKS.len(), "{dom}");
    assert_eq!(count(&dom, "data-state=\"up\""), LINKS.len(), "{dom}");
    for (a, b) in LINKS {
        let link = link_tag(&dom, a, b);
        assert!(link.contains("data-state=\"up\""), "{link}");
    }
    assert_eq!(
        count(&dom, "class=\"client-marker\""),
        CLIENTS.len(),
        "{dom}"
    );
    for (client, _) in CLIENTS {
        assert!(
            dom.contains(&format!("data-client=\"{client}\"")),
            "{client}"
        );
    }

    // The screenshot, next to the build's own output (`target/status-page.png`).
    let target = Path::new(BIN)
        .parent()
        .and_then(Path::parent)
        .expect("the binary is in target/PROFILE/");
    let png = target.join("status-page.png");
    let _ = std::fs::remove_file(&png);
    chromium(&bin, &url, &[&format!("--screenshot={}", png.display())]);
    let bytes = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    eprintln!("status_page: screenshot in {}", png.display());

    // A server killed: the page shows it unreachable and its links not up.
    drop(servers.remove("Welsh"));
    let gone = poll(Duration::from_secs(30), || {
        layout.get_json(PAGE_OF, "/herd").is_some_and(|h| {
            let servers = h["servers"].as_array().cloned().unwrap_or_default();
            let welsh = servers.iter().find(|s| s["name"] == "Welsh");
            let holiday = servers.iter().find(|s| s["name"] == "Holiday");
            welsh.is_some_and(|w| w["reachable"] == false)
                && holiday.is_some_and(|s| {
                    s["status"]["links"].as_array().is_some_and(|l| {
                        l.iter().any(|l| l["peer"] == "Welsh" && l["state"] != "up")
                    })
                })
        })
    });
    assert!(
        gone,
        "/herd never showed Welsh unreachable and its link not up"
    );
    let dom = markup(&chromium(&bin, &url, &["--dump-dom"]));
    assert_eq!(count(&dom, "data-server=\""), HERD.len(), "{dom}");
    let welsh = tag_with(&dom, "data-server=\"Welsh\"").unwrap();
    assert!(welsh.contains("data-reachable=\"false\""), "{welsh}");
    let link = link_tag(&dom, "Holiday", "Welsh");
    assert!(!link.contains("data-state=\"up\""), "{link}");
    assert_eq!(count(&dom, "data-state=\"up\""), LINKS.len() - 1, "{dom}");
    drop(servers);
}
