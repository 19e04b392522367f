//! What the black-box tests of herd-net share: one server started on a loopback listener.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use herd_core::testing::StaticPlaces;
use herd_core::ServerName;
use herd_net::{Limits, Neighbour, ServerHandle, ServerSpec};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub fn name(s: &str) -> ServerName {
    ServerName::new(s).unwrap()
}

/// Starts server `me` on 127.0.0.1 with default limits, static places (no results), no
/// journal, and the given neighbours and secret; returns it and the token that stops it.
pub async fn start_server(
    me: &str,
    neighbours: Vec<Neighbour>,
    secret: Option<&str>,
) -> (ServerHandle, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_spec(spec(me, neighbours, secret), listener)
}

/// The spec [`start_server`] starts a server with: default limits, static places, no journal.
pub fn spec(me: &str, neighbours: Vec<Neighbour>, secret: Option<&str>) -> ServerSpec {
    ServerSpec {
        name: name(me),
        neighbours,
        limits: Limits::default(),
        secret: secret.map(|s| Arc::from(s.as_bytes())),
        places: Arc::new(StaticPlaces::new(
            serde_json::json!({"results": [], "status": "OK"}),
        )),
        places_backend: "static",
        log_index: 0,
        message_log: None,
        journal: None,
        tls: None,
    }
}

/// Starts a server of `spec` on `listener`; returns it and the token that stops it.
pub fn start_spec(spec: ServerSpec, listener: TcpListener) -> (ServerHandle, CancellationToken) {
    let token = CancellationToken::new();
    let handle = herd_net::start(spec, listener, token.clone(), TaskTracker::new()).unwrap();
    (handle, token)
}
