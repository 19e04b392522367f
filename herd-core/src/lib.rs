//! herd-core: the pure heart of the herd.
//!
//! Layout: [`types`] holds the validated values of the wire; [`protocol`] the client grammar
//! (lines in, replies out); [`record`] the AT line the herd keeps and floods; [`lookup`] the
//! Places question and its port; [`peer`] the server-to-server messages, with the handshake
//! that opens a link in [`peer::handshake`]; [`store`] the per-client newest record with its
//! change log; [`node`] the sans-IO state machine tying them together (its herd query wave and
//! its reconciliation in sub-modules of their own); [`ports`] the traits through which
//! randomness and peers come in. No I/O, no clock, no runtime: everything is driven by the
//! caller, which passes the time to every node call.

#![forbid(unsafe_code)]
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]
#![warn(missing_docs, unreachable_pub)]

pub mod fence;
pub mod lookup;
pub mod near;
pub mod node;
pub mod peer;
pub mod ports;
pub mod protocol;
pub mod record;
pub mod store;
pub mod types;

#[cfg(feature = "testing")]
pub mod testing;

pub use lookup::{LookupError, PlacesLookup, PlacesQuery};
pub use node::{
    ClientAction, Dissemination, Node, NodeConfig, NodeEvent, NodeLimits, NodeStats, PeerError,
    QueryOutcome, Subscriber,
};
pub use peer::{Handshake, PeerMsg, PeerParseError};
pub use ports::{IdSource, PeerId, PeerSendError, PeerSink};
pub use protocol::{parse_client_line, ClientLine};
pub use record::Record;
pub use store::{LocationStore, Nearby, NearbyQuery, Offer};
pub use types::{
    ClientId, ClientTime, FieldError, Location, MaxItems, RadiusKm, ServerName, TimeDiff,
    TimeValue, Timestamp,
};
