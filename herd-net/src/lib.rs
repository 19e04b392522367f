//! herd-net: the tokio adapters that put [`herd_core::Node`] on real sockets.
//!
//! Layout, from the bottom up:
//! - values and helpers: [`codec`] frames byte lines with a length limit; [`limits`] the
//!   configurable limits; [`spec`] what a server starts with; [`stats`] its counters;
//!   [`clock`] the wall clock and id source; [`escape`] prints protocol bytes safely in logs;
//!   [`scope`] tags each task with its server for log routing; [`msglog`] the bulk
//!   per-message log; [`journal`] the optional durable record of every stored update;
//!   [`ratelog`] logs refusals at most once a second per cause; [`fdlimit`] fits the
//!   client limit to the process's open-file limit;
//! - the link table ([`links`], the node's sink and the one owner of per-peer sessions) over
//!   one bounded outbound [`queue`] per session;
//! - `driver`: the node, the link table, waiting queries and the journal behind one lock,
//!   with one method per event, each settling every output (the quinn driver's shape); and
//!   apart from them the settings a running server can change (neighbours, limits, secret,
//!   TLS: [`ServerHandle`]'s `add_neighbour`, `set_limits`, ...), read once per connection;
//! - socket loops that call only the driver: `listener` (accept, admit),
//!   `client` (one client connection), [`link`] (dial, handshake, a session's reader and
//!   writer; [`liveness`]: its pings, timeouts and socket options); `fast_accept` and `warm`
//!   are performance tricks kept in their own modules;
//! - [`server`]: builds one server and starts its tasks; [`admin`]: its HTTP admin listener
//!   (metrics, health, stats, the status page, reload).
//!
//! Every decision about what a line means is herd-core's.

// `unsafe` is denied everywhere and forbidden in every module but `fast_accept`, which
// registers the listener's descriptor with the runtime (see its SAFETY comment).
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![deny(rust_2018_idioms)]

#[forbid(unsafe_code)]
pub mod admin;
#[forbid(unsafe_code)]
mod client;
#[forbid(unsafe_code)]
pub mod clock;
#[forbid(unsafe_code)]
pub mod codec;
#[forbid(unsafe_code)]
mod driver;
#[forbid(unsafe_code)]
pub mod escape;
mod fast_accept;
#[forbid(unsafe_code)]
pub mod fdlimit;
#[forbid(unsafe_code)]
pub mod journal;
#[forbid(unsafe_code)]
pub mod limits;
#[forbid(unsafe_code)]
pub mod link;
#[forbid(unsafe_code)]
pub mod links;
#[forbid(unsafe_code)]
mod listener;
#[forbid(unsafe_code)]
pub mod liveness;
#[forbid(unsafe_code)]
pub mod msglog;
#[forbid(unsafe_code)]
pub mod queue;
#[forbid(unsafe_code)]
pub mod ratelog;
#[forbid(unsafe_code)]
pub mod scope;
#[forbid(unsafe_code)]
pub mod server;
#[forbid(unsafe_code)]
pub mod spec;
#[forbid(unsafe_code)]
pub mod stats;
#[forbid(unsafe_code)]
pub mod tls;
#[forbid(unsafe_code)]
mod warm;

pub use codec::{LineCodec, LineError};
pub use limits::Limits;
pub use msglog::MessageLog;
pub use server::{start, ServerHandle};
pub use spec::{Neighbour, ServerSpec};
pub use stats::ServerStats;
