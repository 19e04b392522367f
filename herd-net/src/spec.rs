//! What a server is started with: its name, neighbours, limits, secret and adapters.

use std::sync::Arc;

use herd_core::{PlacesLookup, ServerName};

use crate::journal::JournalSpec;
use crate::limits::Limits;
use crate::msglog::MessageLog;
use crate::tls::HerdTls;

/// A neighbour of a server: its name and the address to dial it at (`host:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// The neighbour's name.
    pub name: ServerName,
    /// Where to dial it.
    pub addr: String,
}

/// Everything a server needs besides its listener. The neighbours, limits, secret and TLS
/// are what it starts with; [`crate::ServerHandle`] changes them while it runs.
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
    pub message_log: Option<Arc<dyn MessageLog>>,
    /// The journal ([`crate::journal`]); `None`: the store lives in memory only.
    pub journal: Option<JournalSpec>,
    /// TLS for peer links (and the TLS client address), if configured ([`crate::tls`]):
    /// then every peer link is TLS 1.3 with certificates both ways, and a peer that speaks
    /// plain text is refused.
    pub tls: Option<HerdTls>,
}

impl std::fmt::Debug for ServerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSpec")
            .field("name", &self.name)
            .field("neighbours", &self.neighbours)
            .field("limits", &self.limits)
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}
