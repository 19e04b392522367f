//! Running servers change: neighbours added, removed and readdressed, a new secret, new
//! limits, on real loopback sockets.

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{name, start_server};
use herd_net::{Neighbour, ServerHandle};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

fn secret() -> String {
    format!("reconfigure-{:016x}", rand::random::<u64>())
}

fn neighbour(of: &ServerHandle) -> Neighbour {
    Neighbour {
        name: of.name().clone(),
        addr: of.local_addr().to_string(),
    }
}

/// Polls `cond` every 20 ms for at most 10 s; returns whether it held.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

fn links_up(s: &ServerHandle) -> Vec<String> {
    s.stats().links_up.iter().map(|n| n.to_string()).collect()
}

/// Sends one line to `s` and returns its reply line.
async fn ask(s: &ServerHandle, line: &str) -> String {
    let stream = TcpStream::connect(s.local_addr()).await.unwrap();
    let (r, mut w) = stream.into_split();
    w.write_all(format!("{line}\n").as_bytes()).await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        BufReader::new(r).read_line(&mut reply),
    )
    .await
    .expect("a reply in time")
    .unwrap();
    reply
}

/// A dead address: bound once, then freed.
async fn dead_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().to_string()
}

#[tokio::test]
async fn a_neighbour_added_on_both_sides_links_and_gets_the_store_and_a_removed_one_is_cut_off() {
    let s = secret();
    let (a, _ta) = start_server("A", vec![], Some(&s)).await;
    let (b, _tb) = start_server("B", vec![], Some(&s)).await;
    assert!(ask(&a, "IAMAT kiwi +1+1 1").await.starts_with("AT A "));
    assert!(a.add_neighbour(neighbour(&b)));
    assert!(!a.add_neighbour(neighbour(&b)), "already a neighbour");
    assert!(b.add_neighbour(neighbour(&a)));
    assert!(
        eventually(|| links_up(&a) == ["B"] && links_up(&b) == ["A"]).await,
        "the new link comes up"
    );
    assert!(eventually(|| b.record(b"kiwi").is_some()).await);
    assert_eq!(a.neighbours(), [neighbour(&b)]);

    assert!(b.remove_neighbour(&name("A")));
    assert!(!b.remove_neighbour(&name("A")), "removed already");
    assert!(b.neighbours().is_empty());
    assert!(links_up(&b).is_empty(), "B's side is down at once");
    assert!(
        eventually(|| links_up(&a).is_empty()).await,
        "A sees its session closed"
    );
    // A still dials B, and B refuses it: the link stays down while A keeps trying.
    let refused_before = Instant::now();
    while refused_before.elapsed() < Duration::from_millis(1500) {
        assert!(links_up(&a).is_empty() && links_up(&b).is_empty());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ask(&a, "IAMAT lime +1+1 2").await.starts_with("AT A "));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        b.record(b"lime").is_none(),
        "nothing crosses a removed link"
    );

    // Added again, A is a new neighbour of B and the link returns.
    assert!(b.add_neighbour(neighbour(&a)));
    assert!(eventually(|| links_up(&a) == ["B"] && links_up(&b) == ["A"]).await);
    assert!(eventually(|| b.record(b"lime").is_some()).await);
}

#[tokio::test]
async fn a_readdressed_neighbour_is_dialled_at_its_new_address_and_a_new_secret_admits_it() {
    let s = secret();
    let (b, _tb) = start_server("B", vec![], Some("another secret")).await;
    let (a, _ta) = start_server(
        "A",
        vec![Neighbour {
            name: name("B"),
            addr: dead_addr().await,
        }],
        Some(&s),
    )
    .await;
    assert!(b.add_neighbour(Neighbour {
        name: name("A"),
        addr: dead_addr().await,
    }));
    assert!(a.set_neighbour_addr(&name("B"), b.local_addr().to_string()));
    assert!(!a.set_neighbour_addr(&name("Z"), "127.0.0.1:1".into()));
    // A now reaches B, but their secrets differ: no link.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(links_up(&a).is_empty() && links_up(&b).is_empty());
    b.set_secret(Some(Arc::from(s.as_bytes())));
    assert!(
        eventually(|| links_up(&a) == ["B"] && links_up(&b) == ["A"]).await,
        "the next handshake proves the new secret"
    );
    assert_eq!(
        a.neighbours(),
        [Neighbour {
            name: name("B"),
            addr: b.local_addr().to_string()
        }]
    );
}

#[tokio::test]
async fn new_limits_bound_new_connections_and_the_store_at_once() {
    let (a, _ta) = start_server("A", vec![], Some(&secret())).await;
    let mut limits = a.limits();
    limits.max_clients_per_ip = 1;
    limits.max_line_bytes = 64;
    limits.record_ttl = Some(Duration::from_secs(60));
    a.set_limits(limits.clone());
    assert_eq!(a.limits(), limits);

    // One connection from this address at a time now.
    let held = TcpStream::connect(a.local_addr()).await.unwrap();
    assert!(eventually(|| a.stats().clients == 1).await);
    let mut second = TcpStream::connect(a.local_addr()).await.unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), second.read_to_end(&mut buf))
        .await
        .expect("closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0, "refused with nothing said");
    drop(held);
    assert!(eventually(|| a.stats().clients == 0).await);

    // A long line closes a new connection; a record past its new lifetime is not stored.
    let long = format!("IAMAT {} +1+1 1", "x".repeat(100));
    assert_eq!(ask(&a, &long).await, "", "closed without a reply");
    let reply = ask(&a, "IAMAT kiwi +1+1 1").await;
    assert!(reply.starts_with("AT A "), "{reply}");
    assert!(a.record(b"kiwi").is_none(), "expired on arrival");
    assert_eq!(a.stats().node.expired_on_arrival, 1);
}
