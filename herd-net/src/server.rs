//! One herd server: its node, its listener, its links and its timers.
//!
//! The node ([`herd_core::Node`]) sits behind one `std::sync::Mutex` together with the table
//! of link sessions and the WHATSATs waiting on herd queries. The lock is never held across an
//! await: every task locks, feeds the node, drains its events, and unlocks.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use herd_core::{
    Node, NodeConfig, NodeEvent, NodeStats, PeerId, PlacesLookup, QueryOutcome, Record, ServerName,
};
use socket2::SockRef;
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::clock::{self, RandomIds};
use crate::journal::Journal;
use crate::limits::Limits;
use crate::scope::Scoped;
use crate::sink::{PeerQueue, TcpPeerSink};

/// How often the node's timers (herd query deadlines) are checked.
const TICK: Duration = Duration::from_millis(20);

/// A neighbour of a server: its name and the address to dial it at (`host:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// The neighbour's name.
    pub name: ServerName,
    /// Where to dial it.
    pub addr: String,
}

/// Everything a server needs besides its listener.
#[derive(Clone)]
pub struct ServerSpec {
    /// This server's name.
    pub name: ServerName,
    /// Its neighbours, in the order that defines their [`PeerId`]s.
    pub neighbours: Vec<Neighbour>,
    /// Its limits.
    pub limits: Limits,
    /// The shared secret peers must prove, if any.
    pub secret: Option<Arc<[u8]>>,
    /// The Places service.
    pub places: Arc<dyn PlacesLookup>,
    /// The Places backend's name, for the start-up log line.
    pub places_backend: &'static str,
    /// Index of this server for log routing ([`crate::scope`]).
    pub log_index: usize,
    /// Where client messages and replies are logged in bulk; `None`: as `tracing` events.
    pub message_log: Option<Arc<dyn crate::msglog::MessageLog>>,
    /// The journal ([`crate::journal`]); `None`: the store lives in memory only.
    pub journal: Option<crate::journal::JournalSpec>,
}

impl std::fmt::Debug for ServerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSpec")
            .field("name", &self.name)
            .field("neighbours", &self.neighbours)
            .field("limits", &self.limits)
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

/// The current session of one link.
#[derive(Debug)]
pub(crate) struct ActiveSession {
    pub(crate) id: u64,
    pub(crate) peer_epoch: u64,
    pub(crate) dialled_by_me: bool,
    pub(crate) queue: Arc<PeerQueue>,
    pub(crate) kill: CancellationToken,
}

/// One link's slot in the session table.
#[derive(Debug)]
pub(crate) struct LinkSlot {
    pub(crate) session: Option<ActiveSession>,
    pub(crate) up: watch::Sender<bool>,
}

/// What the node lock protects.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) node: Node<TcpPeerSink>,
    pub(crate) waiters: HashMap<u64, oneshot::Sender<QueryOutcome>>,
    pub(crate) links: Vec<LinkSlot>,
    pub(crate) journal: Option<Arc<Journal>>,
}

impl Core {
    /// Routes the node's events and hands newly stored records to the journal; call after
    /// every node call.
    pub(crate) fn drain_events(&mut self) {
        if let Some(j) = &self.journal {
            let mut any = false;
            for r in self.node.drain_journal() {
                j.append(&r);
                any = true;
            }
            if any && j.wants_compaction(self.node.store().len()) {
                j.compact_in_background(self.node.store().records().cloned().collect());
            }
        }
        while let Some(event) = self.node.poll_event() {
            match event {
                NodeEvent::QueryDone { ticket, outcome } => {
                    if let Some(tx) = self.waiters.remove(&ticket) {
                        // The connection may be gone; its answer is then moot.
                        let _ = tx.send(outcome);
                    }
                }
            }
        }
    }
}

/// State shared by all tasks of one server.
pub(crate) struct Shared {
    pub(crate) spec: ServerSpec,
    pub(crate) core: Mutex<Core>,
    pub(crate) token: CancellationToken,
    pub(crate) tracker: TaskTracker,
    pub(crate) clients: Arc<Semaphore>,
    pub(crate) next_session: AtomicU64,
    /// The journal, reachable without the node's lock (the same one `Core` appends to).
    pub(crate) journal: Option<Arc<Journal>>,
}

impl Shared {
    /// Writes the journal up to everything stored so far; call before sending replies that
    /// acknowledge updates (after releasing the node's lock).
    pub(crate) fn sync_journal(&self) {
        if let Some(j) = &self.journal {
            j.flush_to(j.appended());
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Core> {
        // The node's invariants hold between calls; a panicked task cannot break them halfway
        // in a way a later caller could observe worse than losing that one call.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spawns a task of this server (tracked for shutdown, logged to this server's file).
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(Scoped::new(self.spec.log_index, fut));
    }

    pub(crate) fn name(&self) -> &ServerName {
        &self.spec.name
    }

    pub(crate) fn peer_name(&self, peer: PeerId) -> &ServerName {
        &self.spec.neighbours[peer.0].name
    }

    pub(crate) fn session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }
}

/// Counters and store summary of a running server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStats {
    /// The server's name.
    pub server: ServerName,
    /// The node's counters.
    pub node: NodeStats,
    /// Clients in the store.
    pub records: usize,
    /// The store's order-independent digest ([`herd_core::LocationStore::digest`]).
    pub digest: u64,
    /// Neighbours whose link is up and synchronised.
    pub links_up: Vec<ServerName>,
    /// Client connections open now.
    pub clients: usize,
    /// Lines in the journal file and write errors so far, when there is a journal.
    pub journal: Option<(u64, u64)>,
}

impl ServerStats {
    /// The stats as one line of JSON (with `\n`), the admin listener's answer.
    pub fn to_json_line(&self) -> String {
        let n = &self.node;
        let mut s = String::with_capacity(512);
        let links: Vec<String> = self.links_up.iter().map(|l| json_str(l.as_str())).collect();
        let _ = writeln!(
            s,
            "{{\"server\":{},\"records\":{},\"digest\":{},\"links_up\":[{}],\"clients\":{},\
             \"iamats\":{},\"whatsats\":{},\"invalid\":{},\"stored\":{},\"stale\":{},\
             \"updates_sent\":{},\"updates_received\":{},\"peer_sent\":{},\"send_failures\":{},\
             \"queries_started\":{},\"peer_errors\":{},\"journal_lines\":{},\"journal_errors\":{}}}",
            json_str(self.server.as_str()),
            self.records,
            self.digest,
            links.join(","),
            self.clients,
            n.iamats,
            n.whatsats,
            n.invalid,
            n.stored,
            n.stale,
            n.updates_sent,
            n.updates_received,
            n.peer_sent,
            n.send_failures,
            n.queries_started,
            n.peer_errors,
            self.journal.map_or("null".to_owned(), |j| j.0.to_string()),
            self.journal.map_or("null".to_owned(), |j| j.1.to_string()),
        );
        s
    }
}

/// A server name as a JSON string: names are printable ASCII, so only `"` and `\` need escapes.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A running server.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("name", self.shared.name())
            .field("addr", &self.addr)
            .finish()
    }
}

impl ServerHandle {
    /// The server's name.
    pub fn name(&self) -> &ServerName {
        self.shared.name()
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's counters and store summary now.
    pub fn stats(&self) -> ServerStats {
        let limit = self.shared.spec.limits.max_clients;
        let clients = limit.saturating_sub(self.shared.clients.available_permits());
        let core = self.shared.lock();
        let node = &core.node;
        let links_up = (0..node.neighbours().len())
            .map(PeerId)
            .filter(|&p| node.is_linked(p))
            .map(|p| node.neighbours()[p.0].clone())
            .collect();
        ServerStats {
            server: node.name().clone(),
            node: node.stats().clone(),
            records: node.store().len(),
            digest: node.store().digest(),
            links_up,
            clients,
            journal: self
                .shared
                .journal
                .as_ref()
                .map(|j| (j.lines(), j.errors())),
        }
    }

    /// The client's newest record as this server holds it (its AT line).
    pub fn record(&self, client: &[u8]) -> Option<Vec<u8>> {
        self.shared
            .lock()
            .node
            .store()
            .get(client)
            .map(|r| r.at_line().to_vec())
    }

    /// Serves the stats on `listener`: each connection gets one JSON line, then is closed.
    pub fn serve_stats(&self, listener: TcpListener) {
        let handle = self.clone();
        let token = self.shared.token.clone();
        self.shared.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = token.cancelled() => return,
                    r = listener.accept() => r,
                };
                let Ok((mut stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let line = handle.stats().to_json_line();
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
    spec: ServerSpec,
    listener: TcpListener,
    token: CancellationToken,
    tracker: TaskTracker,
) -> std::io::Result<ServerHandle> {
    let addr = listener.local_addr()?;
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
            "server started"
        );
    });
    let names: Vec<ServerName> = spec.neighbours.iter().map(|n| n.name.clone()).collect();
    let mut node_cfg = NodeConfig::new(spec.name.clone(), names.clone());
    node_cfg.resync_window = spec.limits.resync_window();
    node_cfg.journal = spec.journal.is_some();
    let mut node = Node::new(node_cfg, TcpPeerSink::new(names.len()), &mut RandomIds);
    let journal = match &spec.journal {
        Some(js) => Some(restore(
            &mut node,
            js,
            spec.limits.journal_compact_lines,
            spec.log_index,
        )?),
        None => None,
    };
    let links = names
        .iter()
        .map(|_| LinkSlot {
            session: None,
            up: watch::Sender::new(false),
        })
        .collect();
    let clients = Arc::new(Semaphore::new(spec.limits.max_clients));
    let shared = Arc::new(Shared {
        spec,
        core: Mutex::new(Core {
            node,
            waiters: HashMap::new(),
            links,
            journal: journal.clone(),
        }),
        token,
        tracker,
        clients,
        next_session: AtomicU64::new(1),
        journal,
    });
    shared.spawn(accept_loop(shared.clone(), listener));
    shared.spawn(timer_loop(shared.clone()));
    for i in 0..names.len() {
        let rx = shared.lock().links[i].up.subscribe();
        shared.spawn(crate::link::dial_loop(shared.clone(), PeerId(i), rx));
    }
    Ok(ServerHandle { shared, addr })
}

/// Opens the journal at `path`, puts its records into the node's store and rewrites it
/// compacted.
fn restore(
    node: &mut Node<TcpPeerSink>,
    spec: &crate::journal::JournalSpec,
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
    for r in restored.records {
        node.restore(r);
    }
    let snapshot: Vec<Arc<Record>> = node.store().records().cloned().collect();
    journal.compact(&snapshot).map_err(with_path)?;
    crate::scope::enter(log_index, || {
        info!(
            path = %path.display(),
            lines = read,
            bad_lines = restored.bad_lines,
            records = snapshot.len(),
            "journal restored"
        );
        if restored.bad_lines > 0 {
            warn!(path = %path.display(), bad_lines = restored.bad_lines, "journal lines skipped (a torn write at a crash, or damage)");
        }
    });
    Ok(journal)
}

/// Where connections come from: the listener watched directly (each connection taken with
/// one `accept4`, see `accept_one`), or through tokio when that is not possible.
enum Listener {
    Direct(AsyncFd<std::net::TcpListener>),
    Tokio(TcpListener),
}

impl Listener {
    /// Accepted sockets are taken without the runtime's registration (see `client::serve`):
    /// the listener is watched through an `AsyncFd` and each connection accepted non-blocking
    /// with one `accept4`. `AsyncFd::try_new` is deprecated because a type whose `as_raw_fd`
    /// changes over its life would make it unsound; a `std::net::TcpListener` owns one
    /// descriptor for its whole life, which is what the replacement's safety contract asks.
    fn new(listener: TcpListener) -> std::io::Result<Self> {
        #[allow(deprecated)]
        match AsyncFd::try_new(listener.into_std()?) {
            Ok(fd) => Ok(Self::Direct(fd)),
            Err(e) => {
                let (std_listener, e) = e.into_parts();
                warn!(error = %e, "cannot watch the listener directly; accepting through tokio");
                TcpListener::from_std(std_listener).map(Self::Tokio)
            }
        }
    }

    async fn accept(&self) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
        match self {
            Self::Direct(fd) => accept_one(fd).await,
            Self::Tokio(l) => {
                let (stream, addr) = l.accept().await?;
                Ok((stream.into_std()?, addr))
            }
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let listener = match Listener::new(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "cannot accept connections");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            () = shared.token.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, addr)) => admit(&shared, stream, addr),
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    info!("stopped accepting connections");
}

/// Accepts one connection: a non-blocking, close-on-exec socket from one system call. The
/// listener stays readable until `accept4` would block, so a burst is accepted without
/// waiting again.
async fn accept_one(
    listener: &AsyncFd<std::net::TcpListener>,
) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
    loop {
        let mut ready = listener.readable().await?;
        let accepted = ready.try_io(|l| {
            let (socket, addr) =
                SockRef::from(l.get_ref()).accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)?;
            let addr = addr
                .as_socket()
                .ok_or_else(|| std::io::Error::other("accepted a non-IP connection"))?;
            Ok((std::net::TcpStream::from(socket), addr))
        });
        if let Ok(result) = accepted {
            return result;
        }
    }
}

fn admit(shared: &Arc<Shared>, stream: std::net::TcpStream, addr: SocketAddr) {
    let Ok(permit) = shared.clients.clone().try_acquire_owned() else {
        warn!(%addr, limit = shared.spec.limits.max_clients, "too many client connections; closed at once");
        return;
    };
    shared.spawn(crate::client::serve(shared.clone(), stream, addr, permit));
}

async fn timer_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.token.cancelled() => break,
            _ = tick.tick() => {}
        }
        // Records from peers reach the file within a tick (client updates before their reply).
        shared.sync_journal();
        let now = clock::now();
        let mut core = shared.lock();
        if core.node.poll_timeout().is_some_and(|t| t <= now) {
            core.node.handle_timeout(now);
            core.drain_events();
        }
    }
}
