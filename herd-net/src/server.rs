//! One herd server: builds its node (restored from its journal), its driver, and starts its
//! tasks: the listener, the timer and one dialler per neighbour.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herd_core::{Node, NodeConfig, PeerId, Record, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::{AdminSpec, MeteredPlaces, PlacesMetrics};
use crate::clock::RandomIds;
use crate::driver::Driver;
use crate::journal::{Journal, JournalSpec};
use crate::limits::Limits;
use crate::links::LinkTable;
use crate::listener::Sources;
use crate::spec::{Neighbour, ServerSpec};
use crate::stats::ServerStats;

/// A running server.
#[derive(Clone)]
pub struct ServerHandle {
    driver: Arc<Driver>,
    addr: SocketAddr,
    sources: Sources,
    places: PlacesMetrics,
    started: std::time::Instant,
    start_unix: f64,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("name", self.driver.name())
            .field("addr", &self.addr)
            .finish()
    }
}

impl ServerHandle {
    /// The server's name.
    pub fn name(&self) -> &ServerName {
        self.driver.name()
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's counters and store summary now.
    pub fn stats(&self) -> ServerStats {
        self.driver.stats()
    }

    /// The client's newest record as this server holds it (its AT line).
    pub fn record(&self, client: &[u8]) -> Option<Vec<u8>> {
        self.driver.record(client)
    }

    /// Serves clients over TLS on `listener` (the TLS client address): the same line protocol,
    /// under the same client limits as the plain address.
    ///
    /// # Errors
    /// When the server has no TLS configured.
    pub fn serve_tls_clients(&self, listener: TcpListener) -> std::io::Result<()> {
        if self.driver.settings().tls.is_none() {
            return Err(std::io::Error::other(
                "a TLS client address needs the server's TLS files",
            ));
        }
        self.driver.spawn(crate::listener::accept_tls_loop(
            self.driver.clone(),
            listener,
            self.sources.clone(),
        ));
        Ok(())
    }

    /// Whether the server is ready (`/readyz`): a reconciliation with a neighbour has
    /// finished since the start, or it has no neighbours.
    pub fn is_ready(&self) -> bool {
        self.driver.ready()
    }

    /// The server's Places lookups by outcome.
    pub fn places_metrics(&self) -> &PlacesMetrics {
        &self.places
    }

    /// Serves the admin HTTP listener ([`crate::admin`]) on `listener` until the server stops.
    pub fn serve_admin(&self, listener: TcpListener, spec: AdminSpec) {
        crate::admin::serve(
            self.driver.clone(),
            listener,
            spec,
            &self.places,
            self.started,
            self.start_unix,
        );
    }

    // === changes while running ===
    //
    // Each applies at once; what a change does to connections and sessions already open is
    // said with it. None of them touches the wire protocol.

    /// The neighbours now (removed ones left out), with the addresses they are dialled at.
    pub fn neighbours(&self) -> Vec<Neighbour> {
        self.driver.neighbours()
    }

    /// The limits now.
    pub fn limits(&self) -> Limits {
        self.driver.settings().limits.clone()
    }

    /// Adds neighbour `n`: it gets a new link (its own dialler starts at once, and its
    /// handshakes are accepted). Returns `false`, changing nothing, when a neighbour of that
    /// name is already there.
    pub fn add_neighbour(&self, n: Neighbour) -> bool {
        let name = n.name.clone();
        let addr = n.addr.clone();
        let added = match self.driver.add_peer(n) {
            Some((peer, up, stop)) => {
                if let Some(up) = up {
                    self.driver
                        .spawn(crate::link::dial_loop(self.driver.clone(), peer, up, stop));
                }
                true
            }
            None => false,
        };
        if added {
            crate::scope::enter(self.driver.spec().log_index, || {
                info!(peer = %name, addr = %addr, "neighbour added");
            });
        }
        added
    }

    /// Removes neighbour `name` for good: its dialler stops, its session (if up) is closed,
    /// and its handshakes are refused from now on; queries waiting on its answer finish
    /// without it. Returns whether it was a neighbour.
    pub fn remove_neighbour(&self, name: &ServerName) -> bool {
        let removed = self.driver.remove_peer(name);
        if removed {
            crate::scope::enter(self.driver.spec().log_index, || {
                info!(peer = %name, "neighbour removed; its link is closed");
            });
        }
        removed
    }

    /// Dials neighbour `name` at `addr` from its next dial on; a session up stays up (the
    /// peer is known by its name and proof, not its address). Returns whether it is a
    /// neighbour.
    pub fn set_neighbour_addr(&self, name: &ServerName, addr: String) -> bool {
        self.driver.set_peer_addr(name, addr)
    }

    /// New limits. At once: the store's (`max_records`, `record_ttl`, whose change applies to
    /// every held record, `max_future_skew`, `max_client_id_bytes`), `resync_window_bytes`,
    /// and the client connection bounds (`max_clients`, `max_clients_per_ip`: connections
    /// already open over a lowered bound stay, new ones wait for room). For connections and
    /// sessions that start from now on: `max_line_bytes`, `idle_timeout`, `line_timeout`,
    /// `log_line_bytes`, `places_timeout` (new client connections), `peer_queue_bytes`,
    /// `heartbeat`, `peer_timeout` (new peer sessions). `journal_compact_lines` is read at
    /// start only; `shutdown_grace` is the caller's.
    pub fn set_limits(&self, limits: Limits) {
        self.sources.set_max(limits.max_clients_per_ip);
        self.driver.set_limits(limits);
    }

    /// A new peer secret, proved in handshakes from now on; sessions up stay up.
    pub fn set_secret(&self, secret: Option<Arc<[u8]>>) {
        self.driver.set_secret(secret);
    }

    /// New TLS contexts (or none), for peer links and TLS clients that connect from now on;
    /// sessions up stay up.
    pub fn set_tls(&self, tls: Option<crate::tls::HerdTls>) {
        self.driver.set_tls(tls);
    }

    /// Serves the stats on `listener`: each connection gets one JSON line, then is closed.
    pub fn serve_stats(&self, listener: TcpListener) {
        let driver = self.driver.clone();
        self.driver.spawn(async move {
            let token = driver.token().clone();
            loop {
                let accepted = tokio::select! {
                    () = token.cancelled() => return,
                    r = listener.accept() => r,
                };
                let Ok((mut stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let line = driver.stats().to_json_line();
                // A stats reader that vanished is no concern of the server.
                let _ = stream.write_all(line.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
    }
}

/// Starts a server on a bound `listener`: accept loop, link diallers and timers, all tracked
/// by `tracker` and stopped by `token`.
pub fn start(
    mut spec: ServerSpec,
    listener: TcpListener,
    token: CancellationToken,
    tracker: TaskTracker,
) -> std::io::Result<ServerHandle> {
    let addr = listener.local_addr()?;
    let started = std::time::Instant::now();
    let start_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let places = PlacesMetrics::new(spec.places_backend);
    spec.places = MeteredPlaces::wrap(spec.places.clone(), places.clone());
    crate::scope::enter(spec.log_index, || {
        let neighbours: Vec<String> = spec
            .neighbours
            .iter()
            .map(|n| format!("{}@{}", n.name, n.addr))
            .collect();
        info!(
            server = %spec.name,
            listen = %addr,
            neighbours = %neighbours.join(","),
            places = spec.places_backend,
            secret = spec.secret.is_some(),
            max_records = spec.limits.max_records,
            record_ttl_ms = spec.limits.record_ttl.map(|d| d.as_millis() as u64),
            "server started"
        );
    });
    let names: Vec<ServerName> = spec.neighbours.iter().map(|n| n.name.clone()).collect();
    let mut node_cfg = NodeConfig::new(spec.name.clone(), names.clone());
    node_cfg.journal = spec.journal.is_some();
    node_cfg.nearby_index = spec.limits.nearby_index;
    node_cfg.dissemination = spec.limits.dissemination;
    let limits = crate::driver::node_limits(&spec.limits, node_cfg.limits());
    node_cfg.set_limits(limits);
    let links = LinkTable::new(names.iter().map(|n| spec.name < *n));
    let mut node = Node::new(node_cfg, links, &mut RandomIds);
    let journal = match &spec.journal {
        Some(js) => Some(restore(
            &mut node,
            js,
            spec.limits.journal_compact_lines,
            spec.log_index,
        )?),
        None => None,
    };
    let driver = Driver::new(spec, node, journal, token, tracker);
    let sources = Sources::new(driver.spec().limits.max_clients_per_ip);
    driver.spawn(crate::listener::accept_loop(
        driver.clone(),
        listener,
        sources.clone(),
    ));
    driver.spawn(driver.clone().run_timer());
    for i in 0..names.len() {
        let peer = PeerId(i);
        if let (Some(up), Some(stop)) = (driver.link_watch(peer), driver.peer_stop(peer)) {
            driver.spawn(crate::link::dial_loop(driver.clone(), peer, up, stop));
        }
    }
    Ok(ServerHandle {
        driver,
        addr,
        sources,
        places,
        started,
        start_unix,
    })
}

/// Opens the journal at `path`, puts its records into the node's store and rewrites it
/// compacted.
fn restore(
    node: &mut Node<LinkTable>,
    spec: &JournalSpec,
    compact_floor: u64,
    log_index: usize,
) -> std::io::Result<Arc<Journal>> {
    let path = spec.path.as_path();
    let with_path = |e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("journal {}: {e}", path.display()))
    };
    let (journal, restored) =
        Journal::open_with(path, compact_floor, spec.fsync).map_err(with_path)?;
    let read = restored.records.len();
    let now = crate::clock::now();
    for r in restored.records {
        node.restore(now, r);
    }
    let snapshot: Vec<Arc<Record>> = node.store().records().map(Arc::new).collect();
    journal.compact(&snapshot).map_err(with_path)?;
    crate::scope::enter(log_index, || {
        info!(
            path = %path.display(),
            lines = read,
            bad_lines = restored.bad_lines,
            records = snapshot.len(),
            "journal restored"
        );
        if let Some(kept) = &restored.damaged_copy {
            warn!(path = %path.display(), bad_lines = restored.bad_lines, kept = %kept.display(), "journal lines skipped (a torn write at a crash, or damage); the file as it was is kept");
        }
    });
    Ok(journal)
}
