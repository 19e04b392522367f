//! An answer cache in front of any [`PlacesLookup`].
//!
//! Answers are keyed by the exact query point and radius; the inner service is always asked
//! for the most items the protocol allows ([`MaxItems::MAX`]) and each caller gets the answer
//! cut to its own `max_items`, so WHATSATs about one client with different counts share one
//! upstream call. Concurrent lookups for one key are collapsed (single flight): the first
//! caller asks, the others wait for its result. Errors are handed to every waiting caller
//! but never stored. Entries expire after a TTL; the number of stored answers is bounded,
//! the oldest going first.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use herd_core::protocol::truncate_results;
use herd_core::{LookupError, MaxItems, PlacesLookup, PlacesQuery};
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

/// Limits of a [`CachedPlaces`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// How long a stored answer is served.
    pub ttl: Duration,
    /// Most answers stored at once; 0 stores nothing (single flight still applies).
    pub entries: usize,
    /// Longest a caller waits for another caller's lookup, retries included; `None` leaves
    /// the bound to the inner lookup. [`crate::build`] sets the Places timeout here.
    pub timeout: Option<Duration>,
}

/// The exact query point and radius, as bit patterns (`-0.0` folded into `0.0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    lat: u64,
    lon: u64,
    radius: u64,
}

impl Key {
    fn of(q: &PlacesQuery) -> Self {
        let bits = |v: f64| {
            if v == 0.0 {
                0.0f64.to_bits()
            } else {
                v.to_bits()
            }
        };
        Self {
            lat: bits(q.lat),
            lon: bits(q.lon),
            radius: bits(q.radius.km()),
        }
    }
}

type Shared = Option<Result<Value, LookupError>>;

/// Stands for an unbounded TTL (about 30 years), which the clock cannot represent.
const FOREVER: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

enum Slot {
    /// A stored answer, served until `expires`.
    Ready {
        value: Value,
        expires: Instant,
        gen: u64,
    },
    /// A lookup in flight; its result arrives on the channel.
    Pending {
        rx: watch::Receiver<Shared>,
        gen: u64,
    },
}

#[derive(Default)]
struct State {
    slots: HashMap<Key, Slot>,
    /// Stored answers in insertion order (oldest first), for eviction; may hold stale pairs.
    order: VecDeque<(Key, u64)>,
    next_gen: u64,
}

/// A [`PlacesLookup`] that caches the answers of `P` and collapses concurrent identical
/// lookups into one call of `P`.
pub struct CachedPlaces<P> {
    inner: P,
    cfg: CacheConfig,
    state: Mutex<State>,
}

impl<P: fmt::Debug> fmt::Debug for CachedPlaces<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedPlaces")
            .field("inner", &self.inner)
            .field("cfg", &self.cfg)
            .field("stored", &self.len())
            .finish()
    }
}

/// What a caller does after looking at the slot of its key.
enum Role {
    Hit(Value),
    Wait(watch::Receiver<Shared>),
    Lead(watch::Sender<Shared>, u64),
}

impl<P> CachedPlaces<P> {
    /// Wraps `inner` with a cache limited by `cfg`.
    pub fn new(inner: P, cfg: CacheConfig) -> Self {
        Self {
            inner,
            cfg,
            state: Mutex::new(State::default()),
        }
    }

    /// The wrapped lookup.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// How many answers are stored (expired ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.lock()
            .slots
            .values()
            .filter(|s| matches!(s, Slot::Ready { .. }))
            .count()
    }

    /// Whether no answer is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map inconsistent: recover it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn role(&self, key: Key) -> Role {
        let mut st = self.lock();
        match st.slots.get(&key) {
            Some(Slot::Ready { value, expires, .. }) if *expires > Instant::now() => {
                return Role::Hit(value.clone());
            }
            Some(Slot::Pending { rx, .. }) => return Role::Wait(rx.clone()),
            Some(Slot::Ready { .. }) | None => {}
        }
        let gen = st.next_gen;
        st.next_gen += 1;
        let (tx, rx) = watch::channel(None);
        st.slots.insert(key, Slot::Pending { rx, gen });
        Role::Lead(tx, gen)
    }
}

impl<P: PlacesLookup> CachedPlaces<P> {
    /// Asks the inner service as the leader of `key` and shares the result.
    async fn lead(
        &self,
        key: Key,
        q: &PlacesQuery,
        tx: watch::Sender<Shared>,
        gen: u64,
    ) -> Result<Value, LookupError> {
        let mut guard = LeaderGuard {
            cache: self,
            key,
            gen,
            armed: true,
        };
        let wide = PlacesQuery {
            max_items: widest(),
            ..*q
        };
        let result = self.inner.nearby(&wide).await;
        {
            let mut st = self.lock();
            match &result {
                Ok(value) if self.cfg.entries > 0 => self.store(&mut st, key, value.clone()),
                Ok(_) | Err(_) => {
                    st.slots.remove(&key);
                }
            }
        }
        guard.armed = false;
        // Waiters may all have gone; nobody listening is fine.
        let _ = tx.send(Some(result.clone()));
        result
    }

    fn store(&self, st: &mut State, key: Key, value: Value) {
        let gen = st.next_gen;
        st.next_gen += 1;
        let now = Instant::now();
        // A TTL too large to add to the clock means "until evicted".
        let expires = now
            .checked_add(self.cfg.ttl)
            .unwrap_or_else(|| now + FOREVER);
        st.slots.insert(
            key,
            Slot::Ready {
                value,
                expires,
                gen,
            },
        );
        st.order.push_back((key, gen));
        while st.slots.len() > self.cfg.entries {
            let Some((old, old_gen)) = st.order.pop_front() else {
                break;
            };
            if matches!(st.slots.get(&old), Some(Slot::Ready { gen: g, .. }) if *g == old_gen) {
                st.slots.remove(&old);
            }
        }
        if st.order.len() > 2 * self.cfg.entries + 16 {
            let State { slots, order, .. } = st;
            order
                .retain(|(k, g)| matches!(slots.get(k), Some(Slot::Ready { gen, .. }) if gen == g));
        }
    }
}

/// Removes a leader's pending slot when its future is dropped before finishing, so that
/// waiters retry instead of waiting for an answer that never comes.
struct LeaderGuard<'a, P: PlacesLookup> {
    cache: &'a CachedPlaces<P>,
    key: Key,
    gen: u64,
    armed: bool,
}

impl<P: PlacesLookup> Drop for LeaderGuard<'_, P> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut st = self.cache.lock();
        if matches!(st.slots.get(&self.key), Some(Slot::Pending { gen, .. }) if *gen == self.gen) {
            st.slots.remove(&self.key);
        }
    }
}

fn widest() -> MaxItems {
    MaxItems::new(MaxItems::MAX).unwrap_or_else(|_| unreachable!("MaxItems::MAX is in range"))
}

fn cut(mut value: Value, max: MaxItems) -> Value {
    truncate_results(&mut value, max);
    value
}

#[async_trait]
impl<P: PlacesLookup> PlacesLookup for CachedPlaces<P> {
    async fn nearby(&self, q: &PlacesQuery) -> Result<Value, LookupError> {
        let key = Key::of(q);
        let deadline = self.cfg.timeout.and_then(|t| Instant::now().checked_add(t));
        // A first-time leader's call is bounded by the inner lookup itself; only time spent
        // waiting on others, and a lead taken over after such a wait, count against `deadline`.
        let mut waited = false;
        loop {
            match self.role(key) {
                Role::Hit(value) => return Ok(cut(value, q.max_items)),
                Role::Lead(tx, gen) => {
                    let lead = self.lead(key, q, tx, gen);
                    let result = if waited {
                        within(deadline, lead).await?
                    } else {
                        lead.await
                    };
                    return result.map(|v| cut(v, q.max_items));
                }
                Role::Wait(mut rx) => {
                    waited = true;
                    // An error means the leader was dropped mid-call: its slot is gone, retry.
                    let shared = within(deadline, async {
                        rx.wait_for(Option::is_some)
                            .await
                            .ok()
                            .and_then(|v| v.clone())
                    })
                    .await?;
                    if let Some(result) = shared {
                        return result.map(|v| cut(v, q.max_items));
                    }
                }
            }
        }
    }
}

/// Runs `f` until `deadline`, if there is one.
async fn within<F: std::future::Future>(
    deadline: Option<Instant>,
    f: F,
) -> Result<F::Output, LookupError> {
    match deadline {
        None => Ok(f.await),
        Some(at) => tokio::time::timeout_at(at, f)
            .await
            .map_err(|_| LookupError::Timeout),
    }
}
