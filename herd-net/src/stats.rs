//! A running server's counters and store summary, and their JSON line.

use std::fmt::Write as _;

use herd_core::{NodeStats, ServerName};

pub use crate::ratelog::RefusalCounts;

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
    /// Client connections refused or closed early, by cause ([`crate::ratelog`]).
    pub refusals: RefusalCounts,
    /// Times the server's timer task ran: once per deadline (herd query, record expiry,
    /// journal flush of peer records, refusal log), so an idle server's count stays still.
    pub timer_wakeups: u64,
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
             \"queries_started\":{},\"peer_errors\":{},\"journal_lines\":{},\"journal_errors\":{},\
             \"refused_max_clients\":{},\"refused_per_ip\":{},\"accept_errors\":{},\
             \"line_timeouts\":{},\"records_refused\":{},\"future_refused\":{},\"expired\":{},\
             \"expired_on_arrival\":{},\"long_ids_refused\":{},\"timer_wakeups\":{}}}",
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
            self.refusals.max_clients,
            self.refusals.per_ip,
            self.refusals.accept_errors,
            self.refusals.line_timeouts,
            n.records_refused,
            n.future_refused,
            n.expired,
            n.expired_on_arrival,
            n.long_ids_refused,
            self.timer_wakeups,
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
