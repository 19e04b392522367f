//! Replies that wait: a WHATSAT's Places lookup, and a WHATSAT waiting on the herd.
//!
//! Each runs in its own task, outside any lock, and hands the finished reply bytes to the
//! connection, which sends them in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herd_core::protocol::{write_invalid, write_whatsat_reply};
use herd_core::{ClientAction, LookupError, MaxItems, PlacesQuery, RadiusKm, Record};
use tokio::sync::oneshot;
use tokio::time::timeout;
use tracing::warn;

use super::log::log_reply;
use crate::driver::{Driver, QueryAnswer};

/// Extra time a WHATSAT waiting on a herd query may take beyond the node's own deadline.
const QUERY_GUARD: Duration = Duration::from_secs(2);

/// Looks up places for a known client and formats the WHATSAT reply.
pub(super) async fn places(
    driver: &Driver,
    addr: SocketAddr,
    record: Arc<Record>,
    query: PlacesQuery,
) -> Vec<u8> {
    let spec = driver.spec();
    let result = match timeout(spec.limits.places_timeout, spec.places.nearby(&query)).await {
        Ok(r) => r,
        Err(_) => Err(LookupError::Timeout),
    };
    if let Err(e) = &result {
        warn!(%addr, error = %e, "places lookup failed");
    }
    let mut out = Vec::with_capacity(4096);
    write_whatsat_reply(record.at_line(), result, query.max_items, &mut out);
    log_reply(spec.message_log.as_ref(), addr, &out);
    out
}

/// Finishes a WHATSAT that waited for the herd's answer about an unknown client.
pub(super) async fn herd(
    driver: &Driver,
    addr: SocketAddr,
    answer: oneshot::Receiver<QueryAnswer>,
    line: Vec<u8>,
    radius: RadiusKm,
    max_items: MaxItems,
) -> Vec<u8> {
    // The node answers by its own deadline; the guard only protects against a lost answer.
    let record = timeout(QUERY_GUARD, answer)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    let mut out = Vec::new();
    match driver.resume_whatsat(record, &line, radius, max_items, &mut out) {
        ClientAction::Places { record, query } => places(driver, addr, record, query).await,
        ClientAction::Replied | ClientAction::Silent | ClientAction::Pending { .. } => {
            if out.is_empty() {
                write_invalid(&line, &mut out);
            }
            log_reply(driver.spec().message_log.as_ref(), addr, &out);
            out
        }
    }
}
