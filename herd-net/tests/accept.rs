//! Client connections on real loopback sockets, whichever way they are served: answered at
//! once after `accept` (the request and the half-close already there), or in the runtime
//! (the request arrives later, in pieces, or the replies do not fit the socket at once).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

mod common;

use common::start_server;
use herd_net::ServerHandle;
use tokio_util::sync::CancellationToken;

/// Starts a lone server G; the test talks to it with blocking sockets on other threads.
async fn server() -> (ServerHandle, CancellationToken) {
    start_server("G", vec![], None).await
}

fn connect(handle: &ServerHandle) -> TcpStream {
    let s = TcpStream::connect(handle.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

fn read_to_end(mut s: TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

/// `AT G <diff> <rest of the IAMAT>\n` for the IAMAT `line`, whatever the diff.
fn assert_at_line(reply: &[u8], iamat: &str) {
    let reply = std::str::from_utf8(reply).unwrap();
    let rest = iamat.strip_prefix("IAMAT ").unwrap();
    let (head, tail) = reply.split_at(5);
    assert_eq!(head, "AT G ", "{reply:?}");
    let (diff, tail) = tail.split_once(' ').unwrap();
    assert!(diff.starts_with('+') || diff.starts_with('-'), "{reply:?}");
    assert_eq!(tail, format!("{rest}\n"), "{reply:?}");
}

/// Runs a blocking client on its own thread (bounded by the socket timeouts).
async fn client<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_client_is_answered_whether_its_request_comes_at_once_or_later() {
    let (handle, token) = server().await;
    for delay_ms in [0u64, 150] {
        for split in [false, true] {
            let h = handle.clone();
            let line = format!("IAMAT c{delay_ms}{split} +34.068930-118.445127 1520023934.5");
            let sent = line.clone();
            let reply = client(move || {
                let mut s = connect(&h);
                // A delay lets the server accept and find nothing yet; a split line arrives
                // in two pieces.
                std::thread::sleep(Duration::from_millis(delay_ms));
                let bytes = format!("{sent}\n").into_bytes();
                if split {
                    s.write_all(&bytes[..10]).unwrap();
                    std::thread::sleep(Duration::from_millis(100));
                    s.write_all(&bytes[10..]).unwrap();
                } else {
                    s.write_all(&bytes).unwrap();
                }
                s.shutdown(Shutdown::Write).unwrap();
                read_to_end(s)
            })
            .await;
            assert_at_line(&reply, &line);
        }
    }
    // Connected and closed without a word: closed in turn, nothing sent.
    let h = handle.clone();
    let reply = client(move || {
        let s = connect(&h);
        s.shutdown(Shutdown::Write).unwrap();
        read_to_end(s)
    })
    .await;
    assert!(reply.is_empty());
    // A last line without a newline is still answered.
    let h = handle.clone();
    let reply = client(move || {
        let mut s = connect(&h);
        s.write_all(b"HELLO there").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        read_to_end(s)
    })
    .await;
    assert_eq!(reply, b"? HELLO there\n");
    // Many requests and the half-close in one go, read only later: twice as many bytes of
    // replies as of requests, all answered in order.
    let h = handle.clone();
    let reply = client(move || {
        let mut s = connect(&h);
        s.write_all(&b"x\n".repeat(8000)).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        read_to_end(s)
    })
    .await;
    assert!(reply == b"? x\n".repeat(8000), "{} bytes", reply.len());
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_that_do_not_fit_the_socket_at_once_all_arrive_in_order() {
    let (handle, token) = server().await;
    let h = handle.clone();
    // Every line is sent before anything is read: the server answers what it reads at once
    // and must finish the rest in the runtime, in order, before closing.
    let lines: Vec<String> = (0..20_000)
        .map(|i| format!("IAMAT client{i} +1.5-2.5 {}.25", 1_000_000 + i))
        .collect();
    let sent = lines.clone();
    let reply = client(move || {
        let mut s = connect(&h);
        let mut writer = s.try_clone().unwrap();
        let w = std::thread::spawn(move || {
            let mut all = Vec::new();
            for l in &sent {
                all.extend_from_slice(l.as_bytes());
                all.push(b'\n');
            }
            writer.write_all(&all).unwrap();
            writer.shutdown(Shutdown::Write).unwrap();
        });
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        w.join().unwrap();
        out
    })
    .await;
    let replies: Vec<&[u8]> = reply.split_inclusive(|&b| b == b'\n').collect();
    assert_eq!(replies.len(), lines.len());
    for (r, l) in replies.iter().zip(&lines) {
        assert_at_line(r, l);
    }
    assert_eq!(handle.stats().records, 20_000);
    token.cancel();
}
