//! Replies that wait: a WHATSAT's Places lookup, and a WHATSAT waiting on the herd.
//!
//! Each runs in its own task, outside any lock, and hands the finished reply bytes to the
//! connection, which sends them in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herd_core::protocol::write_whatsat_reply;
use herd_core::{LookupError, PlacesQuery, QueryOutcome, Record};
use tokio::sync::oneshot;
use tokio::time::timeout;
use tracing::{error, warn};

use super::log::log_reply;
use crate::driver::{Driver, Settings};
use crate::ratelog::RateLog;

/// Failed Places lookups in this process, by kind of failure, each logged at most once a
/// second (`suppressed`: those not logged since the last line).
static LOOKUP_FAILURES: [RateLog; 4] = [
    RateLog::new(),
    RateLog::new(),
    RateLog::new(),
    RateLog::new(),
];

/// Extra time a WHATSAT waiting on a herd query may take beyond the node's own deadline.
const QUERY_GUARD: Duration = Duration::from_secs(2);

/// Looks up places for a known client and formats the WHATSAT reply.
pub(super) async fn places(
    driver: &Driver,
    settings: &Settings,
    addr: SocketAddr,
    record: Arc<Record>,
    query: PlacesQuery,
) -> Vec<u8> {
    let spec = driver.spec();
    let limits = &settings.limits;
    let result = match timeout(limits.places_timeout, spec.places.nearby(&query)).await {
        Ok(r) => r,
        Err(_) => Err(LookupError::Timeout),
    };
    if let Err(e) = &result {
        // A failing service fails every lookup: at most one line a second per kind of failure
        // (the Places backend logs the details, per cause, as rarely).
        let cause = match e {
            LookupError::Unavailable(_) => 0,
            LookupError::Timeout => 1,
            LookupError::Status(_) => 2,
            LookupError::BadReply(_) => 3,
        };
        if let Some(suppressed) = LOOKUP_FAILURES[cause].hit() {
            warn!(%addr, error = %e, suppressed, "places lookup failed");
        }
    }
    let mut out = Vec::with_capacity(4096);
    write_whatsat_reply(record.at_line(), result, query.max_items, &mut out);
    log_reply(spec.message_log.as_ref(), addr, &out, limits.log_line_bytes);
    out
}

/// Finishes a WHATSAT that waited for the herd's answer about an unknown client: the node
/// says what comes next (a Places lookup, or its whole reply).
pub(super) async fn herd(
    driver: &Driver,
    settings: &Settings,
    addr: SocketAddr,
    mut answer: oneshot::Receiver<QueryOutcome>,
) -> Vec<u8> {
    // The node answers every query by its deadline, when the driver's timer runs it. Should
    // the answer not come (a lost wake-up), the guard runs the timer here and waits again.
    let outcome = match timeout(QUERY_GUARD, &mut answer).await {
        Ok(r) => r.ok(),
        Err(_) => {
            driver.tick();
            timeout(QUERY_GUARD, answer).await.ok().and_then(Result::ok)
        }
    };
    match outcome {
        Some(QueryOutcome::Places { record, query }) => {
            places(driver, settings, addr, record, query).await
        }
        Some(QueryOutcome::Reply(out)) => {
            log_reply(
                driver.spec().message_log.as_ref(),
                addr,
                &out,
                settings.limits.log_line_bytes,
            );
            out
        }
        None => {
            error!(%addr, "a herd query was never answered by the node; the WHATSAT gets no reply");
            Vec::new()
        }
    }
}
