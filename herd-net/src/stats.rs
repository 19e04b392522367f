//! A running server's counters and store summary, and their JSON line.

use std::time::Duration;

use herd_core::{NodeStats, ServerName};

pub use crate::ratelog::RefusalCounts;

/// A link's state as the admin listener reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// No session.
    Down,
    /// A session is open and reconciling (its delta is not through yet).
    Syncing,
    /// Reconciled: live updates flow.
    Up,
}

impl LinkState {
    /// `"down"`, `"syncing"` or `"up"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Down => "down",
            Self::Syncing => "syncing",
            Self::Up => "up",
        }
    }
}

/// One neighbour's link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStats {
    /// The neighbour.
    pub peer: ServerName,
    /// Its state.
    pub state: LinkState,
    /// Bytes queued for it, not yet written.
    pub queue_bytes: usize,
    /// Peer messages queued for it since the start.
    pub sent: u64,
    /// Peer messages received from it since the start.
    pub received: u64,
    /// How long ago it was last heard from (`None`: never).
    pub last_heard: Option<Duration>,
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
    /// Bytes of the AT lines the store holds.
    pub store_line_bytes: u64,
    /// Every neighbour's link.
    pub links: Vec<LinkStats>,
    /// The store's order-independent digest ([`herd_core::LocationStore::digest`]).
    pub digest: u64,
    /// Neighbours whose link is up and synchronised.
    pub links_up: Vec<ServerName>,
    /// Client connections open now.
    pub clients: usize,
    /// Lines in the journal file and write errors so far, when there is a journal.
    pub journal: Option<(u64, u64)>,
    /// Client connections refused or closed early, by cause ([`crate::ratelog`]).
    pub refusals: RefusalCounts,
    /// Times the server's timer task ran: once per deadline (herd query, record expiry,
    /// journal flush of peer records, refusal log), so an idle server's count stays still.
    pub timer_wakeups: u64,
    /// Fences held now.
    pub fences: usize,
    /// Client connections that may hold fences (they sent a FENCE) open now.
    pub fence_subscribers: usize,
    /// Connections closed because their fence event queue was full
    /// (`limits.fence_queue_lines`).
    pub fence_subscribers_dropped: u64,
}

impl ServerStats {
    /// The stats as a JSON object: the server, its store, every counter, its links.
    pub fn to_json(&self) -> serde_json::Value {
        let n = &self.node;
        let links: Vec<serde_json::Value> = self
            .links
            .iter()
            .map(|l| {
                serde_json::json!({
                    "peer": l.peer.as_str(),
                    "state": l.state.as_str(),
                    "queue_bytes": l.queue_bytes,
                    "sent": l.sent,
                    "received": l.received,
                    "last_heard_ms": l.last_heard.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                })
            })
            .collect();
        let mut doc = serde_json::json!({
            "server": self.server.as_str(),
            "records": self.records,
            "digest": self.digest,
            "links_up": self.links_up.iter().map(ServerName::as_str).collect::<Vec<_>>(),
            "clients": self.clients,
            "iamats": n.iamats,
            "whatsats": n.whatsats,
            "invalid": n.invalid,
            "stored": n.stored,
            "stale": n.stale,
            "updates_sent": n.updates_sent,
            "updates_received": n.updates_received,
            "peer_sent": n.peer_sent,
            "send_failures": n.send_failures,
            "queries_started": n.queries_started,
            "peer_errors": n.peer_errors,
            "journal_lines": self.journal.map(|j| j.0),
            "journal_errors": self.journal.map(|j| j.1),
            "refused_max_clients": self.refusals.max_clients,
            "refused_per_ip": self.refusals.per_ip,
            "accept_errors": self.refusals.accept_errors,
            "line_timeouts": self.refusals.line_timeouts,
            "records_refused": n.records_refused,
            "future_refused": n.future_refused,
            "expired": n.expired,
            "expired_on_arrival": n.expired_on_arrival,
            "long_ids_refused": n.long_ids_refused,
            "timer_wakeups": self.timer_wakeups,
            "iamats_stored": n.iamats_stored,
            "iamats_stale": n.iamats_stale,
            "whatsats_local": n.whatsats_local,
            "queries_found": n.queries_found,
            "whatsats_unknown": n.whatsats_unknown,
            "resyncs": n.resyncs,
            "resync_records": n.resync_records,
            "catch_ups": n.catch_ups,
            "catch_up_records": n.catch_up_records,
            "catch_ups_received": n.catch_ups_received,
            "store_line_bytes": self.store_line_bytes,
            "links": links,
        });
        let more = serde_json::json!({
            "nearbys": n.nearbys,
            "fences": self.fences,
            "fence_subscribers": self.fence_subscribers,
            "fence_events": n.fence_events,
            "fences_refused": n.fences_refused,
            "fence_subscribers_dropped": self.fence_subscribers_dropped,
            "payload_sent": n.payload_sent,
            "announcements_sent": n.announcements_sent,
            "announce_messages_sent": n.announce_messages_sent,
            "announce_bytes_sent": n.announce_bytes_sent,
            "prunes_sent": n.prunes_sent,
            "grafts_sent": n.grafts_sent,
        });
        if let (Some(all), serde_json::Value::Object(more)) = (doc.as_object_mut(), more) {
            all.extend(more);
        }
        doc
    }

    /// The stats as one line of JSON (with `\n`): [`ServerStats::to_json`].
    pub fn to_json_line(&self) -> String {
        let mut s = self.to_json().to_string();
        s.push('\n');
        s
    }
}
