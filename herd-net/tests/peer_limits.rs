//! Hostile peers on real loopback sockets: a second digest in one session, and records whose
//! client id is over `max_client_id_bytes`. The test plays the neighbour through herd-core's
//! own handshake ([`Dialler`]).

use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{name, spec, start_spec};
use herd_core::peer::Dialler;
use herd_core::{Handshake, PeerMsg};
use herd_net::{Neighbour, ServerHandle};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Server S whose only neighbour P is dialled where nobody listens, with `max_client_id_bytes`.
async fn server(max_client_id_bytes: usize) -> (ServerHandle, CancellationToken) {
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut spec = spec(
        "S",
        vec![Neighbour {
            name: name("P"),
            addr: dead.to_string(),
        }],
        None,
    );
    spec.limits.max_client_id_bytes = max_client_id_bytes;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_spec(spec, listener)
}

struct FakePeer {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
    /// The server's epoch, from the handshake.
    epoch: u64,
}

impl FakePeer {
    /// Connects as P, does the handshake and the digest exchange: the link is up.
    async fn linked(handle: &ServerHandle) -> Self {
        let (r, w) = TcpStream::connect(handle.local_addr())
            .await
            .unwrap()
            .into_split();
        let mut p = Self {
            read: BufReader::new(r),
            write: w,
            epoch: 0,
        };
        let d = Dialler::new(name("P"), name("S"), 7, 42, None::<Arc<[u8]>>);
        p.raw(&d.hello().to_line()).await;
        let reply = Handshake::parse(&p.line().await.expect("a reply")).unwrap();
        let (epoch, auth) = d.on_reply(&reply).expect("handshake succeeds");
        p.raw(&auth.to_line()).await;
        p.epoch = epoch;
        let PeerMsg::Digest { .. } = p.msg().await else {
            panic!("server opens with its digest")
        };
        p.raw(&digest(epoch)).await;
        assert_eq!(p.msg().await, PeerMsg::Synced { seq: 0 });
        assert!(eventually(|| handle.stats().links_up.len() == 1).await);
        p
    }

    async fn raw(&mut self, bytes: &[u8]) {
        self.write.write_all(bytes).await.unwrap();
    }

    /// The next line other than a ping, without `\n`; `None` at end of stream.
    async fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            let mut buf = Vec::new();
            let n = tokio::time::timeout(
                Duration::from_secs(10),
                self.read.read_until(b'\n', &mut buf),
            )
            .await
            .expect("a line in time")
            .ok()?;
            if n == 0 {
                return None;
            }
            buf.pop();
            if buf != b"P" {
                return Some(buf);
            }
        }
    }

    async fn msg(&mut self) -> PeerMsg {
        PeerMsg::parse(&self.line().await.expect("a message")).unwrap()
    }
}

fn digest(your_epoch: u64) -> Vec<u8> {
    PeerMsg::Digest {
        epoch: 7,
        your_epoch,
        seen: 0,
    }
    .to_line()
}

async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_digest_in_one_session_drops_the_link() {
    let (handle, token) = server(256).await;
    let mut p = FakePeer::linked(&handle).await;
    let errors = handle.stats().node.peer_errors;
    let again = digest(p.epoch);
    p.raw(&again).await;
    assert_eq!(p.line().await, None, "the server closes the link");
    assert!(eventually(|| handle.stats().links_up.is_empty()).await);
    assert_eq!(handle.stats().node.peer_errors, errors + 1);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_record_with_a_long_client_id_is_not_stored_and_the_link_stays() {
    let (handle, token) = server(8).await;
    let mut p = FakePeer::linked(&handle).await;
    p.raw(b"U 1 AT P +0.500000000 123456789 +1+1 10\n").await;
    p.raw(b"U 2 AT P +0.500000000 12345678 +1+1 10\n").await;
    assert!(eventually(|| handle.record(b"12345678").is_some()).await);
    let stats = handle.stats();
    assert_eq!(stats.records, 1);
    assert_eq!(stats.node.long_ids_refused, 1);
    assert!(stats.to_json_line().contains("\"long_ids_refused\":1"));
    assert_eq!(
        stats.links_up.len(),
        1,
        "a refused record is no protocol error"
    );
    token.cancel();
}
