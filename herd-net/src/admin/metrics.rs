//! `/metrics`: the server's counters in the Prometheus (OpenMetrics) text format, written by
//! the `prometheus-client` crate.
//!
//! The counters live where they are counted (the node, the link table, the driver); a
//! [`Collector`] reads them at scrape time, so serving metrics adds nothing to the hot
//! paths. Only the Places lookups are counted here ([`super::places`]). No metric has a
//! per-client label: the label values are server names, fixed enums and the backend.

use std::fmt::Error as FmtError;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::places::PlacesMetrics;
use super::BuildInfo;
use crate::driver::Driver;
use crate::stats::LinkState;

/// The content type of the OpenMetrics text format that `/metrics` answers with.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Reads a server's counters at scrape time.
pub(crate) struct HerdCollector {
    pub(crate) driver: Arc<Driver>,
    pub(crate) build: BuildInfo,
    pub(crate) log_lines_dropped: Option<super::Counted>,
    pub(crate) start_unix: f64,
}

impl std::fmt::Debug for HerdCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HerdCollector").finish_non_exhaustive()
    }
}

/// The registry of one server: its collector and its Places lookups.
pub(crate) fn registry(collector: HerdCollector, places: &PlacesMetrics) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(collector));
    r.register(
        "herd_places_requests",
        "Places lookups, by backend and outcome (ok, zero_results, the service's non-OK status, unavailable, timeout, http_error, bad_reply)",
        places.requests.clone(),
    );
    r.register_with_unit(
        "herd_places_request_duration",
        "Time a Places lookup took, cache hits included",
        Unit::Seconds,
        places.latency.clone(),
    );
    r
}

/// Encodes the registry as the body of `/metrics`.
pub(crate) fn encode(registry: &Registry) -> Result<String, FmtError> {
    let mut out = String::with_capacity(16 << 10);
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

struct Enc<'a, 'b>(&'a mut DescriptorEncoder<'b>);

impl Enc<'_, '_> {
    fn counter(&mut self, name: &str, help: &str, v: u64) -> Result<(), FmtError> {
        self.0
            .encode_descriptor(name, help, None, MetricType::Counter)?
            .encode_counter::<NoLabelSet, _, u64>(&v, None)
    }

    fn gauge(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        v: f64,
    ) -> Result<(), FmtError> {
        self.0
            .encode_descriptor(name, help, unit, MetricType::Gauge)?
            .encode_gauge(&v)
    }

    fn counters<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        series: &[(L, u64)],
    ) -> Result<(), FmtError> {
        let mut m = self
            .0
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, v) in series {
            m.encode_family(labels)?
                .encode_counter::<NoLabelSet, _, u64>(v, None)?;
        }
        Ok(())
    }

    fn gauges<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        series: &[(L, f64)],
    ) -> Result<(), FmtError> {
        let mut m = self
            .0
            .encode_descriptor(name, help, unit, MetricType::Gauge)?;
        for (labels, v) in series {
            m.encode_family(labels)?.encode_gauge(v)?;
        }
        Ok(())
    }
}

/// The process's resident memory in bytes, from `/proc/self/statm` (None elsewhere).
fn resident_bytes() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // The page size is 4 KiB on every platform herd is built for (x86-64, aarch64 Linux
    // with 4 KiB pages); a 64 KiB-page kernel would under-report.
    Some(pages * 4096.0)
}

impl Collector for HerdCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), FmtError> {
        let s = self.driver.stats();
        let n = &s.node;
        let mut e = Enc(&mut encoder);
        let server = s.server.as_str();
        e.gauges(
            "herd_build_info",
            "Version and commit of the running server (value 1)",
            None,
            &[(
                [
                    ("version", self.build.version),
                    ("commit", self.build.commit),
                    ("server", server),
                ],
                1.0,
            )],
        )?;
        e.gauge(
            "herd_start_time",
            "When the server started, in seconds since the Unix epoch",
            Some(&Unit::Seconds),
            self.start_unix,
        )?;
        e.gauge(
            "herd_ready",
            "1 when the server is ready (/readyz answers 200), else 0",
            None,
            if self.driver.ready() { 1.0 } else { 0.0 },
        )?;
        let refused = n.iamats.saturating_sub(n.iamats_stored + n.iamats_stale);
        e.counters(
            "herd_client_messages",
            "Client lines handled, by command and outcome (IAMAT: stored, stale, refused by a limit; WHATSAT: local, herd (found by a herd query), unknown; invalid lines)",
            &[
                ([("command", "IAMAT"), ("outcome", "stored")], n.iamats_stored),
                ([("command", "IAMAT"), ("outcome", "stale")], n.iamats_stale),
                ([("command", "IAMAT"), ("outcome", "refused")], refused),
                ([("command", "WHATSAT"), ("outcome", "local")], n.whatsats_local),
                ([("command", "WHATSAT"), ("outcome", "herd")], n.queries_found),
                ([("command", "WHATSAT"), ("outcome", "unknown")], n.whatsats_unknown),
                ([("command", "invalid"), ("outcome", "invalid")], n.invalid),
            ],
        )?;
        e.counters(
            "herd_replies",
            "Replies written to clients, by kind (at: an IAMAT's AT line; whatsat: an AT line and places; invalid: a '? ' line)",
            &[
                ([("kind", "at")], n.iamats),
                ([("kind", "whatsat")], n.whatsats_local + n.queries_found),
                ([("kind", "invalid")], n.invalid + n.whatsats_unknown),
            ],
        )?;
        e.gauge(
            "herd_records",
            "Clients whose record the store holds",
            None,
            s.records as f64,
        )?;
        e.gauge(
            "herd_store_line",
            "Bytes of the AT lines the store holds (the data, not the memory around it)",
            Some(&Unit::Bytes),
            s.store_line_bytes as f64,
        )?;
        if let Some(rss) = resident_bytes() {
            e.gauge(
                "herd_process_resident_memory",
                "Resident memory of the whole process (every server it runs)",
                Some(&Unit::Bytes),
                rss,
            )?;
        }
        e.counter(
            "herd_records_stored",
            "Records stored, from clients and peers",
            n.stored,
        )?;
        e.counter(
            "herd_records_expired",
            "Records removed because they outlived record_ttl_ms",
            n.expired,
        )?;
        e.counters(
            "herd_records_refused",
            "Records not stored because of a limit, by reason",
            &[
                ([("reason", "max_records")], n.records_refused),
                ([("reason", "future")], n.future_refused),
                ([("reason", "long_id")], n.long_ids_refused),
                ([("reason", "expired")], n.expired_on_arrival),
            ],
        )?;
        let peers: Vec<&str> = s.links.iter().map(|l| l.peer.as_str()).collect();
        let per_link =
            |f: &dyn Fn(&crate::stats::LinkStats) -> f64| -> Vec<([(&str, &str); 1], f64)> {
                s.links
                    .iter()
                    .zip(&peers)
                    .map(|(l, p)| ([("peer", *p)], f(l)))
                    .collect()
            };
        e.gauges(
            "herd_link_up",
            "1 when the link to the neighbour is up and reconciled, else 0",
            None,
            &per_link(&|l| f64::from(u8::from(l.state == LinkState::Up))),
        )?;
        let mut states = Vec::new();
        for (l, p) in s.links.iter().zip(&peers) {
            for st in [LinkState::Down, LinkState::Syncing, LinkState::Up] {
                states.push((
                    [("peer", *p), ("state", st.as_str())],
                    f64::from(u8::from(l.state == st)),
                ));
            }
        }
        e.gauges(
            "herd_link_state",
            "The link's state (1 for the current one): down, syncing, up",
            None,
            &states,
        )?;
        e.gauges(
            "herd_link_last_heard",
            "Time since the neighbour was last heard from on its link (absent: never)",
            Some(&Unit::Seconds),
            &s.links
                .iter()
                .zip(&peers)
                .filter_map(|(l, p)| l.last_heard.map(|d| ([("peer", *p)], d.as_secs_f64())))
                .collect::<Vec<_>>(),
        )?;
        e.gauges(
            "herd_peer_queue",
            "Bytes queued for the neighbour, not yet written",
            Some(&Unit::Bytes),
            &per_link(&|l| l.queue_bytes as f64),
        )?;
        let sent: Vec<_> = s
            .links
            .iter()
            .zip(&peers)
            .map(|(l, p)| ([("peer", *p)], l.sent))
            .collect();
        let received: Vec<_> = s
            .links
            .iter()
            .zip(&peers)
            .map(|(l, p)| ([("peer", *p)], l.received))
            .collect();
        e.counters(
            "herd_peer_messages_sent",
            "Peer messages queued for the neighbour",
            &sent,
        )?;
        e.counters(
            "herd_peer_messages_received",
            "Peer messages received from the neighbour (pings included)",
            &received,
        )?;
        e.counter(
            "herd_updates_sent",
            "Update messages sent to neighbours (live and reconciliation)",
            n.updates_sent,
        )?;
        e.counter(
            "herd_updates_received",
            "Update messages received from neighbours",
            n.updates_received,
        )?;
        e.counter(
            "herd_peer_errors",
            "Peer messages that were malformed or out of session",
            n.peer_errors,
        )?;
        e.counter(
            "herd_peer_send_failures",
            "Sends to a neighbour's queue that failed (the link was dropped)",
            n.send_failures,
        )?;
        e.counter(
            "herd_reconciliations",
            "Reconciliations: digests answered with a delta, one per link session",
            n.resyncs,
        )?;
        e.counter(
            "herd_resync_records_sent",
            "Records sent in reconciliation deltas",
            n.resync_records,
        )?;
        e.counter(
            "herd_catch_ups",
            "Times a neighbour fell behind and was caught up from the store (peer_catch_up_bytes)",
            n.catch_ups,
        )?;
        e.counter(
            "herd_catch_up_records_sent",
            "Records sent in catch-ups (each client's latest once)",
            n.catch_up_records,
        )?;
        e.counter(
            "herd_payload_sent",
            "Update messages sent to pass a record on (pushed, or answering a graft)",
            n.payload_sent,
        )?;
        e.counter(
            "herd_announcements_sent",
            "Records announced instead of sent (broadcast tree, lazy links)",
            n.announcements_sent,
        )?;
        e.counter(
            "herd_announce_bytes_sent",
            "Bytes of the announcement lines sent",
            n.announce_bytes_sent,
        )?;
        e.counter(
            "herd_prunes_sent",
            "Prunes sent: a record arrived again over an eager link",
            n.prunes_sent,
        )?;
        e.counter(
            "herd_grafts_sent",
            "Grafts sent: an announced record was still missing at the graft timeout",
            n.grafts_sent,
        )?;
        e.counter(
            "herd_queries_started",
            "Herd queries started for WHATSATs of clients this server did not hold",
            n.queries_started,
        )?;
        e.counter(
            "herd_queries_found",
            "Herd queries that found the client",
            n.queries_found,
        )?;
        e.counter(
            "herd_nearby_requests",
            "NEARBY requests answered",
            n.nearbys,
        )?;
        e.gauge("herd_fences", "Fences held now", None, s.fences as f64)?;
        e.gauge(
            "herd_fence_subscribers",
            "Client connections that may hold fences, open now",
            None,
            s.fence_subscribers as f64,
        )?;
        e.counter(
            "herd_fence_events",
            "ENTER and EXIT lines queued for fence subscribers",
            n.fence_events,
        )?;
        e.counter(
            "herd_fences_refused",
            "FENCEs refused for a limit (limits.max_fences_per_connection, limits.max_fences)",
            n.fences_refused,
        )?;
        e.counter(
            "herd_fence_subscribers_dropped",
            "Connections closed because their fence events piled up (limits.fence_queue_lines)",
            s.fence_subscribers_dropped,
        )?;
        if let Some((lines, errors)) = s.journal {
            e.gauge(
                "herd_journal_lines",
                "Lines in the journal file",
                None,
                lines as f64,
            )?;
            e.counter("herd_journal_errors", "Journal write errors", errors)?;
        }
        e.gauge(
            "herd_client_connections",
            "Client connections open now",
            None,
            s.clients as f64,
        )?;
        let r = &s.refusals;
        e.counters(
            "herd_client_connections_refused",
            "Client connections refused or closed early, by reason",
            &[
                ([("reason", "max_clients")], r.max_clients),
                ([("reason", "per_ip")], r.per_ip),
                ([("reason", "accept_error")], r.accept_errors),
                ([("reason", "line_timeout")], r.line_timeouts),
            ],
        )?;
        if let Some(dropped) = &self.log_lines_dropped {
            e.counter(
                "herd_log_lines_dropped",
                "Log lines dropped because the log writer was behind (the server never waits for its log)",
                dropped(),
            )?;
        }
        e.counter(
            "herd_timer_wakeups",
            "Times the server's timer task ran",
            s.timer_wakeups,
        )?;
        Ok(())
    }
}
