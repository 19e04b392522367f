//! herd-places: the adapters behind herd-core's [`PlacesLookup`] port.
//!
//! Layout: [`google`] talks to Google Places (the legacy Nearby Search and the Places API
//! (New)) over one pooled hyper client; [`legacy`] holds the pure JSON conversions between the
//! New API and the legacy shape the protocol passes on; [`cache`] wraps any lookup with a TTL
//! and size bounded answer cache that collapses concurrent identical lookups into one upstream
//! call; [`offline`] answers from a GeoNames gazetteer embedded in the binary, the default when
//! no API key is configured. [`build`] turns a [`PlacesConfig`] into the lookup the server uses.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![deny(rust_2018_idioms)]

pub mod cache;
pub mod google;
pub mod legacy;
pub mod offline;
pub mod warnings;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use herd_core::{LookupError, PlacesLookup};
use thiserror::Error;

pub use cache::CachedPlaces;
pub use google::{GooglePlaces, HyperPlaces};
pub use offline::OfflinePlaces;

/// Default per-call timeout of a Places lookup.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound on concurrent upstream calls.
pub const DEFAULT_MAX_CONCURRENT: usize = 64;
/// Default time an answer stays in the cache.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);
/// Default number of answers the cache holds.
pub const DEFAULT_CACHE_ENTRIES: usize = 10_000;

/// Which Places service answers WHATSAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// The embedded GeoNames gazetteer; needs no key and no network.
    Offline,
    /// Google Places API (New): `POST /v1/places:searchNearby`.
    Google,
    /// Google's legacy Nearby Search: `GET /maps/api/place/nearbysearch/json`.
    GoogleLegacy,
}

impl BackendKind {
    /// The name used on the command line and in logs.
    pub fn name(&self) -> &'static str {
        match self {
            BackendKind::Offline => "offline",
            BackendKind::Google => "google",
            BackendKind::GoogleLegacy => "google-legacy",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = PlacesError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "offline" => Ok(BackendKind::Offline),
            "google" => Ok(BackendKind::Google),
            "google-legacy" => Ok(BackendKind::GoogleLegacy),
            other => Err(PlacesError::UnknownBackend(other.to_owned())),
        }
    }
}

/// Everything needed to build the Places lookup of one server process.
#[derive(Clone)]
pub struct PlacesConfig {
    /// Which service answers.
    pub kind: BackendKind,
    /// Base URL of the service (`http://127.0.0.1:PORT` in tests); `None` = Google's own.
    pub base_url: Option<String>,
    /// The API key; required for the Google kinds, never logged.
    pub api_key: Option<String>,
    /// Longest a lookup may take, waiting for a free upstream slot included.
    pub timeout: Duration,
    /// Most upstream calls in flight at once.
    pub max_concurrent: usize,
    /// How long an answer stays in the cache.
    pub cache_ttl: Duration,
    /// Most answers the cache holds; 0 turns the cache off.
    pub cache_entries: usize,
}

impl Default for PlacesConfig {
    fn default() -> Self {
        Self {
            kind: BackendKind::Offline,
            base_url: None,
            api_key: None,
            timeout: DEFAULT_TIMEOUT,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            cache_ttl: DEFAULT_CACHE_TTL,
            cache_entries: DEFAULT_CACHE_ENTRIES,
        }
    }
}

// Written by hand so that the key never reaches a log through `{:?}`.
impl fmt::Debug for PlacesConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlacesConfig")
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("max_concurrent", &self.max_concurrent)
            .field("cache_ttl", &self.cache_ttl)
            .field("cache_entries", &self.cache_entries)
            .finish()
    }
}

/// Why a Places adapter could not be built or a call failed inside the adapter.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlacesError {
    /// The backend name is not one of `offline`, `google`, `google-legacy`.
    #[error("unknown places backend {0:?} (expected offline, google or google-legacy)")]
    UnknownBackend(String),
    /// A Google backend was asked for without an API key.
    #[error("places backend {0} needs an API key (PLACES_API_KEY)")]
    MissingKey(&'static str),
    /// The API key holds characters that cannot travel in an HTTP header.
    #[error("places API key is not a valid header value")]
    BadKey,
    /// The base URL is not an absolute http or https URL.
    #[error("bad places base URL {url:?}: {reason}")]
    BadBaseUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A limit in the configuration is out of range.
    #[error("bad places configuration: {0}")]
    BadConfig(&'static str),
    /// The TLS context could not be created.
    #[error("cannot initialise TLS: {0}")]
    Tls(String),
    /// The embedded gazetteer could not be decoded.
    #[error("offline gazetteer unreadable: {0}")]
    Data(String),
    /// The service could not be reached (connect, TLS, I/O).
    #[error("{0}")]
    Http(String),
    /// The service answered with an HTTP error status and no readable error body.
    #[error("HTTP {0}")]
    Status(u16),
    /// The answer could not be understood.
    #[error("{0}")]
    Decode(String),
    /// No answer within the configured timeout.
    #[error("timed out")]
    Timeout,
}

impl From<PlacesError> for LookupError {
    fn from(e: PlacesError) -> Self {
        match e {
            PlacesError::Timeout => LookupError::Timeout,
            PlacesError::Status(code) => LookupError::Status(code),
            PlacesError::Decode(msg) => LookupError::BadReply(msg),
            PlacesError::Http(msg) => LookupError::Unavailable(msg),
            other @ (PlacesError::UnknownBackend(_)
            | PlacesError::MissingKey(_)
            | PlacesError::BadKey
            | PlacesError::BadBaseUrl { .. }
            | PlacesError::BadConfig(_)
            | PlacesError::Tls(_)
            | PlacesError::Data(_)) => LookupError::Unavailable(other.to_string()),
        }
    }
}

/// Builds the Places lookup described by `cfg`: the offline gazetteer (shared by every build
/// in the process, decoded on the first; not cached, as a query costs microseconds), or a
/// Google client wrapped in the answer cache (unless `cache_entries` is 0).
///
/// # Errors
/// [`PlacesError`] when a Google kind has no key, the base URL or a limit is bad, TLS cannot
/// be initialised, or the embedded gazetteer cannot be decoded.
pub fn build(cfg: PlacesConfig) -> Result<Arc<dyn PlacesLookup>, PlacesError> {
    match cfg.kind {
        BackendKind::Offline => Ok(OfflinePlaces::shared()?),
        BackendKind::Google | BackendKind::GoogleLegacy => {
            let client = HyperPlaces::new(&cfg)?;
            if cfg.cache_entries == 0 {
                Ok(Arc::new(client))
            } else {
                let cache = cache::CacheConfig {
                    ttl: cfg.cache_ttl,
                    entries: cfg.cache_entries,
                    timeout: Some(cfg.timeout),
                };
                Ok(Arc::new(CachedPlaces::new(client, cache)))
            }
        }
    }
}
