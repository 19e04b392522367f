//! The Places lookup port: the question a WHATSAT asks, the service that answers it, and why
//! an answer may be missing.
//!
//! Production adapters live in `herd-places` (and an offline one in `herd-server`); test
//! doubles in `crate::testing` (the `testing` feature).

use async_trait::async_trait;
use thiserror::Error;

use crate::types::{MaxItems, RadiusKm};

/// A "what is near" question for a Places service.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlacesQuery {
    /// Latitude in degrees.
    pub lat: f64,
    /// Longitude in degrees.
    pub lon: f64,
    /// Search radius.
    pub radius: RadiusKm,
    /// Most results wanted (the core cuts longer answers).
    pub max_items: MaxItems,
}

/// Why a Places lookup failed; becomes the `UNKNOWN_ERROR` JSON of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LookupError {
    /// The service could not be reached (connect, TLS, I/O).
    #[error("places service unavailable: {0}")]
    Unavailable(String),
    /// No answer within the configured timeout.
    #[error("places service timed out")]
    Timeout,
    /// The service answered with an HTTP error status.
    #[error("places service answered HTTP {0}")]
    Status(u16),
    /// The answer could not be understood (not JSON, wrong shape).
    #[error("places service answer unreadable: {0}")]
    BadReply(String),
}

/// A Places service. Answers are in Google's legacy Nearby Search shape
/// (`{"html_attributions": [], "results": [...], "status": "OK"}`); a non-OK status that the
/// service itself reports (`REQUEST_DENIED`, …) is an `Ok` answer carrying that status.
#[async_trait]
pub trait PlacesLookup: Send + Sync {
    /// Looks up the places near `q`.
    ///
    /// # Errors
    /// [`LookupError`] when there is no usable answer.
    async fn nearby(&self, q: &PlacesQuery) -> Result<serde_json::Value, LookupError>;
}
