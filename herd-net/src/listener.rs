//! The listener: accepts connections, admits clients up to the limits (in all, and per source
//! address), and hands a connection that opens with a peer handshake to the link layer.
//!
//! Refusals and `accept` errors are logged at most once a second per cause
//! ([`crate::ratelog`]) and counted; the listener goes on serving every other source.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::client::{self, Served};
use crate::driver::{ClientPermit, Driver};
use crate::fast_accept::Listener;
use crate::link;

/// After an `accept` error (out of file descriptors and the like), the pause before the next
/// try, instead of spinning.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// The per-address client counts of one server, shared by its plain and TLS listeners.
#[derive(Debug, Clone)]
pub(crate) struct Sources(Arc<PerIp>);

impl Sources {
    /// Counts for a server whose limit per address is `max`.
    pub(crate) fn new(max: usize) -> Self {
        Self(Arc::new(PerIp::new(max)))
    }

    /// A new limit per address, for connections admitted from now on (those open stay).
    pub(crate) fn set_max(&self, max: usize) {
        self.0.max.store(max, Ordering::Release);
    }
}

/// Accepts connections on `listener` until shutdown.
pub(crate) async fn accept_loop(driver: Arc<Driver>, listener: TcpListener, sources: Sources) {
    let listener = match Listener::new(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "cannot accept connections");
            return;
        }
    };
    let per_ip = sources.0;
    loop {
        let accepted = tokio::select! {
            () = driver.token().cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, addr)) => admit(&driver, &per_ip, stream, addr),
            Err(e) => {
                if let Some(suppressed) = driver.refusals().accept_errors.hit() {
                    warn!(error = %e, suppressed, "accept failed; pausing");
                }
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
        }
    }
    info!("stopped accepting connections");
}

/// Accepts clients on the TLS client address until shutdown: each is admitted under the same
/// limits as a plain client, then served the same line protocol over TLS 1.3 with the
/// server's TLS settings as the connection arrives (new files apply to new connections).
pub(crate) async fn accept_tls_loop(driver: Arc<Driver>, listener: TcpListener, sources: Sources) {
    let per_ip = sources.0;
    loop {
        let accepted = tokio::select! {
            () = driver.token().cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if let Some(suppressed) = driver.refusals().accept_errors.hit() {
                    warn!(error = %e, suppressed, "TLS client accept failed; pausing");
                }
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let settings = driver.settings();
        let Some(tls) = settings.tls.as_ref() else {
            debug!(%addr, "TLS client refused: the server has no TLS configured now");
            continue;
        };
        let Some(slot) = client_slot(&driver, &per_ip, addr) else {
            continue;
        };
        let d = driver.clone();
        let acceptor = tls.client_acceptor().clone();
        // The handshake is a line's worth of input: it gets the line timeout.
        let limit = settings.limits.line_timeout;
        driver.spawn(async move {
            let _slot = slot;
            let _ = stream.set_nodelay(true);
            match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => client::serve_tls(d, tls_stream, addr).await,
                Ok(Err(e)) => debug!(%addr, error = %e, "client TLS handshake failed"),
                Err(_) => debug!(%addr, "client TLS handshake timed out"),
            }
        });
    }
    info!("stopped accepting TLS clients");
}

/// A place for a client from `addr` under both limits, or `None` (refused, counted, logged
/// at most once a second per cause).
fn client_slot(driver: &Driver, per_ip: &Arc<PerIp>, addr: SocketAddr) -> Option<ClientSlot> {
    let refusals = driver.refusals();
    let Some(from_ip) = per_ip.take(addr.ip()) else {
        if let Some(suppressed) = refusals.per_ip.hit() {
            warn!(%addr, limit = per_ip.max.load(Ordering::Relaxed), suppressed, "too many client connections from one address; closed at once");
        }
        return None;
    };
    let Some(permit) = driver.admit_client() else {
        if let Some(suppressed) = refusals.max_clients.hit() {
            warn!(%addr, limit = driver.max_clients(), suppressed, "too many client connections; closed at once");
        }
        return None;
    };
    Some(ClientSlot {
        _permit: permit,
        _from_ip: from_ip,
    })
}

fn admit(driver: &Arc<Driver>, per_ip: &Arc<PerIp>, stream: std::net::TcpStream, addr: SocketAddr) {
    let Some(slot) = client_slot(driver, per_ip, addr) else {
        return;
    };
    let d = driver.clone();
    driver.spawn(async move {
        match client::serve(d.clone(), stream, addr).await {
            Served::Done => drop(slot),
            Served::Peer { stream, first, buf } => {
                // A peer: it counts against neither client limit.
                drop(slot);
                if let Err(e) = stream.set_nodelay(true) {
                    warn!(%addr, error = %e, "cannot set TCP_NODELAY");
                }
                link::accept(d, stream, addr, first, buf).await;
            }
        }
    });
}

/// An admitted client connection's place under both limits, given back when dropped.
struct ClientSlot {
    _permit: ClientPermit,
    _from_ip: IpSlot,
}

/// The client connections open from each source address, up to `max` each.
#[derive(Debug)]
struct PerIp {
    max: AtomicUsize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in its source address's count.
#[derive(Debug)]
struct IpSlot {
    table: Arc<PerIp>,
    key: IpAddr,
}

impl PerIp {
    fn new(max: usize) -> Self {
        Self {
            max: AtomicUsize::new(max),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Counters only: a panicked holder leaves them usable.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for one more connection from `ip`, if its address has fewer than `max`.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let key = source_key(ip);
        let mut open = self.lock();
        let n = open.entry(key).or_insert(0);
        if *n >= self.max.load(Ordering::Acquire) {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: self.clone(),
            key,
        })
    }

    /// Connections open from `ip`'s address now.
    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> usize {
        self.lock().get(&source_key(ip)).copied().unwrap_or(0)
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.table.lock();
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// What the per-address limit counts by: an IPv4 address (an IPv4-mapped IPv6 one as the
/// IPv4 address it is), or the /64 network of an IPv6 address, since one host is commonly
/// given a whole /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let net = u128::from(v6) & !u128::from(u64::MAX);
            IpAddr::V6(Ipv6Addr::from(net))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_address_gets_max_places_and_a_dropped_one_is_given_back() {
        let t = Arc::new(PerIp::new(2));
        let a1 = t.take(ip("127.0.0.2")).unwrap();
        let _a2 = t.take(ip("127.0.0.2")).unwrap();
        assert!(t.take(ip("127.0.0.2")).is_none());
        // The same address mapped into IPv6 is the same source.
        assert!(t.take(ip("::ffff:127.0.0.2")).is_none());
        let _b = t.take(ip("127.0.0.3")).unwrap();
        drop(a1);
        assert_eq!(t.open(ip("127.0.0.2")), 1);
        assert!(t.take(ip("127.0.0.2")).is_some());
        assert_eq!(t.open(ip("127.0.0.2")), 1, "the temporary was dropped");
    }

    #[test]
    fn ipv6_sources_count_by_their_64_bit_network() {
        let t = Arc::new(PerIp::new(1));
        let a = t.take(ip("2001:db8:0:1::1")).unwrap();
        assert!(t.take(ip("2001:db8:0:1:ffff::2")).is_none());
        assert!(t.take(ip("2001:db8:0:2::1")).is_some());
        drop(a);
        assert!(
            t.lock().is_empty(),
            "an address with nothing open is forgotten"
        );
    }
}
