//! One server on a real loopback socket: the client protocol of docs/client-protocol.md, byte for byte.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use common::*;
use herd_core::{LookupError, PlacesLookup, PlacesQuery};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KIWI: &[u8] = b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997\n";

fn one(limits: &str) -> String {
    let extra = if limits.is_empty() {
        String::new()
    } else {
        format!("\"limits\": {{{limits}}}")
    };
    config_json(&["Goloman"], &[], &extra)
}

fn whatsat_json_two() -> &'static str {
    "{\n   \"html_attributions\" : [],\n   \"results\" : [\n      {\n         \"name\" : \"a\"\n      },\n      {\n         \"name\" : \"b\"\n      }\n   ],\n   \"status\" : \"OK\"\n}"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iamat_example_is_answered_with_an_exact_at_line() {
    let herd = start(&one("")).await;
    let addr = herd.servers()[0].local_addr();
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let reply = exchange(addr, KIWI).await;
    assert_at(
        &reply,
        "Goloman",
        "kiwi.cs.ucla.edu",
        "+34.068930-118.445127",
        "1520023934.918963997",
    );
    let diff: f64 = std::str::from_utf8(&reply)
        .unwrap()
        .split(' ')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    let expected = before - 1_520_023_934.918_964;
    assert!((diff - expected).abs() < 5.0, "diff {diff} vs {expected}");
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_example_and_peer_messages_on_the_client_port_get_question_mark() {
    let herd = start(&one("")).await;
    let addr = herd.servers()[0].local_addr();
    let reply = exchange(
        addr,
        b"IAMAT Clark +12-118\nU 1 AT A +0.1 c +1+1 1\nD 1 0 0\nHERD/2 HELLO A Goloman 1 00 -\n",
    )
    .await;
    let want = "? IAMAT Clark +12-118\n? U 1 AT A +0.1 c +1+1 1\n? D 1 0 0\n? HERD/2 HELLO A Goloman 1 00 -\n";
    assert_eq!(String::from_utf8_lossy(&reply), want);
    assert_eq!(
        herd.servers()[0].stats().records,
        0,
        "peer messages on a client connection are never obeyed"
    );
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsat_returns_the_stored_at_line_and_places_cut_to_max_items() {
    let herd = start(&one("")).await;
    let addr = herd.servers()[0].local_addr();
    let at = exchange(addr, KIWI).await;
    let reply = exchange(addr, b"WHATSAT kiwi.cs.ucla.edu 10 2\n").await;
    let mut want = at.clone();
    want.extend_from_slice(whatsat_json_two().as_bytes());
    want.extend_from_slice(b"\n\n");
    assert_eq!(
        String::from_utf8_lossy(&reply),
        String::from_utf8_lossy(&want)
    );
    let unknown = exchange(addr, b"WHATSAT nobody 10 2\n").await;
    assert_eq!(unknown, b"? WHATSAT nobody 10 2\n");
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_messages_on_one_connection_are_answered_in_order() {
    let herd = start(&one("")).await;
    let addr = herd.servers()[0].local_addr();
    let mut input = Vec::new();
    input.extend_from_slice(KIWI);
    input.extend_from_slice(b"WHATSAT kiwi.cs.ucla.edu 10 2\r\n");
    input.extend_from_slice(b"bad line\n");
    input.extend_from_slice(b"IAMAT other +1+1 1.5\n");
    input.extend_from_slice(b"WHATSAT kiwi.cs.ucla.edu 50 1\n");
    input.extend_from_slice(b"last");
    let reply = exchange(addr, &input).await;
    let text = String::from_utf8(reply).unwrap();
    let at = text.lines().next().unwrap().to_owned();
    let one_json = "{\n   \"html_attributions\" : [],\n   \"results\" : [\n      {\n         \"name\" : \"a\"\n      }\n   ],\n   \"status\" : \"OK\"\n}";
    let other = text
        .lines()
        .find(|l| l.contains(" other "))
        .unwrap_or_default()
        .to_owned();
    let want = format!(
        "{at}\n{at}\n{}\n\n? bad line\n{other}\n{at}\n{one_json}\n\n? last\n",
        whatsat_json_two()
    );
    assert_eq!(text, want);
    assert!(
        other.starts_with("AT Goloman ") && other.ends_with(" other +1+1 1.5"),
        "{other}"
    );
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_newline_then_half_close_is_answered() {
    let herd = start(&one("")).await;
    let addr = herd.servers()[0].local_addr();
    let reply = exchange(addr, &KIWI[..KIWI.len() - 1]).await;
    assert_at(
        &reply,
        "Goloman",
        "kiwi.cs.ucla.edu",
        "+34.068930-118.445127",
        "1520023934.918963997",
    );
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blank_lines_get_no_reply() {
    let herd = start(&one("")).await;
    let addr = herd.servers()[0].local_addr();
    assert_eq!(exchange(addr, b"\n\r\n \t \n\x0b\x0c\n").await, b"");
    assert_eq!(exchange(addr, b"\n\nIAMAT x\n\n  \n").await, b"? IAMAT x\n");
    assert_eq!(exchange(addr, b"").await, b"");
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mib_line_closes_the_connection_after_answering_the_lines_before() {
    let herd = start(&one("")).await;
    let addr = herd.servers()[0].local_addr();
    let mut input = b"first\nIAMAT x\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 1 << 20));
    input.extend_from_slice(b"\nafter\n");
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.split();
    let write = async {
        // The server may close before taking everything; that is the point.
        let _ = w.write_all(&input).await;
        let _ = w.shutdown().await;
    };
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut out));
    let (_, res) = tokio::join!(write, read);
    res.expect("closed in time")
        .expect("clean close, replies intact");
    assert_eq!(out, b"? first\n? IAMAT x\n");
    // The server is still fine.
    assert_eq!(exchange(addr, b"again\n").await, b"? again\n");
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_line_bytes_is_configurable_and_exact() {
    let herd = start(&one("\"max_line_bytes\": 10")).await;
    let addr = herd.servers()[0].local_addr();
    assert_eq!(
        exchange(addr, b"0123456789\r\n0123456789\n").await,
        b"? 0123456789\n? 0123456789\n"
    );
    assert_eq!(exchange(addr, b"ok\n0123456789A\nnever\n").await, b"? ok\n");
    assert_eq!(exchange(addr, b"ok\n0123456789A").await, b"? ok\n");
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_binary_lines_are_echoed_after_question_mark() {
    let herd = start(&one("")).await;
    let addr = herd.servers()[0].local_addr();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut input = Vec::new();
    let mut want = Vec::new();
    for _ in 0..500 {
        let len = rng.gen_range(0..200);
        let mut line: Vec<u8> = (0..len)
            .map(|_| rng.gen::<u8>())
            .filter(|&b| b != b'\n')
            .collect();
        while line.last() == Some(&b'\r') {
            line.pop();
        }
        input.extend_from_slice(&line);
        input.push(b'\n');
        let blank = line.iter().all(|&b| herd_core::types::is_space(b));
        if !blank {
            want.extend_from_slice(b"? ");
            want.extend_from_slice(&line);
            want.push(b'\n');
        }
    }
    assert_eq!(exchange(addr, &input).await, want);
    herd.shutdown().await;
}

/// `want` connections, or fewer if the soft limit on open files cannot hold both their ends
/// (the test then says so); the soft limit here is read from /proc.
fn concurrent_connections(want: usize) -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(usize::MAX);
    let fit = soft.saturating_sub(200) / 2;
    if fit < want {
        eprintln!(
            "open-file soft limit {soft}: testing {fit} concurrent connections instead of {want}"
        );
    }
    want.min(fit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_connections_are_all_answered() {
    let herd = start(&one("")).await;
    let addr = herd.servers()[0].local_addr();
    // Both ends live in this process: 1000 connections need over 2000 descriptors.
    let n = concurrent_connections(1000);
    let mut conns = Vec::new();
    for i in 0..n {
        // From eight loopback addresses: one address may hold at most `max_clients_per_ip`
        // (256 by default) connections at once.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        let source = std::net::Ipv4Addr::new(127, 0, 0, 1 + (i % 8) as u8);
        socket.bind((source, 0).into()).unwrap();
        let s = socket.connect(addr).await.unwrap();
        conns.push((i, s));
    }
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|(i, mut s)| {
            tokio::spawn(async move {
                let msg = format!("IAMAT c{i} +1+1 {i}\n");
                s.write_all(msg.as_bytes()).await.unwrap();
                s.shutdown().await.unwrap();
                let mut out = Vec::new();
                s.read_to_end(&mut out).await.unwrap();
                assert_at(&out, "Goloman", &format!("c{i}"), "+1+1", &i.to_string());
            })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(herd.servers()[0].stats().records, n);
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_pipelined_lines_on_one_connection() {
    let herd = start(&one("")).await;
    let addr = herd.servers()[0].local_addr();
    let n = 100_000;
    let mut input = Vec::with_capacity(n * 32);
    for i in 0..n {
        input.extend_from_slice(format!("IAMAT p{} +1+1 {i}\n", i % 1000).as_bytes());
    }
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(&input).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut out));
    let (_, res) = tokio::join!(write, read);
    res.unwrap().unwrap();
    let replies = lines(&out);
    assert_eq!(replies.len(), n);
    for (i, line) in replies.iter().enumerate().step_by(997) {
        assert_at(
            line,
            "Goloman",
            &format!("p{}", i % 1000),
            "+1+1",
            &i.to_string(),
        );
    }
    let stats = herd.servers()[0].stats();
    assert_eq!((stats.node.iamats, stats.records), (n as u64, 1000));
    eprintln!("100k pipelined lines in {:?}", started.elapsed());
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_clients_are_closed_at_once() {
    let herd = start(&one("\"max_clients\": 2")).await;
    let addr = herd.servers()[0].local_addr();
    let mut a = TcpStream::connect(addr).await.unwrap();
    let mut b = TcpStream::connect(addr).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || herd.servers()[0].stats().clients
            == 2)
        .await
    );
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("closed at once");
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "third connection is closed: {n:?}"
    );
    for s in [&mut a, &mut b] {
        s.write_all(b"x\n").await.unwrap();
        s.read_exact(&mut buf[..4]).await.unwrap();
        assert_eq!(&buf[..4], b"? x\n");
    }
    drop((a, b));
    assert!(
        eventually(Duration::from_secs(5), || herd.servers()[0].stats().clients
            == 0)
        .await
    );
    assert_eq!(exchange(addr, b"y\n").await, b"? y\n");
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_is_closed_after_the_idle_timeout() {
    let herd = start(&one("\"idle_timeout_ms\": 300")).await;
    let addr = herd.servers()[0].local_addr();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"hi\n").await.unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out, b"? hi\n");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "closed too early: {waited:?}"
    );
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_talking_outlives_the_idle_timeout() {
    // The idle timer is not moved by every line: it re-arms itself from the last activity
    // when it fires. Lines every 100 ms for twice the idle timeout keep the connection open.
    let herd = start(&one("\"idle_timeout_ms\": 1500")).await;
    let addr = herd.servers()[0].local_addr();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    for i in 0..30 {
        let line = format!("hi{i}\n");
        s.write_all(line.as_bytes()).await.unwrap();
        let want = format!("? hi{i}\n");
        let mut got = Vec::new();
        while got.len() < want.len() {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_ne!(n, 0, "closed while the client was talking (line {i})");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, want.as_bytes());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then silence: closed after the idle timeout.
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.is_empty());
    herd.shutdown().await;
}

/// A Places service that never answers.
struct SilentPlaces;

#[async_trait]
impl PlacesLookup for SilentPlaces {
    async fn nearby(&self, _q: &PlacesQuery) -> Result<serde_json::Value, LookupError> {
        std::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsat_is_answered_within_the_places_timeout_when_places_hangs() {
    let herd = start_with(&one("\"places_timeout_ms\": 300"), Arc::new(SilentPlaces)).await;
    let addr = herd.servers()[0].local_addr();
    let at = exchange(addr, KIWI).await;
    let started = Instant::now();
    let reply = exchange(addr, b"WHATSAT kiwi.cs.ucla.edu 10 2\nnext\n").await;
    let took = started.elapsed();
    let mut want = at;
    want.extend_from_slice(b"{\n   \"html_attributions\" : [],\n   \"results\" : [],\n   \"status\" : \"UNKNOWN_ERROR\",\n   \"error_message\" : \"places service timed out\"\n}\n\n? next\n");
    assert_eq!(
        String::from_utf8_lossy(&reply),
        String::from_utf8_lossy(&want)
    );
    assert!(took >= Duration::from_millis(250), "{took:?}");
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_replies_in_flight() {
    let herd = start_with(&one("\"places_timeout_ms\": 500"), Arc::new(SilentPlaces)).await;
    let addr = herd.servers()[0].local_addr();
    exchange(addr, KIWI).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"WHATSAT kiwi.cs.ucla.edu 10 2\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stop = tokio::spawn(async move { herd.shutdown().await });
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.ends_with(b"\"status\" : \"UNKNOWN_ERROR\",\n   \"error_message\" : \"places service timed out\"\n}\n\n"));
    assert!(stop.await.unwrap(), "shutdown within the grace period");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_pipelined_whatsats_are_answered_in_order() {
    let herd = start(&one("")).await;
    let addr = herd.servers()[0].local_addr();
    let at = exchange(addr, KIWI).await;
    let mut input = Vec::new();
    let mut want = Vec::new();
    for i in 0..3000 {
        input.extend_from_slice(b"WHATSAT kiwi.cs.ucla.edu 10 2\n");
        want.extend_from_slice(&at);
        want.extend_from_slice(whatsat_json_two().as_bytes());
        want.extend_from_slice(b"\n\n");
        input.extend_from_slice(format!("n{i}\n").as_bytes());
        want.extend_from_slice(format!("? n{i}\n").as_bytes());
    }
    let reply = exchange(addr, &input).await;
    assert!(
        reply == want,
        "replies differ (got {} bytes, want {})",
        reply.len(),
        want.len()
    );
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_replies_is_closed_after_the_idle_timeout() {
    let herd = start(&one("\"idle_timeout_ms\": 300")).await;
    let addr = herd.servers()[0].local_addr();
    let s = TcpStream::connect(addr).await.unwrap();
    let (_read_half_never_read, mut w) = s.into_split();
    let chunk: Vec<u8> = (0..10_000)
        .flat_map(|i| format!("IAMAT r{i} +1+1 {i}\n").into_bytes())
        .collect();
    // Replies pile up unread until the server's writes stall; then it gives up on the client.
    let writer = tokio::spawn(async move {
        for _ in 0..1000 {
            if w.write_all(&chunk).await.is_err() {
                return true;
            }
        }
        false
    });
    let closed = tokio::time::timeout(Duration::from_secs(60), writer).await;
    assert!(
        matches!(closed, Ok(Ok(true))),
        "the server closed the stalled connection"
    );
    assert!(
        eventually(Duration::from_secs(5), || herd.servers()[0].stats().clients
            == 0)
        .await
    );
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_examples_of_the_protocol_are_accepted_or_refused_as_documented() {
    let herd = start(&one("")).await;
    let addr = herd.servers()[0].local_addr();
    let valid = [
        ("+34.06893-118.445127", "1520023934.918963997"),
        ("+34-118", "1589876543"),
        ("-90+180", "1589876543.1234567"),
    ];
    for (loc, time) in valid {
        let reply = exchange(addr, format!("IAMAT v {loc} {time}\n").as_bytes()).await;
        assert_at(&reply, "Goloman", "v", loc, time);
    }
    for bad in ["34.0-118.0", "+.5-118", "+34.-118", "+91+0", "+0+181"] {
        let line = format!("IAMAT b {bad} 1");
        assert_eq!(
            exchange(addr, format!("{line}\n").as_bytes()).await,
            format!("? {line}\n").into_bytes()
        );
    }
    for bad in [
        "WHATSAT v 0 1",
        "WHATSAT v 50.1 1",
        "WHATSAT v 10 0",
        "WHATSAT v 10 21",
        "IAMAT v +1+1 -5",
        "IAMAT v +1+1 1e9",
    ] {
        assert_eq!(
            exchange(addr, format!("{bad}\n").as_bytes()).await,
            format!("? {bad}\n").into_bytes()
        );
    }
    herd.shutdown().await;
}

/// The diff field as nanoseconds.
fn diff_nanos(reply: &[u8]) -> i128 {
    let text = std::str::from_utf8(reply).unwrap();
    let diff = text.split(' ').nth(2).unwrap();
    let (int, frac) = diff.split_once('.').unwrap();
    let sign = if int.starts_with('-') { -1 } else { 1 };
    let int: i128 = int[1..].parse().unwrap();
    sign * (int * 1_000_000_000 + frac.parse::<i128>().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diffs_are_exact_to_the_nanosecond_and_truncate_extra_digits() {
    let herd = start(&one("")).await;
    let addr = herd.servers()[0].local_addr();
    // One batch: the three lines share the server's receive time.
    let input = b"IAMAT a +1+1 1000.5\nIAMAT b +1+1 1000.25\nIAMAT c +1+1 1000.2500000009\n";
    let reply = exchange(addr, input).await;
    let l = lines(&reply);
    assert_eq!(l.len(), 3);
    assert_eq!(diff_nanos(l[1]) - diff_nanos(l[0]), 250_000_000);
    assert_eq!(
        diff_nanos(l[2]),
        diff_nanos(l[1]),
        "digits past the ninth are truncated"
    );
    let future = exchange(addr, b"IAMAT f +1+1 99999999999.5\n").await;
    assert!(std::str::from_utf8(&future)
        .unwrap()
        .split(' ')
        .nth(2)
        .unwrap()
        .starts_with('-'));
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_after_the_grace_period() {
    let json = one("\"places_timeout_ms\": 30000, \"shutdown_grace_ms\": 300");
    let herd = start_with(&json, Arc::new(SilentPlaces)).await;
    let addr = herd.servers()[0].local_addr();
    exchange(addr, KIWI).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"WHATSAT kiwi.cs.ucla.edu 10 2\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let in_time = herd.shutdown().await;
    assert!(!in_time, "a reply that cannot finish is abandoned");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(10),
        "{took:?}"
    );
}
