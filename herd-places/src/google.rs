//! Google Places over hyper: the legacy Nearby Search and the Places API (New).
//!
//! One [`HyperPlaces`] holds one pooled keep-alive client (plain HTTP or TLS through
//! rustls, by the base URL's scheme), a semaphore bounding the calls in flight, and the
//! per-call timeout, which covers the wait for a permit too. Failures become
//! [`PlacesError`]s and, at the port, [`LookupError`]s; the API key is scrubbed from every
//! message and never printed by `Debug`. Failures and answers with a status other than `OK`
//! and `ZERO_RESULTS` are logged as warnings, at most one a second per cause
//! ([`crate::warnings`]).

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use herd_core::{LookupError, PlacesLookup, PlacesQuery};
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::legacy::{new_api_to_legacy, rpc_error_to_legacy, NEW_API_FIELD_MASK};
use crate::warnings::WarnLimiter;
use crate::{BackendKind, PlacesConfig, PlacesError};

/// Google's base URL for the legacy Nearby Search.
pub const LEGACY_BASE_URL: &str = "https://maps.googleapis.com";
/// Google's base URL for the Places API (New).
pub const NEW_BASE_URL: &str = "https://places.googleapis.com";
/// Largest answer body read from the service; a longer one is a bad reply.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// How long an idle pooled connection is kept for reuse.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The name the issue and the server use for the Google adapter.
pub type GooglePlaces = HyperPlaces;

/// Which of Google's two Nearby APIs a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Legacy,
    New,
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A Google Places client implementing [`PlacesLookup`].
pub struct HyperPlaces {
    api: Api,
    base: String,
    key: String,
    key_header: HeaderValue,
    key_in_query: String,
    client: HttpClient,
    permits: Semaphore,
    timeout: Duration,
    /// Warnings of failures, at most one a second per cause.
    warnings: WarnLimiter,
}

// Written by hand so that the key never reaches a log through `{:?}`.
impl fmt::Debug for HyperPlaces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HyperPlaces")
            .field("api", &self.api)
            .field("base", &self.base)
            .field("key", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("available_permits", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl HyperPlaces {
    /// Builds a client for `cfg.kind` (a Google kind) with its key, base URL and limits.
    ///
    /// # Errors
    /// [`PlacesError`] when the kind is not a Google one, the key is missing or unusable, the
    /// base URL is not absolute http(s), `max_concurrent` or `timeout` is zero, or TLS cannot
    /// be initialised.
    pub fn new(cfg: &PlacesConfig) -> Result<Self, PlacesError> {
        let (api, default_base) = match cfg.kind {
            BackendKind::Google => (Api::New, NEW_BASE_URL),
            BackendKind::GoogleLegacy => (Api::Legacy, LEGACY_BASE_URL),
            BackendKind::Offline => {
                return Err(PlacesError::BadConfig("offline is not a Google backend"))
            }
        };
        let key = match cfg.api_key.as_deref() {
            Some(k) if !k.is_empty() => k.to_owned(),
            _ => return Err(PlacesError::MissingKey(cfg.kind.name())),
        };
        let mut key_header = HeaderValue::from_str(&key).map_err(|_| PlacesError::BadKey)?;
        key_header.set_sensitive(true);
        if cfg.max_concurrent == 0 {
            return Err(PlacesError::BadConfig("max_concurrent must be at least 1"));
        }
        if cfg.timeout.is_zero() {
            return Err(PlacesError::BadConfig("timeout must be above zero"));
        }
        let base = check_base(cfg.base_url.as_deref().unwrap_or(default_base))?;
        Ok(Self {
            api,
            base,
            key_in_query: percent_encode(&key),
            key,
            key_header,
            client: pooled_client(cfg.timeout)?,
            permits: Semaphore::new(cfg.max_concurrent),
            timeout: cfg.timeout,
            warnings: WarnLimiter::default(),
        })
    }

    /// The base URL requests go to, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Asks the service, within the timeout; the error is already scrubbed of the key.
    ///
    /// # Errors
    /// [`PlacesError::Timeout`], [`PlacesError::Http`], [`PlacesError::Status`] or
    /// [`PlacesError::Decode`].
    pub async fn fetch(&self, q: &PlacesQuery) -> Result<Value, PlacesError> {
        let call = async {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| PlacesError::Http("client closed".into()))?;
            let (status, body) = self.exchange(q).await?;
            self.decode(status, &body)
        };
        let outcome = match tokio::time::timeout(self.timeout, call).await {
            Ok(outcome) => outcome,
            Err(_) => Err(PlacesError::Timeout),
        };
        outcome.map_err(|e| self.scrub(e))
    }

    /// Sends one request and reads the whole (bounded) answer.
    async fn exchange(&self, q: &PlacesQuery) -> Result<(StatusCode, Bytes), PlacesError> {
        let request = match self.api {
            Api::Legacy => self.legacy_request(q)?,
            Api::New => self.new_request(q)?,
        };
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| PlacesError::Http(error_chain(&e)))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    PlacesError::Decode(format!("answer longer than {MAX_BODY_BYTES} bytes"))
                } else {
                    PlacesError::Http(format!("reading answer: {}", error_chain(e.as_ref())))
                }
            })?
            .to_bytes();
        Ok((status, body))
    }

    fn legacy_request(&self, q: &PlacesQuery) -> Result<Request<Full<Bytes>>, PlacesError> {
        let uri = format!(
            "{}/maps/api/place/nearbysearch/json?location={},{}&radius={}&key={}",
            self.base,
            q.lat,
            q.lon,
            radius_metres(q),
            self.key_in_query
        );
        let uri: Uri = uri
            .parse()
            .map_err(|_| PlacesError::Http("cannot form request URI".into()))?;
        Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header(ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| PlacesError::Http(format!("cannot form request: {e}")))
    }

    fn new_request(&self, q: &PlacesQuery) -> Result<Request<Full<Bytes>>, PlacesError> {
        let body = serde_json::json!({
            "maxResultCount": q.max_items.get(),
            "locationRestriction": {"circle": {
                "center": {"latitude": q.lat, "longitude": q.lon},
                "radius": radius_metres(q),
            }},
        });
        let body = serde_json::to_vec(&body).map_err(|e| PlacesError::Http(e.to_string()))?;
        Request::builder()
            .method(Method::POST)
            .uri(format!("{}/v1/places:searchNearby", self.base))
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .header("X-Goog-Api-Key", self.key_header.clone())
            .header("X-Goog-FieldMask", NEW_API_FIELD_MASK)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| PlacesError::Http(format!("cannot form request: {e}")))
    }

    /// Turns a status and body into the legacy answer, a mapped RPC error, or a failure.
    fn decode(&self, status: StatusCode, body: &[u8]) -> Result<Value, PlacesError> {
        let json: Result<Value, _> = serde_json::from_slice(body);
        if !status.is_success() {
            return match json.ok().as_ref().and_then(rpc_error_to_legacy) {
                Some(mapped) => Ok(mapped),
                None => Err(PlacesError::Status(status.as_u16())),
            };
        }
        let json = json.map_err(|e| PlacesError::Decode(format!("answer is not JSON: {e}")))?;
        match self.api {
            Api::Legacy if json.is_object() => Ok(json),
            Api::Legacy => Err(PlacesError::Decode("answer is not a JSON object".into())),
            Api::New => new_api_to_legacy(&json).map_err(PlacesError::Decode),
        }
    }

    /// `text` with every spelling of the key removed.
    fn scrub_text(&self, text: &str) -> String {
        text.replace(&self.key, "<redacted>")
            .replace(&self.key_in_query, "<redacted>")
    }

    /// Removes every spelling of the key from an error's text.
    fn scrub(&self, e: PlacesError) -> PlacesError {
        match e {
            PlacesError::Http(s) => PlacesError::Http(self.scrub_text(&s)),
            PlacesError::Decode(s) => PlacesError::Decode(self.scrub_text(&s)),
            other => other,
        }
    }
}

impl HyperPlaces {
    /// The backend's name in logs (`google`, `google-legacy`).
    fn backend(&self) -> &'static str {
        match self.api {
            Api::New => BackendKind::Google.name(),
            Api::Legacy => BackendKind::GoogleLegacy.name(),
        }
    }

    /// Warns of a failed call or an answer with a status other than `OK` and `ZERO_RESULTS`
    /// (`REQUEST_DENIED`, `OVER_QUERY_LIMIT`, …), at most once a second per cause.
    fn warn_of(&self, outcome: &Result<Value, PlacesError>) {
        let backend = self.backend();
        match outcome {
            Ok(answer) => {
                let status = answer.get("status").and_then(Value::as_str).unwrap_or("");
                if matches!(status, "OK" | "ZERO_RESULTS") {
                    return;
                }
                let status = if status.is_empty() { "(none)" } else { status };
                if let Some(suppressed) = self.warnings.hit(status) {
                    let said = answer
                        .get("error_message")
                        .and_then(Value::as_str)
                        .map(|m| self.scrub_text(m))
                        .unwrap_or_default();
                    tracing::warn!(
                        backend,
                        status,
                        google_message = %said,
                        suppressed,
                        "places service answered with an error status"
                    );
                }
            }
            Err(e) => {
                let cause = match e {
                    PlacesError::Status(code) => format!("HTTP {code}"),
                    PlacesError::Timeout => "timeout".into(),
                    PlacesError::Http(_) => "transport".into(),
                    PlacesError::Decode(_) => "bad answer".into(),
                    other => other.to_string(),
                };
                if let Some(suppressed) = self.warnings.hit(&cause) {
                    tracing::warn!(backend, cause = %cause, error = %e, suppressed, "places call failed");
                }
            }
        }
    }
}

#[async_trait]
impl PlacesLookup for HyperPlaces {
    async fn nearby(&self, q: &PlacesQuery) -> Result<Value, LookupError> {
        let outcome = self.fetch(q).await;
        self.warn_of(&outcome);
        outcome.map_err(LookupError::from)
    }
}

/// One pooled, keep-alive client speaking plain HTTP or TLS by the URL's scheme.
///
/// TLS is rustls with the `ring` provider, named here rather than taken from the process
/// default (which another crate could set to something else), and the Mozilla root set
/// compiled in (`webpki-roots`): nothing is read from the system, so a machine without a CA
/// certificates package still verifies Google. HTTP/1.1 only, as before (no ALPN `h2`).
fn pooled_client(connect_timeout: Duration) -> Result<HttpClient, PlacesError> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(provider)
        .map_err(|e| PlacesError::Tls(e.to_string()))?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let https = tls.https_or_http().enable_http1().wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(https))
}

/// Checks that `url` is an absolute http(s) URL without query and drops a trailing `/`.
fn check_base(url: &str) -> Result<String, PlacesError> {
    let bad = |reason: &str| PlacesError::BadBaseUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("scheme must be http or https")),
    }
    if uri.authority().is_none() {
        return Err(bad("no host"));
    }
    if uri.query().is_some() {
        return Err(bad("must not carry a query"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// The radius in metres, rounded to the millimetre so that `1.005` km is sent as `1005`
/// rather than `1004.9999999999999`.
fn radius_metres(q: &PlacesQuery) -> f64 {
    (q.radius.metres() * 1000.0).round() / 1000.0
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An error and its sources, joined by `: `.
fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_must_be_absolute_http() {
        assert_eq!(
            check_base("http://127.0.0.1:80/").expect("ok"),
            "http://127.0.0.1:80"
        );
        assert_eq!(
            check_base("https://x.example/p").expect("ok"),
            "https://x.example/p"
        );
        for bad in ["ftp://x", "127.0.0.1:80", "/path", "http://x/?a=b", ""] {
            assert!(check_base(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_are_percent_encoded_in_queries() {
        assert_eq!(percent_encode("AIza-_.~9"), "AIza-_.~9");
        assert_eq!(percent_encode("a b&c=d"), "a%20b%26c%3Dd");
    }
}
