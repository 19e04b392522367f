//! Which Places backend a server uses, and building it.
//!
//! The backend is chosen from the command line and the environment ([`choose`]). The offline
//! gazetteer takes tens of milliseconds to decode, so it is built on a background thread
//! ([`Background`]): the servers bind and accept at once while it decodes, and a WHATSAT that
//! arrives before it is ready waits for it (within the Places timeout, like any lookup).

use std::str::FromStr;
use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use herd_core::{LookupError, PlacesLookup, PlacesQuery};
use herd_places::{BackendKind, PlacesConfig};
use tokio::sync::watch;

use crate::config::HerdConfig;

/// The Places settings of `config` with the backend asked for: `kind` (`offline`, `google`,
/// `google-legacy`; default: `google` when `api_key` is given, else `offline`).
///
/// # Errors
/// An unknown backend name.
pub fn choose(
    config: &HerdConfig,
    kind: Option<&str>,
    base_url: Option<String>,
    api_key: Option<String>,
) -> anyhow::Result<PlacesConfig> {
    let api_key = api_key.filter(|k| !k.is_empty());
    let kind = match kind {
        Some(p) => BackendKind::from_str(p)?,
        None if api_key.is_some() => BackendKind::Google,
        None => BackendKind::Offline,
    };
    Ok(PlacesConfig {
        kind,
        base_url,
        api_key,
        timeout: config.limits.places_timeout,
        max_concurrent: config.places.max_concurrent,
        cache_ttl: config.places.cache_ttl,
        cache_entries: config.places.cache_entries,
    })
}

/// Builds the backend `pc` names: the offline one in the background, the others at once.
///
/// # Errors
/// A Google backend that cannot be set up (no key, a bad URL).
pub fn build(pc: PlacesConfig) -> anyhow::Result<Arc<dyn PlacesLookup>> {
    if pc.kind == BackendKind::Offline {
        return Ok(Background::start(move || {
            herd_places::build(pc).map_err(|e| format!("cannot set up the places backend: {e}"))
        }));
    }
    herd_places::build(pc).context("cannot set up the places backend")
}

/// What the background build produced: the backend, or why it could not be built.
type Built = Option<Result<Arc<dyn PlacesLookup>, String>>;

/// A [`PlacesLookup`] whose backend is still being built by a background thread.
pub struct Background {
    ready: watch::Receiver<Built>,
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background")
            .field("ready", &self.ready.borrow().is_some())
            .finish()
    }
}

impl Background {
    /// Starts `build` on its own thread (or runs it here if no thread can be started).
    pub fn start<F>(build: F) -> Arc<Self>
    where
        F: FnOnce() -> Result<Arc<dyn PlacesLookup>, String> + Send + 'static,
    {
        let (tx, ready) = watch::channel(None);
        let tx = Arc::new(tx);
        let slot = Arc::new(std::sync::Mutex::new(Some(build)));
        let (tx2, slot2) = (tx.clone(), slot.clone());
        let spawned = std::thread::Builder::new()
            .name("places-load".into())
            .spawn(move || run_once(&slot2, &tx2));
        if spawned.is_err() {
            run_once(&slot, &tx);
        }
        Arc::new(Self { ready })
    }
}

type Slot<F> = std::sync::Mutex<Option<F>>;

fn run_once<F>(slot: &Slot<F>, tx: &watch::Sender<Built>)
where
    F: FnOnce() -> Result<Arc<dyn PlacesLookup>, String>,
{
    let build = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(build) = build {
        let built = build();
        if let Err(e) = &built {
            tracing::error!(error = %e, "places backend could not be built; WHATSAT answers UNKNOWN_ERROR");
        }
        tx.send_replace(Some(built));
    }
}

#[async_trait]
impl PlacesLookup for Background {
    async fn nearby(&self, q: &PlacesQuery) -> Result<serde_json::Value, LookupError> {
        let mut rx = self.ready.clone();
        let backend = match rx.wait_for(Option::is_some).await {
            Ok(built) => match built.as_ref() {
                Some(Ok(b)) => b.clone(),
                Some(Err(e)) => return Err(LookupError::Unavailable(e.clone())),
                None => return Err(LookupError::Unavailable("places backend not built".into())),
            },
            Err(_) => {
                return Err(LookupError::Unavailable(
                    "places backend build thread vanished".into(),
                ))
            }
        };
        backend.nearby(q).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_core::testing::StaticPlaces;
    use herd_core::{MaxItems, RadiusKm};

    fn query() -> PlacesQuery {
        PlacesQuery {
            lat: 1.0,
            lon: 2.0,
            radius: RadiusKm::parse(b"1").unwrap(),
            max_items: MaxItems::parse(b"1").unwrap(),
        }
    }

    #[tokio::test]
    async fn lookups_wait_for_the_backend_then_use_it() {
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let places = Background::start(move || {
            go_rx.recv().map_err(|e| e.to_string())?;
            let b: Arc<dyn PlacesLookup> =
                Arc::new(StaticPlaces::new(serde_json::json!({"status": "OK"})));
            Ok(b)
        });
        let p2 = places.clone();
        let lookup = tokio::spawn(async move { p2.nearby(&query()).await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!lookup.is_finished());
        go_tx.send(()).unwrap();
        let v = lookup.await.unwrap().unwrap();
        assert_eq!(v, serde_json::json!({"status": "OK"}));
    }

    #[tokio::test]
    async fn a_failed_build_answers_unavailable() {
        let places = Background::start(|| Err("corrupt gazetteer".to_string()));
        assert_eq!(
            places.nearby(&query()).await,
            Err(LookupError::Unavailable("corrupt gazetteer".into()))
        );
    }
}
