//! The hostile-load limits of the herd config's `"limits"`, end to end on real sockets:
//! client id length, store bound, record lifetime and future skew.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn one(limits: &str) -> String {
    config_json(&["Goloman"], &[], &format!("\"limits\": {{{limits}}}"))
}

/// The wall clock now as an IAMAT time, `secs` seconds from now.
fn time_in(secs: f64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    format!("{:.9}", now + secs)
}

fn is_at(reply: &[u8], client: &str) -> bool {
    let text = String::from_utf8_lossy(reply);
    text.starts_with("AT Goloman ") && text.contains(&format!(" {client} "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_over_max_client_id_bytes_is_an_invalid_line() {
    let herd = start(&one("")).await;
    let s = &herd.servers()[0];
    let long = "x".repeat(257);
    let line = format!("IAMAT {long} +1+1 {}\n", time_in(0.0));
    let reply = exchange(s.local_addr(), line.as_bytes()).await;
    assert_eq!(reply, format!("? {line}").into_bytes());
    let whatsat = format!("WHATSAT {long} 10 1\n");
    let reply = exchange(s.local_addr(), whatsat.as_bytes()).await;
    assert_eq!(reply, format!("? {whatsat}").into_bytes());

    let just = "y".repeat(256);
    let reply = exchange(
        s.local_addr(),
        format!("IAMAT {just} +1+1 {}\n", time_in(0.0)).as_bytes(),
    )
    .await;
    assert!(is_at(&reply, &just), "{}", String::from_utf8_lossy(&reply));
    assert_eq!(s.stats().records, 1);
    assert!(s.record(long.as_bytes()).is_none());
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_max_client_id_bytes_is_configurable() {
    let herd = start(&one("\"max_client_id_bytes\": 8")).await;
    let addr = herd.servers()[0].local_addr();
    let t = time_in(0.0);
    let reply = exchange(addr, format!("IAMAT 123456789 +1+1 {t}\n").as_bytes()).await;
    assert!(reply.starts_with(b"? IAMAT 123456789"));
    let reply = exchange(addr, format!("IAMAT 12345678 +1+1 {t}\n").as_bytes()).await;
    assert!(is_at(&reply, "12345678"));
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_answers_a_new_client_but_does_not_store_it() {
    let herd = start(&one("\"max_records\": 3")).await;
    let s = &herd.servers()[0];
    for c in ["c1", "c2", "c3", "c4"] {
        let reply = exchange(
            s.local_addr(),
            format!("IAMAT {c} +1+1 {}\n", time_in(0.0)).as_bytes(),
        )
        .await;
        assert!(is_at(&reply, c), "{c}: {}", String::from_utf8_lossy(&reply));
    }
    let stats = s.stats();
    assert_eq!(stats.records, 3);
    assert_eq!(stats.node.records_refused, 1);
    assert!(stats.to_json_line().contains("\"records_refused\":1"));
    let reply = exchange(s.local_addr(), b"WHATSAT c4 10 1\n").await;
    assert_eq!(reply, b"? WHATSAT c4 10 1\n");
    // A client already held still replaces its record.
    let t = time_in(0.0);
    let reply = exchange(s.local_addr(), format!("IAMAT c2 +2+2 {t}\n").as_bytes()).await;
    assert!(is_at(&reply, "c2"));
    assert!(String::from_utf8_lossy(&s.record(b"c2").unwrap()).ends_with(&format!("+2+2 {t}")));
    assert_eq!(s.stats().records, 3);
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_expire_on_every_server_at_their_ttl() {
    let herd = start_linked(
        &["Goloman", "Hands"],
        &[("Goloman", "Hands")],
        "\"limits\": {\"record_ttl_ms\": 300}",
    )
    .await;
    let (g, h) = (&herd.servers()[0], &herd.servers()[1]);
    let reply = exchange(
        g.local_addr(),
        format!("IAMAT kiwi +1+1 {}\n", time_in(0.0)).as_bytes(),
    )
    .await;
    assert!(is_at(&reply, "kiwi"));
    assert!(
        eventually(Duration::from_secs(5), || h.stats().node.stored == 1).await,
        "flooded to Hands"
    );
    assert!(
        eventually(Duration::from_secs(5), || {
            g.stats().records == 0 && h.stats().records == 0
        })
        .await,
        "gone from both servers after its TTL"
    );
    let (gs, hs) = (g.stats(), h.stats());
    assert_eq!(gs.digest, hs.digest);
    assert_eq!(gs.node.expired + hs.node.expired, 2, "{gs:?} {hs:?}");
    assert!(gs.to_json_line().contains("\"expired\":1"));

    // Already older than the TTL: answered, not stored, not flooded.
    let reply = exchange(
        g.local_addr(),
        format!("IAMAT old +1+1 {}\n", time_in(-10.0)).as_bytes(),
    )
    .await;
    assert!(is_at(&reply, "old"));
    let gs = g.stats();
    assert_eq!(gs.records, 0);
    assert_eq!(gs.node.expired_on_arrival, 1);
    assert!(gs.to_json_line().contains("\"expired_on_arrival\":1"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.stats().records, 0);
    assert_eq!(g.stats().digest, h.stats().digest);
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iamat_from_the_far_future_is_answered_but_not_stored() {
    let herd = start(&one("\"max_future_skew_ms\": 1000")).await;
    let s = &herd.servers()[0];
    // 1 January 5000.
    let reply = exchange(s.local_addr(), b"IAMAT kiwi +1+1 95617584000.0\n").await;
    assert!(is_at(&reply, "kiwi"), "{}", String::from_utf8_lossy(&reply));
    let stats = s.stats();
    assert_eq!(stats.records, 0);
    assert_eq!(stats.node.future_refused, 1);
    assert!(stats.to_json_line().contains("\"future_refused\":1"));
    // The client's real update is not hidden behind the year 5000.
    let t = time_in(0.0);
    let reply = exchange(s.local_addr(), format!("IAMAT kiwi +2+2 {t}\n").as_bytes()).await;
    assert!(is_at(&reply, "kiwi"));
    let rec = String::from_utf8(s.record(b"kiwi").expect("stored")).unwrap();
    assert!(rec.ends_with(&format!("+2+2 {t}")), "{rec}");
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_of_a_big_store_read_in_a_loop_do_not_stop_iamats() {
    const RECORDS: usize = 200_000;
    let herd = start(&one("")).await;
    let s = herd.servers()[0].clone();
    // Fill the store in one pipelined connection.
    let t = time_in(0.0);
    let mut bulk = Vec::with_capacity(RECORDS * 40);
    for i in 0..RECORDS {
        bulk.extend_from_slice(format!("IAMAT bulk{i} +1+1 {t}\n").as_bytes());
    }
    // Written by one task while this one reads: the replies must not fill both ways' buffers.
    let stream = TcpStream::connect(s.local_addr()).await.unwrap();
    let (r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&bulk).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut replies = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(60),
        BufReader::new(r).read_to_end(&mut replies),
    )
    .await
    .expect("bulk answered")
    .unwrap();
    writer.await.unwrap();
    assert_eq!(lines(&replies).len(), RECORDS);
    assert_eq!(s.stats().records, RECORDS);

    let reader = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut json = 0;
            for _ in 0..100 {
                json += s.stats().to_json_line().len();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            json
        })
    };
    // Meanwhile IAMATs one round trip at a time, on one connection.
    let stream = TcpStream::connect(s.local_addr()).await.unwrap();
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    for i in 0..200 {
        w.write_all(format!("IAMAT live{i} +1+1 {}\n", time_in(0.0)).as_bytes())
            .await
            .unwrap();
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(20), r.read_line(&mut line))
            .await
            .expect("answered")
            .unwrap();
        assert!(is_at(line.as_bytes(), &format!("live{i}")), "{line}");
    }
    assert!(reader.await.unwrap() > 0);
    assert_eq!(s.stats().records, RECORDS + 200);
    herd.shutdown().await;
}
