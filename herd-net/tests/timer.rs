//! The timer task sleeps until the next deadline: a pending deadline must not make it spin.

mod common;

use std::time::Duration;

use common::{name, start_server};
use herd_net::Neighbour;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_herd_query_wakes_the_timer_a_few_times_not_thousands() {
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (a, ta) = start_server(
        "A",
        vec![Neighbour {
            name: name("B"),
            addr: dead.to_string(),
        }],
        None,
    )
    .await;
    let (b, tb) = start_server(
        "B",
        vec![Neighbour {
            name: name("A"),
            addr: a.local_addr().to_string(),
        }],
        None,
    )
    .await;
    for _ in 0..500 {
        if !a.stats().links_up.is_empty() && !b.stats().links_up.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!a.stats().links_up.is_empty(), "A and B linked");
    let before = a.stats().timer_wakeups;
    // A does not know the client: it asks the herd, and the query's deadline (800 ms) stays
    // armed after B's answer.
    let mut s = TcpStream::connect(a.local_addr()).await.unwrap();
    s.write_all(b"WHATSAT nobody 1 1\n").await.unwrap();
    s.shutdown().await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, b"? WHATSAT nobody 1 1\n");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let woke = a.stats().timer_wakeups - before;
    assert!(
        woke < 50,
        "the timer woke {woke} times for one query deadline (plus pings' none)"
    );
    assert!(a.stats().node.queries_started >= 1);
    ta.cancel();
    tb.cancel();
}
