//! Geofences over real sockets: a fence at Hands sees the crossings of IAMATs sent to Welsh
//! (three hops away), a subscriber is never closed for being idle, and one that stops reading
//! is dropped without stalling the server's IAMATs.

mod common;

use std::time::Duration;

use common::{all_linked, config_json, eventually, exchange, start, HERD, LINKS};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// Reads one line (with its `\n`), bounded by 10 s.
async fn line(r: &mut BufReader<TcpStream>) -> String {
    let mut s = String::new();
    tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut s))
        .await
        .expect("a line in time")
        .expect("read");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_at_hands_sees_enter_and_exit_for_iamats_sent_to_welsh() {
    let herd = start(&config_json(&HERD, &LINKS, "")).await;
    all_linked(&herd, &LINKS).await;
    let hands = herd.server("Hands").unwrap().local_addr();
    let welsh = herd.server("Welsh").unwrap().local_addr();
    // Welsh's first records flood and build its broadcast tree. While it forms, a record can
    // reach Hands by a new path ahead of an older one on the way by another, which then
    // changes nothing (docs/client-protocol.md, FENCE): the crossings below are checked on
    // the formed tree, where each hop passes Welsh's records on in order.
    for k in 0..3 {
        exchange(
            welsh,
            format!("IAMAT warm +50+50 152002390{k}.0\n").as_bytes(),
        )
        .await;
        let converged = || {
            let digests: Vec<u64> = HERD
                .iter()
                .map(|n| herd.server(n).unwrap().stats().digest)
                .collect();
            digests.iter().all(|d| *d == digests[0])
        };
        assert!(eventually(Duration::from_secs(5), converged).await);
    }
    let mut sub = BufReader::new(TcpStream::connect(hands).await.unwrap());
    sub.get_mut()
        .write_all(b"FENCE ucla +34.068930-118.445127 1\nFENCE far +10+10 5\n")
        .await
        .unwrap();
    assert_eq!(
        line(&mut sub).await,
        "FENCED ucla +34.068930-118.445127 1\n"
    );
    assert_eq!(line(&mut sub).await, "FENCED far +10+10 5\n");

    let steps = [
        ("+34.069072-118.442781", "1520023930.0"), // inside ucla: ENTER
        ("+34.068000-118.445000", "1520023931.0"), // still inside: nothing
        ("+34.019454-118.491191", "1520023932.0"), // Santa Monica: EXIT
        ("+10.000000+10.010000", "1520023933.0"),  // into far: ENTER
    ];
    let mut acks = Vec::new();
    for (loc, time) in steps {
        let reply = exchange(welsh, format!("IAMAT kiwi {loc} {time}\n").as_bytes()).await;
        acks.push(String::from_utf8(reply).unwrap());
    }
    assert!(acks.iter().all(|a| a.starts_with("AT Welsh ")), "{acks:?}");
    let got = [
        line(&mut sub).await,
        line(&mut sub).await,
        line(&mut sub).await,
    ];
    assert_eq!(
        got,
        [
            format!("ENTER ucla {}", acks[0]),
            format!("EXIT ucla {}", acks[2]),
            format!("ENTER far {}", acks[3]),
        ],
        "events in store order, each with the AT line Welsh acknowledged"
    );
    // UNFENCE on the same connection: acknowledged, and no more events for that fence.
    sub.get_mut().write_all(b"UNFENCE far\n").await.unwrap();
    assert_eq!(line(&mut sub).await, "UNFENCED far\n");
    let back = exchange(welsh, b"IAMAT kiwi +34.068930-118.445127 1520023934.0\n").await;
    assert_eq!(
        line(&mut sub).await,
        format!("ENTER ucla {}", String::from_utf8(back).unwrap())
    );
    let hands_stats = herd.server("Hands").unwrap().stats();
    assert_eq!((hands_stats.fences, hands_stats.fence_subscribers), (1, 1));
    // Closing the connection ends its fences.
    drop(sub);
    let server = herd.server("Hands").unwrap();
    assert!(eventually(Duration::from_secs(5), || server.stats().fences == 0).await);
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_is_not_idle_while_a_plain_connection_is() {
    let json = config_json(&["Goloman"], &[], "\"limits\": {\"idle_timeout_ms\": 300}");
    let herd = start(&json).await;
    let addr = herd.server("Goloman").unwrap().local_addr();
    let mut plain = TcpStream::connect(addr).await.unwrap();
    let mut sub = BufReader::new(TcpStream::connect(addr).await.unwrap());
    sub.get_mut()
        .write_all(b"FENCE f +10+10 1\n")
        .await
        .unwrap();
    assert_eq!(line(&mut sub).await, "FENCED f +10+10 1\n");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf))
        .await
        .expect("the idle connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "the plain connection was closed for being idle");
    let at = exchange(addr, b"IAMAT c +10+10 1520023930\n").await;
    assert_eq!(
        line(&mut sub).await,
        format!("ENTER f {}", String::from_utf8(at).unwrap())
    );
    herd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_dropped_and_iamats_go_on() {
    let queue = 64;
    let json = config_json(
        &["Goloman"],
        &[],
        &format!("\"limits\": {{\"fence_queue_lines\": {queue}}}"),
    );
    let herd = start(&json).await;
    let server = herd.server("Goloman").unwrap();
    let addr = server.local_addr();
    // A small receive buffer, so the server's socket fills soon.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut sub = socket.connect(addr).await.unwrap();
    sub.write_all(b"FENCE f +10+10 50\n").await.unwrap();
    let mut ack = [0u8; 19];
    sub.read_exact(&mut ack).await.unwrap();
    assert_eq!(&ack, b"FENCED f +10+10 50\n");
    // The subscriber reads nothing more. Every IAMAT moves one client in or out of the fence
    // (an event each, with a long client id so the events fill the sockets' buffers soon).
    let id = "x".repeat(200);
    let total = 40_000usize;
    let mut load = TcpStream::connect(addr).await.unwrap();
    let mut batch = Vec::new();
    for i in 0..total {
        let loc = if i % 2 == 0 { "+10+10" } else { "-10-10" };
        batch.extend_from_slice(format!("IAMAT {id} {loc} {}\n", 1_520_000_000 + i).as_bytes());
    }
    let (mut rd, mut wr) = load.split();
    let writer = async {
        wr.write_all(&batch).await.unwrap();
        wr.shutdown().await.unwrap();
    };
    let mut replies = Vec::new();
    let reader = rd.read_to_end(&mut replies);
    let (_, read) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(writer, reader)
    })
    .await
    .expect("every IAMAT is answered while the subscriber does not read");
    read.unwrap();
    assert_eq!(replies.iter().filter(|&&b| b == b'\n').count(), total);
    let stats = server.stats();
    assert_eq!(
        stats.fence_subscribers_dropped, 1,
        "the subscriber was dropped"
    );
    assert_eq!(stats.fences, 0, "and its fence ended");
    assert_eq!(stats.node.iamats_stored as usize, total);
    // Its connection is closed: reading drains what was sent, then ends.
    let mut sink = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), sub.read_to_end(&mut sink))
        .await
        .expect("the subscriber's connection is closed")
        .ok();
    herd.shutdown().await;
}
