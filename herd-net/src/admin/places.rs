//! Places lookups counted and timed for `/metrics`: a [`PlacesLookup`] around the server's
//! backend, so the client code calls the backend as before.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use herd_core::{LookupError, PlacesLookup, PlacesQuery};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// Labels of a Places lookup: the backend and how the lookup ended.
pub(crate) type PlacesLabels = [(&'static str, String); 2];

type HistogramFamily = Family<PlacesLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms … about 16 s: a cache hit, an offline search, Google's usual 100–500 ms, a timeout.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Places lookups by backend and outcome, and their latency.
#[derive(Debug, Clone)]
pub struct PlacesMetrics {
    backend: &'static str,
    pub(crate) requests: Family<PlacesLabels, Counter>,
    pub(crate) latency: HistogramFamily,
}

impl PlacesMetrics {
    /// Empty counters for the backend called `backend`.
    pub fn new(backend: &'static str) -> Self {
        Self {
            backend,
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        }
    }

    /// How many lookups ended with `outcome` (for tests and the stats).
    pub fn count(&self, outcome: &str) -> u64 {
        self.requests.get_or_create(&self.labels(outcome)).get()
    }

    fn labels(&self, outcome: &str) -> PlacesLabels {
        [
            ("backend", self.backend.to_owned()),
            ("outcome", outcome.to_owned()),
        ]
    }

    fn record(&self, outcome: &str, seconds: f64) {
        let labels = self.labels(outcome);
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(seconds);
    }
}

/// How a lookup ended, as a label: `ok`, `zero_results`, the service's own non-OK status in
/// lower case (`request_denied`, `over_query_limit`, …), or `unavailable`, `timeout`,
/// `http_error`, `bad_reply`.
fn outcome(result: &Result<serde_json::Value, LookupError>) -> String {
    match result {
        Ok(v) => match v.get("status").and_then(serde_json::Value::as_str) {
            None => "ok".to_owned(),
            Some(s) => {
                let s: String = s
                    .chars()
                    .take(40)
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if s.is_empty() {
                    "other".to_owned()
                } else {
                    s.to_ascii_lowercase()
                }
            }
        },
        Err(LookupError::Unavailable(_)) => "unavailable".to_owned(),
        Err(LookupError::Timeout) => "timeout".to_owned(),
        Err(LookupError::Status(_)) => "http_error".to_owned(),
        Err(LookupError::BadReply(_)) => "bad_reply".to_owned(),
    }
}

/// The server's Places backend, counted and timed.
pub(crate) struct MeteredPlaces {
    inner: Arc<dyn PlacesLookup>,
    metrics: PlacesMetrics,
}

impl MeteredPlaces {
    pub(crate) fn wrap(inner: Arc<dyn PlacesLookup>, metrics: PlacesMetrics) -> Arc<Self> {
        Arc::new(Self { inner, metrics })
    }
}

#[async_trait]
impl PlacesLookup for MeteredPlaces {
    async fn nearby(&self, q: &PlacesQuery) -> Result<serde_json::Value, LookupError> {
        let start = Instant::now();
        let result = self.inner.nearby(q).await;
        self.metrics
            .record(&outcome(&result), start.elapsed().as_secs_f64());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outcomes_name_the_status_or_the_error() {
        assert_eq!(outcome(&Ok(json!({"status": "OK"}))), "ok");
        assert_eq!(
            outcome(&Ok(json!({"status": "ZERO_RESULTS"}))),
            "zero_results"
        );
        assert_eq!(
            outcome(&Ok(json!({"status": "REQUEST_DENIED"}))),
            "request_denied"
        );
        assert_eq!(outcome(&Ok(json!({"status": "a b\n{}"}))), "ab");
        assert_eq!(outcome(&Ok(json!({"status": "\n"}))), "other");
        assert_eq!(outcome(&Ok(json!({"results": []}))), "ok");
        assert_eq!(outcome(&Err(LookupError::Timeout)), "timeout");
        assert_eq!(outcome(&Err(LookupError::Status(403))), "http_error");
    }
}
