//! The driver: one server's node, link table, waiting queries and journal behind one lock.
//!
//! quinn's driver over quinn-proto is the model. Socket tasks (client connections, peer
//! sessions, the dialler, the timer) hold an `Arc<Driver>` and call the method named for what
//! happened: [`Driver::client_batch`], [`Driver::peer_batch`], [`Driver::link_up`],
//! [`Driver::link_down`], [`Driver::drained`], the timer's [`Driver::run_timer`]. Each ends
//! in the same private `settle`, which moves every output of the node where it goes: stored
//! records to the journal, finished herd queries to the WHATSATs waiting on them, and the next
//! deadline to the timer. Peer messages go straight to the link table, the node's sink. No
//! caller can forget an output, and nothing outside this module reaches into the node.
//!
//! The lock is a `std::sync::Mutex` and is never held across an await. The busy paths
//! (client and peer batches) first take a turn from an async queue ([`Driver::turn`]), so
//! that among themselves they wait as tasks, never as threads asleep on the lock.
//!
//! What can change while the server runs ([`Settings`]: limits, secret, TLS, the neighbours
//! and their dial addresses) sits apart in an `RwLock<Arc<Settings>>` that a connection or
//! session reads once when it starts (client lines never take it). Changes are serialised by
//! one more lock, taken only by them; none of them is ever held with the state lock inside
//! the settings lock's write side.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use bytes::BytesMut;
use herd_core::{
    ClientAction, Node, NodeEvent, NodeLimits, NodeStats, PeerError, PeerId, QueryOutcome, Record,
    ServerName, Subscriber, Timestamp,
};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock;
use crate::codec::{LineCodec, LineError};
use crate::journal::Journal;
use crate::limits::Limits;
use crate::links::{Installed, LinkTable, Session};
use crate::queue::PeerQueue;
use crate::ratelog::{Refusals, RATE_LOG_PERIOD};
use crate::scope::Scoped;
use crate::spec::{Neighbour, ServerSpec};
use crate::stats::{LinkState, LinkStats, ServerStats};
use crate::tls::HerdTls;
use crate::warm::{warm, Lines};

/// Records from peers reach the journal file within this time (a client's records are
/// written before its reply leaves).
const JOURNAL_PEER_FLUSH: Duration = Duration::from_millis(20);

/// What of a server can change while it runs: read once by each connection or session when
/// it starts, replaced whole by a change.
#[derive(Clone)]
pub(crate) struct Settings {
    /// The limits now.
    pub(crate) limits: Limits,
    /// The peer secret now.
    pub(crate) secret: Option<Arc<[u8]>>,
    /// TLS for peer links and the TLS client address now.
    pub(crate) tls: Option<HerdTls>,
    /// Every neighbour ever configured, by [`PeerId`] (a removed one keeps its place).
    pub(crate) peers: Vec<Peer>,
}

/// A neighbour as the driver knows it.
#[derive(Clone)]
pub(crate) struct Peer {
    pub(crate) name: ServerName,
    /// Where it is dialled (read at each dial).
    pub(crate) addr: String,
    pub(crate) removed: bool,
    /// Stops its dialler (a child of the server's token).
    pub(crate) stop: CancellationToken,
}

/// Client connections open, and the most allowed (both change without a lock).
#[derive(Debug)]
pub(crate) struct ClientCount {
    open: AtomicUsize,
    max: AtomicUsize,
}

/// One admitted client connection's place, given back when dropped.
#[derive(Debug)]
pub(crate) struct ClientPermit(Arc<ClientCount>);

impl Drop for ClientPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ClientCount {
    fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        })
    }

    fn admit(self: &Arc<Self>) -> Option<ClientPermit> {
        let max = self.max.load(Ordering::Acquire);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ClientPermit(self.clone()))
    }
}

/// The node's limits under the server's `limits`; what the server's limits do not set
/// (the herd query timeout and bound) stays as in `base`.
pub(crate) fn node_limits(limits: &Limits, base: NodeLimits) -> NodeLimits {
    NodeLimits {
        resync_window: limits.resync_window(),
        catch_up_bytes: limits.peer_catch_up_bytes,
        max_client_id_bytes: limits.max_client_id_bytes,
        max_records: Some(limits.max_records),
        record_ttl: limits.record_ttl,
        max_future_skew: limits.max_future_skew,
        max_fences_per_subscriber: limits.max_fences_per_connection,
        max_fences: limits.max_fences,
        ..base
    }
}

/// One server's state and the tasks' context.
pub(crate) struct Driver {
    spec: ServerSpec,
    state: Mutex<State>,
    /// The queue for `state` of the busy paths (client batches, peer batches): a task
    /// waiting for its turn yields its thread to other tasks instead of putting the thread
    /// to sleep on `state`'s lock ([`Driver::turn`]).
    gate: Arc<tokio::sync::Mutex<()>>,
    settings: RwLock<Arc<Settings>>,
    /// Serialises changes of `settings` (and of the node's neighbours that go with them).
    reconfig: Mutex<()>,
    token: CancellationToken,
    tracker: TaskTracker,
    clients: Arc<ClientCount>,
    next_session: AtomicU64,
    /// The journal, reachable without the lock for writing out what was appended under it.
    journal: Option<Arc<Journal>>,
    /// Wakes the timer when `settle` arms an earlier deadline.
    timer: Notify,
    /// Times the timer ran ([`ServerStats::timer_wakeups`]).
    timer_wakeups: AtomicU64,
    /// Client connections refused or closed early, by cause (logged at most once a second).
    refusals: Refusals,
    /// Whether a reconciliation with a neighbour has finished since the start (or there are
    /// no neighbours): the readiness of `/readyz`.
    synced_once: AtomicBool,
}

/// What the lock protects.
struct State {
    node: Node<LinkTable>,
    waiters: HashMap<u64, oneshot::Sender<QueryOutcome>>,
    /// The deadline the timer sleeps until (`None`: until woken).
    timer_at: Option<Timestamp>,
    /// Records from peers are in the journal's buffer and must be written by then.
    journal_due: Option<Timestamp>,
    /// Records the node refused, by cause, as last logged.
    refused: RefusedLog,
    /// Connections that may hold fences, by subscriber id: where their events go.
    subscribers: HashMap<Subscriber, Subscription>,
    /// The last subscriber id handed out.
    last_subscriber: Subscriber,
    /// Subscribers closed because their event queue was full.
    subscribers_dropped: u64,
}

/// The driver's end of a connection's fence events.
struct Subscription {
    tx: mpsc::Sender<Vec<u8>>,
    /// Cancelled when the driver drops the subscriber (its queue was full).
    dropped: CancellationToken,
}

/// A connection's end of its fence events ([`ClientTurn::subscribe`]); dropping it ends the
/// connection's fences.
pub(crate) struct Pushes {
    driver: Arc<Driver>,
    id: Subscriber,
    /// The events, in the order the records were stored; closed when the driver drops the
    /// subscriber.
    pub(crate) rx: mpsc::Receiver<Vec<u8>>,
    /// Cancelled when the driver drops the subscriber because its queue was full.
    pub(crate) dropped: CancellationToken,
}

impl Pushes {
    /// The subscriber id the node knows the connection by.
    pub(crate) fn id(&self) -> Subscriber {
        self.id
    }
}

impl Drop for Pushes {
    fn drop(&mut self) {
        let mut st = lock(&self.driver.state);
        st.subscribers.remove(&self.id);
        st.node.drop_subscriber(self.id);
    }
}

/// A cause for which the node does not store a record: its counter, level and log line.
type RefusalCause = (fn(&NodeStats) -> u64, tracing::Level, &'static str);

/// The causes for which the node does not store a record, in [`RefusedLog`] order.
const REFUSAL_CAUSES: [RefusalCause; 4] = [
    (
        |s| s.records_refused,
        tracing::Level::WARN,
        "records for new clients not stored: the store is full (limits.max_records)",
    ),
    (
        |s| s.future_refused,
        tracing::Level::INFO,
        "IAMATs not stored: client time too far ahead (limits.max_future_skew_ms)",
    ),
    (
        |s| s.expired_on_arrival,
        tracing::Level::INFO,
        "records not stored: already expired on arrival (limits.record_ttl_ms)",
    ),
    (
        |s| s.long_ids_refused,
        tracing::Level::INFO,
        "peer or journal records not stored: client id too long (limits.max_client_id_bytes)",
    ),
];

/// The node's refusal counters, logged one line per cause at most once a second with the
/// count since that cause's last line. On the hot path it costs one comparison of four
/// counters; the count left over within a second is logged by the timer when it is up.
#[derive(Debug, Default)]
struct RefusedLog {
    /// The counters as last compared.
    seen: [u64; 4],
    /// Per cause: the counter at its last line.
    logged: [u64; 4],
    /// Per cause: when its last line was logged.
    at: [Option<Timestamp>; 4],
    /// When a count not yet logged may be (`None`: none is waiting).
    due: Option<Timestamp>,
}

impl RefusedLog {
    fn counts(stats: &NodeStats) -> [u64; 4] {
        REFUSAL_CAUSES.map(|(get, _, _)| get(stats))
    }

    /// Compares the node's counters with those last seen and, at `now`, returns the causes
    /// to log now with their counts since their last line.
    fn check(&mut self, stats: &NodeStats, now: impl FnOnce() -> Timestamp) -> Vec<(usize, u64)> {
        let counts = Self::counts(stats);
        if counts == self.seen && self.due.is_none() {
            return Vec::new();
        }
        self.seen = counts;
        let now = now();
        if self.due.is_some_and(|d| d > now) {
            return Vec::new();
        }
        self.due = None;
        let mut out = Vec::new();
        for (i, (&count, (logged, at))) in counts
            .iter()
            .zip(self.logged.iter_mut().zip(self.at.iter_mut()))
            .enumerate()
        {
            let new = count - *logged;
            if new == 0 {
                continue;
            }
            match *at {
                Some(last) if now.since(last) < RATE_LOG_PERIOD => {
                    let due = last.plus(RATE_LOG_PERIOD);
                    self.due = Some(self.due.map_or(due, |d| d.min(due)));
                }
                _ => {
                    out.push((i, new));
                    *logged = count;
                    *at = Some(now);
                }
            }
        }
        out
    }
}

/// Who writes out what a call appended to the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// The caller, before it sends the replies that acknowledge it.
    ByCaller,
    /// The timer, within [`JOURNAL_PEER_FLUSH`].
    Soon,
}

/// Why [`Driver::peer_batch`] stopped feeding a session's lines.
#[derive(Debug)]
pub(crate) enum PeerBatchError {
    /// The session is no longer the link's current one.
    Stale,
    /// A line over the peer line limit, or a read error.
    Line(LineError),
    /// A malformed line or one that breaks the session's rules (returned for the log).
    Parse(PeerError, BytesMut),
}

/// The node, lent to a client connection for one batch of lines.
pub(crate) struct ClientTurn<'a> {
    state: &'a mut State,
}

impl ClientTurn<'_> {
    /// Warms the store for the lines ahead in `buf` ([`crate::warm`]); returns how many.
    pub(crate) fn warm(&self, buf: &[u8]) -> usize {
        warm(self.state.node.store(), buf, Lines::Client)
    }

    /// Handles one client line from subscriber `from` (if the connection is one); a direct
    /// reply is appended to `out`.
    pub(crate) fn line(
        &mut self,
        now: Timestamp,
        from: Option<Subscriber>,
        line: &[u8],
        out: &mut Vec<u8>,
    ) -> ClientAction {
        self.state
            .node
            .handle_client_line_from(now, from, line, out)
    }

    /// Makes the connection a subscriber that may hold fences: its events arrive on the
    /// returned end, at most `queue` of them waiting.
    pub(crate) fn subscribe(&mut self, driver: &Arc<Driver>, queue: usize) -> Pushes {
        let (tx, rx) = mpsc::channel(queue.max(1));
        self.state.last_subscriber += 1;
        let id = self.state.last_subscriber;
        let dropped = CancellationToken::new();
        self.state.subscribers.insert(
            id,
            Subscription {
                tx,
                dropped: dropped.clone(),
            },
        );
        Pushes {
            driver: driver.clone(),
            id,
            rx,
            dropped,
        }
    }

    /// The answer of herd query `ticket` (from [`ClientAction::Pending`]), when it comes.
    pub(crate) fn wait_for(&mut self, ticket: u64) -> oneshot::Receiver<QueryOutcome> {
        let (tx, rx) = oneshot::channel();
        self.state.waiters.insert(ticket, tx);
        rx
    }
}

/// A session installed by [`Driver::link_up`]: what its reader and writer need.
pub(crate) struct Live {
    /// The session's id.
    pub(crate) id: u64,
    /// Its outbound queue.
    pub(crate) queue: Arc<PeerQueue>,
    /// Stops its tasks.
    pub(crate) kill: CancellationToken,
    /// Whether it replaced a previous session of the link.
    pub(crate) replaced: bool,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // The node's invariants hold between calls; a panicked task cannot break them halfway in a
    // way a later caller could observe worse than losing that one call.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A busy path's turn at the node ([`Driver::turn`]); dropping it lets the next one in.
pub(crate) struct Turn {
    /// Held for its drop: the next task's turn.
    _held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Turn {
    /// No turn: for a caller that cannot wait as a task (it takes the node's lock directly,
    /// which is always correct, only not as cheap when contended).
    pub(crate) fn none() -> Self {
        Turn { _held: None }
    }
}

/// The earliest of the node's deadlines, the journal's peer flush and the next refusal log.
fn next_deadline(st: &State) -> Option<Timestamp> {
    earliest(
        earliest(st.node.poll_timeout(), st.journal_due),
        st.refused.due,
    )
}

fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

impl Driver {
    /// A driver over `node` (its store already restored from `journal`, if any).
    pub(crate) fn new(
        spec: ServerSpec,
        node: Node<LinkTable>,
        journal: Option<Arc<Journal>>,
        token: CancellationToken,
        tracker: TaskTracker,
    ) -> Arc<Self> {
        let clients = ClientCount::new(spec.limits.max_clients);
        let settings = Settings {
            limits: spec.limits.clone(),
            secret: spec.secret.clone(),
            tls: spec.tls.clone(),
            peers: spec
                .neighbours
                .iter()
                .map(|n| Peer {
                    name: n.name.clone(),
                    addr: n.addr.clone(),
                    removed: false,
                    stop: token.child_token(),
                })
                .collect(),
        };
        let no_neighbours = spec.neighbours.is_empty();
        Arc::new(Self {
            spec,
            settings: RwLock::new(Arc::new(settings)),
            reconfig: Mutex::new(()),
            gate: Arc::new(tokio::sync::Mutex::new(())),
            state: Mutex::new(State {
                node,
                waiters: HashMap::new(),
                timer_at: None,
                journal_due: None,
                refused: RefusedLog::default(),
                subscribers: HashMap::new(),
                last_subscriber: 0,
                subscribers_dropped: 0,
            }),
            token,
            tracker,
            clients,
            next_session: AtomicU64::new(1),
            journal,
            timer: Notify::new(),
            timer_wakeups: AtomicU64::new(0),
            refusals: Refusals::default(),
            synced_once: AtomicBool::new(no_neighbours),
        })
    }

    // === context ===

    /// This server's spec as it started (what can change since is in [`Driver::settings`]).
    pub(crate) fn spec(&self) -> &ServerSpec {
        &self.spec
    }

    /// The settings now: take them once per connection or session, not per line.
    pub(crate) fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// This server's name.
    pub(crate) fn name(&self) -> &ServerName {
        &self.spec.name
    }

    /// Neighbour `peer`'s name.
    pub(crate) fn peer_name(&self, peer: PeerId) -> ServerName {
        // Ids come from this list's positions and it only grows: `peer` is always in it.
        self.settings().peers[peer.0].name.clone()
    }

    /// Cancelled when the server shuts down.
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Spawns a task of this server (tracked for shutdown, logged to this server's file).
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(Scoped::new(self.spec.log_index, fut));
    }

    /// A place for one more client connection, if the limit allows.
    pub(crate) fn admit_client(&self) -> Option<ClientPermit> {
        self.clients.admit()
    }

    /// The most client connections allowed now.
    pub(crate) fn max_clients(&self) -> usize {
        self.clients.max.load(Ordering::Acquire)
    }

    /// Refusals of client connections, by cause.
    pub(crate) fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// This incarnation's epoch (for handshakes).
    pub(crate) fn epoch(&self) -> u64 {
        lock(&self.state).node.epoch()
    }

    /// The neighbours not removed, with their ids.
    pub(crate) fn active_peers(&self) -> Vec<(PeerId, ServerName)> {
        self.settings()
            .peers
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.removed)
            .map(|(i, p)| (PeerId(i), p.name.clone()))
            .collect()
    }

    /// The neighbours not removed, with their dial addresses now.
    pub(crate) fn neighbours(&self) -> Vec<Neighbour> {
        self.settings()
            .peers
            .iter()
            .filter(|p| !p.removed)
            .map(|p| Neighbour {
                name: p.name.clone(),
                addr: p.addr.clone(),
            })
            .collect()
    }

    /// The token that stops `peer`'s dialler.
    pub(crate) fn peer_stop(&self, peer: PeerId) -> Option<CancellationToken> {
        self.settings().peers.get(peer.0).map(|p| p.stop.clone())
    }

    /// A watch of whether `peer`'s link has a session.
    pub(crate) fn link_watch(&self, peer: PeerId) -> Option<watch::Receiver<bool>> {
        lock(&self.state).node.sink().watch(peer)
    }

    // === changes while running ===

    /// Replaces the settings with `f` applied to a copy of them (under the change lock, which
    /// the caller holds).
    fn change_settings(&self, f: impl FnOnce(&mut Settings)) {
        let mut new = Settings::clone(&self.settings());
        f(&mut new);
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
    }

    fn reconfig_lock(&self) -> MutexGuard<'_, ()> {
        self.reconfig.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds neighbour `n`; `None` when a neighbour of that name is already there (not
    /// removed). The caller starts its dialler with what is returned (the socket loops are
    /// not the driver's to start: they call the driver, never the other way round).
    pub(crate) fn add_peer(
        self: &Arc<Self>,
        n: Neighbour,
    ) -> Option<(PeerId, Option<watch::Receiver<bool>>, CancellationToken)> {
        let _change = self.reconfig_lock();
        if self.active_peers().iter().any(|(_, name)| *name == n.name) {
            return None;
        }
        let stop = self.token.child_token();
        let mine_preferred = self.spec.name < n.name;
        let name = n.name.clone();
        self.change_settings(|s| {
            s.peers.push(Peer {
                name: n.name,
                addr: n.addr,
                removed: false,
                stop: stop.clone(),
            });
        });
        let (peer, up) = {
            let mut st = lock(&self.state);
            let peer = st.node.add_neighbour(name);
            let in_table = st.node.sink_mut().add(mine_preferred);
            debug_assert_eq!(peer, in_table, "the node and the table number peers alike");
            (peer, st.node.sink().watch(peer))
        };
        Some((peer, up, stop))
    }

    /// Removes neighbour `name` for good: its dialler stops, its session is closed, its
    /// handshakes are refused from now on, and the node takes its link down (queries waiting
    /// on it finish). Returns whether it was a neighbour.
    pub(crate) fn remove_peer(&self, name: &ServerName) -> bool {
        let _change = self.reconfig_lock();
        let Some((peer, _)) = self.active_peers().into_iter().find(|(_, n)| n == name) else {
            return false;
        };
        self.change_settings(|s| s.peers[peer.0].removed = true);
        if let Some(stop) = self.peer_stop(peer) {
            stop.cancel();
        }
        let mut st = lock(&self.state);
        st.node.sink_mut().remove(peer);
        st.node.remove_neighbour(clock::now(), peer);
        self.settle(&mut st, Flush::Soon);
        true
    }

    /// Dials neighbour `name` at `addr` from its next dial on (a session up stays up);
    /// returns whether it is a neighbour.
    pub(crate) fn set_peer_addr(&self, name: &ServerName, addr: String) -> bool {
        let _change = self.reconfig_lock();
        let Some((peer, _)) = self.active_peers().into_iter().find(|(_, n)| n == name) else {
            return false;
        };
        self.change_settings(|s| s.peers[peer.0].addr = addr);
        true
    }

    /// New limits: the node's and the client count's apply at once, the rest to
    /// connections and sessions that start from now on.
    pub(crate) fn set_limits(&self, limits: Limits) {
        let _change = self.reconfig_lock();
        self.clients
            .max
            .store(limits.max_clients, Ordering::Release);
        let node = limits.clone();
        self.change_settings(|s| s.limits = limits);
        let mut st = lock(&self.state);
        let now = clock::now();
        let base = st.node.limits();
        st.node.set_limits(now, node_limits(&node, base));
        self.settle(&mut st, Flush::Soon);
    }

    /// A new peer secret, for handshakes from now on.
    pub(crate) fn set_secret(&self, secret: Option<Arc<[u8]>>) {
        let _change = self.reconfig_lock();
        self.change_settings(|s| s.secret = secret);
    }

    /// New TLS contexts, for connections from now on.
    pub(crate) fn set_tls(&self, tls: Option<HerdTls>) {
        let _change = self.reconfig_lock();
        self.change_settings(|s| s.tls = tls);
    }

    // === what happens ===

    /// Waits (as a task, not blocking its thread) until no other busy path holds the node,
    /// and holds that turn until the [`Turn`] is handed to [`Driver::client_batch`] or
    /// [`Driver::peer_batch`] (or dropped).
    ///
    /// With several worker threads, tasks that took `state`'s lock directly would put their
    /// thread to sleep while another thread's task holds it and wake it after: under deep
    /// pipelining that hand-over, a futex sleep and wake per batch, cost a fifth of the
    /// server's CPU. Waiting here, a task lets its thread run the other tasks (reads,
    /// writes, log lines) meanwhile.
    pub(crate) async fn turn(&self) -> Turn {
        Turn {
            _held: Some(self.gate.clone().lock_owned().await),
        }
    }

    /// Runs `f` with the node for one batch of a client's lines, then settles and writes the
    /// journal up to everything stored, so the replies in the batch may leave. `turn`, from
    /// [`Driver::turn`] (or [`Turn::none`] where a task cannot wait), ends with the batch.
    pub(crate) fn client_batch<R>(
        &self,
        turn: Turn,
        f: impl FnOnce(&mut ClientTurn<'_>) -> R,
    ) -> R {
        let mut st = lock(&self.state);
        let r = f(&mut ClientTurn { state: &mut st });
        self.settle(&mut st, Flush::ByCaller);
        drop(st);
        drop(turn);
        self.write_journal();
        r
    }

    /// Feeds every complete line buffered for session `id` of `peer` to the node.
    pub(crate) fn peer_batch(
        &self,
        turn: Turn,
        peer: PeerId,
        id: u64,
        codec: &mut LineCodec,
        buf: &mut BytesMut,
    ) -> Result<(), PeerBatchError> {
        let now = clock::now();
        let mut st = lock(&self.state);
        if !st.node.sink().is_current(peer, id) {
            return Err(PeerBatchError::Stale);
        }
        let mut result = Ok(());
        let mut heard = 0u64;
        let mut warm_left = warm(st.node.store(), buf, Lines::Peer);
        while let Some(line) = codec.decode(buf).transpose() {
            heard += 1;
            let line = match line {
                Ok(line) => line,
                Err(e) => {
                    result = Err(PeerBatchError::Line(e));
                    break;
                }
            };
            if let Err(e) = st.node.handle_peer_line(now, peer, &line) {
                result = Err(PeerBatchError::Parse(e, line));
                break;
            }
            warm_left = warm_left.saturating_sub(1);
            if warm_left == 0 {
                warm_left = warm(st.node.store(), buf, Lines::Peer);
            }
        }
        st.node
            .sink_mut()
            .heard(peer, heard, std::time::Instant::now());
        if !self.synced_once.load(Ordering::Relaxed) && st.node.is_linked(peer) {
            self.synced_once.store(true, Ordering::Relaxed);
        }
        self.settle(&mut st, Flush::Soon);
        drop(st);
        drop(turn);
        result
    }

    /// A handshake with `peer` succeeded: installs the session as the link's current one
    /// (the node reconciles), or `None` when the current one is kept.
    pub(crate) fn link_up(
        &self,
        peer: PeerId,
        peer_epoch: u64,
        dialled_by_me: bool,
    ) -> Option<Live> {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let queue = PeerQueue::new(self.settings().limits.peer_queue_bytes);
        let kill = CancellationToken::new();
        let session = Session {
            id,
            peer_epoch,
            dialled_by_me,
            queue: queue.clone(),
            kill: kill.clone(),
        };
        let mut st = lock(&self.state);
        let installed = st.node.sink_mut().install(peer, session);
        if installed == Installed::Refused {
            return None;
        }
        // A link already up in the node is taken down and up again: the new session reconciles.
        st.node.handle_link_up(clock::now(), peer);
        self.settle(&mut st, Flush::Soon);
        Some(Live {
            id,
            queue,
            kill,
            replaced: installed == Installed::Replaced,
        })
    }

    /// Session `id` of `peer` ended; returns whether it was the link's current one (then the
    /// link is down).
    pub(crate) fn link_down(&self, peer: PeerId, id: u64) -> bool {
        let mut st = lock(&self.state);
        if !st.node.sink_mut().end(peer, id) {
            return false;
        }
        st.node.handle_link_down(clock::now(), peer);
        self.settle(&mut st, Flush::Soon);
        true
    }

    /// The writer of `peer`'s link took the queue after the node asked to hear of it: the
    /// reconciliation under way goes on.
    pub(crate) fn drained(&self, peer: PeerId) {
        let mut st = lock(&self.state);
        st.node.handle_link_drained(clock::now(), peer);
        self.settle(&mut st, Flush::Soon);
    }

    /// Runs the node's timers and the journal's peer flush, each at its deadline. After
    /// shutdown it goes on until no deadline is left (so the WHATSATs waiting on the herd
    /// are answered by the node within the grace period), then writes the journal out.
    pub(crate) async fn run_timer(self: Arc<Self>) {
        let mut stopping = false;
        loop {
            let wait = lock(&self.state).timer_at.map(|t| t.since(clock::now()));
            if stopping && wait.is_none() {
                break;
            }
            tokio::select! {
                () = self.token.cancelled(), if !stopping => stopping = true,
                () = self.timer.notified() => {}
                () = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => {}
            }
            self.tick();
        }
        self.write_journal();
    }

    /// Runs what is due now: the node's expired timers, the journal's peer flush.
    pub(crate) fn tick(&self) {
        let now = clock::now();
        let mut st = lock(&self.state);
        let journal_due = st.journal_due.is_some_and(|t| t <= now);
        if journal_due {
            st.journal_due = None;
        }
        if st.node.poll_timeout().is_some_and(|t| t <= now) {
            st.node.handle_timeout(now);
        }
        self.timer_wakeups.fetch_add(1, Ordering::Relaxed);
        // The timer task sleeps until the next deadline after this call; only a deadline
        // that `settle` makes earlier still must wake it (else it would wake itself at once,
        // again and again, for as long as any deadline is pending).
        st.timer_at = next_deadline(&st);
        self.settle(&mut st, Flush::Soon);
        drop(st);
        if journal_due {
            self.write_journal();
        }
    }

    /// Moves every output of the last node call where it goes.
    fn settle(&self, st: &mut State, flush: Flush) {
        if let Some(j) = &self.journal {
            let mut any = false;
            for r in st.node.drain_journal() {
                j.append(&r);
                any = true;
            }
            if any {
                if j.wants_compaction(st.node.store().len()) {
                    j.compact_in_background(st.node.store().snapshot());
                }
                if flush == Flush::Soon && st.journal_due.is_none() {
                    st.journal_due = Some(clock::now().plus(JOURNAL_PEER_FLUSH));
                }
            }
        }
        while let Some(event) = st.node.poll_event() {
            match event {
                NodeEvent::QueryDone { ticket, outcome } => {
                    if let Some(tx) = st.waiters.remove(&ticket) {
                        // The connection may be gone; its answer is then moot.
                        let _ = tx.send(outcome);
                    }
                }
                NodeEvent::Fence { subscriber, line } => {
                    let Some(sub) = st.subscribers.get(&subscriber) else {
                        continue;
                    };
                    match sub.tx.try_send(line) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            // It does not read its events: it must not slow the herd.
                            sub.dropped.cancel();
                            st.subscribers.remove(&subscriber);
                            let fences = st.node.drop_subscriber(subscriber);
                            st.subscribers_dropped += 1;
                            tracing::warn!(
                                fences,
                                queue_lines = self.settings().limits.fence_queue_lines,
                                "fence subscriber does not read its events; closing its connection (limits.fence_queue_lines)"
                            );
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            st.subscribers.remove(&subscriber);
                            st.node.drop_subscriber(subscriber);
                        }
                    }
                }
            }
        }
        let logs = st.refused.check(st.node.stats(), clock::now);
        for (cause, count) in logs {
            self.log_refused(cause, count);
        }
        let next = next_deadline(st);
        if next.is_some() && (st.timer_at.is_none() || next < st.timer_at) {
            st.timer_at = next;
            self.timer.notify_one();
        }
    }

    /// Logs that the node refused `count` records for cause `cause` ([`REFUSAL_CAUSES`])
    /// since that cause's last line.
    fn log_refused(&self, cause: usize, count: u64) {
        let (_, level, msg) = REFUSAL_CAUSES[cause];
        if level == tracing::Level::WARN {
            let max_records = self.settings().limits.max_records;
            tracing::warn!(count, max_records, "{msg}");
        } else {
            tracing::info!(count, "{msg}");
        }
    }

    /// Writes the journal up to everything appended so far (outside the lock).
    fn write_journal(&self) {
        if let Some(j) = &self.journal {
            j.flush_to(j.appended());
        }
    }

    // === reading ===

    /// The counters and store summary now.
    pub(crate) fn stats(&self) -> ServerStats {
        let clients = self.clients.open.load(Ordering::Acquire);
        let st = lock(&self.state);
        let node = &st.node;
        let links_up = (0..node.neighbours().len())
            .map(PeerId)
            .filter(|&p| node.is_linked(p))
            .map(|p| node.neighbours()[p.0].clone())
            .collect();
        let now = std::time::Instant::now();
        let links = (0..node.neighbours().len())
            .map(PeerId)
            .filter(|&p| !node.is_removed(p))
            .filter_map(|p| {
                let view = node.sink().view(p)?;
                let state = if node.is_linked(p) {
                    LinkState::Up
                } else if view.session {
                    LinkState::Syncing
                } else {
                    LinkState::Down
                };
                Some(LinkStats {
                    peer: node.neighbours()[p.0].clone(),
                    state,
                    queue_bytes: view.queued,
                    sent: view.counts.sent,
                    received: view.counts.received,
                    last_heard: view
                        .counts
                        .last_heard
                        .map(|t| now.saturating_duration_since(t)),
                })
            })
            .collect();
        ServerStats {
            server: node.name().clone(),
            node: node.stats().clone(),
            records: node.store().len(),
            store_line_bytes: node.store().line_bytes(),
            digest: node.store().digest(),
            links,
            links_up,
            clients,
            journal: self.journal.as_ref().map(|j| (j.lines(), j.errors())),
            timer_wakeups: self.timer_wakeups.load(Ordering::Relaxed),
            refusals: self.refusals.counts(),
            fences: node.fence_count(),
            fence_subscribers: st.subscribers.len(),
            fence_subscribers_dropped: st.subscribers_dropped,
        }
    }

    /// Whether the server is ready: a reconciliation with a neighbour has finished since the
    /// start (or it has no neighbours). The journal, if any, is restored before the driver
    /// exists.
    pub(crate) fn ready(&self) -> bool {
        if self.synced_once.load(Ordering::Relaxed) {
            return true;
        }
        let st = lock(&self.state);
        let node = &st.node;
        let any = (0..node.neighbours().len()).any(|p| node.is_linked(PeerId(p)));
        if any {
            self.synced_once.store(true, Ordering::Relaxed);
        }
        any
    }

    /// Up to `max` of the records held (in no particular order) and how many are held.
    pub(crate) fn sample_records(&self, max: usize) -> (Vec<Arc<Record>>, usize) {
        let st = lock(&self.state);
        let store = st.node.store();
        (
            store.records().take(max).map(Arc::new).collect(),
            store.len(),
        )
    }

    /// The client's newest record as this server holds it (its AT line).
    pub(crate) fn record(&self, client: &[u8]) -> Option<Vec<u8>> {
        lock(&self.state)
            .node
            .store()
            .get(client)
            .map(|r| r.at_line().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_ms(ms: u64) -> Timestamp {
        Timestamp::from_parts(1_000 + ms / 1000, (ms % 1000) as u32 * 1_000_000)
    }

    #[test]
    fn the_client_bound_changes_for_new_connections_and_open_ones_stay() {
        let count = ClientCount::new(2);
        let a = count.admit().unwrap();
        let b = count.admit().unwrap();
        assert!(count.admit().is_none(), "full");
        count.max.store(1, Ordering::Release);
        assert_eq!(count.open.load(Ordering::Acquire), 2, "open ones stay");
        drop(a);
        assert!(count.admit().is_none(), "still at the lowered bound");
        drop(b);
        let c = count.admit().unwrap();
        assert!(count.admit().is_none());
        count.max.store(3, Ordering::Release);
        let _d = count.admit().unwrap();
        drop(c);
        assert_eq!(count.open.load(Ordering::Acquire), 1);
    }

    #[test]
    fn refusals_log_one_line_per_cause_a_second_with_the_count_since_the_last() {
        let mut log = RefusedLog::default();
        let mut s = NodeStats::default();
        assert!(log
            .check(&s, || panic!("no clock read without a change"))
            .is_empty());
        s.records_refused = 1;
        assert_eq!(log.check(&s, || at_ms(0)), [(0, 1)]);
        assert!(log.check(&s, || panic!("unchanged")).is_empty());
        s.records_refused = 5;
        s.future_refused = 2;
        assert_eq!(
            log.check(&s, || at_ms(10)),
            [(1, 2)],
            "another cause logs at once"
        );
        assert_eq!(log.due, Some(at_ms(1000)), "the rest waits for its second");
        s.records_refused = 9;
        assert!(log.check(&s, || at_ms(500)).is_empty());
        assert_eq!(
            log.check(&s, || at_ms(1000)),
            [(0, 8)],
            "the timer logs the rest"
        );
        assert_eq!(log.due, None);
        assert!(log.check(&s, || panic!("nothing waiting")).is_empty());
        s.long_ids_refused = 1;
        s.expired_on_arrival = 3;
        assert_eq!(log.check(&s, || at_ms(1001)), [(2, 3), (3, 1)]);
    }
}
