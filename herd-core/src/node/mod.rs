//! The node: one server's whole protocol logic as a sans-IO state machine.
//!
//! Inputs are `(now, event)`: a client line, a peer message, a link going up or down, a timer.
//! Outputs are the client's reply (written into a buffer the caller owns), peer messages (handed
//! to the [`PeerSink`] port, which never blocks), Places lookups to make ([`ClientAction`]) and
//! [`NodeEvent`]s for requests that wait on the herd. The node never waits on anything.
//!
//! Rules:
//! - an update is stored and forwarded only if it is newer than what the store holds, and never
//!   back to the neighbour it came from: the store's monotonic order is the dedup, so no update
//!   can circulate (each record changes each store at most once). It is forwarded along an
//!   epidemic broadcast tree per origin ([`Dissemination::Tree`], the default: pushed on eager
//!   links, announced on lazy ones, pruned and grafted) or flooded ([`Dissemination::Flood`]);
//! - when a link comes up both sides send a [`PeerMsg::Digest`] naming how much of the other's
//!   local log they have seen; each answers with the records changed since then and a
//!   [`PeerMsg::Synced`]. A reconnect costs what the other side missed, not the whole store.
//!   The delta is paced by the sink's backlog ([`NodeConfig::resync_window`]): however large
//!   it is, it never fills the link's queue, and live updates for that neighbour wait in the
//!   delta (they join it in log order) until it is through;
//! - a WHATSAT for an unknown client floods a [`PeerMsg::Query`] that collects answers back along
//!   its spanning tree (an echo wave) and is answered by a deadline;
//! - neighbours can be added ([`Node::add_neighbour`]) and removed ([`Node::remove_neighbour`])
//!   while the node runs, and its limits changed ([`Node::set_limits`]): a [`PeerId`] is an
//!   index that is never reused, and a removed neighbour's link is down for good.
//!
//! Layout: this file holds the node's state, clients, updates, links and the dispatch of peer
//! messages; `query.rs` the herd query wave (start, forward, answers, finish, deadlines),
//! `resync.rs` the reconciliation (digest, paced delta, drained queue) and `tree.rs` the
//! dissemination (flood, or the broadcast tree: eager and lazy links, announcements, prunes,
//! grafts), each as an `impl Node` block of its own.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::lookup::PlacesQuery;
use crate::peer::{PeerMsg, PeerParseError};
use crate::ports::{IdSource, PeerId, PeerSink};
use crate::protocol::{
    parse_client_line, write_invalid, write_nearby_reply, ClientLine, NearbyCenter, NearbyHit,
    NearbyRequest, WhatsAt,
};
use crate::record::Record;
use crate::store::{is_expired, LocationStore, NearbyQuery, Offer};
use crate::types::{MaxItems, RadiusKm, ServerName, Timestamp};

mod fences;
mod query;
mod resync;
mod tree;

use fences::Fences;
pub use fences::{Subscriber, DEFAULT_MAX_FENCES, DEFAULT_MAX_FENCES_PER_SUBSCRIBER};

use query::{Asker, QueryKey, QueryState};
use resync::Resync;
use tree::TreeState;
pub use tree::{Dissemination, DEFAULT_ANNOUNCE_DELAY, DEFAULT_GRAFT_TIMEOUT};

/// Default time a WHATSAT for an unknown client waits for the herd's answer.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_millis(800);
/// Default bound on herd queries a node tracks at once.
pub const DEFAULT_MAX_QUERIES: usize = 4096;
/// Default backlog (bytes) up to which a reconciliation delta is queued for a neighbour.
pub const DEFAULT_RESYNC_WINDOW: usize = 1 << 20;
/// Default lag (bytes) past which a neighbour is caught up from the store
/// ([`NodeConfig::catch_up_bytes`]).
pub const DEFAULT_CATCH_UP_BYTES: usize = 4 << 20;
/// Default longest client id, in bytes, that the node accepts ([`NodeConfig::max_client_id_bytes`]).
pub const DEFAULT_MAX_CLIENT_ID_BYTES: usize = 256;

/// What a node needs to know about itself.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This server's name.
    pub name: ServerName,
    /// Its neighbours; a [`PeerId`] indexes this list.
    pub neighbours: Vec<ServerName>,
    /// How long a herd query waits for answers.
    pub query_timeout: Duration,
    /// How many herd queries may be tracked at once (each is dropped at its deadline).
    pub max_queries: usize,
    /// A reconciliation delta is handed to the sink only while the neighbour's backlog
    /// ([`PeerSink::backlog`]) is below this many bytes; the rest follows when the sink
    /// reports the queue taken ([`Node::handle_link_drained`]). Keep it well below the
    /// adapter's queue bound.
    pub resync_window: usize,
    /// When a neighbour's lag ([`PeerSink::lag`]) passes this many bytes (0: never), its
    /// link stops taking live updates and announcements: the node sends `C` and catches the
    /// neighbour up with a delta from its log, paced like a reconciliation's (each client's
    /// latest record, once), then `S` and live updates again. A link whose neighbour takes
    /// updates slower than they come stays caught up this way, at the cost of a client's
    /// intermediate records, which only the latest supersedes anyway.
    pub catch_up_bytes: usize,
    /// Whether every record the store takes is also kept for [`Node::drain_journal`], so
    /// that an adapter can write it to durable storage (before acknowledging it).
    pub journal: bool,
    /// Longest client id, in bytes (default [`DEFAULT_MAX_CLIENT_ID_BYTES`]). An IAMAT or
    /// WHATSAT with a longer one is answered `? <line>` like any invalid line (counted in
    /// [`NodeStats::invalid`]); a record from a peer (or [`Node::restore`]) with a longer one
    /// is not stored ([`NodeStats::long_ids_refused`]).
    pub max_client_id_bytes: usize,
    /// Most clients the store holds (default `None`: no limit). When it holds this many, a
    /// record for a new client is not stored: an IAMAT is still answered with its AT line but
    /// neither stored nor flooded; a peer's or a restored record is dropped. Records of
    /// clients already held still replace theirs. Counted in [`NodeStats::records_refused`].
    pub max_records: Option<usize>,
    /// How long a record lives (default `None`: for ever): it expires this long after its
    /// client time (the time in the IAMAT, not its arrival), so every server expires it at
    /// the same moment and the herd still agrees. Expired records leave the store (from
    /// [`Node::handle_timeout`], which [`Node::poll_timeout`] schedules, and before any
    /// call handles its event); one that arrives already expired is not stored (an IAMAT is
    /// still answered). Counted in [`NodeStats::expired`] and [`NodeStats::expired_on_arrival`].
    pub record_ttl: Option<Duration>,
    /// Whether the store keeps its nearby index (default `true`), which answers `NEARBY` by
    /// searching it; without it `NEARBY` scans every record (the same answer, slower).
    pub nearby_index: bool,
    /// How far a client's time may be ahead of the server's `now` (default `None`: any). An
    /// IAMAT further ahead is answered with its AT line but neither stored nor flooded
    /// ([`NodeStats::future_refused`]).
    pub max_future_skew: Option<Duration>,
    /// Most fences one subscriber (client connection) holds (default
    /// [`DEFAULT_MAX_FENCES_PER_SUBSCRIBER`]); a FENCE beyond it is answered `? <line>`.
    pub max_fences_per_subscriber: usize,
    /// Most fences the node holds (default [`DEFAULT_MAX_FENCES`]); a FENCE beyond it is
    /// answered `? <line>`.
    pub max_fences: usize,
    /// How stored records reach the other servers (default [`Dissemination::Tree`]; see
    /// `tree.rs`). A herd may mix both: every server understands every message.
    pub dissemination: Dissemination,
    /// With the tree, how long an announcement waits for others to share its `I` line
    /// (default [`DEFAULT_ANNOUNCE_DELAY`]; zero: each goes at once).
    pub announce_delay: Duration,
    /// With the tree, how long a record announced and missing is waited for before the
    /// announcer is asked for it, and between asking one announcer and the next (default
    /// [`DEFAULT_GRAFT_TIMEOUT`]). Longer than the eager path's usual delay, so that a
    /// slow path is not mistaken for a broken one.
    pub graft_timeout: Duration,
}

/// The limits of a node that [`Node::set_limits`] changes while it runs (the fields of
/// [`NodeConfig`] of the same names, which document each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLimits {
    /// [`NodeConfig::query_timeout`]: applies to herd queries started after the change.
    pub query_timeout: Duration,
    /// [`NodeConfig::max_queries`]: applies to herd queries started after the change.
    pub max_queries: usize,
    /// [`NodeConfig::resync_window`]: applies from the next pacing decision.
    pub resync_window: usize,
    /// [`NodeConfig::catch_up_bytes`]: applies from the next record sent.
    pub catch_up_bytes: usize,
    /// [`NodeConfig::max_client_id_bytes`]: applies to lines and records from then on;
    /// records already held with longer ids stay.
    pub max_client_id_bytes: usize,
    /// [`NodeConfig::max_records`]: applies to records for new clients from then on; a
    /// store already holding more keeps them (it only takes no new client until below).
    pub max_records: Option<usize>,
    /// [`NodeConfig::record_ttl`]: applies at once to every held record (the expiry index
    /// is rebuilt; what the new lifetime has expired leaves the store at the change).
    pub record_ttl: Option<Duration>,
    /// [`NodeConfig::max_future_skew`]: applies to IAMATs from then on.
    pub max_future_skew: Option<Duration>,
    /// [`NodeConfig::max_fences_per_subscriber`]: applies to new fences; held ones stay.
    pub max_fences_per_subscriber: usize,
    /// [`NodeConfig::max_fences`]: applies to new fences; held ones stay.
    pub max_fences: usize,
}

impl NodeConfig {
    /// The limits [`Node::set_limits`] can change.
    pub fn limits(&self) -> NodeLimits {
        NodeLimits {
            query_timeout: self.query_timeout,
            max_queries: self.max_queries,
            resync_window: self.resync_window,
            catch_up_bytes: self.catch_up_bytes,
            max_client_id_bytes: self.max_client_id_bytes,
            max_records: self.max_records,
            record_ttl: self.record_ttl,
            max_future_skew: self.max_future_skew,
            max_fences_per_subscriber: self.max_fences_per_subscriber,
            max_fences: self.max_fences,
        }
    }

    /// Sets the fields of `limits`.
    pub fn set_limits(&mut self, limits: NodeLimits) {
        let NodeLimits {
            query_timeout,
            max_queries,
            resync_window,
            catch_up_bytes,
            max_client_id_bytes,
            max_records,
            record_ttl,
            max_future_skew,
            max_fences_per_subscriber,
            max_fences,
        } = limits;
        self.query_timeout = query_timeout;
        self.max_queries = max_queries;
        self.resync_window = resync_window;
        self.catch_up_bytes = catch_up_bytes;
        self.max_client_id_bytes = max_client_id_bytes;
        self.max_records = max_records;
        self.record_ttl = record_ttl;
        self.max_future_skew = max_future_skew;
        self.max_fences_per_subscriber = max_fences_per_subscriber;
        self.max_fences = max_fences;
    }

    /// A config with default limits.
    pub fn new(name: ServerName, neighbours: Vec<ServerName>) -> Self {
        Self {
            name,
            neighbours,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            max_queries: DEFAULT_MAX_QUERIES,
            resync_window: DEFAULT_RESYNC_WINDOW,
            catch_up_bytes: DEFAULT_CATCH_UP_BYTES,
            journal: false,
            max_client_id_bytes: DEFAULT_MAX_CLIENT_ID_BYTES,
            max_records: None,
            record_ttl: None,
            max_future_skew: None,
            nearby_index: true,
            max_fences_per_subscriber: DEFAULT_MAX_FENCES_PER_SUBSCRIBER,
            max_fences: DEFAULT_MAX_FENCES,
            dissemination: Dissemination::default(),
            announce_delay: DEFAULT_ANNOUNCE_DELAY,
            graft_timeout: DEFAULT_GRAFT_TIMEOUT,
        }
    }
}

/// Why a peer line ended its link's session ([`Node::handle_peer_line`]): the adapter should
/// drop the link (the next session reconciles afresh).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PeerError {
    /// The line is not a well-formed peer message.
    #[error(transparent)]
    Parse(#[from] PeerParseError),
    /// A second `D` (digest) in one session: a session is reconciled once, so a peer cannot
    /// make the node rebuild its delta again and again.
    #[error("second digest in one session")]
    RepeatedDigest,
}

/// What the caller must do for a client line after [`Node::handle_client_line`].
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a WHATSAT's reply is only written once the caller acts on it"]
pub enum ClientAction {
    /// A blank line: nothing to send.
    Silent,
    /// The whole reply has been written into the caller's buffer.
    Replied,
    /// A WHATSAT for a known client: look the places up, then write the reply with
    /// [`crate::protocol::write_whatsat_reply`] using `record.at_line()`.
    Places {
        /// The client's stored record.
        record: Arc<Record>,
        /// The lookup to make.
        query: PlacesQuery,
    },
    /// A WHATSAT for a client this node does not know: the herd is asked. The node keeps
    /// what the reply needs; wait for the [`NodeEvent::QueryDone`] with this ticket, which
    /// always comes (by the query's deadline at the latest).
    Pending {
        /// Identifies the answer.
        ticket: u64,
    },
}

/// How a WHATSAT that waited on the herd ends ([`NodeEvent::QueryDone`]).
#[derive(Debug, Clone, PartialEq)]
pub enum QueryOutcome {
    /// The herd knows the client: look the places up, then write the reply with
    /// [`crate::protocol::write_whatsat_reply`] using `record.at_line()`.
    Places {
        /// The client's newest record.
        record: Arc<Record>,
        /// The lookup to make.
        query: PlacesQuery,
    },
    /// The herd does not know the client: the complete reply, `? <line>\n`.
    Reply(Vec<u8>),
}

/// Something the node tells its driver outside a direct reply.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeEvent {
    /// A herd query started by a client's WHATSAT is finished.
    QueryDone {
        /// The ticket given in [`ClientAction::Pending`].
        ticket: u64,
        /// What to do for the WHATSAT.
        outcome: QueryOutcome,
    },
    /// A fence's event for its subscriber: the whole line to push, `ENTER <fence-id> <AT
    /// line>\n` or `EXIT <fence-id> <AT line>\n`, in the order the records were stored.
    Fence {
        /// The connection holding the fence.
        subscriber: Subscriber,
        /// The line.
        line: Vec<u8>,
    },
}

/// Counters, for tests, logs and the benchmark's proof of message cost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Valid IAMATs received from clients.
    pub iamats: u64,
    /// WHATSATs received from clients.
    pub whatsats: u64,
    /// Invalid client lines.
    pub invalid: u64,
    /// Records stored (from clients or peers).
    pub stored: u64,
    /// Records received that were not new.
    pub stale: u64,
    /// `Update` messages sent.
    pub updates_sent: u64,
    /// `Update` messages received.
    pub updates_received: u64,
    /// Peer messages of any kind sent.
    pub peer_sent: u64,
    /// Sends the sink refused.
    pub send_failures: u64,
    /// Herd queries started for local clients.
    pub queries_started: u64,
    /// Peer messages that were malformed, out of session (ignored) or a second digest in one
    /// session ([`PeerError`]).
    pub peer_errors: u64,
    /// Records from peers (updates, query answers) or [`Node::restore`] not stored because
    /// their client id is longer than [`NodeConfig::max_client_id_bytes`] (client lines with
    /// such ids count in `invalid`).
    pub long_ids_refused: u64,
    /// Records for new clients not stored because the store held
    /// [`NodeConfig::max_records`] clients (from clients, peers or `restore`).
    pub records_refused: u64,
    /// Records that had already expired ([`NodeConfig::record_ttl`]) when they arrived (from
    /// clients, peers or `restore`): not stored.
    pub expired_on_arrival: u64,
    /// Records removed from the store because they expired ([`NodeConfig::record_ttl`]).
    pub expired: u64,
    /// IAMATs not stored because their client time was further ahead of the server's time
    /// than [`NodeConfig::max_future_skew`].
    pub future_refused: u64,
    /// IAMATs whose record was stored (the rest of `iamats` were stale or refused).
    pub iamats_stored: u64,
    /// IAMATs whose record was not newer than the one held.
    pub iamats_stale: u64,
    /// WHATSATs for a client the store held (answered without asking the herd).
    pub whatsats_local: u64,
    /// Herd queries for local clients that found the client.
    pub queries_found: u64,
    /// WHATSATs answered `? ` because the herd did not know the client (or the query could
    /// not start, [`NodeConfig::max_queries`]).
    pub whatsats_unknown: u64,
    /// NEARBY requests answered (invalid ones count in `invalid`).
    pub nearbys: u64,
    /// Reconciliations: digests answered with a delta (one per link session).
    pub resyncs: u64,
    /// Records sent in reconciliation deltas.
    pub resync_records: u64,
    /// Times a link fell behind and was caught up from the store (`C` sent).
    pub catch_ups: u64,
    /// Records sent in those catch-ups.
    pub catch_up_records: u64,
    /// `C` lines received: a neighbour caught this node up.
    pub catch_ups_received: u64,
    /// FENCEs refused for a limit ([`NodeConfig::max_fences_per_subscriber`],
    /// [`NodeConfig::max_fences`]).
    pub fences_refused: u64,
    /// Fence events queued ([`NodeEvent::Fence`]).
    pub fence_events: u64,
    /// `Update` messages sent to pass a record on (pushed on an eager link, or answering a
    /// graft); the rest of `updates_sent` are reconciliation deltas.
    pub payload_sent: u64,
    /// Records announced instead of sent (broadcast tree, lazy links).
    pub announcements_sent: u64,
    /// `I` messages sent (each carries one or more announcements).
    pub announce_messages_sent: u64,
    /// Bytes of the `I` messages sent, newlines included.
    pub announce_bytes_sent: u64,
    /// Announcements received.
    pub announcements_received: u64,
    /// `X` (prune) messages sent: a live update was not new over an eager link.
    pub prunes_sent: u64,
    /// `X` (prune) messages received.
    pub prunes_received: u64,
    /// `G` (graft) messages sent: an announced record was still missing at its timeout.
    pub grafts_sent: u64,
    /// `G` (graft) messages received.
    pub grafts_received: u64,
}

/// Why the node did not store a record that was new to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Its client id is over [`NodeConfig::max_client_id_bytes`].
    LongId,
    /// It is for a new client and the store is at [`NodeConfig::max_records`].
    Full,
    /// It has expired ([`NodeConfig::record_ttl`]).
    Expired,
    /// Its client time is too far ahead ([`NodeConfig::max_future_skew`]).
    Future,
}

/// What offering a record to the node did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    Stored,
    Stale,
    Refused(Refusal),
}

/// Where a record offered to the node comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Client,
    Peer(PeerId),
    Restore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    Down,
    /// Up, digest sent, the peer's digest not yet answered, or its delta not yet all handed to
    /// the sink: live updates wait for the delta (which will carry them).
    Syncing,
    Up,
}

#[derive(Debug, Clone)]
struct Link {
    state: LinkState,
    /// The peer's incarnation, as learnt from its last digest.
    peer_epoch: u64,
    /// How much of the peer's log (of `peer_epoch`) this node has seen.
    seen: u64,
    /// The store's source tag for records from this peer's incarnation (0 before its digest).
    source: u64,
    /// The delta being sent to the peer, when one is under way.
    resync: Option<Resync>,
    /// Whether this session's digest has been handled (a session honours one).
    digest_done: bool,
    /// Whether the neighbour was removed ([`Node::remove_neighbour`]): the link stays down
    /// for good.
    removed: bool,
}

impl Link {
    const DOWN: Link = Link {
        state: LinkState::Down,
        peer_epoch: 0,
        seen: 0,
        source: 0,
        resync: None,
        digest_done: false,
        removed: false,
    };
}

/// One server's protocol state machine.
#[derive(Debug)]
pub struct Node<S: PeerSink> {
    cfg: NodeConfig,
    epoch: u64,
    links: Vec<Link>,
    store: LocationStore,
    sink: S,
    queries: HashMap<QueryKey, QueryState, foldhash::fast::FixedState>,
    query_order: VecDeque<(Timestamp, QueryKey)>,
    next_qid: u64,
    /// The last source tag handed to a peer incarnation.
    last_source: u64,
    events: VecDeque<NodeEvent>,
    stats: NodeStats,
    /// Records stored since the last [`Node::drain_journal`] (with [`NodeConfig::journal`]).
    journal: Vec<Arc<Record>>,
    fences: Fences,
    /// The broadcast tree's links, announcements waiting and records missing.
    tree: TreeState,
}

impl<S: PeerSink> Node<S> {
    /// A node with an empty store; its epoch, hash seeds and query ids come from `ids`.
    pub fn new(cfg: NodeConfig, sink: S, ids: &mut impl IdSource) -> Self {
        let links = vec![Link::DOWN; cfg.neighbours.len()];
        // Epoch 0 means "never seen" in digests, so a real epoch is never 0.
        let epoch = ids.next_u64().max(1);
        let mut store = LocationStore::with_ttl(ids.next_u64(), cfg.record_ttl);
        store.set_nearby_index(cfg.nearby_index);
        Self {
            cfg,
            epoch,
            links,
            store,
            sink,
            queries: HashMap::with_hasher(foldhash::fast::FixedState::with_seed(ids.next_u64())),
            query_order: VecDeque::new(),
            next_qid: ids.next_u64() >> 1,
            last_source: 0,
            events: VecDeque::new(),
            stats: NodeStats::default(),
            journal: Vec::new(),
            fences: Fences::default(),
            tree: TreeState::default(),
        }
    }

    /// This server's name.
    pub fn name(&self) -> &ServerName {
        &self.cfg.name
    }

    /// This incarnation's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The neighbour list ([`PeerId`] indexes it). A removed neighbour keeps its place (so
    /// no [`PeerId`] changes meaning) and is never linked again ([`Node::is_removed`]).
    pub fn neighbours(&self) -> &[ServerName] {
        &self.cfg.neighbours
    }

    /// Whether `peer` was removed ([`Node::remove_neighbour`]); `false` for an unknown id.
    pub fn is_removed(&self, peer: PeerId) -> bool {
        self.links.get(peer.0).is_some_and(|l| l.removed)
    }

    /// The neighbours not removed, with their [`PeerId`]s.
    pub fn active_neighbours(&self) -> impl Iterator<Item = (PeerId, &ServerName)> + '_ {
        self.cfg
            .neighbours
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.links[*i].removed)
            .map(|(i, n)| (PeerId(i), n))
    }

    /// Adds neighbour `name` (its link down until [`Node::handle_link_up`]) and returns its
    /// [`PeerId`]: the next index, as ids are never reused. A name that is already a
    /// neighbour (not removed) keeps its id, which is returned; a removed one gets a new id.
    pub fn add_neighbour(&mut self, name: ServerName) -> PeerId {
        if let Some((peer, _)) = self.active_neighbours().find(|(_, n)| **n == name) {
            return peer;
        }
        self.cfg.neighbours.push(name);
        self.links.push(Link::DOWN);
        PeerId(self.links.len() - 1)
    }

    /// Removes neighbour `peer` for good: its link goes down as by [`Node::handle_link_down`]
    /// (queries waiting on its answer count it as a "no", so they still finish), it is never
    /// offered updates or queries again, a later [`Node::handle_link_up`] for it is ignored
    /// and its messages are ignored (counted in [`NodeStats::peer_errors`]). Its id is not
    /// reused. Unknown or already removed: nothing happens.
    pub fn remove_neighbour(&mut self, now: Timestamp, peer: PeerId) {
        if self.links.get(peer.0).is_none_or(|l| l.removed) {
            return;
        }
        self.handle_link_down(now, peer);
        self.forget_announcer(peer);
        self.links[peer.0] = Link {
            removed: true,
            ..Link::DOWN
        };
    }

    /// The limits now.
    pub fn limits(&self) -> NodeLimits {
        self.cfg.limits()
    }

    /// Changes the limits at `now` (see [`NodeLimits`] for when each takes effect). A new
    /// record lifetime applies to every held record at once: the store's expiry index is
    /// rebuilt and the records it has already expired are removed now (counted in
    /// [`NodeStats::expired`]); as every server expires by client time, servers given the
    /// same lifetime still agree.
    pub fn set_limits(&mut self, now: Timestamp, limits: NodeLimits) {
        self.cfg.set_limits(limits);
        self.store.set_ttl(limits.record_ttl);
        self.expire(now);
    }

    /// The location store.
    pub fn store(&self) -> &LocationStore {
        &self.store
    }

    /// The counters.
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// The peer sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// The peer sink, mutably.
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// Whether the link to `peer` is up and synchronised.
    pub fn is_linked(&self, peer: PeerId) -> bool {
        self.links
            .get(peer.0)
            .is_some_and(|l| l.state == LinkState::Up)
    }

    // === clients ===

    /// Handles one client line (without terminator), received at `now`, from a client that
    /// cannot hold fences (a FENCE is answered `? <line>`). Direct replies are appended to
    /// `out`.
    pub fn handle_client_line(
        &mut self,
        now: Timestamp,
        line: &[u8],
        out: &mut Vec<u8>,
    ) -> ClientAction {
        self.handle_client_line_from(now, None, line, out)
    }

    /// Handles one client line as [`Node::handle_client_line`] does, from the connection
    /// `from` names: its FENCEs are filed for it, and their events come as
    /// [`NodeEvent::Fence`] for it until it ends them or [`Node::drop_subscriber`].
    pub fn handle_client_line_from(
        &mut self,
        now: Timestamp,
        from: Option<Subscriber>,
        line: &[u8],
        out: &mut Vec<u8>,
    ) -> ClientAction {
        self.expire(now);
        let max_id = self.cfg.max_client_id_bytes;
        match parse_client_line(line) {
            ClientLine::Blank => ClientAction::Silent,
            ClientLine::Invalid(_) => self.invalid(line, out),
            ClientLine::IAmAt(req) if req.client.len() > max_id => self.invalid(line, out),
            ClientLine::WhatsAt(req) if req.client.len() > max_id => self.invalid(line, out),
            ClientLine::IAmAt(req) => {
                self.stats.iamats += 1;
                let record = Arc::new(Record::from_iamat(&self.cfg.name, now, &req));
                out.reserve(record.at_line().len() + 1);
                out.extend_from_slice(record.at_line());
                out.push(b'\n');
                match self.apply_update(now, Origin::Client, record) {
                    Applied::Stored => self.stats.iamats_stored += 1,
                    Applied::Stale => self.stats.iamats_stale += 1,
                    Applied::Refused(_) => {}
                }
                ClientAction::Replied
            }
            ClientLine::WhatsAt(req) => {
                self.stats.whatsats += 1;
                self.whatsat(now, line, &req, out)
            }
            ClientLine::Nearby(req) => self.nearby(now, line, &req, out),
            ClientLine::Fence(req) => self.fence(from, line, &req, out),
            ClientLine::Unfence(id) => self.unfence(from, line, id, out),
        }
    }

    /// Answers a NEARBY from the store: every server holds every client's newest record,
    /// so no herd query is needed. A client form for a client not held is `? <line>`.
    fn nearby(
        &mut self,
        now: Timestamp,
        line: &[u8],
        req: &NearbyRequest<'_>,
        out: &mut Vec<u8>,
    ) -> ClientAction {
        let (subject, lat, lon, exclude) = match req.center {
            NearbyCenter::Client(c) if c.len() > self.cfg.max_client_id_bytes => {
                return self.invalid(line, out);
            }
            NearbyCenter::Client(c) => match self.store.get(c) {
                Some(r) => (Some(r.clone()), r.lat(), r.lon(), Some(c)),
                None => return self.invalid(line, out),
            },
            NearbyCenter::Point { lat, lon, .. } => (None, lat, lon, None),
        };
        self.stats.nearbys += 1;
        let found = self.store.nearby(&NearbyQuery {
            lat,
            lon,
            radius_m: req.radius.km() * 1000.0,
            max: usize::from(req.max),
            exclude,
        });
        let now_s = now.as_nanos() as f64 / 1e9;
        let hits: Vec<NearbyHit<'_>> = found
            .iter()
            .map(|n| NearbyHit {
                at_line: n.record.at_line(),
                client: n.record.client(),
                distance_m: n.distance_m,
                age_s: now_s - n.record.time().as_nanos() as f64 / 1e9,
            })
            .collect();
        write_nearby_reply(
            subject.as_ref().map(|r| r.at_line()),
            (lat, lon),
            req.radius,
            &hits,
            out,
        );
        ClientAction::Replied
    }

    fn invalid(&mut self, line: &[u8], out: &mut Vec<u8>) -> ClientAction {
        self.stats.invalid += 1;
        write_invalid(line, out);
        ClientAction::Replied
    }

    fn whatsat(
        &mut self,
        now: Timestamp,
        line: &[u8],
        req: &WhatsAt<'_>,
        out: &mut Vec<u8>,
    ) -> ClientAction {
        if let Some(record) = self.store.get(req.client) {
            self.stats.whatsats_local += 1;
            return ClientAction::Places {
                query: places_query(&record, req.radius, req.max_items),
                record: Arc::new(record),
            };
        }
        let asker = Asker {
            line: line.into(),
            radius: req.radius,
            max_items: req.max_items,
        };
        match self.start_query(now, req.client, asker) {
            Some(ticket) => ClientAction::Pending { ticket },
            None => {
                self.stats.whatsats_unknown += 1;
                write_invalid(line, out);
                ClientAction::Replied
            }
        }
    }

    /// Takes the next event for the driver.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    /// The records stored (from clients and peers) since the last call, in store order, when
    /// [`NodeConfig::journal`] is set. An adapter that writes them out before it sends the
    /// replies of the same call makes every acknowledged update survive a crash.
    #[must_use = "the drained records are gone from the node once dropped"]
    pub fn drain_journal(&mut self) -> std::vec::Drain<'_, Arc<Record>> {
        self.journal.drain(..)
    }

    /// Puts a record read back from durable storage into the store, as this node's own (it
    /// is sent to every neighbour whose digest asks for it), without flooding it now and
    /// without journaling it again. Call it before any link is up. Returns whether it was
    /// stored: newer than what the store held, and within the limits at `now` (not expired,
    /// id not too long, room for a new client; the refusals are counted as for a peer's
    /// record).
    pub fn restore(&mut self, now: Timestamp, record: Arc<Record>) -> bool {
        self.expire(now);
        if self.admit(now, &record, Origin::Restore).is_err() {
            return false;
        }
        matches!(self.store.offer_from(record, 0), Offer::Stored(_))
    }

    // === updates ===

    /// Removes the records expired at `now` ([`NodeConfig::record_ttl`]).
    fn expire(&mut self, now: Timestamp) {
        if self.fences.is_empty() {
            let n = self.store.expire(now);
            self.stats.expired += n as u64;
            return;
        }
        let mut gone = Vec::new();
        let n = self.store.expire_with(now, |r| gone.push(r));
        self.stats.expired += n as u64;
        for record in gone {
            self.fence_crossings(Some(record.position()), None, &record);
        }
    }

    /// Whether the limits let the store take `record` at `now` (whether it is newer than the
    /// held one is the store's to say); a refusal is counted.
    fn admit(&mut self, now: Timestamp, record: &Record, from: Origin) -> Result<(), Refusal> {
        let cfg = &self.cfg;
        let too_far_ahead = |skew: Duration| {
            let time = u128::try_from(record.time().as_nanos()).unwrap_or(0);
            time > u128::from(now.as_nanos()).saturating_add(skew.as_nanos())
        };
        let refusal = if record.client().len() > cfg.max_client_id_bytes {
            Refusal::LongId
        } else if cfg
            .record_ttl
            .is_some_and(|ttl| is_expired(record, ttl, now))
        {
            Refusal::Expired
        } else if from == Origin::Client && cfg.max_future_skew.is_some_and(too_far_ahead) {
            Refusal::Future
        } else if cfg
            .max_records
            .is_some_and(|max| self.store.len() >= max && !self.store.contains(record.client()))
        {
            Refusal::Full
        } else {
            return Ok(());
        };
        let counter = match refusal {
            Refusal::LongId => &mut self.stats.long_ids_refused,
            Refusal::Full => &mut self.stats.records_refused,
            Refusal::Expired => &mut self.stats.expired_on_arrival,
            Refusal::Future => &mut self.stats.future_refused,
        };
        *counter += 1;
        Err(refusal)
    }

    /// Stores `record` if new and within the limits, and floods it to every synchronised
    /// neighbour but the one it came from.
    fn apply_update(&mut self, now: Timestamp, from: Origin, record: Arc<Record>) -> Applied {
        if let Err(refusal) = self.admit(now, &record, from) {
            return Applied::Refused(refusal);
        }
        let from = match from {
            Origin::Peer(p) => Some(p),
            Origin::Client | Origin::Restore => None,
        };
        let source = from
            .and_then(|p| self.links.get(p.0))
            .map_or(0, |l| l.source);
        // With fences, the position the record replaces decides what it crosses.
        let watching = !self.fences.is_empty();
        let old = watching
            .then(|| self.store.position(record.client()))
            .flatten();
        let Offer::Stored(seq) = self.store.offer_from(record.clone(), source) else {
            self.stats.stale += 1;
            return Applied::Stale;
        };
        if watching {
            self.fence_crossings(old, Some(record.position()), &record);
        }
        self.stats.stored += 1;
        if self.cfg.journal {
            self.journal.push(record.clone());
        }
        self.disseminate(now, from, seq, &record);
        Applied::Stored
    }

    fn send(&mut self, to: PeerId, msg: &PeerMsg) {
        if self.links.get(to.0).is_some_and(|l| l.removed) {
            // An answer owed to a removed neighbour (a query it sent before): it is gone.
            return;
        }
        self.stats.peer_sent += 1;
        if self.sink.send(to, msg).is_err() {
            // The adapter drops the link; stop using it until it is reported up again.
            self.stats.send_failures += 1;
            if let Some(link) = self.links.get_mut(to.0) {
                link.state = LinkState::Down;
                link.resync = None;
            }
        }
    }

    // === links ===

    /// The link to `peer` is up (handshake done): start reconciliation.
    pub fn handle_link_up(&mut self, now: Timestamp, peer: PeerId) {
        self.expire(now);
        let Some(link) = self.links.get_mut(peer.0).filter(|l| !l.removed) else {
            return;
        };
        if link.state != LinkState::Down {
            // A new session replaces the old one: its pending work is void.
            self.handle_link_down(now, peer);
        }
        let seen = self.tree_link_up(peer);
        let link = &mut self.links[peer.0];
        link.state = LinkState::Syncing;
        link.digest_done = false;
        let digest = PeerMsg::Digest {
            epoch: self.epoch,
            your_epoch: link.peer_epoch,
            seen,
        };
        self.send(peer, &digest);
    }

    /// The link to `peer` is down: queries waiting on it count it as a "no".
    pub fn handle_link_down(&mut self, now: Timestamp, peer: PeerId) {
        self.expire(now);
        let Some(link) = self.links.get_mut(peer.0) else {
            return;
        };
        link.state = LinkState::Down;
        link.resync = None;
        self.tree_link_down(peer);
        let waiting: Vec<QueryKey> = self
            .queries
            .iter()
            .filter(|(_, q)| q.waiting.contains(&peer))
            .map(|(k, _)| k.clone())
            .collect();
        for key in waiting {
            self.on_answer(now, peer, key, None);
        }
    }

    // === peer messages ===

    /// Parses and handles one peer line (without `\n`) from an authenticated neighbour.
    ///
    /// # Errors
    /// [`PeerError`] when the line is malformed or breaks the session's rules (the caller
    /// should drop the link); see [`Node::handle_peer_msg`].
    pub fn handle_peer_line(
        &mut self,
        now: Timestamp,
        from: PeerId,
        line: &[u8],
    ) -> Result<(), PeerError> {
        let msg = PeerMsg::parse(line).inspect_err(|_| self.stats.peer_errors += 1)?;
        self.handle_peer_msg(now, from, msg)
    }

    /// Handles one message from neighbour `from`. A message for a link that is down (one
    /// still in flight when it dropped) is counted in [`NodeStats::peer_errors`] and ignored.
    ///
    /// # Errors
    /// [`PeerError::RepeatedDigest`] for a second digest since [`Node::handle_link_up`]
    /// (counted, not handled; the caller should drop the link).
    pub fn handle_peer_msg(
        &mut self,
        now: Timestamp,
        from: PeerId,
        msg: PeerMsg,
    ) -> Result<(), PeerError> {
        if msg == PeerMsg::Ping {
            // Liveness is the adapter's concern; a ping is valid in any link state.
            return Ok(());
        }
        self.expire(now);
        let Some(link) = self
            .links
            .get_mut(from.0)
            .filter(|l| l.state != LinkState::Down)
        else {
            self.stats.peer_errors += 1;
            return Ok(());
        };
        if matches!(msg, PeerMsg::Digest { .. }) {
            if link.digest_done {
                self.stats.peer_errors += 1;
                return Err(PeerError::RepeatedDigest);
            }
            link.digest_done = true;
        }
        match msg {
            PeerMsg::Digest {
                epoch,
                your_epoch,
                seen,
            } => self.on_digest(now, from, epoch, your_epoch, seen),
            PeerMsg::Update { seq, record } => {
                self.stats.updates_received += 1;
                let link = &mut self.links[from.0];
                link.seen = link.seen.max(seq);
                self.take_announced(from, &record);
                let applied = self.apply_update(now, Origin::Peer(from), record.clone());
                self.on_payload(from, &record, applied);
            }
            PeerMsg::Synced { seq } => {
                self.links[from.0].seen = seq;
                self.tree_synced(from);
            }
            PeerMsg::Announce { entries } => self.on_announce(now, from, entries),
            PeerMsg::Graft { client } => self.on_graft(from, &client),
            PeerMsg::Prune { origin } => self.on_prune(from, origin),
            PeerMsg::Query {
                origin,
                qid,
                client,
            } => self.on_query(now, from, (origin, qid), client),
            PeerMsg::Answer {
                origin,
                qid,
                record,
            } => {
                // A record the store cannot take only for want of room still answers the
                // query; an expired one (or one with too long an id) counts as a "no".
                let record = record.filter(|r| {
                    let applied =
                        self.off_tree(|n| n.apply_update(now, Origin::Peer(from), r.clone()));
                    match applied {
                        Applied::Stored | Applied::Stale | Applied::Refused(Refusal::Full) => true,
                        Applied::Refused(_) => false,
                    }
                });
                self.on_answer(now, from, (origin, qid), record);
            }
            PeerMsg::Ping => {}
            PeerMsg::CatchUp => {
                self.stats.catch_ups_received += 1;
                self.tree_catch_up(from);
            }
        }
        Ok(())
    }
}

/// The Places lookup a WHATSAT about `record`'s client makes.
fn places_query(record: &Record, radius: RadiusKm, max_items: MaxItems) -> PlacesQuery {
    PlacesQuery {
        lat: record.lat(),
        lon: record.lon(),
        radius,
        max_items,
    }
}
