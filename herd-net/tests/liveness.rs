//! A silent partition between two servers on real loopback sockets: a TCP proxy on each
//! link stops forwarding bytes both ways without closing anything. Each side must notice
//! within the peer timeout, and after the heal both stores must be equal within a second,
//! however long the cut.

use std::net::SocketAddr;
use std::time::Duration;

mod common;

use common::{name, start_server};
use herd_net::limits::{DEFAULT_HEARTBEAT, DEFAULT_PEER_TIMEOUT};
use herd_net::{Neighbour, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{sleep, Instant};

/// Slack for scheduling on a loaded machine, on top of the peer timeout.
const DETECTION_MARGIN: Duration = Duration::from_millis(500);
/// After a heal, both stores must be equal within this.
const HEAL_BOUND: Duration = Duration::from_secs(1);

/// A forwarding proxy that can black-hole: while the hole is on it reads nothing and
/// writes nothing (bytes wait in the kernels' buffers, as on a path that drops every
/// packet), connects nothing upstream, and closes nothing.
struct Proxy {
    addr: SocketAddr,
    hole: watch::Sender<bool>,
}

impl Proxy {
    /// Binds the proxy now (so its address can be configured) and forwards to whatever
    /// `target` receives later.
    async fn bind() -> (Self, TcpListener) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            hole: watch::Sender::new(false),
        };
        (proxy, listener)
    }

    fn serve(&self, listener: TcpListener, target: SocketAddr) {
        let hole = self.hole.subscribe();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let hole = hole.clone();
                tokio::spawn(async move {
                    open(hole.clone()).await;
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (ir, iw) = inbound.into_split();
                    let (or, ow) = outbound.into_split();
                    // When either direction ends, the whole connection goes.
                    tokio::select! {
                        () = pump(ir, ow, hole.clone()) => {}
                        () = pump(or, iw, hole) => {}
                    }
                });
            }
        });
    }

    fn set_hole(&self, on: bool) {
        self.hole.send_replace(on);
    }
}

/// Waits until the hole is off.
async fn open(mut hole: watch::Receiver<bool>) {
    let _ = hole.wait_for(|on| !on).await;
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, hole: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        open(hole.clone()).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read just as the hole opened are held until it closes.
        open(hole.clone()).await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Two servers A and B linked through one proxy per direction of dialling (A dials B at
/// `to_b`, B dials A at `to_a`), so that every byte between them crosses a proxy.
struct Pair {
    a: ServerHandle,
    b: ServerHandle,
    to_a: Proxy,
    to_b: Proxy,
}

async fn pair() -> Pair {
    let (to_a, la) = Proxy::bind().await;
    let (to_b, lb) = Proxy::bind().await;
    let neighbour = |n: &str, p: &Proxy| Neighbour {
        name: name(n),
        addr: p.addr.to_string(),
    };
    let (a, _) = start_server("A", vec![neighbour("B", &to_b)], None).await;
    let (b, _) = start_server("B", vec![neighbour("A", &to_a)], None).await;
    to_a.serve(la, a.local_addr());
    to_b.serve(lb, b.local_addr());
    Pair { a, b, to_a, to_b }
}

impl Pair {
    fn set_hole(&self, on: bool) {
        self.to_a.set_hole(on);
        self.to_b.set_hole(on);
    }

    fn linked(&self) -> bool {
        self.a.stats().links_up.len() == 1 && self.b.stats().links_up.len() == 1
    }

    fn same_store(&self) -> bool {
        let (a, b) = (self.a.stats(), self.b.stats());
        a.records == b.records && a.digest == b.digest
    }
}

/// Polls `cond` every 5 ms for at most `bound`; returns how long it took to hold.
async fn within(bound: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > bound {
            return None;
        }
        sleep(Duration::from_millis(5)).await;
    }
}

/// A client connection to `server` that sends IAMATs and throws the replies away.
async fn client(server: &ServerHandle) -> OwnedWriteHalf {
    let stream = TcpStream::connect(server.local_addr()).await.unwrap();
    let (mut r, w) = stream.into_split();
    tokio::spawn(async move {
        let mut sink = vec![0u8; 4096];
        while matches!(r.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    w
}

async fn iamat(to: &mut OwnedWriteHalf, client: &str) {
    let line = format!("IAMAT {client} +34.068930-118.445127 1520023934.918963997\n");
    to.write_all(line.as_bytes()).await.unwrap();
}

/// Cuts both links for `cut` while a client keeps sending IAMATs to A; checks detection
/// and the heal.
async fn silent_partition_heals(cut: Duration) {
    let pair = pair().await;
    within(Duration::from_secs(5), || pair.linked())
        .await
        .expect("linked at start");
    let mut to_a = client(&pair.a).await;
    for i in 0..20 {
        iamat(&mut to_a, &format!("before{i}")).await;
    }
    within(Duration::from_secs(5), || {
        pair.same_store() && pair.b.stats().records == 20
    })
    .await
    .expect("in sync before the cut");

    pair.set_hole(true);
    let cut_at = Instant::now();
    let detect_bound = DEFAULT_PEER_TIMEOUT + DETECTION_MARGIN;
    let mut sent = 0;
    let mut down = [None, None];
    while cut_at.elapsed() < cut {
        iamat(&mut to_a, &format!("during{sent}")).await;
        sent += 1;
        for (i, s) in [&pair.a, &pair.b].into_iter().enumerate() {
            if down[i].is_none() && s.stats().links_up.is_empty() {
                down[i] = Some(cut_at.elapsed());
            }
        }
        let wait = if down.iter().all(Option::is_some) {
            50
        } else {
            5
        };
        sleep(Duration::from_millis(wait)).await;
    }
    for (i, at) in down.into_iter().enumerate() {
        let at = at.unwrap_or_else(|| panic!("server {i}'s link never went down"));
        assert!(
            at <= detect_bound,
            "server {i} noticed the cut after {at:?}, over {detect_bound:?}"
        );
        // The last byte heard was at most one heartbeat before the cut: it is the silence
        // timer that fired, nothing else.
        let earliest = DEFAULT_PEER_TIMEOUT - DEFAULT_HEARTBEAT - Duration::from_millis(50);
        assert!(at >= earliest, "server {i} dropped its link after {at:?}");
    }
    let a = pair.a.stats();
    assert_eq!(a.records, 20 + sent, "A took every IAMAT during the cut");
    assert_eq!(pair.b.stats().records, 20, "nothing crossed the cut");
    assert!(pair.b.stats().links_up.is_empty() && a.links_up.is_empty());

    pair.set_hole(false);
    let healed = within(HEAL_BOUND, || pair.same_store())
        .await
        .unwrap_or_else(|| {
            panic!(
                "stores differ {HEAL_BOUND:?} after a {cut:?} cut healed: {:?} vs {:?}",
                (pair.a.stats().records, pair.a.stats().digest),
                (pair.b.stats().records, pair.b.stats().digest)
            )
        });
    assert_eq!(pair.b.stats().records, 20 + sent);
    within(Duration::from_secs(2), || pair.linked())
        .await
        .expect("both links report up again");
    eprintln!("cut {cut:?}: detected after {down:?}, healed after {healed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_second_silent_cut_is_noticed_and_healed_within_a_second() {
    silent_partition_heals(Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_second_silent_cut_is_noticed_and_healed_within_a_second() {
    silent_partition_heals(Duration::from_secs(10)).await;
}

/// The long cut: TCP's own retransmission back-off would keep a healed link idle for
/// tens of seconds here; the redial every half second does not care how long the cut was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sixty_second_silent_cut_is_noticed_and_healed_within_a_second() {
    silent_partition_heals(Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_link_stays_up_on_heartbeats_alone() {
    let pair = pair().await;
    within(Duration::from_secs(5), || pair.linked())
        .await
        .expect("linked");
    // Nothing but pings for several peer timeouts. A relink would send a new digest, which
    // the node counts; pings are the adapter's and are not counted.
    let sent = (pair.a.stats().node.peer_sent, pair.b.stats().node.peer_sent);
    let quiet = DEFAULT_PEER_TIMEOUT * 3;
    let start = Instant::now();
    while start.elapsed() < quiet {
        assert!(pair.linked(), "a link dropped after {:?}", start.elapsed());
        sleep(Duration::from_millis(20)).await;
    }
    let after = (pair.a.stats().node.peer_sent, pair.b.stats().node.peer_sent);
    assert_eq!(after, sent, "no session was replaced");
}
