//! The admin HTTP listener: `/metrics`, `/livez`, `/readyz`, `/stats`, the status page and
//! its data, `POST /reload`.
//!
//! One listener per server (its `admin` address), served with hyper's HTTP/1.1 server.
//! Routes (all `GET` but `/reload`):
//! - `/livez`: 200 `ok` while the process serves;
//! - `/readyz`: 200 `ready`, or 503 with a one-line reason until a reconciliation with a
//!   neighbour has finished (a server without neighbours is ready at once; the journal is
//!   restored before the listener exists);
//! - `/metrics`: the counters in the OpenMetrics text format ([`metrics`]);
//! - `/stats`: the counters as one JSON object ([`crate::ServerStats::to_json`]);
//! - `/status`: this server's view for the status page (links, counters, up to
//!   [`MAX_SHOWN_CLIENTS`] clients); `/herd`: every configured server's `/status`, fetched
//!   from its own admin listener, and the configured links; `/map`: the gazetteer's outline;
//! - `/`: the status page (one HTML file embedded in the binary, no external resources);
//! - `POST /reload`: re-reads the config file and applies it ([`ReloadHook`]).
//!
//! With a token set, every route but `/livez` and `/readyz` needs `Authorization: Bearer
//! TOKEN` (or `?token=TOKEN`, so a browser can open the page); a wrong or missing token gets
//! 401. Limits: at most [`AdminLimits::max_connections`] connections at once (more are
//! closed at once), request headers within [`AdminLimits::header_timeout`].

mod metrics;
mod places;
mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::driver::Driver;
use herd_core::ServerName;

pub(crate) use places::MeteredPlaces;
pub use places::PlacesMetrics;

/// Most clients `/status` lists (the page draws them; the total is always given).
pub const MAX_SHOWN_CLIENTS: usize = 2000;

/// The status page, embedded.
const PAGE: &str = include_str!("page.html");

/// A counter read from elsewhere at scrape time (the log writer's dropped lines).
pub type Counted = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Re-reads the config and applies it: a one-line summary, or why nothing changed.
pub type ReloadHook = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// The status page's world outline, made on first use: `[lat, lon]` points.
pub type MapSource = Arc<dyn Fn() -> Vec<[f32; 2]> + Send + Sync>;

/// Version and commit of the build, for `herd_build_info` and `/status`.
#[derive(Debug, Clone, Copy)]
pub struct BuildInfo {
    /// The crate version.
    pub version: &'static str,
    /// The git commit (short), or `unknown`.
    pub commit: &'static str,
}

/// One server of the herd as the admin listener knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HerdMember {
    /// Its name.
    pub name: ServerName,
    /// Where peers dial it.
    pub addr: String,
    /// Where its admin listener can be reached (`host:port`), if it has one.
    pub admin: Option<String>,
}

/// What may change on a reload: the herd's shape and the token.
#[derive(Debug, Clone, Default)]
pub struct AdminConfig {
    /// Every server of the herd, sorted by name.
    pub servers: Vec<HerdMember>,
    /// Every configured link.
    pub links: Vec<(ServerName, ServerName)>,
    /// The bearer token, if one is required.
    pub token: Option<String>,
}

/// The admin config, shared with the code that reloads it.
pub type SharedAdminConfig = Arc<RwLock<AdminConfig>>;

/// Limits of the admin listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    /// Connections served at once (default 64); more are closed at once.
    pub max_connections: usize,
    /// Time to receive a request's headers, also the idle time of a kept-alive
    /// connection (default 10 s).
    pub header_timeout: Duration,
    /// Time `/herd` waits for each other server's `/status` (default 800 ms).
    pub peer_status_timeout: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            header_timeout: Duration::from_secs(10),
            peer_status_timeout: Duration::from_millis(800),
        }
    }
}

/// What a server's admin listener is started with.
#[derive(Clone)]
pub struct AdminSpec {
    /// The herd and the token (shared with the reloader).
    pub config: SharedAdminConfig,
    /// `POST /reload`; `None`: answered 501.
    pub reload: Option<ReloadHook>,
    /// The world outline for `/map`; `None`: an empty outline.
    pub map: Option<MapSource>,
    /// The build, for `herd_build_info`.
    pub build: BuildInfo,
    /// The log writer's dropped lines, if it counts them.
    pub log_lines_dropped: Option<Counted>,
    /// The listener's limits.
    pub limits: AdminLimits,
}

impl std::fmt::Debug for AdminSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSpec")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// What every request of one admin listener sees.
pub(crate) struct Admin {
    driver: Arc<Driver>,
    spec: AdminSpec,
    registry: Registry,
    map: OnceLock<Bytes>,
    started: std::time::Instant,
}

/// Starts serving `listener` as `driver`'s admin listener, until the server stops.
pub(crate) fn serve(
    driver: Arc<Driver>,
    listener: TcpListener,
    spec: AdminSpec,
    places: &PlacesMetrics,
    started: std::time::Instant,
    start_unix: f64,
) {
    let collector = metrics::HerdCollector {
        driver: driver.clone(),
        build: spec.build,
        log_lines_dropped: spec.log_lines_dropped.clone(),
        start_unix,
    };
    let admin = Arc::new(Admin {
        driver: driver.clone(),
        registry: metrics::registry(collector, places),
        spec,
        map: OnceLock::new(),
        started,
    });
    let token = driver.token().clone();
    let addr = listener.local_addr().ok();
    crate::scope::enter(driver.spec().log_index, || {
        info!(server = %driver.name(), admin = ?addr, "admin listener started");
    });
    let slots = Arc::new(Semaphore::new(admin.spec.limits.max_connections));
    let d = driver.clone();
    driver.spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = token.cancelled() => return,
                r = listener.accept() => r,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                // Over the limit: closed at once (dropping the stream).
                continue;
            };
            let admin = admin.clone();
            let token = token.clone();
            let header_timeout = admin.spec.limits.header_timeout;
            d.spawn(async move {
                let _permit = permit;
                let service = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.route(req, peer).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .max_buf_size(64 << 10)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    () = token.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                    }
                }
            });
        }
    });
}

type Body = Full<Bytes>;

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn with_type(body: impl Into<Bytes>, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json(v: &serde_json::Value) -> Response<Body> {
    let mut body = v.to_string();
    body.push('\n');
    with_type(body, "application/json")
}

/// Whether `a` equals `b`, in time that does not depend on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token a request carries: `Authorization: Bearer T`, else `?token=T`.
fn presented_token(req: &Request<Incoming>) -> Option<String> {
    if let Some(v) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(t) = v.strip_prefix("Bearer ") {
            return Some(t.trim().to_owned());
        }
    }
    let query = req.uri().query()?;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(percent_decode)
}

/// `%XX` escapes and `+` of a query value decoded (invalid escapes kept as they are).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Admin {
    fn config(&self) -> AdminConfig {
        self.spec
            .config
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn token(&self) -> Option<String> {
        self.spec
            .config
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .token
            .clone()
    }

    async fn route(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let open = matches!(path.as_str(), "/livez" | "/readyz");
        if !open {
            if let Some(want) = self.token() {
                let ok = presented_token(&req)
                    .is_some_and(|t| same_secret(t.as_bytes(), want.as_bytes()));
                if !ok {
                    let mut r = text(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized: this admin listener needs its bearer token\n",
                    );
                    r.headers_mut()
                        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    return r;
                }
            }
        }
        let method = req.method().clone();
        let want = if path == "/reload" {
            Method::POST
        } else {
            Method::GET
        };
        if method != want && !(method == Method::HEAD && want == Method::GET) {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{path} takes {want} only\n"),
            );
            if let Ok(v) = HeaderValue::from_str(want.as_str()) {
                r.headers_mut().insert(ALLOW, v);
            }
            return r;
        }
        match path.as_str() {
            "/livez" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                if self.driver.ready() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: no reconciliation with a neighbour has finished yet\n",
                    )
                }
            }
            "/metrics" => match metrics::encode(&self.registry) {
                Ok(body) => with_type(body, metrics::CONTENT_TYPE),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "metrics could not be encoded\n",
                ),
            },
            "/stats" => json(&self.driver.stats().to_json()),
            "/status" => json(&status::status(self)),
            "/herd" => json(&status::herd(self).await),
            "/map" => {
                let body = self
                    .map
                    .get_or_init(|| {
                        let points = self.spec.map.as_ref().map(|m| m()).unwrap_or_default();
                        Bytes::from(status::map_json(&points))
                    })
                    .clone();
                with_type(body, "application/json")
            }
            "/" | "/index.html" => with_type(PAGE, "text/html; charset=utf-8"),
            "/reload" => self.reload(peer),
            _ => text(
                StatusCode::NOT_FOUND,
                format!("not found: {path} (try /, /metrics, /livez, /readyz, /stats)\n"),
            ),
        }
    }

    fn reload(&self, peer: SocketAddr) -> Response<Body> {
        let Some(hook) = &self.spec.reload else {
            return text(
                StatusCode::NOT_IMPLEMENTED,
                "this server cannot reload its config (it was started without a config file)\n",
            );
        };
        let result = hook();
        crate::scope::enter(self.driver.spec().log_index, || match &result {
            Ok(summary) => {
                info!(from = %peer, summary = %summary, "config reloaded (POST /reload)")
            }
            Err(e) => {
                warn!(from = %peer, error = %e, "config reload refused (POST /reload); the running config stays")
            }
        });
        match result {
            Ok(summary) => text(StatusCode::OK, format!("{summary}\n")),
            Err(e) => text(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("reload refused, the running config stays: {e}\n"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
