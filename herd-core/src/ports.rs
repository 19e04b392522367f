//! Ports: what the core needs from the outside world, as traits.
//!
//! Production adapters live in other crates (`herd-server`, `herd-net`, `herd-places`);
//! test doubles live in [`crate::testing`] behind the `testing` feature.

use async_trait::async_trait;
use thiserror::Error;

use crate::peer::PeerMsg;
use crate::types::{MaxItems, RadiusKm, Timestamp};

/// A source of the current time.
pub trait Clock {
    /// The current wall-clock time.
    fn now(&self) -> Timestamp;
}

/// A source of unpredictable 64-bit values: node epochs, nonces, query ids, hash seeds.
pub trait IdSource {
    /// The next value.
    fn next_u64(&mut self) -> u64;
}

/// Index of a neighbour in the node's neighbour list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub usize);

/// Why a message could not be queued for a neighbour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PeerSendError {
    /// The neighbour index is not one of this node's neighbours.
    #[error("unknown peer")]
    Unknown,
    /// The neighbour's outbound queue is full; the adapter drops the link.
    #[error("peer queue full")]
    Backlogged,
    /// The link is not up.
    #[error("peer link down")]
    Down,
}

/// Where the node's peer messages go. Never blocks: back-pressure is the adapter's business.
///
/// Contract: after `send` returns an error for a link, the adapter must not deliver any later
/// message of that link's session (it drops the link and reports it down), so that the
/// receiver's view of the sender's log stays a prefix.
pub trait PeerSink {
    /// Queues `msg` for neighbour `to`.
    ///
    /// # Errors
    /// See [`PeerSendError`].
    fn send(&mut self, to: PeerId, msg: &PeerMsg) -> Result<(), PeerSendError>;

    /// Bytes queued for `to` that the transport has not taken yet (0 when unknown or down).
    /// The node paces a reconciliation by it, so that a large delta never fills the queue.
    fn backlog(&self, to: PeerId) -> usize;

    /// Asks the adapter to call [`crate::Node::handle_link_drained`] for `to` once it has
    /// taken what is queued for `to` now (at most once per request; the request dies with
    /// the link's session).
    fn notify_drained(&mut self, to: PeerId);
}

/// A "what is near" question for a Places service.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlacesQuery {
    /// Latitude in degrees.
    pub lat: f64,
    /// Longitude in degrees.
    pub lon: f64,
    /// Search radius.
    pub radius: RadiusKm,
    /// Most results wanted (the core cuts longer answers).
    pub max_items: MaxItems,
}

/// Why a Places lookup failed; becomes the `UNKNOWN_ERROR` JSON of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LookupError {
    /// The service could not be reached (connect, TLS, I/O).
    #[error("places service unavailable: {0}")]
    Unavailable(String),
    /// No answer within the configured timeout.
    #[error("places service timed out")]
    Timeout,
    /// The service answered with an HTTP error status.
    #[error("places service answered HTTP {0}")]
    Status(u16),
    /// The answer could not be understood (not JSON, wrong shape).
    #[error("places service answer unreadable: {0}")]
    BadReply(String),
}

/// A Places service. Answers are in Google's legacy Nearby Search shape
/// (`{"html_attributions": [], "results": [...], "status": "OK"}`); a non-OK status that the
/// service itself reports (`REQUEST_DENIED`, …) is an `Ok` answer carrying that status.
#[async_trait]
pub trait PlacesLookup: Send + Sync {
    /// Looks up the places near `q`.
    ///
    /// # Errors
    /// [`LookupError`] when there is no usable answer.
    async fn nearby(&self, q: &PlacesQuery) -> Result<serde_json::Value, LookupError>;
}
