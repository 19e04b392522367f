//! The answer cache in front of the Google client, against the loopback stand-in: single
//! flight, TTL expiry, size bound, errors not stored, the off switch.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Mode, StandIn, KEY};
use futures_util::future::join_all;
use herd_core::{LookupError, MaxItems, PlacesLookup, PlacesQuery, RadiusKm};
use herd_places::cache::CacheConfig;
use herd_places::{BackendKind, CachedPlaces, HyperPlaces, PlacesConfig};
use serde_json::Value;

const GUARD: Duration = Duration::from_secs(20);

fn at(lat: f64, km: f64, max: u8) -> PlacesQuery {
    PlacesQuery {
        lat,
        lon: -118.445127,
        radius: RadiusKm::from_km(km).expect("radius in range"),
        max_items: MaxItems::new(max).expect("count in range"),
    }
}

fn config(base: &str) -> PlacesConfig {
    PlacesConfig {
        kind: BackendKind::GoogleLegacy,
        base_url: Some(base.to_owned()),
        api_key: Some(KEY.to_owned()),
        ..PlacesConfig::default()
    }
}

fn cached(google: &StandIn, ttl: Duration, entries: usize) -> Arc<CachedPlaces<HyperPlaces>> {
    let client = HyperPlaces::new(&config(&google.base())).expect("client");
    Arc::new(CachedPlaces::new(
        client,
        CacheConfig {
            ttl,
            entries,
            timeout: None,
        },
    ))
}

async fn lookup(places: &dyn PlacesLookup, q: &PlacesQuery) -> Result<Value, LookupError> {
    tokio::time::timeout(GUARD, places.nearby(q))
        .await
        .expect("lookup ends within the guard")
}

fn result_count(v: &Value) -> usize {
    v["results"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn concurrent_lookups_for_one_point_make_one_upstream_call() {
    // A slow answer keeps the first call in flight while the others arrive.
    let google = StandIn::start(Mode::Slow(Duration::from_millis(300))).await;
    let places = cached(&google, Duration::from_secs(60), 100);
    let tasks = (0..50u8).map(|i| {
        let places = Arc::clone(&places);
        tokio::spawn(async move { lookup(places.as_ref(), &at(34.06893, 10.0, i % 20 + 1)).await })
    });
    let answers: Vec<Value> = join_all(tasks)
        .await
        .into_iter()
        .map(|joined| joined.expect("task ran").expect("answer"))
        .collect();
    assert_eq!(google.requests(), 1);
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer["status"], "OK");
        // The sample holds 3 results; each caller gets at most its own max_items.
        assert_eq!(result_count(answer), (i % 20 + 1).min(3), "caller {i}");
    }
    assert_eq!(places.len(), 1);
}

#[tokio::test]
async fn a_stored_answer_is_served_until_its_ttl_ends() {
    let google = StandIn::start(Mode::Normal).await;
    // Generous enough that a loaded machine never lets it lapse between the first two calls.
    let places = cached(&google, Duration::from_secs(3), 100);
    let first = lookup(places.as_ref(), &at(34.0, 10.0, 20))
        .await
        .expect("answer");
    let second = lookup(places.as_ref(), &at(34.0, 10.0, 20))
        .await
        .expect("answer");
    assert_eq!(first, second);
    assert_eq!(google.requests(), 1);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    lookup(places.as_ref(), &at(34.0, 10.0, 20))
        .await
        .expect("answer");
    assert_eq!(google.requests(), 2);
}

#[tokio::test]
async fn another_point_or_radius_is_another_entry() {
    let google = StandIn::start(Mode::Normal).await;
    let places = cached(&google, Duration::from_secs(60), 100);
    for q in [
        at(34.0, 10.0, 5),
        at(34.0, 10.0, 3),
        at(34.5, 10.0, 5),
        at(34.0, 11.0, 5),
        at(34.0, 10.0, 20),
    ] {
        lookup(places.as_ref(), &q).await.expect("answer");
    }
    assert_eq!(google.requests(), 3);
    assert_eq!(places.len(), 3);
}

#[tokio::test]
async fn the_number_of_stored_answers_is_bounded_oldest_out_first() {
    let google = StandIn::start(Mode::Normal).await;
    let places = cached(&google, Duration::from_secs(60), 2);
    for lat in [1.0, 2.0, 3.0] {
        lookup(places.as_ref(), &at(lat, 10.0, 5))
            .await
            .expect("answer");
    }
    assert_eq!(places.len(), 2);
    lookup(places.as_ref(), &at(3.0, 10.0, 5))
        .await
        .expect("answer");
    assert_eq!(google.requests(), 3, "the newest is still stored");
    lookup(places.as_ref(), &at(1.0, 10.0, 5))
        .await
        .expect("answer");
    assert_eq!(google.requests(), 4, "the oldest was dropped");
    assert_eq!(places.len(), 2);
}

#[tokio::test]
async fn errors_are_shared_but_not_stored() {
    let google = StandIn::start(Mode::FailFirst).await;
    let places = cached(&google, Duration::from_secs(60), 100);
    assert_eq!(
        lookup(places.as_ref(), &at(34.0, 10.0, 5)).await,
        Err(LookupError::Status(500))
    );
    assert!(places.is_empty());
    let answer = lookup(places.as_ref(), &at(34.0, 10.0, 5))
        .await
        .expect("second call answers");
    assert_eq!(answer["status"], "OK");
    assert_eq!(google.requests(), 2);
}

#[tokio::test]
async fn concurrent_waiters_share_the_leaders_error() {
    let google = StandIn::start(Mode::Slow(Duration::from_secs(60))).await;
    let client = HyperPlaces::new(&PlacesConfig {
        timeout: Duration::from_secs(2),
        ..config(&google.base())
    })
    .expect("client");
    let places = CachedPlaces::new(
        client,
        CacheConfig {
            ttl: Duration::from_secs(60),
            entries: 100,
            timeout: None,
        },
    );
    let q = at(34.0, 10.0, 5);
    let answers = join_all((0..10).map(|_| lookup(&places, &q))).await;
    assert!(
        answers.iter().all(|a| *a == Err(LookupError::Timeout)),
        "{answers:?}"
    );
    assert_eq!(google.requests(), 1);
    assert!(places.is_empty());
}

#[tokio::test]
async fn a_cancelled_leader_does_not_strand_its_waiters() {
    let google = StandIn::start(Mode::Slow(Duration::from_millis(400))).await;
    let places = cached(&google, Duration::from_secs(60), 100);
    let leader = {
        let places = Arc::clone(&places);
        tokio::spawn(async move { lookup(places.as_ref(), &at(34.0, 10.0, 5)).await })
    };
    // Bounded wait until the leader's request is at the service.
    for _ in 0..200 {
        if google.requests() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(google.requests(), 1);
    let waiter = {
        let places = Arc::clone(&places);
        tokio::spawn(async move { lookup(places.as_ref(), &at(34.0, 10.0, 5)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    leader.abort();
    let answer = waiter.await.expect("waiter ran").expect("waiter answered");
    assert_eq!(answer["status"], "OK");
    assert_eq!(places.len(), 1);
}

#[tokio::test]
async fn the_off_switch_sends_every_lookup_upstream() {
    let google = StandIn::start(Mode::Normal).await;
    let places = herd_places::build(PlacesConfig {
        cache_entries: 0,
        ..config(&google.base())
    })
    .expect("builds");
    for _ in 0..3 {
        lookup(places.as_ref(), &at(34.0, 10.0, 5))
            .await
            .expect("answer");
    }
    assert_eq!(google.requests(), 3);
    let cached = herd_places::build(config(&google.base())).expect("builds");
    for _ in 0..3 {
        lookup(cached.as_ref(), &at(34.0, 10.0, 5))
            .await
            .expect("answer");
    }
    assert_eq!(google.requests(), 4);
}

#[tokio::test]
async fn a_waiter_whose_leader_is_cancelled_still_keeps_its_own_deadline() {
    let google = StandIn::start(Mode::Slow(Duration::from_secs(60))).await;
    // The client alone would wait 30 s, longer than the test's guard; the cache's 1 s rules.
    let client = HyperPlaces::new(&PlacesConfig {
        timeout: Duration::from_secs(30),
        ..config(&google.base())
    })
    .expect("client");
    let cache = CacheConfig {
        ttl: Duration::from_secs(60),
        entries: 100,
        timeout: Some(Duration::from_secs(1)),
    };
    let places = Arc::new(CachedPlaces::new(client, cache));
    let leader = {
        let places = Arc::clone(&places);
        tokio::spawn(async move { places.nearby(&at(34.0, 10.0, 5)).await })
    };
    for _ in 0..200 {
        if google.requests() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(google.requests(), 1);
    let waiter = {
        let places = Arc::clone(&places);
        tokio::spawn(async move { lookup(places.as_ref(), &at(34.0, 10.0, 5)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    leader.abort();
    let answer = waiter.await.expect("waiter ran");
    assert_eq!(answer, Err(LookupError::Timeout));
}

#[tokio::test]
async fn huge_ttl_and_timeout_mean_unbounded_not_a_panic() {
    let google = StandIn::start(Mode::Normal).await;
    let client = HyperPlaces::new(&config(&google.base())).expect("client");
    let cache = CacheConfig {
        ttl: Duration::MAX,
        entries: 10,
        timeout: Some(Duration::MAX),
    };
    let places = CachedPlaces::new(client, cache);
    for _ in 0..2 {
        let answer = lookup(&places, &at(34.0, 10.0, 5)).await.expect("answer");
        assert_eq!(answer["status"], "OK");
    }
    assert_eq!(google.requests(), 1);
}
