//! A real hyper HTTP/1 server on 127.0.0.1 standing in for Google.
//!
//! It behaves like the two Google APIs: it checks the method, path, query, headers, body and
//! key of every request, answers a wrong key or a malformed request the way Google does, and
//! otherwise answers from the samples in `fixtures/`. A [`Mode`] makes it misbehave (slow,
//! 500, garbage, …). Every request is recorded for exact assertions.

#![allow(dead_code)] // each test file uses a different part of this helper

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The key the stand-in accepts.
pub(crate) const KEY: &str = "SECRET-test-key-7f3a9c";
/// The legacy sample answer.
pub(crate) const LEGACY_SAMPLE: &str = include_str!("../fixtures/nearbysearch-legacy.json");
/// The Places API (New) sample answer.
pub(crate) const NEW_SAMPLE: &str = include_str!("../fixtures/searchnearby-new.json");
/// The field mask the client must send.
pub(crate) const FIELD_MASK: &str = herd_places::legacy::NEW_API_FIELD_MASK;

/// How the stand-in answers requests that pass its checks.
#[derive(Clone, Debug)]
pub(crate) enum Mode {
    /// Like Google: the sample answer.
    Normal,
    /// Waits this long before answering normally.
    Slow(Duration),
    /// HTTP 500 with a plain-text body.
    ServerError,
    /// HTTP 200 with a body that is not JSON.
    Garbage,
    /// HTTP 200 with a body larger than the client's limit.
    Huge,
    /// This status and this exact body.
    Body(StatusCode, String),
    /// The first request gets HTTP 500, later ones the normal answer.
    FailFirst,
    /// The first request is not answered for a minute, later ones normally after this delay.
    HangFirst(Duration),
}

/// One request as the stand-in received it.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    /// `GET`, `POST`, …
    pub(crate) method: String,
    /// Path and query, exactly as sent.
    pub(crate) uri: String,
    /// Header names (lowercase) and values.
    pub(crate) headers: Vec<(String, String)>,
    /// The body.
    pub(crate) body: Bytes,
}

impl Seen {
    /// The value of header `name`, if sent once.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        let mut found = self.headers.iter().filter(|(n, _)| n == name);
        let first = found.next()?;
        assert!(found.next().is_none(), "header {name} sent twice");
        Some(first.1.as_str())
    }
}

#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<Seen>>,
    requests: AtomicUsize,
    connections: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// A running stand-in; stops accepting when dropped.
pub(crate) struct StandIn {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StandIn {
    /// Starts a stand-in answering in `mode`.
    pub(crate) async fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared::default());
        let state = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                state.connections.fetch_add(1, Ordering::SeqCst);
                let (state, mode) = (Arc::clone(&state), mode.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let (state, mode) = (Arc::clone(&state), mode.clone());
                        async move { Ok::<_, Infallible>(handle(req, &state, &mode).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests arrived.
    pub(crate) fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// How many TCP connections were accepted.
    pub(crate) fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The most requests that were being handled at one time.
    pub(crate) fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Every request so far.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().expect("not poisoned").clone()
    }
}

async fn handle(req: Request<Incoming>, state: &Shared, mode: &Mode) -> Response<Full<Bytes>> {
    let number = state.requests.fetch_add(1, Ordering::SeqCst);
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _done = InFlight(&state.in_flight);
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let seen = Seen {
        method: parts.method.to_string(),
        uri: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: (parts.headers.iter())
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    v.to_str().unwrap_or("<binary>").to_owned(),
                )
            })
            .collect(),
        body,
    };
    state.seen.lock().expect("not poisoned").push(seen.clone());
    answer(&seen, mode, number).await
}

/// Counts a request out of flight however its handler ends (answered or dropped).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn answer(seen: &Seen, mode: &Mode, number: usize) -> Response<Full<Bytes>> {
    match mode {
        Mode::Normal => {}
        Mode::Slow(d) => tokio::time::sleep(*d).await,
        Mode::ServerError => {
            return reply(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
        }
        Mode::FailFirst if number == 0 => {
            return reply(StatusCode::INTERNAL_SERVER_ERROR, "boom".into())
        }
        Mode::FailFirst => {}
        Mode::HangFirst(_) if number == 0 => tokio::time::sleep(Duration::from_secs(60)).await,
        Mode::HangFirst(d) => tokio::time::sleep(*d).await,
        Mode::Garbage => return reply(StatusCode::OK, "<html>not json</html>".into()),
        Mode::Huge => return reply(StatusCode::OK, " ".repeat(4 * 1024 * 1024 + 1)),
        Mode::Body(status, body) => return reply(*status, body.clone()),
    }
    let path = seen.uri.split('?').next().unwrap_or("");
    match (seen.method.as_str(), path) {
        ("GET", "/maps/api/place/nearbysearch/json") => legacy(seen),
        ("POST", "/v1/places:searchNearby") => places_new(seen),
        _ => reply(StatusCode::NOT_FOUND, "no such route".into()),
    }
}

/// Google's legacy API: problems are HTTP 200 answers with a non-OK status.
fn legacy(seen: &Seen) -> Response<Full<Bytes>> {
    let query = seen.uri.split_once('?').map(|(_, q)| q).unwrap_or("");
    let params: Vec<(&str, &str)> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let get = |name: &str| params.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    if get("key") != Some(KEY) {
        let denied = json!({"error_message": "The provided API key is invalid.",
            "html_attributions": [], "results": [], "status": "REQUEST_DENIED"});
        return reply(StatusCode::OK, denied.to_string());
    }
    let location_ok = get("location")
        .and_then(|l| l.split_once(','))
        .is_some_and(|(a, b)| a.parse::<f64>().is_ok() && b.parse::<f64>().is_ok());
    let radius_ok =
        get("radius").is_some_and(|r| r.parse::<f64>().is_ok_and(|r| r > 0.0 && r <= 50_000.0));
    if !location_ok || !radius_ok || params.len() != 3 {
        let invalid = json!({"html_attributions": [], "results": [], "status": "INVALID_REQUEST"});
        return reply(StatusCode::OK, invalid.to_string());
    }
    reply(StatusCode::OK, LEGACY_SAMPLE.to_owned())
}

/// The Places API (New): problems are HTTP errors with a Google RPC error body.
fn places_new(seen: &Seen) -> Response<Full<Bytes>> {
    if seen.header("x-goog-api-key") != Some(KEY) {
        return rpc_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "API key not valid. Please pass a valid API key.",
        );
    }
    if seen.header("x-goog-fieldmask").is_none_or(str::is_empty) {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "FieldMask is a required parameter.",
        );
    }
    let body: Value = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
    let circle = &body["locationRestriction"]["circle"];
    let count_ok = body["maxResultCount"]
        .as_u64()
        .is_some_and(|n| (1..=20).contains(&n));
    let circle_ok = circle["center"]["latitude"].is_f64()
        && circle["center"]["longitude"].is_f64()
        && circle["radius"]
            .as_f64()
            .is_some_and(|r| r > 0.0 && r <= 50_000.0);
    if seen.header("content-type") != Some("application/json") || !count_ok || !circle_ok {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "Invalid JSON payload received.",
        );
    }
    reply(StatusCode::OK, NEW_SAMPLE.to_owned())
}

fn rpc_error(status: StatusCode, rpc: &str, message: &str) -> Response<Full<Bytes>> {
    let body = json!({"error": {"code": status.as_u16(), "message": message, "status": rpc}});
    reply(status, body.to_string())
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=UTF-8")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}
