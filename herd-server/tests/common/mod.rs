//! Helpers shared by the black-box tests: herds on ephemeral ports, raw TCP exchanges.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_core::testing::StaticPlaces;
use herd_core::PlacesLookup;
use herd_server::{Herd, HerdConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The Places answer of the in-process tests.
pub fn places_json() -> serde_json::Value {
    serde_json::json!({
        "html_attributions": [],
        "results": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
        "status": "OK"
    })
}

pub fn static_places() -> Arc<dyn PlacesLookup> {
    Arc::new(StaticPlaces::new(places_json()))
}

/// A config of `names` all on 127.0.0.1:0, with `links` and extra top-level JSON.
/// A secret no other test uses: tests run in parallel on loopback, and a server must never
/// link to a same-named server of another test's herd that took a freed port.
pub fn unique_secret() -> String {
    format!("test-{:016x}", rand::random::<u64>())
}

/// A config of `names` all on 127.0.0.1:0, with `links` and extra top-level JSON; a unique
/// secret unless `extra` sets one.
pub fn config_json(names: &[&str], links: &[(&str, &str)], extra: &str) -> String {
    let servers: Vec<String> = names
        .iter()
        .map(|n| format!("\"{n}\": \"127.0.0.1:0\""))
        .collect();
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
        extra.push_str(&format!(", \"secret\": \"{}\"", unique_secret()));
    }
    format!(
        "{{\"servers\": {{{}}}, \"links\": [{}]{extra}}}",
        servers.join(", "),
        links.join(", ")
    )
}

/// The default herd's names and links.
pub const HERD: [&str; 5] = ["Goloman", "Hands", "Holiday", "Welsh", "Wilkes"];
pub const LINKS: [(&str, &str); 6] = [
    ("Goloman", "Hands"),
    ("Goloman", "Holiday"),
    ("Goloman", "Wilkes"),
    ("Hands", "Wilkes"),
    ("Holiday", "Welsh"),
    ("Holiday", "Wilkes"),
];

/// Starts every server of `json` in this process with static places.
pub async fn start(json: &str) -> Herd {
    start_with(json, static_places()).await
}

pub async fn start_with(json: &str, places: Arc<dyn PlacesLookup>) -> Herd {
    let config = HerdConfig::parse(json).expect("test config is valid");
    let names: Vec<_> = config.servers.iter().map(|s| s.name.clone()).collect();
    herd_server::start(&config, &names, places, "static")
        .await
        .expect("herd starts")
}

/// Sends `data`, half-closes, and reads until the server closes (bounded by 20 s).
pub async fn exchange(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(data).await.expect("write");
    s.shutdown().await.expect("half-close");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("server answers and closes in time")
        .expect("read");
    out
}

/// Polls `cond` every 20 ms until it holds or `limit` passes; returns whether it held.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts the herd of `names` and `links` (with `extra` in its config, as [`config_json`])
/// and waits until every link is up.
pub async fn start_linked(names: &[&str], links: &[(&str, &str)], extra: &str) -> Herd {
    let herd = start(&config_json(names, links, extra)).await;
    all_linked(&herd, links).await;
    herd
}

/// Waits until every server of `herd` has all its links up.
pub async fn all_linked(herd: &Herd, links: &[(&str, &str)]) {
    let ok = eventually(Duration::from_secs(10), || {
        herd.servers().iter().all(|s| {
            let want = links
                .iter()
                .filter(|(a, b)| *a == s.name().as_str() || *b == s.name().as_str())
                .count();
            s.stats().links_up.len() == want
        })
    })
    .await;
    assert!(ok, "links did not come up");
}

/// Splits a reply stream into lines (with their `\n`).
pub fn lines(bytes: &[u8]) -> Vec<&[u8]> {
    bytes.split_inclusive(|&b| b == b'\n').collect()
}

/// Checks an AT reply line for `IAMAT client loc time` received by `server`.
pub fn assert_at(line: &[u8], server: &str, client: &str, loc: &str, time: &str) {
    let text = std::str::from_utf8(line).expect("AT line is text");
    let f: Vec<&str> = text
        .strip_suffix('\n')
        .expect("ends with newline")
        .split(' ')
        .collect();
    assert_eq!(f.len(), 6, "{text:?}");
    assert_eq!(
        (f[0], f[1], f[3], f[4], f[5]),
        ("AT", server, client, loc, time),
        "{text:?}"
    );
    let diff = f[2];
    assert!(diff.starts_with('+') || diff.starts_with('-'), "{diff}");
    let (_, frac) = diff.split_once('.').expect("diff has a point");
    assert_eq!(frac.len(), 9, "nine decimals: {diff}");
}

/// A free loopback address for a server that a test starts: a random address in 127.0.0.0/8
/// (other than 127.0.0.x, where the kernel's ephemeral binds live) and a port below the
/// ephemeral range (32768+ on Linux). Parallel tests each draw their own address, so two of them
/// can no longer pick the same port between this check and the server's bind, and a server that
/// a test stops and restarts finds its address still free.
pub fn free_addr() -> std::net::SocketAddr {
    for _ in 0..1000 {
        let ip = std::net::Ipv4Addr::new(
            127,
            1 + rand::random::<u8>() % 254,
            1 + rand::random::<u8>() % 254,
            1 + rand::random::<u8>() % 254,
        );
        let port = 20_000 + rand::random::<u16>() % 12_000;
        let addr = std::net::SocketAddr::from((ip, port));
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free loopback address")
}
