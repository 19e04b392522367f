//! The simulated herd: real `Node`s joined by simulated TCP links, driven in virtual time by a
//! seed, with faults, clients, and a model of what the herd must end up holding.
//!
//! - Every link has at most one *session* at a time (one TCP connection). A session has one FIFO
//!   queue per direction; each message gets a random delay, but never overtakes the message
//!   before it on the same direction. Messages travel as encoded peer lines and are delivered with
//!   `handle_peer_line`, so the wire format is part of what is simulated.
//! - Dropping a session loses everything in flight on it (both directions) and reports the link
//!   down to both live ends; it comes back later as a new session (`handle_link_up` on both ends).
//! - A bounded queue refuses a send with `Backlogged`; as the `PeerSink` contract says, that
//!   session is then dropped and nothing more of it is delivered.
//! - A direction's backlog is the bytes of its undelivered messages; when a node asks to hear
//!   of the drain, it is told (`handle_link_drained`) once that direction's queue is empty.
//! - A crash replaces the node by nothing (all state lost); a restart builds a fresh node with a
//!   new epoch. With `journals`, each node also has a disk that survives it: every record the
//!   node stores is on it by the end of the call that stored it (as herd-net writes its journal
//!   before the reply), and a restarted node puts the disk's records back into its store.
//! - The model knows every acknowledged AT line and which ones were lost to crashes (no live store
//!   and no in-flight message holds them or a newer record of the same client).

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use herd_core::node::DEFAULT_QUERY_TIMEOUT;
use herd_core::testing::SeededIds;
use herd_core::{
    ClientAction, Dissemination, IdSource, MaxItems, Node, NodeConfig, NodeEvent, NodeStats,
    PeerId, PeerMsg, PeerSendError, PeerSink, QueryOutcome, RadiusKm, Record, ServerName,
    Timestamp,
};

/// One millisecond in nanoseconds.
pub(crate) const MS: u64 = 1_000_000;
/// Virtual time at which every simulation starts.
pub(crate) const START: Timestamp = Timestamp(1_700_000_000 * 1_000_000_000);

// === randomness ===

/// A small seeded generator (SplitMix64 through `SeededIds`).
pub(crate) struct Rng(SeededIds);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(SeededIds::new(seed))
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub(crate) fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    pub(crate) fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

// === topology ===

/// Server names and the links between them.
#[derive(Clone, Debug)]
pub(crate) struct Topology {
    pub(crate) names: Vec<ServerName>,
    pub(crate) edges: Vec<(usize, usize)>,
}

impl Topology {
    /// The default five-server herd.
    pub(crate) fn default_herd() -> Self {
        let names = ["Goloman", "Hands", "Holiday", "Welsh", "Wilkes"];
        let pairs = [
            ("Goloman", "Hands"),
            ("Goloman", "Holiday"),
            ("Goloman", "Wilkes"),
            ("Hands", "Wilkes"),
            ("Holiday", "Welsh"),
            ("Holiday", "Wilkes"),
        ];
        let idx = |n: &str| names.iter().position(|x| *x == n).expect("known name");
        Self {
            names: names
                .iter()
                .map(|n| ServerName::new(n).expect("name"))
                .collect(),
            edges: pairs.iter().map(|(a, b)| (idx(a), idx(b))).collect(),
        }
    }

    /// A random connected graph of `n` servers: a random tree, plus (with `cycles`) up to
    /// `n / 2 + 1` extra links.
    pub(crate) fn random(rng: &mut Rng, n: usize, cycles: bool) -> Self {
        let names = (0..n)
            .map(|i| ServerName::new(&format!("N{i:03}")).expect("name"))
            .collect();
        let mut edges: Vec<(usize, usize)> = (1..n).map(|i| (rng.index(i), i)).collect();
        if n > 2 && cycles {
            let extra = rng.below(n as u64 / 2 + 2);
            for _ in 0..extra {
                let (a, b) = (rng.index(n), rng.index(n));
                let (a, b) = (a.min(b), a.max(b));
                if a != b && !edges.iter().any(|&(x, y)| (x.min(y), x.max(y)) == (a, b)) {
                    edges.push((a, b));
                }
            }
        }
        Self { names, edges }
    }

    /// A random connected graph of `n` servers in which every server has about `degree`
    /// links: `degree` link ends per server paired at random (self-links and second links
    /// between the same two servers left out), drawn again until connected.
    pub(crate) fn random_regular(rng: &mut Rng, n: usize, degree: usize) -> Self {
        let names: Vec<ServerName> = (0..n)
            .map(|i| ServerName::new(&format!("N{i:04}")).expect("name"))
            .collect();
        loop {
            let mut ends: Vec<usize> = (0..n)
                .flat_map(|i| std::iter::repeat_n(i, degree))
                .collect();
            for k in (1..ends.len()).rev() {
                let j = rng.index(k + 1);
                ends.swap(k, j);
            }
            let mut seen = std::collections::HashSet::new();
            let mut edges = Vec::new();
            for pair in ends.chunks_exact(2) {
                let (a, b) = (pair[0].min(pair[1]), pair[0].max(pair[1]));
                if a != b && seen.insert((a, b)) {
                    edges.push((a, b));
                }
            }
            let topo = Self {
                names: names.clone(),
                edges,
            };
            if topo.distances(0).iter().all(|&d| d != usize::MAX) {
                return topo;
            }
        }
    }

    /// Hops from `from` to every server (`usize::MAX`: unreachable).
    pub(crate) fn distances(&self, from: usize) -> Vec<usize> {
        let mut adj = vec![Vec::new(); self.len()];
        for &(a, b) in &self.edges {
            adj[a].push(b);
            adj[b].push(a);
        }
        let mut dist = vec![usize::MAX; self.len()];
        dist[from] = 0;
        let mut queue = VecDeque::from([from]);
        while let Some(v) = queue.pop_front() {
            for &w in &adj[v] {
                if dist[w] == usize::MAX {
                    dist[w] = dist[v] + 1;
                    queue.push_back(w);
                }
            }
        }
        dist
    }

    /// The longest shortest path between two servers.
    pub(crate) fn diameter(&self) -> usize {
        (0..self.len())
            .map(|v| self.distances(v).into_iter().max().unwrap_or(0))
            .max()
            .unwrap_or(0)
    }

    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    pub(crate) fn index(&self, name: &str) -> usize {
        self.names
            .iter()
            .position(|n| n.as_str() == name)
            .expect("known server")
    }

    /// The link between two servers, by name.
    pub(crate) fn link(&self, a: &str, b: &str) -> usize {
        let (a, b) = (self.index(a), self.index(b));
        self.edges
            .iter()
            .position(|&(x, y)| (x, y) == (a, b) || (x, y) == (b, a))
            .expect("known link")
    }
}

// === the network ===

/// Kinds of peer message, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    Digest,
    Update,
    Synced,
    Query,
    Answer,
    Ping,
    Announce,
    Graft,
    Prune,
    CatchUp,
}

fn kind(msg: &PeerMsg) -> Kind {
    match msg {
        PeerMsg::Digest { .. } => Kind::Digest,
        PeerMsg::Update { .. } => Kind::Update,
        PeerMsg::Synced { .. } => Kind::Synced,
        PeerMsg::Query { .. } => Kind::Query,
        PeerMsg::Answer { .. } => Kind::Answer,
        PeerMsg::Ping => Kind::Ping,
        PeerMsg::Announce { .. } => Kind::Announce,
        PeerMsg::Graft { .. } => Kind::Graft,
        PeerMsg::Prune { .. } => Kind::Prune,
        PeerMsg::CatchUp => Kind::CatchUp,
    }
}

struct InFlight {
    line: Vec<u8>,
    kind: Kind,
    record: Option<Arc<Record>>,
}

struct Session {
    id: u64,
    queues: [VecDeque<InFlight>; 2],
    /// Encoded bytes of the undelivered messages, per direction.
    bytes: [usize; 2],
    /// Whether the sender asked to hear when this direction's queue is empty.
    drain_wanted: [bool; 2],
    last: [Timestamp; 2],
    broken: bool,
    /// Messages delivered per direction, by kind.
    delivered: [BTreeMap<Kind, u64>; 2],
}

struct LinkSim {
    ends: [usize; 2],
    pids: [PeerId; 2],
    session: Option<Session>,
    /// A dropped link stays down until then.
    blocked_until: Timestamp,
    /// Held down by the test until released.
    held: bool,
    /// The id of the latest session started on this link.
    last_session: u64,
    /// Removed from both ends ([`Sim::remove_link`]): never up again.
    removed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Deliver {
        link: usize,
        dir: usize,
        session: u64,
    },
    Timer {
        node: usize,
    },
    Restart {
        node: usize,
        inc: u64,
    },
    LinkRetry {
        link: usize,
    },
    /// Drops the session if it is still this one.
    Flap {
        link: usize,
        session: u64,
    },
    /// Tells one end, late, that this session ended (unless a newer one started).
    LateDown {
        link: usize,
        end: usize,
        session: u64,
    },
    Chaos,
}

/// The network state the sinks write into.
struct Net {
    now: Timestamp,
    links: Vec<LinkSim>,
    /// Per node, per `PeerId`: (link, direction of sending).
    ports: Vec<Vec<(usize, usize)>>,
    rng: Rng,
    delay: (u64, u64),
    queue_cap: Option<usize>,
    next_session: u64,
    broken: Vec<usize>,
    scheduled: Vec<(Timestamp, Ev)>,
    sent: BTreeMap<Kind, u64>,
    backlogged: u64,
}

impl Net {
    fn send(&mut self, from: usize, to: PeerId, msg: &PeerMsg) -> Result<(), PeerSendError> {
        let &(l, dir) = self.ports[from].get(to.0).ok_or(PeerSendError::Unknown)?;
        let delay = self.rng.range(self.delay.0, self.delay.1);
        let now = self.now;
        let session = self.links[l]
            .session
            .as_mut()
            .filter(|s| !s.broken)
            .ok_or(PeerSendError::Down)?;
        if self
            .queue_cap
            .is_some_and(|cap| session.queues[dir].len() >= cap)
        {
            session.broken = true;
            self.broken.push(l);
            self.backlogged += 1;
            return Err(PeerSendError::Backlogged);
        }
        let mut line = Vec::new();
        msg.encode(&mut line);
        assert_eq!(line.pop(), Some(b'\n'), "peer lines end in a newline");
        let record = match msg {
            PeerMsg::Update { record, .. } => Some(record.clone()),
            PeerMsg::Answer { record, .. } => record.clone(),
            _ => None,
        };
        let at = Timestamp(now.0 + delay).max(session.last[dir]);
        session.last[dir] = at;
        session.bytes[dir] += line.len() + 1;
        session.queues[dir].push_back(InFlight {
            line,
            kind: kind(msg),
            record,
        });
        let ev = Ev::Deliver {
            link: l,
            dir,
            session: session.id,
        };
        self.scheduled.push((at, ev));
        *self.sent.entry(kind(msg)).or_default() += 1;
        Ok(())
    }
}

/// A node's records and the (digest, count) of its store when they were read.
type HeldRecords = ((u64, usize), Vec<Arc<Record>>);

/// The node's peer port: pushes into the simulated network.
pub(crate) struct SimSink {
    node: usize,
    net: Rc<RefCell<Net>>,
}

impl PeerSink for SimSink {
    fn send(&mut self, to: PeerId, msg: &PeerMsg) -> Result<(), PeerSendError> {
        self.net.borrow_mut().send(self.node, to, msg)
    }

    fn backlog(&self, to: PeerId) -> usize {
        let net = self.net.borrow();
        net.ports[self.node].get(to.0).map_or(0, |&(l, dir)| {
            net.links[l]
                .session
                .as_ref()
                .filter(|s| !s.broken)
                .map_or(0, |s| s.bytes[dir])
        })
    }

    fn notify_drained(&mut self, to: PeerId) {
        let mut net = self.net.borrow_mut();
        let Some(&(l, dir)) = net.ports[self.node].get(to.0) else {
            return;
        };
        if let Some(s) = net.links[l].session.as_mut().filter(|s| !s.broken) {
            s.drain_wanted[dir] = true;
        }
    }
}

// === the model ===

struct Acked {
    record: Arc<Record>,
    lost: bool,
}

/// Every acknowledged record per client, and which were lost to crashes.
#[derive(Default)]
struct Model {
    clients: BTreeMap<Vec<u8>, Vec<Acked>>,
    lost: u64,
    /// The nodes' record lifetime: a record expired at the model's `now` is neither lost
    /// nor expected.
    ttl: Option<Duration>,
    now: Timestamp,
}

impl Model {
    fn ack(&mut self, record: Arc<Record>) {
        let all = self.clients.entry(record.client().to_vec()).or_default();
        match all
            .iter_mut()
            .find(|a| a.record.at_line() == record.at_line())
        {
            Some(a) => a.lost = false,
            None => all.push(Acked {
                record,
                lost: false,
            }),
        }
    }

    fn is_acked(&self, record: &Record) -> bool {
        self.clients
            .get(record.client())
            .is_some_and(|all| all.iter().any(|a| a.record.at_line() == record.at_line()))
    }

    /// Whether `record` has expired at the model's time.
    fn expired(&self, record: &Record) -> bool {
        self.ttl
            .is_some_and(|ttl| herd_core::store::is_expired(record, ttl, self.now))
    }

    /// Marks lost every acknowledged, unexpired record newer than what survives of its client.
    fn account_losses(&mut self, surviving: &HashMap<Vec<u8>, Arc<Record>>) {
        let (ttl, now) = (self.ttl, self.now);
        let expired = |r: &Record| ttl.is_some_and(|ttl| herd_core::store::is_expired(r, ttl, now));
        for (client, all) in &mut self.clients {
            let best = surviving.get(client);
            for a in all.iter_mut().filter(|a| !a.lost && !expired(&a.record)) {
                if best.is_none_or(|b| a.record.precedence(b) == Ordering::Greater) {
                    a.lost = true;
                    self.lost += 1;
                }
            }
        }
    }

    /// The newest acknowledged record of each client that was not lost nor has expired.
    fn expected(&self) -> BTreeMap<Vec<u8>, Arc<Record>> {
        let mut out = BTreeMap::new();
        for (client, all) in &self.clients {
            let best = all
                .iter()
                .filter(|a| !a.lost && !self.expired(&a.record))
                .map(|a| &a.record)
                .max_by(|x, y| x.precedence(y));
            if let Some(b) = best {
                out.insert(client.clone(), b.clone());
            }
        }
        out
    }

    fn acked_count(&self) -> usize {
        self.clients.values().map(Vec::len).sum()
    }
}

// === the simulation ===

/// Knobs of one simulation.
#[derive(Clone, Debug)]
pub(crate) struct SimConfig {
    /// Per-message delay range, in ns.
    pub(crate) delay: (u64, u64),
    /// Bound on each direction's in-flight queue (`None`: unbounded).
    pub(crate) queue_cap: Option<usize>,
    /// The nodes' reconciliation window, in bytes ([`NodeConfig::resync_window`]).
    pub(crate) resync_window: usize,
    /// Whether each node keeps a journal on a disk that survives its crashes.
    pub(crate) journals: bool,
    /// The nodes' record lifetime ([`NodeConfig::record_ttl`]).
    pub(crate) record_ttl: Option<Duration>,
    pub(crate) query_timeout: Duration,
    pub(crate) max_queries: usize,
    /// At most this many distinct clients send IAMATs (each run picks 1..=max_clients).
    pub(crate) max_clients: u64,
    /// Whether nodes crash (losing all state) during the faults.
    pub(crate) crashes: bool,
    /// Percentage of sessions, during the faults, that drop again soon after coming up.
    pub(crate) flap_percent: u64,
    /// The nodes' dissemination ([`NodeConfig::dissemination`]).
    pub(crate) dissemination: Dissemination,
    /// The nodes' announcement batching delay ([`NodeConfig::announce_delay`]).
    pub(crate) announce_delay: Duration,
    /// The nodes' graft timeout ([`NodeConfig::graft_timeout`]).
    pub(crate) graft_timeout: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            delay: (MS, 20 * MS),
            queue_cap: None,
            resync_window: herd_core::node::DEFAULT_RESYNC_WINDOW,
            journals: false,
            record_ttl: None,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            max_queries: 4096,
            max_clients: 40,
            crashes: true,
            flap_percent: 0,
            dissemination: Dissemination::Tree,
            announce_delay: herd_core::node::DEFAULT_ANNOUNCE_DELAY,
            graft_timeout: herd_core::node::DEFAULT_GRAFT_TIMEOUT,
        }
    }
}

/// How a WHATSAT went.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Whatsat {
    /// The node knew the client.
    Found(Arc<Record>),
    /// The node asked the herd; wait for the ticket.
    Pending(u64),
    /// Answered `? ` at once (no link up, or no room for another query).
    Unknown,
}

/// A finished herd query.
#[derive(Debug, Clone)]
pub(crate) struct DoneQuery {
    pub(crate) node: usize,
    pub(crate) ticket: u64,
    pub(crate) client: Vec<u8>,
    pub(crate) issued: Timestamp,
    pub(crate) done: Timestamp,
    pub(crate) record: Option<Arc<Record>>,
}

struct PendingQuery {
    client: Vec<u8>,
    line: Vec<u8>,
    issued: Timestamp,
}

/// Counters of one run.
#[derive(Debug, Default, Clone)]
pub(crate) struct Report {
    pub(crate) iamats: u64,
    pub(crate) whatsats: u64,
    pub(crate) crashes: u64,
    pub(crate) drops: u64,
    pub(crate) partitions: u64,
    pub(crate) delivered: u64,
    pub(crate) lost_in_flight: u64,
    pub(crate) abandoned_queries: u64,
    pub(crate) steps: u64,
}

/// A herd of real nodes on a simulated network.
pub(crate) struct Sim {
    pub(crate) topo: Topology,
    pub(crate) cfg: SimConfig,
    nodes: Vec<Option<Node<SimSink>>>,
    /// Per node, the records of its journal (with `SimConfig::journals`).
    disks: Vec<Vec<Arc<Record>>>,
    /// Incarnation number per node (bumped at each restart).
    inc: Vec<u64>,
    /// Stats of crashed incarnations, summed.
    dead_stats: NodeStats,
    net: Rc<RefCell<Net>>,
    heap: BinaryHeap<Reverse<(Timestamp, u64, Ev)>>,
    tie: u64,
    timer_at: Vec<Option<Timestamp>>,
    pub(crate) rng: Rng,
    ids: SeededIds,
    model: Model,
    losses_dirty: bool,
    /// Each node's records as loss accounting last read them, by (digest, count): the store
    /// builds a record from its packed line on every read, so an unchanged store is not read
    /// again.
    held: Vec<Option<HeldRecords>>,
    pending: HashMap<(usize, u64, u64), PendingQuery>,
    pub(crate) done: Vec<DoneQuery>,
    /// Partition: side of each node, while one is in force.
    partition: Option<Vec<bool>>,
    pub(crate) report: Report,
    // chaos
    chaos_left: u64,
    flapping: bool,
    clients: Vec<ClientGen>,
    /// A record whose spread is being timed ([`Sim::iamat_timed`]).
    watch: Option<Watch>,
    /// Per node, its dissemination when not the config's ([`Sim::set_dissemination`]).
    dissemination: Vec<Dissemination>,
}

/// Which nodes hold a watched record, and when the last one took it.
struct Watch {
    record: Arc<Record>,
    holders: Vec<bool>,
    count: usize,
    last: Option<Timestamp>,
}

/// Generates a client's IAMATs: times mostly go forward, sometimes back, sometimes tie.
struct ClientGen {
    id: Vec<u8>,
    secs: u64,
    last_time: Vec<u8>,
}

impl Sim {
    pub(crate) fn new(topo: Topology, seed: u64, cfg: SimConfig) -> Self {
        let mut rng = Rng::new(seed);
        let n = topo.len();
        let mut ports = vec![Vec::new(); n];
        let mut links = Vec::new();
        for (l, &(a, b)) in topo.edges.iter().enumerate() {
            let pa = PeerId(ports[a].len());
            ports[a].push((l, 0));
            let pb = PeerId(ports[b].len());
            ports[b].push((l, 1));
            links.push(LinkSim {
                ends: [a, b],
                pids: [pa, pb],
                session: None,
                blocked_until: START,
                held: false,
                last_session: 0,
                removed: false,
            });
        }
        let net = Net {
            now: START,
            links,
            ports,
            rng: Rng::new(rng.next()),
            delay: cfg.delay,
            queue_cap: cfg.queue_cap,
            next_session: 1,
            broken: Vec::new(),
            scheduled: Vec::new(),
            sent: BTreeMap::new(),
            backlogged: 0,
        };
        let ids = SeededIds::new(rng.next());
        let cfg_ttl = cfg.record_ttl;
        let mut sim = Self {
            topo,
            cfg,
            nodes: Vec::new(),
            disks: vec![Vec::new(); n],
            inc: vec![0; n],
            dead_stats: NodeStats::default(),
            net: Rc::new(RefCell::new(net)),
            heap: BinaryHeap::new(),
            tie: 0,
            timer_at: vec![None; n],
            rng,
            ids,
            model: Model {
                ttl: cfg_ttl,
                now: START,
                ..Model::default()
            },
            losses_dirty: false,
            held: vec![None; n],
            pending: HashMap::new(),
            done: Vec::new(),
            partition: None,
            report: Report::default(),
            chaos_left: 0,
            flapping: false,
            clients: Vec::new(),
            watch: None,
            dissemination: Vec::new(),
        };
        sim.nodes = (0..n).map(|i| Some(sim.fresh_node(i))).collect();
        sim
    }

    fn fresh_node(&mut self, i: usize) -> Node<SimSink> {
        let neighbours: Vec<ServerName> = self.net.borrow().ports[i]
            .iter()
            .map(|&(l, dir)| self.topo.names[self.topo_end(l, 1 - dir)].clone())
            .collect();
        let mut cfg = NodeConfig::new(self.topo.names[i].clone(), neighbours);
        cfg.query_timeout = self.cfg.query_timeout;
        cfg.max_queries = self.cfg.max_queries;
        cfg.resync_window = self.cfg.resync_window;
        cfg.journal = self.cfg.journals;
        cfg.record_ttl = self.cfg.record_ttl;
        cfg.dissemination = self
            .dissemination
            .get(i)
            .copied()
            .unwrap_or(self.cfg.dissemination);
        cfg.announce_delay = self.cfg.announce_delay;
        cfg.graft_timeout = self.cfg.graft_timeout;
        let sink = SimSink {
            node: i,
            net: self.net.clone(),
        };
        let mut node = Node::new(cfg, sink, &mut self.ids);
        // A restarted server reads the config as it is now: links removed are not in it.
        // Here they keep their place so that peer ids match the ports.
        let removed: Vec<PeerId> = {
            let net = self.net.borrow();
            net.ports[i]
                .iter()
                .enumerate()
                .filter(|(_, &(l, _))| net.links[l].removed)
                .map(|(p, _)| PeerId(p))
                .collect()
        };
        let now = self.now();
        for p in removed {
            node.remove_neighbour(now, p);
        }
        node
    }

    /// Gives each node the dissemination `of(node)`: call it before any link is up (the
    /// nodes are built afresh).
    pub(crate) fn set_dissemination(&mut self, of: impl Fn(usize) -> Dissemination) {
        let n = self.nodes.len();
        self.dissemination = (0..n).map(of).collect();
        self.nodes = (0..n).map(|i| Some(self.fresh_node(i))).collect();
    }

    fn topo_end(&self, link: usize, end: usize) -> usize {
        let (a, b) = self.topo.edges[link];
        if end == 0 {
            a
        } else {
            b
        }
    }

    // --- accessors ---

    pub(crate) fn now(&self) -> Timestamp {
        self.net.borrow().now
    }

    pub(crate) fn node(&self, i: usize) -> &Node<SimSink> {
        self.nodes[i].as_ref().expect("node is alive")
    }

    /// Stats summed over every node and every incarnation.
    pub(crate) fn total_stats(&self) -> NodeStats {
        let mut t = self.dead_stats.clone();
        for n in self.nodes.iter().flatten() {
            add_stats(&mut t, n.stats());
        }
        t
    }

    /// Peer messages sent, by kind.
    pub(crate) fn sent(&self) -> BTreeMap<Kind, u64> {
        self.net.borrow().sent.clone()
    }

    pub(crate) fn backlogged(&self) -> u64 {
        self.net.borrow().backlogged
    }

    /// Messages delivered on the link's current session, towards `to`, by kind.
    pub(crate) fn delivered_on(&self, link: usize, to: usize) -> BTreeMap<Kind, u64> {
        let net = self.net.borrow();
        let l = &net.links[link];
        let dir = if l.ends[1] == to { 0 } else { 1 };
        l.session
            .as_ref()
            .map(|s| s.delivered[dir].clone())
            .unwrap_or_default()
    }

    pub(crate) fn lost(&self) -> u64 {
        self.model.lost
    }

    // --- scheduling ---

    fn push(&mut self, at: Timestamp, ev: Ev) {
        self.tie += 1;
        self.heap.push(Reverse((at, self.tie, ev)));
    }

    fn flush_scheduled(&mut self) {
        let scheduled = std::mem::take(&mut self.net.borrow_mut().scheduled);
        for (at, ev) in scheduled {
            self.push(at, ev);
        }
    }

    /// Runs `f` on live node `i`, then collects its events, timer and messages.
    fn call<R>(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut Node<SimSink>, Timestamp) -> R,
    ) -> Option<R> {
        let now = self.now();
        let node = self.nodes[i].as_mut()?;
        let r = f(node, now);
        self.disks[i].extend(node.drain_journal());
        let mut events = Vec::new();
        while let Some(ev) = node.poll_event() {
            events.push(ev);
        }
        let timeout = node.poll_timeout();
        for ev in events {
            self.on_event(i, ev);
        }
        if let Some(t) = timeout {
            assert!(t >= now, "a node asked for a timer in the past");
            if self.timer_at[i].is_none_or(|s| t < s) {
                self.timer_at[i] = Some(t);
                self.push(t, Ev::Timer { node: i });
            }
        }
        self.flush_scheduled();
        Some(r)
    }

    fn on_event(&mut self, i: usize, ev: NodeEvent) {
        // The simulation's clients hold no fences: only herd queries end in events.
        let NodeEvent::QueryDone { ticket, outcome } = ev else {
            panic!("an event the simulation never asked for: {ev:?}");
        };
        let key = (i, self.inc[i], ticket);
        let q = self
            .pending
            .remove(&key)
            .unwrap_or_else(|| panic!("QueryDone for a ticket never pending: {key:?}"));
        let now = self.now();
        let deadline = q.issued.plus(self.cfg.query_timeout);
        assert!(now <= deadline, "query answered after its deadline");
        // The reply the server would write.
        let radius = RadiusKm::from_km(10.0).expect("radius");
        let max = MaxItems::new(5).expect("max");
        let record = match outcome {
            QueryOutcome::Places { record, query } => {
                assert_eq!((query.lat, query.lon), (record.lat(), record.lon()));
                assert_eq!((query.radius, query.max_items), (radius, max));
                Some(record)
            }
            QueryOutcome::Reply(out) => {
                assert_eq!(out, [b"? ".as_slice(), &q.line, b"\n"].concat());
                None
            }
        };
        if let Some(r) = &record {
            assert_eq!(
                r.client(),
                &q.client[..],
                "query answered with another client"
            );
            assert!(
                self.model.is_acked(r),
                "query answered with a record nobody acknowledged"
            );
        }
        self.done.push(DoneQuery {
            node: i,
            ticket,
            client: q.client,
            issued: q.issued,
            done: now,
            record,
        });
    }

    /// Processes one event; false when nothing is left.
    fn step(&mut self) -> bool {
        let Some(Reverse((at, _, ev))) = self.heap.pop() else {
            return false;
        };
        {
            let mut net = self.net.borrow_mut();
            assert!(at >= net.now, "time went backwards");
            net.now = at;
        }
        self.report.steps += 1;
        match ev {
            Ev::Deliver { link, dir, session } => self.deliver(link, dir, session),
            Ev::Timer { node } => {
                if self.timer_at[node] == Some(at) {
                    self.timer_at[node] = None;
                    self.call(node, |n, now| n.handle_timeout(now));
                }
            }
            Ev::Restart { node, inc } => {
                if self.nodes[node].is_none() && self.inc[node] == inc {
                    self.restart(node);
                }
            }
            Ev::LinkRetry { link } => self.try_up(link),
            Ev::LateDown { link, end, session } => {
                let (node, pid, latest) = {
                    let net = self.net.borrow();
                    let l = &net.links[link];
                    (l.ends[end], l.pids[end], l.last_session)
                };
                if latest == session {
                    self.call(node, |n, now| n.handle_link_down(now, pid));
                }
            }
            Ev::Flap { link, session } => {
                let current = self.net.borrow().links[link].session.as_ref().map(|s| s.id);
                if current == Some(session) {
                    self.report.drops += 1;
                    let down = self.rng.range(0, 50 * MS);
                    self.drop_session(link, down);
                }
            }
            Ev::Chaos => self.chaos_step(),
        }
        self.after_step();
        true
    }

    fn after_step(&mut self) {
        loop {
            let broken = std::mem::take(&mut self.net.borrow_mut().broken);
            if broken.is_empty() {
                break;
            }
            for l in broken {
                if self.net.borrow().links[l]
                    .session
                    .as_ref()
                    .is_some_and(|s| s.broken)
                {
                    self.drop_session(l, 0);
                }
            }
        }
        if self.losses_dirty {
            self.losses_dirty = false;
            self.account_losses();
        }
    }

    fn deliver(&mut self, link: usize, dir: usize, session: u64) {
        let (to, pid, msg, drained) = {
            let mut net = self.net.borrow_mut();
            let l = &mut net.links[link];
            let (to, pid) = (l.ends[1 - dir], l.pids[1 - dir]);
            let sender = (l.ends[dir], l.pids[dir]);
            let Some(s) = l.session.as_mut().filter(|s| s.id == session && !s.broken) else {
                return;
            };
            let msg = s.queues[dir]
                .pop_front()
                .expect("a message for each delivery");
            s.bytes[dir] -= msg.line.len() + 1;
            *s.delivered[dir].entry(msg.kind).or_default() += 1;
            let drained = (s.drain_wanted[dir] && s.queues[dir].is_empty()).then(|| {
                s.drain_wanted[dir] = false;
                sender
            });
            (to, pid, msg, drained)
        };
        self.report.delivered += 1;
        let r = self.call(to, |n, now| n.handle_peer_line(now, pid, &msg.line));
        self.watch_holder(to);
        let r = r.expect("sessions only join live nodes");
        assert!(
            r.is_ok(),
            "peer line rejected: {:?}",
            String::from_utf8_lossy(&msg.line)
        );
        if let Some((from, to_pid)) = drained {
            self.call(from, |n, now| n.handle_link_drained(now, to_pid));
        }
    }

    // --- links ---

    fn link_allowed(&self, link: usize) -> bool {
        let net = self.net.borrow();
        let l = &net.links[link];
        let [a, b] = l.ends;
        self.nodes[a].is_some()
            && self.nodes[b].is_some()
            && !l.removed
            && !l.held
            && l.blocked_until <= net.now
            && self.partition.as_ref().is_none_or(|p| p[a] == p[b])
    }

    /// Brings the link up as a new session when nothing keeps it down.
    fn try_up(&mut self, link: usize) {
        if !self.link_allowed(link) || self.net.borrow().links[link].session.is_some() {
            return;
        }
        let ([a, b], [pa, pb], id) = {
            let mut net = self.net.borrow_mut();
            let id = net.next_session;
            net.next_session += 1;
            let l = &mut net.links[link];
            l.last_session = id;
            l.session = Some(Session {
                id,
                queues: Default::default(),
                bytes: [0; 2],
                drain_wanted: [false; 2],
                last: [START; 2],
                broken: false,
                delivered: Default::default(),
            });
            (l.ends, l.pids, id)
        };
        if self.flapping && self.rng.percent(self.cfg.flap_percent) {
            // Drop the new session soon, often in the middle of its reconciliation.
            let at = Timestamp(self.now().0 + self.rng.range(0, 3 * self.cfg.delay.1));
            self.push(at, Ev::Flap { link, session: id });
        }
        if self.rng.percent(50) {
            self.call(a, |n, now| n.handle_link_up(now, pa));
            self.call(b, |n, now| n.handle_link_up(now, pb));
        } else {
            self.call(b, |n, now| n.handle_link_up(now, pb));
            self.call(a, |n, now| n.handle_link_up(now, pa));
        }
    }

    /// Ends the link's session (losing what is in flight); it retries after `down_for` ns.
    fn drop_session(&mut self, link: usize, down_for: u64) {
        let (ends, pids, lost, id) = {
            let mut net = self.net.borrow_mut();
            let now = net.now;
            let l = &mut net.links[link];
            let Some(s) = l.session.take() else {
                return;
            };
            l.blocked_until = l.blocked_until.max(Timestamp(now.0 + down_for));
            (l.ends, l.pids, s.queues[0].len() + s.queues[1].len(), s.id)
        };
        self.report.lost_in_flight += lost as u64;
        self.losses_dirty = true;
        // During the faults one end sometimes learns of the drop late (a half-open TCP
        // connection): until then it may still send into the dead session (and be refused),
        // and the next session's `handle_link_up` may be the first it hears of it.
        let late = (self.flapping && self.rng.percent(25)).then(|| self.rng.index(2));
        for end in 0..2 {
            if late == Some(end) {
                let at = Timestamp(self.now().0 + self.rng.range(0, 200 * MS));
                self.push(
                    at,
                    Ev::LateDown {
                        link,
                        end,
                        session: id,
                    },
                );
            } else {
                self.call(ends[end], |n, now| n.handle_link_down(now, pids[end]));
            }
        }
        let at = Timestamp(self.now().0 + down_for);
        self.push(at, Ev::LinkRetry { link });
    }

    /// Drops the link's session; it comes back after `down_for`.
    pub(crate) fn drop_link(&mut self, link: usize, down_for: Duration) {
        self.report.drops += 1;
        self.drop_session(link, down_for.as_nanos() as u64);
        self.after_step();
    }

    /// Holds a link down (dropping its session) until `release_link`.
    pub(crate) fn hold_link(&mut self, link: usize) {
        self.net.borrow_mut().links[link].held = true;
        self.drop_session(link, 0);
        self.after_step();
    }

    /// The [`PeerId`] by which node `node` knows its neighbour `other`.
    pub(crate) fn peer_of(&self, node: usize, other: usize) -> PeerId {
        let net = self.net.borrow();
        net.links
            .iter()
            .find_map(|l| match l.ends {
                [a, b] if a == node && b == other => Some(l.pids[0]),
                [a, b] if b == node && a == other => Some(l.pids[1]),
                _ => None,
            })
            .expect("the two are linked")
    }

    /// Lets a held link come back up now.
    pub(crate) fn release_link(&mut self, link: usize) {
        self.net.borrow_mut().links[link].held = false;
        self.try_up(link);
        self.after_step();
    }

    /// Links servers `a` and `b` while they run: a new link at both ends
    /// ([`Node::add_neighbour`]), brought up at once; returns its index.
    pub(crate) fn add_link(&mut self, a: &str, b: &str) -> usize {
        let (a, b) = (self.topo.index(a), self.topo.index(b));
        let link = self.topo.edges.len();
        self.topo.edges.push((a, b));
        let pids = {
            let mut net = self.net.borrow_mut();
            let pa = PeerId(net.ports[a].len());
            net.ports[a].push((link, 0));
            let pb = PeerId(net.ports[b].len());
            net.ports[b].push((link, 1));
            let now = net.now;
            net.links.push(LinkSim {
                ends: [a, b],
                pids: [pa, pb],
                session: None,
                blocked_until: now,
                held: false,
                last_session: 0,
                removed: false,
            });
            [pa, pb]
        };
        for (end, other) in [(a, b), (b, a)] {
            let name = self.topo.names[other].clone();
            let want = if end == a { pids[0] } else { pids[1] };
            let got = self.call(end, |n, _| n.add_neighbour(name));
            assert!(
                got.is_none_or(|p| p == want),
                "a new neighbour takes the next peer id"
            );
        }
        self.try_up(link);
        self.after_step();
        link
    }

    /// Removes link `link` at both ends while they run ([`Node::remove_neighbour`]): its
    /// session ends (what is in flight is lost) and it never comes up again.
    pub(crate) fn remove_link(&mut self, link: usize) {
        self.net.borrow_mut().links[link].removed = true;
        self.drop_session(link, 0);
        let (ends, pids) = {
            let net = self.net.borrow();
            (net.links[link].ends, net.links[link].pids)
        };
        for end in 0..2 {
            self.call(ends[end], |n, now| n.remove_neighbour(now, pids[end]));
        }
        self.after_step();
    }

    /// Brings up every link that nothing keeps down.
    pub(crate) fn connect_all(&mut self) {
        for l in 0..self.topo.edges.len() {
            self.try_up(l);
        }
        self.after_step();
    }

    fn links_of(&self, node: usize) -> Vec<usize> {
        self.net.borrow().ports[node]
            .iter()
            .map(|&(l, _)| l)
            .collect()
    }

    // --- nodes ---

    /// Crashes a node: its whole state is gone, its links go down.
    pub(crate) fn crash(&mut self, i: usize) {
        let Some(node) = self.nodes[i].take() else {
            return;
        };
        self.report.crashes += 1;
        add_stats(&mut self.dead_stats, node.stats());
        self.timer_at[i] = None;
        let inc = self.inc[i];
        let before = self.pending.len();
        self.pending.retain(|&(n, c, _), _| (n, c) != (i, inc));
        self.report.abandoned_queries += (before - self.pending.len()) as u64;
        for l in self.links_of(i) {
            self.drop_session(l, 0);
        }
        self.losses_dirty = true;
        self.after_step();
    }

    /// Starts a fresh node (new epoch, empty store) and brings its links up.
    pub(crate) fn restart(&mut self, i: usize) {
        if self.nodes[i].is_some() {
            return;
        }
        self.inc[i] += 1;
        let mut node = self.fresh_node(i);
        let now = self.now();
        for r in std::mem::take(&mut self.disks[i]) {
            node.restore(now, r);
        }
        if self.cfg.journals {
            // Compacted, as herd-net rewrites it at start.
            self.disks[i] = node.store().records().map(Arc::new).collect();
        }
        self.nodes[i] = Some(node);
        for l in self.links_of(i) {
            self.try_up(l);
        }
        self.after_step();
    }

    // --- clients ---

    /// Sends an IAMAT line to node `i`; returns the acknowledged record (the reply's AT line).
    pub(crate) fn iamat(&mut self, i: usize, line: &str) -> Arc<Record> {
        self.iamat_bytes(i, line.as_bytes())
    }

    /// Sends an IAMAT to node `i` and runs until the network is quiet; returns the virtual
    /// time from the IAMAT until the last node stored its record (`None`: some node never
    /// did). With fixed link delays, that is the number of hops on the record's slowest
    /// path times the delay.
    pub(crate) fn iamat_timed(&mut self, i: usize, line: &str, max_steps: u64) -> Option<Duration> {
        let start = self.now();
        let record = self.iamat(i, line);
        let n = self.nodes.len();
        let mut holders = vec![false; n];
        holders[i] = true;
        self.watch = Some(Watch {
            record,
            holders,
            count: 1,
            last: (n == 1).then_some(start),
        });
        self.run_until_quiet(max_steps);
        let w = self.watch.take()?;
        w.last.map(|t| t.since(start))
    }

    fn watch_holder(&mut self, node: usize) {
        let Some(w) = self.watch.as_mut() else {
            return;
        };
        if w.holders[node] {
            return;
        }
        let holds = self.nodes[node]
            .as_ref()
            .and_then(|n| n.store().get(w.record.client()))
            .is_some_and(|r| r.at_line() == w.record.at_line());
        if holds {
            w.holders[node] = true;
            w.count += 1;
            if w.count == w.holders.len() {
                w.last = Some(self.net.borrow().now);
            }
        }
    }

    /// Sends `WHATSAT <client> 10 5` to node `i`.
    pub(crate) fn whatsat(&mut self, i: usize, client: &[u8]) -> Whatsat {
        let line = [b"WHATSAT ".as_slice(), client, b" 10 5"].concat();
        let mut out = Vec::new();
        let action = self.call(i, |n, now| n.handle_client_line(now, &line, &mut out));
        self.report.whatsats += 1;
        let r = match action.expect("WHATSAT to a live node") {
            ClientAction::Places { record, query } => {
                assert!(out.is_empty());
                assert_eq!(record.client(), client);
                assert_eq!((query.lat, query.lon), (record.lat(), record.lon()));
                assert!(
                    self.model.is_acked(&record),
                    "WHATSAT found a record nobody acknowledged"
                );
                Whatsat::Found(record)
            }
            ClientAction::Pending { ticket, .. } => {
                assert!(out.is_empty());
                let key = (i, self.inc[i], ticket);
                let q = PendingQuery {
                    client: client.to_vec(),
                    line,
                    issued: self.now(),
                };
                assert!(self.pending.insert(key, q).is_none(), "tickets are unique");
                Whatsat::Pending(ticket)
            }
            ClientAction::Replied => {
                assert_eq!(out, [b"? ".as_slice(), &line, b"\n"].concat());
                Whatsat::Unknown
            }
            ClientAction::Silent => panic!("WHATSAT answered with silence"),
        };
        self.after_step();
        r
    }

    /// The finished query of node `i` with this ticket.
    pub(crate) fn query_result(&self, i: usize, ticket: u64) -> Option<&DoneQuery> {
        self.done.iter().find(|d| d.node == i && d.ticket == ticket)
    }

    pub(crate) fn pending_queries(&self) -> usize {
        self.pending.len()
    }

    // --- running ---

    /// Runs events until nothing is left; panics after `max_steps`.
    pub(crate) fn run_until_quiet(&mut self, max_steps: u64) -> u64 {
        let mut steps = 0;
        while self.step() {
            steps += 1;
            assert!(
                steps <= max_steps,
                "the network did not go quiet within {max_steps} steps"
            );
        }
        steps
    }

    /// Runs events due up to `now + d`, then sets the clock there.
    pub(crate) fn run_for(&mut self, d: Duration) {
        let until = self.now().plus(d);
        while self
            .heap
            .peek()
            .is_some_and(|Reverse((at, _, _))| *at <= until)
        {
            self.step();
        }
        self.net.borrow_mut().now = until;
    }

    // --- loss accounting ---

    fn account_losses(&mut self) {
        let mut best: HashMap<Vec<u8>, Arc<Record>> = HashMap::new();
        let mut offer = |r: &Arc<Record>| match best.get_mut(r.client()) {
            Some(b) if r.precedence(b) != Ordering::Greater => {}
            Some(b) => *b = r.clone(),
            None => {
                best.insert(r.client().to_vec(), r.clone());
            }
        };
        for (n, held) in self.nodes.iter().zip(&mut self.held) {
            let Some(n) = n else { continue };
            let key = (n.store().digest(), n.store().len());
            if held.as_ref().is_none_or(|(k, _)| *k != key) {
                *held = Some((key, n.store().records().map(Arc::new).collect()));
            }
            held.iter().flat_map(|(_, rs)| rs).for_each(&mut offer);
        }
        // A crashed node's disk comes back with it (every node restarts before settling).
        self.disks.iter().flatten().for_each(&mut offer);
        let net = self.net.borrow();
        for l in &net.links {
            for q in l.session.iter().flat_map(|s| s.queues.iter()) {
                q.iter()
                    .filter_map(|m| m.record.as_ref())
                    .for_each(&mut offer);
            }
        }
        drop(net);
        let before = self.model.lost;
        self.model.now = self.now();
        self.model.account_losses(&best);
        if std::env::var_os("HERD_SIM_TRACE").is_some() && self.model.lost > before {
            let up: Vec<String> = self
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| match n {
                    None => format!("{i}:dead"),
                    Some(n) => format!(
                        "{i}:{}/{}",
                        (0..n.neighbours().len())
                            .filter(|&p| n.is_linked(PeerId(p)))
                            .count(),
                        n.neighbours().len()
                    ),
                })
                .collect();
            println!(
                "t={}ms lost {} more; nodes {:?} partition {:?}",
                (self.now().0 - START.0) / MS,
                self.model.lost - before,
                up,
                self.partition
            );
        }
    }

    // --- chaos ---

    fn new_clients(&mut self) {
        let count = self.rng.range(1, self.cfg.max_clients) as usize;
        self.clients = (0..count)
            .map(|k| {
                let id = match k {
                    0 => "kiwi.cs.ucla.edu".as_bytes().to_vec(),
                    1 => "ñandú".as_bytes().to_vec(),
                    2 => b"raw\xff\x01id".to_vec(),
                    _ => format!("c{k}.example").into_bytes(),
                };
                ClientGen {
                    id,
                    secs: 1_700_000_000 + self.rng.below(100),
                    last_time: Vec::new(),
                }
            })
            .collect();
    }

    /// A fresh IAMAT line for a random client: its time usually moves on, sometimes goes back,
    /// sometimes ties the last one (same text, or same value written differently).
    fn random_iamat(&mut self) -> Vec<u8> {
        let k = self.rng.index(self.clients.len());
        let roll = self.rng.below(100);
        let rng = &mut self.rng;
        let c = &mut self.clients[k];
        let time = if !c.last_time.is_empty() && roll < 10 {
            c.last_time.clone()
        } else if !c.last_time.is_empty() && roll < 15 {
            let pad: &[u8] = if c.last_time.contains(&b'.') {
                b"0"
            } else {
                b".0"
            };
            [c.last_time.as_slice(), pad].concat()
        } else {
            if roll < 30 {
                c.secs = c.secs.saturating_sub(rng.range(1, 10));
            } else {
                c.secs += rng.range(0, 3);
            }
            match rng.below(3) {
                0 => format!("{}", c.secs).into_bytes(),
                1 => format!("{}.{}", c.secs, rng.below(10)).into_bytes(),
                _ => format!(
                    "{}.{:09}{}",
                    c.secs,
                    rng.below(1_000_000_000),
                    rng.below(10)
                )
                .into_bytes(),
            }
        };
        c.last_time = time.clone();
        let lat = rng.below(180_000_001) as i64 - 90_000_000;
        let lon = rng.below(360_000_001) as i64 - 180_000_000;
        let deg = |v: i64| {
            let sign = if v < 0 { '-' } else { '+' };
            format!("{sign}{}.{:06}", v.abs() / 1_000_000, v.abs() % 1_000_000)
        };
        let location = format!("{}{}", deg(lat), deg(lon));
        [
            b"IAMAT ".as_slice(),
            &c.id,
            b" ",
            location.as_bytes(),
            b" ",
            &time,
        ]
        .concat()
    }

    fn live_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .collect()
    }

    /// Runs `actions` random client requests and faults, one every 1–20 ms, then lets
    /// everything come back: partitions heal, crashed nodes restart, links come up.
    pub(crate) fn chaos(&mut self, actions: u64) {
        self.new_clients();
        self.flapping = true;
        self.connect_all();
        self.chaos_left = actions;
        let at = self.now();
        self.push(at, Ev::Chaos);
        while self.chaos_left > 0 {
            assert!(self.step(), "the chaos event keeps the heap busy");
        }
    }

    fn chaos_step(&mut self) {
        self.chaos_left -= 1;
        if self.chaos_left > 0 {
            let at = Timestamp(self.now().0 + self.rng.range(MS, 20 * MS));
            self.push(at, Ev::Chaos);
        }
        let live = self.live_nodes();
        let n = self.nodes.len();
        let roll = self.rng.below(100);
        match roll {
            0..50 if !live.is_empty() => {
                let i = live[self.rng.index(live.len())];
                let line = self.random_iamat();
                self.iamat_bytes(i, &line);
            }
            50..65 if !live.is_empty() => {
                let i = live[self.rng.index(live.len())];
                let client = if self.rng.percent(70) {
                    self.clients[self.rng.index(self.clients.len())].id.clone()
                } else {
                    format!("nobody{}", self.rng.below(5)).into_bytes()
                };
                self.whatsat(i, &client);
            }
            65..80 => {
                let l = self.rng.index(self.topo.edges.len());
                if self.net.borrow().links[l].session.is_some() {
                    let d = self.rng.range(MS, 300 * MS);
                    self.drop_link(l, Duration::from_nanos(d));
                }
            }
            // Crashes leave at least half of the herd up.
            80..86 if self.cfg.crashes && live.len() * 2 >= n + 2 => {
                let i = live[self.rng.index(live.len())];
                self.crash(i);
                let at = Timestamp(self.now().0 + self.rng.range(10 * MS, 500 * MS));
                let inc = self.inc[i];
                self.push(at, Ev::Restart { node: i, inc });
            }
            86..90 if self.partition.is_none() && n > 1 => {
                let sides: Vec<bool> = (0..n).map(|_| self.rng.percent(50)).collect();
                self.report.partitions += 1;
                self.partition = Some(sides);
                for l in 0..self.topo.edges.len() {
                    if !self.link_allowed_ignoring_session(l) {
                        self.drop_session(l, 0);
                    }
                }
                self.after_step();
            }
            90..95 if self.partition.is_some() => self.heal(),
            _ => {}
        }
    }

    fn link_allowed_ignoring_session(&self, l: usize) -> bool {
        let [a, b] = self.net.borrow().links[l].ends;
        self.partition.as_ref().is_none_or(|p| p[a] == p[b])
    }

    fn heal(&mut self) {
        self.partition = None;
        self.connect_all();
    }

    /// Sends IAMAT bytes to node `i` and records the acknowledgement.
    pub(crate) fn iamat_bytes(&mut self, i: usize, line: &[u8]) -> Arc<Record> {
        let mut out = Vec::new();
        let action = self.call(i, |n, now| n.handle_client_line(now, line, &mut out));
        assert_eq!(
            action,
            Some(ClientAction::Replied),
            "IAMAT to a live node is answered"
        );
        assert_eq!(out.pop(), Some(b'\n'), "the AT line ends in a newline");
        let record = Arc::new(Record::parse(&out).expect("the reply is an AT line"));
        assert_eq!(record.origin(), self.topo.names[i].as_str().as_bytes());
        self.report.iamats += 1;
        self.model.ack(record.clone());
        self.after_step();
        record
    }

    /// Ends the faults: heals the partition, restarts every crashed node, lifts link blocks and
    /// brings every link up; then runs until the network is quiet (all timers included).
    pub(crate) fn settle(&mut self, max_steps: u64) -> u64 {
        self.flapping = false;
        self.partition = None;
        for i in 0..self.nodes.len() {
            self.restart(i);
        }
        {
            let mut net = self.net.borrow_mut();
            let now = net.now;
            for l in &mut net.links {
                l.blocked_until = now;
                l.held = false;
            }
        }
        self.connect_all();
        if self.cfg.record_ttl.is_some() {
            self.run_until_only_timers(max_steps)
        } else {
            self.run_until_quiet(max_steps)
        }
    }

    /// Runs events until only node timers later than now are left (with record lifetimes the
    /// herd is never quiet while it holds records: each waits for its expiry), and no query
    /// is in flight; panics after `max_steps`.
    pub(crate) fn run_until_only_timers(&mut self, max_steps: u64) -> u64 {
        let mut steps = 0;
        loop {
            let now = self.now();
            let only_timers = self
                .heap
                .iter()
                .all(|Reverse((at, _, ev))| matches!(ev, Ev::Timer { .. }) && *at > now);
            let queries = self
                .nodes
                .iter()
                .flatten()
                .any(|n| n.queries_in_flight() > 0);
            if (only_timers && !queries && self.pending.is_empty()) || !self.step() {
                return steps;
            }
            steps += 1;
            assert!(
                steps <= max_steps,
                "the network did not go quiet within {max_steps} steps"
            );
        }
    }

    /// The end-state checks of a settled herd.
    pub(crate) fn check_settled(&mut self) {
        self.model.now = self.now();
        let expected = self.model.expected();
        // Every acknowledged record that was never lost is the expected one or older.
        for (client, all) in &self.model.clients {
            for a in all
                .iter()
                .filter(|a| !a.lost && !self.model.expired(&a.record))
            {
                let e = expected
                    .get(client)
                    .expect("a client with an unlost record is expected");
                assert_ne!(a.record.precedence(e), Ordering::Greater);
            }
        }
        for (i, node) in self.nodes.iter().enumerate() {
            let node = node.as_ref().expect("every node is up after settling");
            let name = &self.topo.names[i];
            assert_eq!(
                node.store().len(),
                expected.len(),
                "{name} holds the wrong number of clients"
            );
            for (client, want) in &expected {
                let got = node.store().get(client).unwrap_or_else(|| {
                    panic!(
                        "{name} lacks client {:?}, expected {want:?}",
                        String::from_utf8_lossy(client)
                    )
                });
                assert_eq!(got.at_line(), want.at_line(), "{name} holds a stale record");
            }
            assert_eq!(
                node.store().digest(),
                herd_core::store::digest_of(expected.values().map(|r| &**r)),
                "{name}'s digest is not that of the expected records"
            );
            assert_eq!(node.queries_in_flight(), 0, "{name} still tracks queries");
            // Without lifetimes a settled node wants no timer; with them, one for the
            // earliest expiry of what it holds.
            let expiry = self.cfg.record_ttl.and_then(|ttl| {
                let first = expected
                    .values()
                    .map(|r| herd_core::store::expiry_nanos(r, ttl))
                    .min()?;
                u64::try_from(first).ok().map(Timestamp)
            });
            assert_eq!(node.poll_timeout(), expiry, "{name} wants the wrong timer");
            for p in 0..node.neighbours().len() {
                assert!(
                    node.is_linked(PeerId(p)) != node.is_removed(PeerId(p)),
                    "{name}'s link {p} is not synchronised (or removed and still up)"
                );
            }
        }
        assert!(
            self.pending.is_empty(),
            "a WHATSAT never got its answer: {}",
            self.pending.len()
        );
        let net = self.net.borrow();
        for l in net.links.iter().filter(|l| !l.removed) {
            let s = l.session.as_ref().expect("every link is up after settling");
            assert!(
                s.queues.iter().all(VecDeque::is_empty),
                "messages left in flight"
            );
        }
        drop(net);
        let stats = self.total_stats();
        assert_eq!(
            stats.peer_errors, 0,
            "a node saw a malformed or out-of-session message"
        );
    }

    /// After settling: every node finds every expected client at once, and a WHATSAT for an
    /// unknown client is answered unknown by the echo wave before the deadline.
    pub(crate) fn check_queries_after_settling(&mut self) {
        self.model.now = self.now();
        let expected = self.model.expected();
        for i in 0..self.nodes.len() {
            for (client, want) in &expected {
                match self.whatsat(i, client) {
                    Whatsat::Found(r) => assert_eq!(r.at_line(), want.at_line()),
                    other => panic!("a known client gave {other:?}"),
                }
            }
        }
        let i = self.rng.index(self.nodes.len());
        let start = self.now();
        match self.whatsat(i, b"nobody.at.all") {
            Whatsat::Pending(ticket) => {
                self.run_until_quiet(10_000_000);
                let d = self
                    .query_result(i, ticket)
                    .expect("the query finished")
                    .clone();
                assert_eq!(d.record, None);
                assert!(
                    d.done.since(start) < self.cfg.query_timeout,
                    "the echo wave answered 'unknown' before the deadline"
                );
            }
            Whatsat::Unknown => assert!(self.node(i).neighbours().is_empty()),
            Whatsat::Found(r) => panic!("an unknown client was found: {r:?}"),
        }
    }

    /// A one-line summary of the run.
    pub(crate) fn summary(&self) -> String {
        let sent = self.sent();
        let total: u64 = sent.values().sum();
        let s = self.total_stats();
        format!(
            "{} nodes, {} links: {} IAMATs ({} records acked, {} lost to crashes), {} WHATSATs ({} herd queries), \
             {} crashes, {} drops, {} partitions, {} backlogged; {} peer messages ({} updates, {} lost in flight; \
             {} announcements, {} prunes, {} grafts), {} ms virtual",
            self.topo.len(),
            self.topo.edges.len(),
            self.report.iamats,
            self.model.acked_count(),
            self.model.lost,
            self.report.whatsats,
            s.queries_started,
            self.report.crashes,
            self.report.drops,
            self.report.partitions,
            self.backlogged(),
            total,
            s.updates_sent,
            self.report.lost_in_flight,
            s.announcements_sent,
            s.prunes_sent,
            s.grafts_sent,
            (self.now().0 - START.0) / MS,
        )
    }
}

fn add_stats(t: &mut NodeStats, s: &NodeStats) {
    t.iamats += s.iamats;
    t.whatsats += s.whatsats;
    t.invalid += s.invalid;
    t.stored += s.stored;
    t.stale += s.stale;
    t.updates_sent += s.updates_sent;
    t.updates_received += s.updates_received;
    t.peer_sent += s.peer_sent;
    t.send_failures += s.send_failures;
    t.queries_started += s.queries_started;
    t.peer_errors += s.peer_errors;
    t.long_ids_refused += s.long_ids_refused;
    t.records_refused += s.records_refused;
    t.expired_on_arrival += s.expired_on_arrival;
    t.expired += s.expired;
    t.future_refused += s.future_refused;
    t.resyncs += s.resyncs;
    t.resync_records += s.resync_records;
    t.payload_sent += s.payload_sent;
    t.announcements_sent += s.announcements_sent;
    t.announce_messages_sent += s.announce_messages_sent;
    t.announce_bytes_sent += s.announce_bytes_sent;
    t.announcements_received += s.announcements_received;
    t.prunes_sent += s.prunes_sent;
    t.prunes_received += s.prunes_received;
    t.grafts_sent += s.grafts_sent;
    t.grafts_received += s.grafts_received;
}
