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
//! The lock is a `std::sync::Mutex` and is never held across an await.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use herd_core::{
    ClientAction, Node, NodeEvent, NodeStats, PeerError, PeerId, QueryOutcome, Record, ServerName,
    Timestamp,
};
use tokio::sync::{oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
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
use crate::spec::ServerSpec;
use crate::stats::{LinkState, LinkStats, ServerStats};
use crate::warm::{warm, Lines};

/// Records from peers reach the journal file within this time (a client's records are
/// written before its reply leaves).
const JOURNAL_PEER_FLUSH: Duration = Duration::from_millis(20);

/// One server's state and the tasks' context.
pub(crate) struct Driver {
    spec: ServerSpec,
    state: Mutex<State>,
    token: CancellationToken,
    tracker: TaskTracker,
    clients: Arc<Semaphore>,
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

    /// Handles one client line; a direct reply is appended to `out`.
    pub(crate) fn line(&mut self, now: Timestamp, line: &[u8], out: &mut Vec<u8>) -> ClientAction {
        self.state.node.handle_client_line(now, line, out)
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
        let clients = Arc::new(Semaphore::new(spec.limits.max_clients));
        let no_neighbours = spec.neighbours.is_empty();
        Arc::new(Self {
            spec,
            state: Mutex::new(State {
                node,
                waiters: HashMap::new(),
                timer_at: None,
                journal_due: None,
                refused: RefusedLog::default(),
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

    /// This server's spec.
    pub(crate) fn spec(&self) -> &ServerSpec {
        &self.spec
    }

    /// This server's limits.
    pub(crate) fn limits(&self) -> &Limits {
        &self.spec.limits
    }

    /// This server's name.
    pub(crate) fn name(&self) -> &ServerName {
        &self.spec.name
    }

    /// Neighbour `peer`'s name.
    pub(crate) fn peer_name(&self, peer: PeerId) -> &ServerName {
        &self.spec.neighbours[peer.0].name
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
    pub(crate) fn admit_client(&self) -> Option<OwnedSemaphorePermit> {
        self.clients.clone().try_acquire_owned().ok()
    }

    /// Refusals of client connections, by cause.
    pub(crate) fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// This incarnation's epoch (for handshakes).
    pub(crate) fn epoch(&self) -> u64 {
        lock(&self.state).node.epoch()
    }

    /// The neighbours' names, in [`PeerId`] order.
    pub(crate) fn neighbour_names(&self) -> Vec<ServerName> {
        self.spec
            .neighbours
            .iter()
            .map(|n| n.name.clone())
            .collect()
    }

    /// A watch of whether `peer`'s link has a session.
    pub(crate) fn link_watch(&self, peer: PeerId) -> Option<watch::Receiver<bool>> {
        lock(&self.state).node.sink().watch(peer)
    }

    // === what happens ===

    /// Runs `f` with the node for one batch of a client's lines, then settles and writes the
    /// journal up to everything stored, so the replies in the batch may leave.
    pub(crate) fn client_batch<R>(&self, f: impl FnOnce(&mut ClientTurn<'_>) -> R) -> R {
        let mut st = lock(&self.state);
        let r = f(&mut ClientTurn { state: &mut st });
        self.settle(&mut st, Flush::ByCaller);
        drop(st);
        self.write_journal();
        r
    }

    /// Feeds every complete line buffered for session `id` of `peer` to the node.
    pub(crate) fn peer_batch(
        &self,
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
        let queue = PeerQueue::new(self.spec.limits.peer_queue_bytes);
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
                    j.compact_in_background(st.node.store().records().cloned().collect());
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
        let limits = &self.spec.limits;
        if level == tracing::Level::WARN {
            tracing::warn!(count, max_records = limits.max_records, "{msg}");
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
        let limit = self.spec.limits.max_clients;
        let clients = limit.saturating_sub(self.clients.available_permits());
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
        (store.records().take(max).cloned().collect(), store.len())
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
