//! Warnings of a failing Places service, captured by a real tracing subscriber, against a
//! real hyper server on loopback standing in for Google.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Mode, StandIn, KEY};
use herd_core::{MaxItems, PlacesLookup, PlacesQuery, RadiusKm};
use herd_places::{BackendKind, HyperPlaces, PlacesConfig};
use hyper::StatusCode;
use serde_json::json;

/// Longest any single lookup may take before the test fails instead of hanging.
const GUARD: Duration = Duration::from_secs(20);

/// Log lines written while the guard of [`Capture::install`] lives (this thread only).
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let out = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn warnings(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .filter(|l| l.contains(" WARN "))
            .map(str::to_owned)
            .collect()
    }
}

fn query() -> PlacesQuery {
    PlacesQuery {
        lat: 34.06893,
        lon: -118.445127,
        radius: RadiusKm::from_km(10.0).expect("radius in range"),
        max_items: MaxItems::new(5).expect("count in range"),
    }
}

fn client(kind: BackendKind, google: &StandIn, key: &str) -> HyperPlaces {
    HyperPlaces::new(&PlacesConfig {
        kind,
        base_url: Some(google.base()),
        api_key: Some(key.to_owned()),
        timeout: Duration::from_secs(5),
        ..PlacesConfig::default()
    })
    .expect("client builds")
}

async fn lookup(places: &HyperPlaces) -> serde_json::Value {
    match tokio::time::timeout(GUARD, places.nearby(&query())).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => json!({"failed": e.to_string()}),
        Err(_) => panic!("lookup hung"),
    }
}

#[tokio::test]
async fn request_denied_is_a_warning_with_the_status_and_the_backend() {
    let capture = Capture::default();
    let _guard = capture.install();
    let google = StandIn::start(Mode::Normal).await;
    let wrong = "wrong-key-0123456789";
    let answer = lookup(&client(BackendKind::GoogleLegacy, &google, wrong)).await;
    assert_eq!(answer["status"], "REQUEST_DENIED");
    let warnings = capture.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = &warnings[0];
    for want in [
        "places service answered with an error status",
        "backend=\"google-legacy\"",
        "status=\"REQUEST_DENIED\"",
        "The provided API key is invalid.",
        "suppressed=0",
    ] {
        assert!(w.contains(want), "{want:?} not in {w}");
    }
    assert!(!w.contains(wrong), "the key leaked: {w}");
    // A good answer is no warning.
    let ok = lookup(&client(BackendKind::GoogleLegacy, &google, KEY)).await;
    assert_eq!(ok["status"], "OK");
    assert_eq!(capture.warnings().len(), 1);
}

#[tokio::test]
async fn quota_and_http_errors_are_warnings_for_the_new_api() {
    let capture = Capture::default();
    let _guard = capture.install();
    let body = json!({"error": {"code": 429, "message": "Quota exceeded.", "status": "RESOURCE_EXHAUSTED"}});
    let google = StandIn::start(Mode::Body(StatusCode::TOO_MANY_REQUESTS, body.to_string())).await;
    let answer = lookup(&client(BackendKind::Google, &google, KEY)).await;
    assert_eq!(answer["status"], "OVER_QUERY_LIMIT");
    let failing = StandIn::start(Mode::ServerError).await;
    let answer = lookup(&client(BackendKind::Google, &failing, KEY)).await;
    assert!(answer["failed"].is_string(), "{answer}");
    let warnings = capture.warnings();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("status=\"OVER_QUERY_LIMIT\"")
            && warnings[0].contains("backend=\"google\"")
            && warnings[0].contains("Quota exceeded."),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[1].contains("places call failed")
            && warnings[1].contains("cause=HTTP 500")
            && warnings[1].contains("backend=\"google\""),
        "{}",
        warnings[1]
    );
}

#[tokio::test]
async fn a_flood_of_failures_writes_at_most_one_line_a_second_per_cause() {
    let capture = Capture::default();
    let _guard = capture.install();
    let google = StandIn::start(Mode::Normal).await;
    let denied = client(BackendKind::GoogleLegacy, &google, "wrong-key");
    let failing = StandIn::start(Mode::ServerError).await;
    let erring = client(BackendKind::GoogleLegacy, &failing, KEY);
    const N: u64 = 30;
    let start = Instant::now();
    for _ in 0..N {
        assert_eq!(lookup(&denied).await["status"], "REQUEST_DENIED");
        assert!(lookup(&erring).await["failed"].is_string());
    }
    let seconds = start.elapsed().as_secs();
    let warnings = capture.warnings();
    for cause in ["status=\"REQUEST_DENIED\"", "cause=HTTP 500"] {
        let lines: Vec<&String> = warnings.iter().filter(|l| l.contains(cause)).collect();
        // One at once, then at most one per second that passed.
        assert!(
            !lines.is_empty() && lines.len() as u64 <= 1 + seconds,
            "{cause}: {} lines in {seconds} s: {lines:?}",
            lines.len()
        );
        // Each line but the first counts the failures not logged before it.
        let suppressed: u64 = lines
            .iter()
            .map(|l| {
                let n = l.split("suppressed=").nth(1).expect("suppressed field");
                n.split(' ').next().unwrap().parse::<u64>().unwrap()
            })
            .sum();
        assert!(suppressed < N, "{suppressed}");
    }
}
