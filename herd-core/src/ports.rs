//! Ports: what the core needs from the outside world, as traits.
//!
//! The node takes the time as an argument of every call, so there is no clock port.
//! Production adapters live in other crates (`herd-server`, `herd-net`, `herd-places`);
//! test doubles live in `crate::testing` behind the `testing` feature. The Places lookup
//! port is in [`crate::lookup`], next to the types the client grammar uses.

use thiserror::Error;

use crate::peer::PeerMsg;

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

    /// Bytes sent to `to` and not yet through the transport: the backlog and what the
    /// transport has taken but not written yet. When it passes
    /// [`crate::node::NodeConfig::catch_up_bytes`] the node stops queuing live updates for
    /// `to` and catches it up from its store instead. By default the backlog.
    fn lag(&self, to: PeerId) -> usize {
        self.backlog(to)
    }

    /// Asks the adapter to call [`crate::Node::handle_link_drained`] for `to` once it has
    /// taken what is queued for `to` now (at most once per request; the request dies with
    /// the link's session).
    fn notify_drained(&mut self, to: PeerId);
}
