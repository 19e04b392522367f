//! Dissemination of stored records: a flood, or an epidemic broadcast tree (Plumtree) with
//! reconciliation as the backstop.
//!
//! With [`Dissemination::Tree`], each link is *eager* or *lazy* per origin server (the AT
//! line's second field) and per direction, so every origin has its own tree, the one its
//! records first reached every server by. At link up every origin is eager both ways. A
//! record stored goes as an [`PeerMsg::Update`] on the links eager (this way) for its origin
//! and as an [`Announcement`] on the lazy ones (batched per link for
//! [`super::NodeConfig::announce_delay`]). A live update that is not new (stale in the
//! store's order) over a link that pushes it makes the receiver tell the sender to announce
//! that origin's records instead ([`PeerMsg::Prune`]), unless that link is the last one
//! pushing them to it. An announcement of a record newer than the store's is remembered; if
//! it is still missing after [`super::NodeConfig::graft_timeout`], the node asks the
//! announcer for it ([`PeerMsg::Graft`]), which answers with its record and pushes that
//! origin's records on the link again. No announcer left: the record comes with the next
//! reconciliation.
//!
//! Reconciliation stays exact: every change of a node's log goes to every neighbour as an
//! update or an announcement, in log order, so the receiver's `seen` still counts "every
//! change up to here was sent or announced to me". An announcement of a record the receiver
//! lacks is a hole in that prefix until the record (or a newer one) arrives, and the digest
//! at the next link up names the change before the hole, so the delta carries it. An update
//! sent while announcements of earlier changes wait in the link's batch carries the log
//! number just before the first of them, so `seen` never covers a change that is not yet on
//! the wire.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::{Applied, LinkState, Node};
use crate::peer::tree::MAX_ANNOUNCE_BATCH_BYTES;
use crate::peer::{line_hash, record_hash, Announcement, PeerMsg};
use crate::ports::{PeerId, PeerSink};
use crate::record::Record;
use crate::types::Timestamp;

/// Default time an announcement waits in its link's batch ([`super::NodeConfig::announce_delay`]).
pub const DEFAULT_ANNOUNCE_DELAY: Duration = Duration::from_millis(5);
/// Default time a record announced but missing is waited for before a graft
/// ([`super::NodeConfig::graft_timeout`]).
pub const DEFAULT_GRAFT_TIMEOUT: Duration = Duration::from_millis(20);
/// Longest wait before a graft when the tree's pushes run late ([`Lag`]).
const MAX_GRAFT_WAIT: Duration = Duration::from_millis(1000);
/// Lateness last seen longer ago than this is forgotten: the graft wait is back to the
/// configured timeout.
const LAG_MEMORY: Duration = Duration::from_secs(1);
/// A graft timer that runs this much after its deadline found the server stalled (its tasks
/// did not run: a busy or descheduled process), so the push it waits for may be sitting
/// unread in a socket: the graft is put off once, by as long as the timer was late (at most
/// the graft wait), for the readers to run first.
const STALL: Duration = Duration::from_millis(2);

/// How a node passes on the records it stores ([`super::NodeConfig::dissemination`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dissemination {
    /// Every stored record goes to every synchronised neighbour but the one it came from:
    /// 2 × links − (servers − 1) update messages per record on a quiet herd.
    Flood,
    /// An epidemic broadcast tree per origin (Plumtree): servers − 1 update messages per
    /// record in steady state, announcements on the other links.
    #[default]
    Tree,
}

/// Whether the `pushes`th push of an origin over a link this end pruned (counted since the
/// prune) sends the prune again. The pushes the peer sent before the prune reached it are
/// expected, and under load a link's queue can hold many thousands of them: a prune for each
/// was once a fifth of a server's peer messages. But a push can also mean the prune was lost
/// to a graft that crossed it (the peer became eager again after it), so the prune is
/// repeated at the 1st, 2nd, 4th, 8th … push, and from the 1024th at every 1024th: at most
/// about 11 + n / 1024 prunes for n pushes, and a crossed graft is still answered.
fn reprune(pushes: u32) -> bool {
    if pushes < 1024 {
        pushes.is_power_of_two()
    } else {
        pushes.is_multiple_of(1024)
    }
}

/// Broadcast tree state of one link.
#[derive(Debug, Clone, Default)]
struct LinkTree {
    /// Origins whose records this end announces on the link rather than pushes: the peer
    /// pruned them (the rest are eager this way).
    lazy: HashSet<Box<[u8]>, foldhash::fast::FixedState>,
    /// Origins this end pruned: the peer announces their records to it (the rest the peer
    /// pushes). A server never prunes the last link that pushes it an origin's records.
    /// Each counts the pushes of that origin received since the last prune (the ones the
    /// peer sent before the prune reached it): see [`reprune`].
    pruned: HashMap<Box<[u8]>, u32, foldhash::fast::FixedState>,
    /// Announcements waiting to go, in log order.
    batch: Vec<Announcement>,
    /// Encoded bytes of `batch`.
    batch_bytes: usize,
    /// When `batch` goes out.
    flush_at: Option<Timestamp>,
    /// Whether the peer's reconciliation delta is through (its `S` arrived): updates from
    /// then on are live, and a stale one means a redundant path.
    peer_synced: bool,
}

/// A neighbour that announced a record the store lacks.
#[derive(Debug, Clone)]
struct Announcer {
    peer: PeerId,
    /// The newest announcement from this neighbour for the client (its `seq` is the first
    /// one's: the hole in the neighbour's log begins there).
    announced: Announcement,
    /// Whether it was sent a graft for it.
    grafted: bool,
}

/// A client whose newer record was announced and has not arrived.
#[derive(Debug, Clone, Default)]
struct Missing {
    announcers: Vec<Announcer>,
    /// When the next graft goes out (`None`: every reachable announcer has been asked).
    deadline: Option<Timestamp>,
    /// When the first announcement arrived.
    since: Option<Timestamp>,
    /// Whether a graft was put off once because its timer ran late ([`STALL`]).
    postponed: bool,
}

/// How late the tree's pushes have been lately: how long after its first announcement a
/// record missing here arrived by a push over a link not grafted for it. Under load the
/// queues along the eager path can hold a record longer than the graft timeout while the
/// announcements on lazy links overtake it; a graft then only fetches a copy already on its
/// way, makes one more link eager, and the duplicates that follow prune links again in
/// whatever order the queues deliver them, which can cut a server off the tree until the next
/// graft. So a graft waits at least twice the recent lateness (at most [`MAX_GRAFT_WAIT`]).
#[derive(Debug, Clone, Copy, Default)]
struct Lag {
    /// A decaying maximum of the samples, in nanoseconds.
    nanos: u64,
    /// When the last sample was taken.
    at: Option<Timestamp>,
}

impl Lag {
    fn sample(&mut self, now: Timestamp, late: Duration) {
        let s = u64::try_from(late.as_nanos()).unwrap_or(u64::MAX);
        let cur = self.current(now);
        // Rises at once, falls by an eighth of the gap per sample.
        self.nanos = if s >= cur { s } else { cur - (cur - s) / 8 };
        self.at = Some(now);
    }

    fn current(&self, now: Timestamp) -> u64 {
        match self.at {
            Some(at) if now.since(at) < LAG_MEMORY => self.nanos,
            _ => 0,
        }
    }

    /// The wait before a graft: `base`, or twice the recent lateness (at most
    /// [`MAX_GRAFT_WAIT`]) if longer.
    fn graft_wait(&self, now: Timestamp, base: Duration) -> Duration {
        let late = Duration::from_nanos(self.current(now).saturating_mul(2));
        base.max(late.min(MAX_GRAFT_WAIT))
    }
}

/// The node's broadcast tree state.
#[derive(Debug, Clone, Default)]
pub(super) struct TreeState {
    /// Per link, indexed by [`PeerId`] (grown on use).
    links: Vec<LinkTree>,
    missing: HashMap<Box<[u8]>, Missing, foldhash::fast::FixedState>,
    /// Graft deadlines.
    timers: BTreeSet<(Timestamp, Box<[u8]>)>,
    /// How late the tree's pushes have been lately.
    lag: Lag,
    /// Set while the node stores a record from a herd query's answer ([`Node::off_tree`]).
    off_tree: bool,
    /// Clients whose record in the store came from a query's answer, not by the tree: the
    /// tree's own copy of it, arriving after, is stale without the link being redundant.
    answered: HashSet<Box<[u8]>, foldhash::fast::FixedState>,
    /// Grafts sent and not answered yet: (link, client). The answer makes the link eager at
    /// this end (the peer made it eager at its end when it took the graft).
    grafted: HashSet<(usize, Box<[u8]>), foldhash::fast::FixedState>,
}

/// Most unanswered grafts [`TreeState::grafted`] remembers (past this bound the set is
/// cleared: an answer then finds its link lazy and prunes it, and a later graft mends it).
const MAX_GRAFTED: usize = 4096;

/// Most clients [`TreeState::answered`] remembers (their pushes normally arrive within a few
/// milliseconds; past this bound the set is cleared, at worst costing a needless prune).
const MAX_ANSWERED: usize = 4096;

impl TreeState {
    fn link(&mut self, peer: PeerId) -> &mut LinkTree {
        if self.links.len() <= peer.0 {
            self.links.resize_with(peer.0 + 1, LinkTree::default);
        }
        &mut self.links[peer.0]
    }

    fn is_lazy(&self, peer: PeerId, origin: &[u8]) -> bool {
        self.links
            .get(peer.0)
            .is_some_and(|l| !l.lazy.is_empty() && l.lazy.contains(origin))
    }

    fn is_pruned(&self, peer: PeerId, origin: &[u8]) -> bool {
        self.links
            .get(peer.0)
            .is_some_and(|l| !l.pruned.is_empty() && l.pruned.contains_key(origin))
    }

    fn peer_synced(&self, peer: PeerId) -> bool {
        self.links.get(peer.0).is_some_and(|l| l.peer_synced)
    }

    /// The log number an update of change `seq` carries on `peer`'s link: just before the
    /// first announcement still waiting in its batch, if any.
    fn covered(&self, peer: PeerId, seq: u64) -> u64 {
        self.links
            .get(peer.0)
            .and_then(|l| l.batch.first())
            .map_or(seq, |a| seq.min(a.seq.saturating_sub(1)))
    }

    fn remove_missing(&mut self, client: &[u8]) {
        if let Some(m) = self.missing.remove(client) {
            if let Some(t) = m.deadline {
                self.timers.remove(&(t, Box::from(client)));
            }
        }
    }

    /// The earliest graft deadline or batch flush.
    pub(super) fn next_timeout(&self) -> Option<Timestamp> {
        let graft = self.timers.first().map(|(t, _)| *t);
        let flush = self.links.iter().filter_map(|l| l.flush_at).min();
        match (graft, flush) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl<S: PeerSink> Node<S> {
    /// How many clients have a record announced to this node that it does not hold yet
    /// (waiting for a graft, or for the announcer's link to come back).
    pub fn announced_missing(&self) -> usize {
        self.tree.missing.len()
    }

    /// Whether this node pushes records of `origin` to `peer` (its link is eager for that
    /// origin), rather than announcing them. Always `true` with [`Dissemination::Flood`].
    pub fn is_eager(&self, peer: PeerId, origin: &[u8]) -> bool {
        !self.tree_on() || !self.tree.is_lazy(peer, origin)
    }

    /// Whether this node lets `peer` push it records of `origin` (it has not pruned that
    /// direction of the link). Always `true` with [`Dissemination::Flood`].
    pub fn is_pushed_by(&self, peer: PeerId, origin: &[u8]) -> bool {
        !self.tree_on() || !self.tree.is_pruned(peer, origin)
    }

    fn tree_on(&self) -> bool {
        self.cfg.dissemination == Dissemination::Tree
    }

    /// Runs `f` (which stores a record a herd query fetched) off the tree: the record is
    /// announced on every link, not pushed, and the tree's copy of it arriving later does not
    /// prune the link it comes by. A query fetches a record out of the tree's order (a
    /// WHATSAT at a server that does not know the client yet, say just after an IAMAT
    /// elsewhere), so its copy often beats the tree's push; treated as a duplicate, that push
    /// would prune the server's (and, if pushed on, its neighbours') eager link for the
    /// origin, cutting them off the tree until a graft, 25 ms later, mends it.
    pub(super) fn off_tree<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        self.tree.off_tree = self.tree_on();
        let r = f(self);
        self.tree.off_tree = false;
        r
    }

    /// Passes on `record`, just stored under log number `seq` (from `from`, if a peer): an
    /// update on every synchronised link but `from` (eager ones only, with the tree), an
    /// announcement on the lazy ones.
    pub(super) fn disseminate(
        &mut self,
        now: Timestamp,
        from: Option<PeerId>,
        seq: u64,
        record: &Arc<Record>,
    ) {
        self.resolve_missing(now, from, record);
        let tree = self.tree_on();
        let off_tree = tree && self.tree.off_tree;
        if off_tree {
            if self.tree.answered.len() >= MAX_ANSWERED {
                self.tree.answered.clear();
            }
            self.tree.answered.insert(record.client().into());
        } else if tree && !self.tree.answered.is_empty() {
            self.tree.answered.remove(record.client());
        }
        // The record's hash, for its announcements: computed once, at the first.
        let mut hash = None;
        for i in 0..self.links.len() {
            let peer = PeerId(i);
            if Some(peer) == from || self.links[i].state != LinkState::Up {
                continue;
            }
            if self.cfg.catch_up_bytes > 0 && self.sink.lag(peer) > self.cfg.catch_up_bytes {
                // This change (and what follows) goes in the catch-up delta.
                self.start_catch_up(peer, seq.saturating_sub(1));
                continue;
            }
            if off_tree || (tree && self.tree.is_lazy(peer, record.origin())) {
                let hash = *hash.get_or_insert_with(|| record_hash(record));
                self.announce(now, peer, Announcement::with_hash(seq, record, hash));
            } else {
                let msg = PeerMsg::Update {
                    seq: self.tree.covered(peer, seq),
                    record: record.clone(),
                };
                self.stats.updates_sent += 1;
                self.stats.payload_sent += 1;
                self.send(peer, &msg);
            }
        }
    }

    fn announce(&mut self, now: Timestamp, peer: PeerId, a: Announcement) {
        let delay = self.cfg.announce_delay;
        let link = self.tree.link(peer);
        link.batch_bytes += a.encoded_len();
        link.batch.push(a);
        if delay.is_zero() || link.batch_bytes >= MAX_ANNOUNCE_BATCH_BYTES {
            self.flush_announcements(peer);
        } else if link.flush_at.is_none() {
            link.flush_at = Some(now.plus(delay));
        }
    }

    pub(super) fn flush_announcements(&mut self, peer: PeerId) {
        let link = self.tree.link(peer);
        link.flush_at = None;
        let bytes = std::mem::take(&mut link.batch_bytes);
        let entries = std::mem::take(&mut link.batch);
        if entries.is_empty() || self.links[peer.0].state == LinkState::Down {
            // (A link whose send failed is down without a `handle_link_down`.)
            return;
        }
        self.stats.announce_messages_sent += 1;
        self.stats.announcements_sent += entries.len() as u64;
        // `I`, the entries, the newline.
        self.stats.announce_bytes_sent += (1 + bytes + 1) as u64;
        self.send(peer, &PeerMsg::Announce { entries });
    }

    /// A record was stored (from `from`, if a peer): announcements it answers are no longer
    /// missing. If it was pushed over a link not grafted for it (and not off the tree), how
    /// late it came after the first announcement is a sample of the tree's lateness.
    fn resolve_missing(&mut self, now: Timestamp, from: Option<PeerId>, record: &Record) {
        if self.tree.missing.is_empty() {
            return;
        }
        let Some(m) = self.tree.missing.get_mut(record.client()) else {
            return;
        };
        let pushed = from.is_some_and(|p| !m.announcers.iter().any(|a| a.peer == p && a.grafted));
        if let (true, false, Some(since)) = (pushed, self.tree.off_tree, m.since) {
            if m.announcers
                .iter()
                .any(|a| a.announced.is_covered_by(record))
            {
                self.tree.lag.sample(now, now.since(since));
            }
        }
        m.announcers.retain(|a| !a.announced.is_covered_by(record));
        if m.announcers.is_empty() {
            self.tree.remove_missing(record.client());
        }
    }

    /// An update of `record` arrived from `from` (before the store is offered it): it
    /// answers whatever `from` announced of its client (the peer's record now is at least
    /// what it announced, as its store only moves forward and the link is FIFO, so the store
    /// will hold at least that).
    pub(super) fn take_announced(&mut self, from: PeerId, record: &Record) {
        if self.tree.missing.is_empty() || !self.tree.peer_synced(from) {
            return;
        }
        let Some(m) = self.tree.missing.get_mut(record.client()) else {
            return;
        };
        m.announcers.retain(|a| a.peer != from);
        if m.announcers.is_empty() {
            self.tree.remove_missing(record.client());
        }
    }

    /// A live update from `from` did `applied` to the store. Each direction of a link is
    /// eager or lazy on its own, and only the receiving end changes it (a prune, or a graft):
    /// so a server decides alone which of its links push it an origin's records, and never
    /// gives up the last of them. (With one state per link, a prune from either end cut
    /// both directions, and two neighbours that each saw a duplicate from a server could
    /// prune both of its links at once, leaving it to grafts, which fetch only each client's
    /// latest record, for as long as the race lasted.)
    /// - over a link this end pruned, the answer to this end's graft makes it push again;
    ///   an answer that brings nothing new is pruned at once; any other push means the peer
    ///   has not seen the prune yet (or a graft crossed it): it is pruned again, at the
    ///   pushes [`reprune`] picks;
    /// - over a pushing link, a stale record (a redundant path) prunes it, unless it is this
    ///   end's last pushing link for the origin: under load the copies of one record arrive
    ///   in any order, and pruning whichever came second, record after record, would cut
    ///   this server off the origin's tree until a graft.
    pub(super) fn on_payload(&mut self, from: PeerId, record: &Record, applied: Applied) {
        if !self.tree_on() || !self.tree.peer_synced(from) {
            // Flooding, or part of the peer's reconciliation delta (redundancy expected).
            return;
        }
        let origin = record.origin();
        let grafted = !self.tree.grafted.is_empty()
            && self
                .tree
                .grafted
                .remove(&(from.0, Box::<[u8]>::from(record.client())));
        if self.tree.is_pruned(from, origin) {
            if grafted && applied != Applied::Stale {
                self.tree.link(from).pruned.remove(origin);
            } else if let Some(pushes) = self.tree.link(from).pruned.get_mut(origin) {
                // The answer to a graft (the peer pushes again) that brought nothing new is
                // pruned at once, and the count starts again.
                *pushes = if grafted { 0 } else { pushes.saturating_add(1) };
                if grafted || reprune(*pushes) {
                    self.prune(from, origin);
                }
            }
            return;
        }
        if applied != Applied::Stale
            || (!self.tree.answered.is_empty() && self.tree.answered.remove(record.client()))
        {
            return;
        }
        if self.eager_links(origin) >= 2 {
            self.tree.link(from).pruned.insert(origin.into(), 0);
            self.prune(from, origin);
        }
    }

    /// Tells `from` to announce `origin`'s records from now on.
    fn prune(&mut self, from: PeerId, origin: &[u8]) {
        self.stats.prunes_sent += 1;
        self.send(
            from,
            &PeerMsg::Prune {
                origin: origin.into(),
            },
        );
    }

    /// How many links past their peer's reconciliation are eager for `origin` here.
    fn eager_links(&self, origin: &[u8]) -> usize {
        (0..self.links.len())
            .filter(|&i| {
                self.links[i].state == LinkState::Up
                    && self.tree.peer_synced(PeerId(i))
                    && !self.tree.is_pruned(PeerId(i), origin)
            })
            .count()
    }

    /// Announcements from `from`: what the store lacks waits for a graft.
    pub(super) fn on_announce(&mut self, now: Timestamp, from: PeerId, entries: Vec<Announcement>) {
        self.stats.announcements_received += entries.len() as u64;
        for a in entries {
            let link = &mut self.links[from.0];
            link.seen = link.seen.max(a.seq);
            // The held time decides unless it is the same; only then is the line needed.
            let covered = match self.store.time_of(&a.client).map(|t| t.cmp(&a.time)) {
                None | Some(std::cmp::Ordering::Less) => false,
                Some(std::cmp::Ordering::Greater) => true,
                // The same time: covered if the held line is the announced one (its hash),
                // read without building a record.
                Some(std::cmp::Ordering::Equal) => self
                    .store
                    .with_line(&a.client, |line| line_hash(line) == a.hash)
                    .unwrap_or(false),
            };
            if covered {
                continue;
            }
            if !self.could_take(now, &a) {
                continue;
            }
            let timeout = self.tree.lag.graft_wait(now, self.cfg.graft_timeout);
            let m = self.tree.missing.entry(a.client.clone()).or_default();
            m.since.get_or_insert(now);
            match m.announcers.iter_mut().find(|x| x.peer == from) {
                Some(x) => {
                    let seq = x.announced.seq;
                    x.announced = Announcement { seq, ..a.clone() };
                }
                None => m.announcers.push(Announcer {
                    peer: from,
                    announced: a.clone(),
                    grafted: false,
                }),
            }
            if m.deadline.is_none() {
                let t = now.plus(timeout);
                m.deadline = Some(t);
                self.tree.timers.insert((t, a.client));
            }
        }
    }

    /// Whether the store could take the announced record at `now` as the limits stand: not
    /// expired (then no server keeps it), id not too long, room for its client. A record the
    /// store would refuse is not missed: grafting it would only fetch it to drop it (as the
    /// flood would have delivered it to be dropped).
    fn could_take(&self, now: Timestamp, a: &Announcement) -> bool {
        let cfg = &self.cfg;
        let expired = cfg.record_ttl.is_some_and(|ttl| {
            let expiry = u128::try_from(a.time.as_nanos())
                .unwrap_or(0)
                .saturating_add(ttl.as_nanos());
            expiry <= u128::from(now.as_nanos())
        });
        let full = cfg
            .max_records
            .is_some_and(|max| self.store.len() >= max && !self.store.contains(&a.client));
        !expired && !full && a.client.len() <= cfg.max_client_id_bytes
    }

    /// A graft from `from`: answer with the record and push its origin's records again.
    pub(super) fn on_graft(&mut self, from: PeerId, client: &[u8]) {
        self.stats.grafts_received += 1;
        // While the link is caught up, a graft is for a change announced before the catch-up
        // (the delta carries only what came after): it is answered, with the log number the
        // delta has reached. During a reconciliation after a link came up, the peer's digest
        // asked for what it misses.
        let catching_up = self.catch_up_covered(from);
        if self.links[from.0].state != LinkState::Up && catching_up.is_none() {
            return;
        }
        let Some(record) = self.store.get(client).map(Arc::new) else {
            // Expired meanwhile: nothing to send, nobody keeps it.
            return;
        };
        self.tree.link(from).lazy.remove(record.origin());
        let seq = catching_up.unwrap_or_else(|| self.tree.covered(from, self.store.seq()));
        self.stats.updates_sent += 1;
        self.stats.payload_sent += 1;
        self.send(from, &PeerMsg::Update { seq, record });
    }

    /// A prune from `from`: its records of `origin` go as announcements from now on.
    pub(super) fn on_prune(&mut self, from: PeerId, origin: Box<[u8]>) {
        self.stats.prunes_received += 1;
        if self.tree_on() {
            self.tree.link(from).lazy.insert(origin);
        }
    }

    /// The peer is catching this node up: until its `S`, its updates are a delta.
    pub(super) fn tree_catch_up(&mut self, from: PeerId) {
        self.tree.link(from).peer_synced = false;
    }

    /// The peer's reconciliation delta is through.
    pub(super) fn tree_synced(&mut self, from: PeerId) {
        self.tree.link(from).peer_synced = true;
    }

    /// A new session on `peer`'s link: every origin eager again, and the log number its
    /// digest names (before the first hole this node knows of in that peer's log: the
    /// delta carries what was announced and has not arrived, so those announcements are
    /// forgotten).
    pub(super) fn tree_link_up(&mut self, peer: PeerId) -> u64 {
        *self.tree.link(peer) = LinkTree::default();
        self.tree.grafted.retain(|(p, _)| *p != peer.0);
        let hole = self.forget_announcer(peer);
        let link = &mut self.links[peer.0];
        if let Some(first) = hole {
            link.seen = link.seen.min(first.saturating_sub(1));
        }
        link.seen
    }

    /// `peer`'s session ended: announcements not yet sent are void (the peer's `seen`
    /// counts only what arrived). What it announced stays missing until its link is up.
    pub(super) fn tree_link_down(&mut self, peer: PeerId) {
        let link = self.tree.link(peer);
        link.batch.clear();
        link.batch_bytes = 0;
        link.flush_at = None;
        link.peer_synced = false;
    }

    /// Forgets every announcement from `peer`; returns the lowest log number among them.
    pub(super) fn forget_announcer(&mut self, peer: PeerId) -> Option<u64> {
        let mut first: Option<u64> = None;
        let mut emptied = Vec::new();
        for (client, m) in &mut self.tree.missing {
            m.announcers.retain(|a| {
                if a.peer == peer {
                    first = Some(first.map_or(a.announced.seq, |f| f.min(a.announced.seq)));
                    false
                } else {
                    true
                }
            });
            if m.announcers.is_empty() {
                emptied.push(client.clone());
            }
        }
        for client in emptied {
            self.tree.remove_missing(&client);
        }
        first
    }

    /// Sends the batches and grafts due at `now`.
    pub(super) fn tree_timeout(&mut self, now: Timestamp) {
        let due: Vec<PeerId> = (0..self.tree.links.len())
            .filter(|&i| self.tree.links[i].flush_at.is_some_and(|t| t <= now))
            .map(PeerId)
            .collect();
        for peer in due {
            self.flush_announcements(peer);
        }
        while let Some((t, _)) = self.tree.timers.first() {
            if *t > now {
                break;
            }
            let Some((t, client)) = self.tree.timers.pop_first() else {
                break;
            };
            self.graft(now, t, client);
        }
    }

    /// The graft timer of `client`, set for `t`, is due: ask the next announcer whose link
    /// is up (still sending this node's own delta is fine: the announcer is past its own),
    /// and wait again. When none is left, the entry waits for an answer, a newer record or
    /// the announcers' next sessions (whose digests ask for what is missing).
    fn graft(&mut self, now: Timestamp, t: Timestamp, client: Box<[u8]>) {
        let held = self.store.get(&client);
        let timeout = self.tree.lag.graft_wait(now, self.cfg.graft_timeout);
        let Some(m) = self.tree.missing.get_mut(&client) else {
            return;
        };
        if m.deadline != Some(t) {
            return;
        }
        m.deadline = None;
        if let Some(held) = &held {
            m.announcers.retain(|a| !a.announced.is_covered_by(held));
        }
        let late = now.since(t);
        if late > STALL && !m.postponed && !m.announcers.is_empty() {
            m.postponed = true;
            let t = now.plus(late.min(timeout));
            m.deadline = Some(t);
            self.tree.timers.insert((t, client));
            return;
        }
        let links = &self.links;
        let next = m
            .announcers
            .iter_mut()
            .find(|a| !a.grafted && links[a.peer.0].state != LinkState::Down);
        let Some(a) = next else {
            if m.announcers.is_empty() {
                self.tree.missing.remove(&client);
            }
            return;
        };
        a.grafted = true;
        let peer = a.peer;
        let t = now.plus(timeout);
        m.deadline = Some(t);
        self.tree.timers.insert((t, client.clone()));
        if self.tree.grafted.len() >= MAX_GRAFTED {
            self.tree.grafted.clear();
        }
        self.tree.grafted.insert((peer.0, client.clone()));
        self.stats.grafts_sent += 1;
        self.send(peer, &PeerMsg::Graft { client });
    }
}
