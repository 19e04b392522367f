//! Several servers in one process on loopback: flooding, partitions healed, secrets.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use herd_core::Handshake;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_herd_iamat_at_welsh_then_whatsat_at_hands_returns_the_identical_at_line() {
    let herd = start(&config_json(&HERD, &LINKS, "")).await;
    all_linked(&herd, &LINKS).await;
    let welsh = herd.server("Welsh").unwrap().local_addr();
    let hands = herd.server("Hands").unwrap().local_addr();
    let at = exchange(
        welsh,
        b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997\n",
    )
    .await;
    assert_at(
        &at,
        "Welsh",
        "kiwi.cs.ucla.edu",
        "+34.068930-118.445127",
        "1520023934.918963997",
    );
    let reached = eventually(Duration::from_secs(5), || {
        herd.servers().iter().all(|s| s.stats().records == 1)
    })
    .await;
    assert!(reached, "the update reached every server");
    let reply = exchange(hands, b"WHATSAT kiwi.cs.ucla.edu 10 3\n").await;
    assert!(
        reply.starts_with(&at),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert!(reply.ends_with(b"}\n\n"));
    let digests: HashSet<u64> = herd.servers().iter().map(|s| s.stats().digest).collect();
    assert_eq!(digests.len(), 1);
    // Each server got the update once: no loops (6 links, 5 servers: 4 useful sends + echoes refused).
    let stale: u64 = herd.servers().iter().map(|s| s.stats().node.stale).sum();
    let stored: u64 = herd.servers().iter().map(|s| s.stats().node.stored).sum();
    assert_eq!(stored, 5);
    assert!(stale <= 6, "{stale}");
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsat_for_a_client_known_only_elsewhere_is_answered() {
    let herd = start_linked(&["A", "B"], &[("A", "B")], "").await;
    let a = herd.server("A").unwrap().local_addr();
    let b = herd.server("B").unwrap().local_addr();
    let at = exchange(a, b"IAMAT far +10-20 100\n").await;
    let reply = exchange(b, b"WHATSAT far 1 1\n").await;
    assert!(
        reply.starts_with(&at),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_updates_leaves_every_store_identical() {
    let herd = start(&config_json(&HERD, &LINKS, "")).await;
    all_linked(&herd, &LINKS).await;
    let mut tasks = Vec::new();
    for (k, s) in herd.servers().iter().enumerate() {
        let addr = s.local_addr();
        tasks.push(tokio::spawn(async move {
            let mut input = Vec::new();
            for i in 0..2000u32 {
                input.extend_from_slice(format!("IAMAT c{} +1+1 {}.{k}\n", i % 300, i).as_bytes());
            }
            exchange(addr, &input).await
        }));
    }
    for t in tasks {
        assert_eq!(lines(&t.await.unwrap()).len(), 2000);
    }
    let converged = eventually(Duration::from_secs(15), || {
        let d: HashSet<(u64, usize)> = herd
            .servers()
            .iter()
            .map(|s| (s.stats().digest, s.stats().records))
            .collect();
        d.len() == 1 && d.iter().all(|&(_, n)| n == 300)
    })
    .await;
    assert!(converged, "stores differ");
    herd.shutdown().await;
}

/// A TCP proxy in front of one server that can cut chosen links: it reads the peer hello to
/// learn which link a connection belongs to.
#[derive(Clone, Default)]
struct Cutter {
    state: Arc<Mutex<CutState>>,
}

#[derive(Default)]
struct CutState {
    blocked: HashSet<(String, String)>,
    conns: Vec<((String, String), CancellationToken)>,
}

fn key(a: &str, b: &str) -> (String, String) {
    if a < b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

impl Cutter {
    fn cut(&self, a: &str, b: &str) {
        let k = key(a, b);
        let mut st = self.state.lock().unwrap();
        st.blocked.insert(k.clone());
        for (ck, token) in &st.conns {
            if *ck == k {
                token.cancel();
            }
        }
    }

    fn heal(&self, a: &str, b: &str) {
        self.state.lock().unwrap().blocked.remove(&key(a, b));
    }

    /// Serves `listener`, forwarding to whatever `target` holds.
    fn serve(&self, listener: TcpListener, target: Arc<Mutex<Option<SocketAddr>>>) {
        let this = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let this = this.clone();
                let target = *target.lock().unwrap();
                tokio::spawn(async move { this.forward(stream, target).await });
            }
        });
    }

    async fn forward(&self, mut inbound: TcpStream, target: Option<SocketAddr>) {
        let Some(target) = target else { return };
        let mut first = Vec::new();
        let mut buf = [0u8; 512];
        while !first.contains(&b'\n') && first.len() < 4096 {
            match inbound.read(&mut buf).await {
                Ok(n) if n > 0 => first.extend_from_slice(&buf[..n]),
                _ => return,
            }
        }
        let end = first
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(first.len());
        let k = match Handshake::parse(&first[..end]) {
            Ok(Handshake::Hello { from, to, .. }) => key(from.as_str(), to.as_str()),
            _ => key("", ""),
        };
        let token = CancellationToken::new();
        {
            let mut st = self.state.lock().unwrap();
            if st.blocked.contains(&k) {
                return;
            }
            st.conns.retain(|(_, t)| !t.is_cancelled());
            st.conns.push((k, token.clone()));
        }
        let Ok(mut out) = TcpStream::connect(target).await else {
            return;
        };
        if out.write_all(&first).await.is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
            () = token.cancelled() => {}
        }
    }
}

async fn stores(herd: &herd_server::Herd) -> Vec<(String, usize, u64)> {
    herd.servers()
        .iter()
        .map(|s| (s.name().to_string(), s.stats().records, s.stats().digest))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_heals_and_every_server_converges_to_the_same_store() {
    let cutter = Cutter::default();
    let mut targets = Vec::new();
    let mut servers = Vec::new();
    for name in HERD {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(None));
        cutter.serve(listener, target.clone());
        targets.push((name, target));
        servers.push(format!(
            "\"{name}\": {{\"addr\": \"{addr}\", \"listen\": \"127.0.0.1:0\"}}"
        ));
    }
    let links: Vec<String> = LINKS
        .iter()
        .map(|(a, b)| format!("[\"{a}\", \"{b}\"]"))
        .collect();
    let json = format!(
        "{{\"servers\": {{{}}}, \"links\": [{}], \"secret\": \"{}\"}}",
        servers.join(", "),
        links.join(", "),
        unique_secret()
    );
    let herd = start(&json).await;
    for (name, target) in &targets {
        *target.lock().unwrap() = Some(herd.server(name).unwrap().local_addr());
    }
    all_linked(&herd, &LINKS).await;
    // Isolate Welsh and Hands.
    let cuts = [
        ("Holiday", "Welsh"),
        ("Goloman", "Hands"),
        ("Hands", "Wilkes"),
    ];
    for (a, b) in cuts {
        cutter.cut(a, b);
    }
    let isolated = eventually(Duration::from_secs(10), || {
        ["Welsh", "Hands"]
            .iter()
            .all(|n| herd.server(n).unwrap().stats().links_up.is_empty())
    })
    .await;
    assert!(isolated, "cut links went down");
    let addr = |n: &str| herd.server(n).unwrap().local_addr();
    exchange(addr("Welsh"), b"IAMAT c1 +1+1 10\n").await;
    exchange(addr("Hands"), b"IAMAT c2 +2+2 10\n").await;
    exchange(addr("Goloman"), b"IAMAT c3 +3+3 10\n").await;
    let newer_c1 = exchange(addr("Holiday"), b"IAMAT c1 +4+4 20\n").await;
    exchange(addr("Wilkes"), b"IAMAT c2 +5+5 5\n").await;
    let main_side = eventually(Duration::from_secs(5), || {
        ["Goloman", "Holiday", "Wilkes"]
            .iter()
            .all(|n| herd.server(n).unwrap().stats().records == 3)
    })
    .await;
    assert!(
        main_side,
        "updates flood within the majority side: {:?}",
        stores(&herd).await
    );
    assert_eq!(
        herd.server("Welsh").unwrap().stats().records,
        1,
        "nothing crosses a cut link"
    );
    assert_eq!(herd.server("Hands").unwrap().stats().records, 1);
    let hands_c2 = herd.server("Hands").unwrap().record(b"c2").unwrap();
    for (a, b) in cuts {
        cutter.heal(a, b);
    }
    let converged = eventually(Duration::from_secs(10), || {
        let d: HashSet<(usize, u64)> = herd
            .servers()
            .iter()
            .map(|s| (s.stats().records, s.stats().digest))
            .collect();
        d.len() == 1 && d.iter().all(|&(n, _)| n == 3)
    })
    .await;
    assert!(
        converged,
        "stores converge after healing: {:?}",
        stores(&herd).await
    );
    for s in herd.servers() {
        assert_eq!(
            s.record(b"c1").unwrap(),
            newer_c1.strip_suffix(b"\n").unwrap(),
            "newest c1 wins"
        );
        assert_eq!(s.record(b"c2").unwrap(), hands_c2, "newest c2 wins");
    }
    herd.shutdown().await;
}

async fn pair_with_secrets(
    a_secret: &str,
    b_secret: &str,
) -> (herd_server::Herd, herd_server::Herd) {
    let (pa, pb) = (free_addr(), free_addr());
    let nonce = unique_secret();
    let cfg = |secret: &str| {
        let secret = format!("{secret}-{nonce}");
        format!(
            "{{\"servers\": {{\"A\": \"{pa}\", \"B\": \"{pb}\"}}, \"links\": [[\"A\", \"B\"]], \"secret\": \"{secret}\"}}"
        )
    };
    let ca = herd_server::HerdConfig::parse(&cfg(a_secret)).unwrap();
    let cb = herd_server::HerdConfig::parse(&cfg(b_secret)).unwrap();
    let a = herd_server::start(
        &ca,
        &[ca.servers[0].name.clone()],
        static_places(),
        "static",
    )
    .await
    .unwrap();
    let b = herd_server::start(
        &cb,
        &[cb.servers[1].name.clone()],
        static_places(),
        "static",
    )
    .await
    .unwrap();
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_the_same_secret_link_and_a_wrong_secret_is_refused() {
    let (a, b) = pair_with_secrets("s3cret", "s3cret").await;
    let linked = eventually(Duration::from_secs(10), || {
        a.servers()[0].stats().links_up.len() == 1
    })
    .await;
    assert!(linked, "same secret links");
    a.shutdown().await;
    b.shutdown().await;

    let (a, b) = pair_with_secrets("s3cret", "wrong").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(a.servers()[0].stats().links_up.is_empty());
    assert!(b.servers()[0].stats().links_up.is_empty());
    exchange(a.servers()[0].local_addr(), b"IAMAT x +1+1 1\n").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        b.servers()[0].stats().records,
        0,
        "nothing from an unauthenticated peer"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_far_larger_than_the_peer_queue_is_paced_through_it() {
    // 5000 records (~300 KB of updates) to a neighbour through an 8 KiB queue: the delta is
    // queued 1 KiB at a time as the writer takes it, so the queue never overflows.
    let (pa, pb) = (free_addr(), free_addr());
    let json = format!(
        "{{\"servers\": {{\"A\": \"{pa}\", \"B\": \"{pb}\"}}, \"links\": [[\"A\", \"B\"]], \
         \"secret\": \"{}\", \"limits\": {{\"peer_queue_bytes\": 8192, \"resync_window_bytes\": 1024}}}}",
        unique_secret()
    );
    let config = herd_server::HerdConfig::parse(&json).unwrap();
    let name = |i: usize| config.servers[i].name.clone();
    let a = herd_server::start(&config, &[name(0)], static_places(), "static")
        .await
        .unwrap();
    let mut input = Vec::new();
    for i in 0..5000u32 {
        input.extend_from_slice(format!("IAMAT resync{i} +1+1 {i}\n").as_bytes());
    }
    let a_addr = a.servers()[0].local_addr();
    assert_eq!(lines(&exchange(a_addr, &input).await).len(), 5000);
    // B starts only now, on the port the config gave it, and asks A for everything.
    let b = herd_server::start(&config, &[name(1)], static_places(), "static")
        .await
        .unwrap();
    let converged = eventually(Duration::from_secs(20), || {
        let (sa, sb) = (a.servers()[0].stats(), b.servers()[0].stats());
        sb.records == 5000 && sb.digest == sa.digest && sa.links_up.len() == 1
    })
    .await;
    let (sa, sb) = (a.servers()[0].stats(), b.servers()[0].stats());
    assert!(converged, "B holds {} of 5000 records", sb.records);
    assert_eq!(sa.node.send_failures, 0, "A's queue never overflowed");
    // Each record at least once; a session replaced mid-delta (both ends dialling at once on a
    // loaded machine) resumes from what B saw, which may resend a few.
    assert!(sa.node.updates_sent >= 5000, "{}", sa.node.updates_sent);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_falls_behind_is_caught_up_from_the_store_and_keeps_every_latest_record() {
    // A lag of one byte: every record A stores while its writer still holds an earlier one
    // for B sets off a catch-up. The burst (40 clients, 200 updates each) goes through
    // catch-ups, not an overflow, and B ends with every client's latest record.
    let herd = start_linked(
        &["A", "B"],
        &[("A", "B")],
        "\"limits\": {\"peer_catch_up_bytes\": 1}",
    )
    .await;
    let mut input = Vec::new();
    for i in 0..8000u32 {
        input.extend_from_slice(format!("IAMAT c{} +1+1 {}\n", i % 40, 1_000 + i).as_bytes());
    }
    let a = herd.server("A").unwrap();
    let b = herd.server("B").unwrap();
    assert_eq!(lines(&exchange(a.local_addr(), &input).await).len(), 8000);
    let converged = eventually(Duration::from_secs(10), || {
        let sb = b.stats();
        sb.records == 40 && sb.digest == a.stats().digest
    })
    .await;
    let (sa, sb) = (a.stats(), b.stats());
    assert!(converged, "B holds {} of 40 records", sb.records);
    assert!(sa.node.catch_ups > 0, "the link fell behind: {:?}", sa.node);
    assert_eq!(sb.node.catch_ups_received, sa.node.catch_ups);
    assert_eq!(sa.node.send_failures, 0, "the queue never overflowed");
    assert!(
        sa.node.updates_sent < 8000,
        "records superseded while the link was behind were not sent: {}",
        sa.node.updates_sent
    );
    assert_eq!(
        (sa.links_up.len(), sb.links_up.len()),
        (1, 1),
        "the link stayed up"
    );
    // B's record of each client is A's latest: the last update of c0 is 1000 + 7960.
    let reply = exchange(b.local_addr(), b"WHATSAT c0 10 1\n").await;
    let first = String::from_utf8_lossy(lines(&reply)[0]).into_owned();
    assert!(first.ends_with(" c0 +1+1 8960\n"), "{first}");
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_queue_overflow_drops_the_link_and_reconciliation_repairs_it() {
    // 4 KiB holds a resync of 40 clients but not a burst of updates.
    let herd = start_linked(
        &["A", "B"],
        &[("A", "B")],
        "\"limits\": {\"peer_queue_bytes\": 4096}",
    )
    .await;
    let mut input = Vec::new();
    for i in 0..8000u32 {
        input.extend_from_slice(format!("IAMAT q{} +1+1 {i}\n", i % 40).as_bytes());
    }
    let a = herd.server("A").unwrap();
    assert_eq!(lines(&exchange(a.local_addr(), &input).await).len(), 8000);
    assert!(
        a.stats().node.send_failures > 0,
        "the burst overflowed the queue"
    );
    let converged = eventually(Duration::from_secs(10), || {
        let b = herd.server("B").unwrap().stats();
        b.records == 40 && b.digest == a.stats().digest && b.links_up.len() == 1
    })
    .await;
    assert!(
        converged,
        "B caught up after the overflow: {:?}",
        stores(&herd).await
    );
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_is_compacted_in_the_background_and_restores_the_newest_records() {
    let data = tempfile::tempdir().unwrap();
    let json = config_json(
        &["A"],
        &[],
        &format!(
            "\"data_dir\": \"{}\", \"journal_fsync\": true, \"limits\": {{\"journal_compact_lines\": 100}}",
            data.path().display()
        ),
    );
    let herd = start(&json).await;
    let addr = herd.servers()[0].local_addr();
    // 20 clients, 30 updates each: 600 stored records for a store of 20.
    for round in 0..30u32 {
        let mut input = Vec::new();
        for c in 0..20u32 {
            input.extend_from_slice(format!("IAMAT jc{c} +1+1 {round}\n").as_bytes());
        }
        assert_eq!(lines(&exchange(addr, &input).await).len(), 20);
    }
    let path = data.path().join("A.journal");
    let text = std::fs::read_to_string(&path).unwrap();
    let count = text.lines().count();
    // Compacted whenever it passed 100 lines (in the background, so how far past depends on
    // the machine's load): without compaction it would hold all 600.
    assert!(count < 600, "{count} lines in the journal: never compacted");
    assert!(
        text.contains(" jc7 +1+1 29\n"),
        "the newest record is there"
    );
    let stats = herd.servers()[0].stats();
    assert_eq!(stats.journal.map(|j| j.1), Some(0), "no write errors");
    assert!(stats.to_json_line().contains("\"journal_errors\":0"));
    herd.shutdown().await;
    // The journal's lock goes with the servers, when the herd is dropped.
    drop(herd);
    // Restarted on the same journal: every client at its newest. A compaction still running
    // on its thread holds the journal's lock for a moment after the shutdown.
    let config = herd_server::HerdConfig::parse(&json).unwrap();
    let names = [config.servers[0].name.clone()];
    let mut tries = 0;
    let herd = loop {
        match herd_server::start(&config, &names, static_places(), "static").await {
            Ok(h) => break h,
            // "in use" is in the error's cause, not its own line: read the whole chain.
            Err(e) if error_chain(&e).contains("in use") && tries < 200 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("restart failed: {e}"),
        }
    };
    let s = herd.servers()[0].stats();
    assert_eq!(s.records, 20);
    let addr = herd.servers()[0].local_addr();
    let reply = exchange(addr, b"WHATSAT jc7 10 1\n").await;
    let first = String::from_utf8_lossy(lines(&reply)[0]).into_owned();
    assert!(first.ends_with(" jc7 +1+1 29\n"), "{first}");
    herd.shutdown().await;
}

/// An error and all its causes, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
