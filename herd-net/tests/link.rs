//! A server's peer side on real loopback sockets, with the test playing the neighbour through
//! herd-core's own handshake and message types.

use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{name, start_server};
use herd_core::peer::seal::{Opened, Opener, Sealer};
use herd_core::peer::Dialler;
use herd_core::{Handshake, PeerMsg};
use herd_net::{Neighbour, ServerHandle};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Starts server S whose only neighbour is P (dialled at an address nobody listens on).
async fn server(secret: Option<&str>) -> (ServerHandle, CancellationToken) {
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    server_dialling(secret, dead).await
}

/// Starts server S whose only neighbour P is dialled at `dead`.
async fn server_dialling(
    secret: Option<&str>,
    dead: std::net::SocketAddr,
) -> (ServerHandle, CancellationToken) {
    start_server(
        "S",
        vec![Neighbour {
            name: name("P"),
            addr: dead.to_string(),
        }],
        secret,
    )
    .await
}

struct FakePeer {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
    /// After a handshake with a secret the session is sealed both ways (herd-core's own
    /// `seal`): what this side sends is sealed, what it reads is opened batch by batch.
    seal: Option<(Sealer, Opener)>,
    /// Raw bytes read and not yet opened (sealed sessions).
    raw_in: Vec<u8>,
    /// Lines opened and not yet taken.
    opened: std::collections::VecDeque<Vec<u8>>,
}

impl FakePeer {
    async fn connect(
        handle: &ServerHandle,
        me: &str,
        secret: Option<&str>,
    ) -> (Self, Result<u64, String>) {
        let stream = TcpStream::connect(handle.local_addr()).await.unwrap();
        let (r, w) = stream.into_split();
        let mut p = FakePeer::new(r, w);
        let d = Dialler::new(
            name(me),
            name("S"),
            7,
            42,
            secret.map(|s| Arc::from(s.as_bytes())),
        );
        p.raw(&d.hello().to_line()).await;
        let Some(line) = p.line().await else {
            return (p, Err("closed".into()));
        };
        let reply = Handshake::parse(&line).unwrap();
        match d.on_reply(&reply) {
            Ok((epoch, auth)) => {
                p.raw(&auth.to_line()).await;
                p.seal = d
                    .session_keys(&reply)
                    .map(|k| (Sealer::new(&k), Opener::new(&k, 1 << 20)));
                (p, Ok(epoch))
            }
            Err(e) => (p, Err(e.to_string())),
        }
    }

    fn new(r: OwnedReadHalf, w: OwnedWriteHalf) -> Self {
        FakePeer {
            read: BufReader::new(r),
            write: w,
            seal: None,
            raw_in: Vec::new(),
            opened: std::collections::VecDeque::new(),
        }
    }

    async fn send(&mut self, msg: &PeerMsg) {
        let mut bytes = Vec::new();
        match self.seal.as_mut() {
            Some((sealer, _)) => sealer.seal(&msg.to_line(), &mut bytes),
            None => bytes = msg.to_line(),
        }
        self.write.write_all(&bytes).await.unwrap();
    }

    async fn raw(&mut self, bytes: &[u8]) {
        self.write.write_all(bytes).await.unwrap();
    }

    /// The next line without `\n` other than a heartbeat ping, or `None` at end of stream.
    async fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            let line = self.any_line().await?;
            if line != b"P" {
                return Some(line);
            }
        }
    }

    /// The next line without `\n`, pings included, or `None` at end of stream; on a sealed
    /// session only lines whose batch passed its check.
    async fn any_line(&mut self) -> Option<Vec<u8>> {
        if self.seal.is_none() {
            return self.wire_line().await;
        }
        loop {
            if let Some(line) = self.opened.pop_front() {
                return Some(line);
            }
            let (_, opener) = self.seal.as_mut().unwrap();
            match opener
                .next(&self.raw_in)
                .expect("the server's batches pass their check")
            {
                Opened::Batch { body, consumed } => {
                    for line in self.raw_in[..body].split(|&b| b == b'\n') {
                        if !line.is_empty() {
                            self.opened.push_back(line.to_vec());
                        }
                    }
                    self.raw_in.drain(..consumed);
                }
                Opened::Need => {
                    let mut line = self.wire_line().await?;
                    line.push(b'\n');
                    self.raw_in.extend_from_slice(&line);
                }
            }
        }
    }

    /// The next line as it is on the wire, without `\n`, or `None` at end of stream.
    async fn wire_line(&mut self) -> Option<Vec<u8>> {
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
        Some(buf)
    }

    async fn msg(&mut self) -> PeerMsg {
        PeerMsg::parse(&self.line().await.expect("a message")).unwrap()
    }
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

async fn linked_peer(handle: &ServerHandle, secret: Option<&str>) -> FakePeer {
    let (mut p, epoch) = FakePeer::connect(handle, "P", secret).await;
    let epoch = epoch.expect("handshake succeeds");
    let PeerMsg::Digest {
        your_epoch: 0,
        seen: 0,
        ..
    } = p.msg().await
    else {
        panic!("server opens with its digest")
    };
    p.send(&PeerMsg::Digest {
        epoch: 7,
        your_epoch: epoch,
        seen: 0,
    })
    .await;
    assert_eq!(p.msg().await, PeerMsg::Synced { seq: 0 });
    assert!(eventually(|| handle.stats().links_up.len() == 1).await);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_from_a_linked_peer_is_stored_and_a_client_iamat_is_flooded_to_it() {
    let (handle, token) = server(None).await;
    let mut p = linked_peer(&handle, None).await;
    p.raw(b"U 1 AT P +0.500000000 c1 +1+1 10\n").await;
    assert!(eventually(|| handle.record(b"c1").is_some()).await);
    assert_eq!(
        handle.record(b"c1").unwrap(),
        b"AT P +0.500000000 c1 +1+1 10"
    );
    let mut client = TcpStream::connect(handle.local_addr()).await.unwrap();
    client.write_all(b"IAMAT c2 +2+2 20\n").await.unwrap();
    client.shutdown().await.unwrap();
    let mut at = Vec::new();
    client.read_to_end(&mut at).await.unwrap();
    let PeerMsg::Update { record, .. } = p.msg().await else {
        panic!("an update")
    };
    assert_eq!(record.at_line(), at.strip_suffix(b"\n").unwrap());
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_peer_line_drops_the_link() {
    let (handle, token) = server(None).await;
    let mut p = linked_peer(&handle, None).await;
    p.raw(b"U 1 not an at line\n").await;
    assert_eq!(p.line().await, None, "the server closes the link");
    assert!(eventually(|| handle.stats().links_up.is_empty()).await);
    assert_eq!(handle.stats().node.peer_errors, 1);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_wrong_secrets_are_refused() {
    let (handle, token) = server(Some("right")).await;
    let (mut stranger, res) = FakePeer::connect(&handle, "Q", Some("right")).await;
    assert_eq!(
        res,
        Err("closed".into()),
        "a server that is not a neighbour gets no hello"
    );
    assert_eq!(stranger.line().await, None);
    let (_, res) = FakePeer::connect(&handle, "P", Some("wrong")).await;
    assert_eq!(
        res,
        Err("peer failed authentication".into()),
        "the dialler sees a bad proof too"
    );
    let (_, res) = FakePeer::connect(&handle, "P", None).await;
    assert!(res.is_err());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(handle.stats().links_up.is_empty());
    let p = linked_peer(&handle, Some("right")).await;
    drop(p);
    assert!(
        eventually(|| handle.stats().links_up.is_empty()).await,
        "link down when the peer leaves"
    );
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_dialled_the_same_way_replaces_the_old_one() {
    let (handle, token) = server(None).await;
    let mut old = linked_peer(&handle, None).await;
    let (mut newer, epoch) = FakePeer::connect(&handle, "P", None).await;
    epoch.unwrap();
    assert_eq!(old.line().await, None, "the replaced session is closed");
    let PeerMsg::Digest { .. } = newer.msg().await else {
        panic!("a digest on the new session")
    };
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_sessions_dialled_both_ways_the_one_dialled_by_the_smaller_name_is_kept() {
    // P < S, so the session P dials wins over the one S dials.
    let p_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (handle, token) = server_dialling(None, p_listener.local_addr().unwrap()).await;
    let (stream, _) = p_listener.accept().await.unwrap();
    let (r, w) = stream.into_split();
    let mut by_s = FakePeer::new(r, w);
    let hello = Handshake::parse(&by_s.line().await.unwrap()).unwrap();
    let mut acceptor = herd_core::peer::Acceptor::new(name("P"), 7, 9, None);
    let (who, _, reply) = acceptor.on_hello(&hello, &[name("S")]).unwrap();
    assert_eq!(who, name("S"));
    by_s.raw(&reply.to_line()).await;
    acceptor
        .on_auth(&Handshake::parse(&by_s.line().await.unwrap()).unwrap())
        .unwrap();
    let PeerMsg::Digest { .. } = by_s.msg().await else {
        panic!("digest on S's session")
    };
    let (mut by_p, epoch) = FakePeer::connect(&handle, "P", None).await;
    epoch.unwrap();
    assert_eq!(
        by_s.line().await,
        None,
        "S drops its own session for the preferred one"
    );
    let PeerMsg::Digest { .. } = by_p.msg().await else {
        panic!("digest on P's session")
    };
    token.cancel();
}
