//! The listener: accepts connections, admits clients up to the limit, and hands a connection
//! that opens with a peer handshake to the link layer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::client::{self, Served};
use crate::driver::Driver;
use crate::fast_accept::Listener;
use crate::link;

/// Accepts connections on `listener` until shutdown.
pub(crate) async fn accept_loop(driver: Arc<Driver>, listener: TcpListener) {
    let listener = match Listener::new(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "cannot accept connections");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            () = driver.token().cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, addr)) => admit(&driver, stream, addr),
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    info!("stopped accepting connections");
}

fn admit(driver: &Arc<Driver>, stream: std::net::TcpStream, addr: SocketAddr) {
    let Some(permit) = driver.admit_client() else {
        warn!(%addr, limit = driver.limits().max_clients, "too many client connections; closed at once");
        return;
    };
    let d = driver.clone();
    driver.spawn(async move {
        match client::serve(d.clone(), stream, addr).await {
            Served::Done => drop(permit),
            Served::Peer { stream, first, buf } => {
                // A peer: it does not count against the client limit.
                drop(permit);
                if let Err(e) = stream.set_nodelay(true) {
                    warn!(%addr, error = %e, "cannot set TCP_NODELAY");
                }
                link::accept(d, stream, addr, first, buf).await;
            }
        }
    });
}
