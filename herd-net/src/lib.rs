//! herd-net: the tokio adapters that put [`herd_core::Node`] on real sockets.
//!
//! Layout: [`codec`] frames byte lines with a length limit; [`server`] runs one server (node
//! behind a lock, accept loop, timers, stats); `client` serves one client connection;
//! `link` dials, authenticates and runs peer links; [`sink`] is the node's bounded
//! per-peer outbound queue; [`clock`] holds the production clock and id source; [`limits`]
//! the configurable limits; [`journal`] the optional durable record of every stored update;
//! [`msglog`] the bulk per-message log; [`scope`] tags each task with its server for log routing;
//! [`escape`] prints protocol bytes safely in logs. Every decision about what a line means
//! is herd-core's.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![deny(rust_2018_idioms)]

mod client;
pub mod clock;
pub mod codec;
pub mod escape;
pub mod journal;
pub mod limits;
pub mod link;
pub mod msglog;
pub mod scope;
pub mod server;
pub mod sink;

pub use codec::{LineCodec, LineError};
pub use limits::Limits;
pub use msglog::MessageLog;
pub use server::{start, Neighbour, ServerHandle, ServerSpec, ServerStats};
