//! The Google adapters against a real hyper server on loopback standing in for Google.

mod common;

use std::time::Duration;

use common::{Mode, StandIn, FIELD_MASK, KEY, LEGACY_SAMPLE};
use futures_util::future::join_all;
use herd_core::{LookupError, MaxItems, PlacesLookup, PlacesQuery, RadiusKm};
use herd_places::{BackendKind, HyperPlaces, PlacesConfig, PlacesError};
use hyper::StatusCode;
use serde_json::{json, Value};

/// Longest any single test step may take before the test fails instead of hanging.
const GUARD: Duration = Duration::from_secs(20);

fn ucla(km: f64, max: u8) -> PlacesQuery {
    PlacesQuery {
        lat: 34.06893,
        lon: -118.445127,
        radius: RadiusKm::from_km(km).expect("radius in range"),
        max_items: MaxItems::new(max).expect("count in range"),
    }
}

fn config(kind: BackendKind, base: &str, key: &str) -> PlacesConfig {
    PlacesConfig {
        kind,
        base_url: Some(base.to_owned()),
        api_key: Some(key.to_owned()),
        timeout: Duration::from_secs(5),
        ..PlacesConfig::default()
    }
}

fn client(kind: BackendKind, stand_in: &StandIn) -> HyperPlaces {
    HyperPlaces::new(&config(kind, &stand_in.base(), KEY)).expect("client builds")
}

async fn lookup(places: &HyperPlaces, q: &PlacesQuery) -> Result<Value, LookupError> {
    tokio::time::timeout(GUARD, places.nearby(q))
        .await
        .expect("lookup ends within the guard")
}

fn assert_key_absent(text: &str) {
    assert!(!text.contains(KEY), "key leaked into {text:?}");
    assert!(
        !text.contains("7f3a9c"),
        "part of the key leaked into {text:?}"
    );
}

#[tokio::test]
async fn legacy_request_carries_location_radius_and_key_and_the_answer_passes_on() {
    let google = StandIn::start(Mode::Normal).await;
    let answer = lookup(&client(BackendKind::GoogleLegacy, &google), &ucla(10.0, 5)).await;
    let expected: Value = serde_json::from_str(LEGACY_SAMPLE).expect("sample is JSON");
    assert_eq!(answer, Ok(expected));
    let seen = google.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(
        seen[0].uri,
        format!("/maps/api/place/nearbysearch/json?location=34.06893,-118.445127&radius=10000&key={KEY}")
    );
    assert_eq!(
        seen[0].header("host"),
        Some(google.addr.to_string().as_str())
    );
    assert!(seen[0].body.is_empty());
}

#[tokio::test]
async fn legacy_radius_in_metres_keeps_fractions() {
    let google = StandIn::start(Mode::Normal).await;
    let q = PlacesQuery {
        lat: -33.5,
        lon: 151.25,
        ..ucla(0.0015, 1)
    };
    lookup(&client(BackendKind::GoogleLegacy, &google), &q)
        .await
        .expect("answer");
    let uri = &google.seen()[0].uri;
    assert!(
        uri.ends_with(&format!("?location=-33.5,151.25&radius=1.5&key={KEY}")),
        "{uri}"
    );
}

#[tokio::test]
async fn radii_are_sent_in_whole_millimetres() {
    let google = StandIn::start(Mode::Normal).await;
    let radius = RadiusKm::parse(b"1.005").expect("radius");
    assert_ne!(radius.metres(), 1005.0, "the float product is not exact");
    let q = PlacesQuery {
        radius,
        ..ucla(1.0, 1)
    };
    lookup(&client(BackendKind::GoogleLegacy, &google), &q)
        .await
        .expect("answer");
    lookup(&client(BackendKind::Google, &google), &q)
        .await
        .expect("answer");
    let seen = google.seen();
    assert!(seen[0].uri.contains("&radius=1005&"), "{}", seen[0].uri);
    let body: Value = serde_json::from_slice(&seen[1].body).expect("body is JSON");
    assert_eq!(
        body["locationRestriction"]["circle"]["radius"],
        json!(1005.0)
    );
}

#[tokio::test]
async fn new_api_request_has_key_field_mask_and_body() {
    let google = StandIn::start(Mode::Normal).await;
    lookup(&client(BackendKind::Google, &google), &ucla(10.0, 5))
        .await
        .expect("answer");
    let seen = google.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].uri, "/v1/places:searchNearby");
    assert_eq!(seen[0].header("x-goog-api-key"), Some(KEY));
    assert_eq!(seen[0].header("x-goog-fieldmask"), Some(FIELD_MASK));
    assert_eq!(seen[0].header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_slice(&seen[0].body).expect("body is JSON");
    let expected = json!({
        "maxResultCount": 5,
        "locationRestriction": {"circle": {
            "center": {"latitude": 34.06893, "longitude": -118.445127},
            "radius": 10000.0
        }}
    });
    assert_eq!(body, expected);
}

#[tokio::test]
async fn new_api_answer_is_converted_to_the_legacy_shape() {
    let google = StandIn::start(Mode::Normal).await;
    let answer = lookup(&client(BackendKind::Google, &google), &ucla(10.0, 20))
        .await
        .expect("answer");
    assert_eq!(answer["status"], "OK");
    assert_eq!(answer["html_attributions"], json!([]));
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), 3);
    assert_eq!(
        results[0],
        json!({
            "business_status": "OPERATIONAL",
            "geometry": {"location": {"lat": 34.068921, "lng": -118.4451811}},
            "name": "University of California, Los Angeles",
            "place_id": "ChIJZQ9c8IW8woARN0gTXFiTqSU",
            "rating": 4.6,
            "types": ["university", "point_of_interest", "establishment"],
            "user_ratings_total": 4521,
            "vicinity": "Los Angeles"
        })
    );
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        [
            "University of California, Los Angeles",
            "Royce Hall",
            "Pauley Pavilion"
        ]
    );
    assert_eq!(results[2]["vicinity"], "301 Westwood Plaza, Los Angeles");
}

#[tokio::test]
async fn new_api_empty_answer_is_zero_results() {
    let google = StandIn::start(Mode::Body(StatusCode::OK, "{}".into())).await;
    let answer = lookup(&client(BackendKind::Google, &google), &ucla(1.0, 5)).await;
    assert_eq!(
        answer,
        Ok(json!({"html_attributions": [], "results": [], "status": "ZERO_RESULTS"}))
    );
}

#[tokio::test]
async fn legacy_request_denied_passes_through_as_google_sent_it() {
    let google = StandIn::start(Mode::Normal).await;
    let wrong = HyperPlaces::new(&config(
        BackendKind::GoogleLegacy,
        &google.base(),
        "wrong-key",
    ))
    .expect("client");
    let answer = lookup(&wrong, &ucla(10.0, 5)).await;
    let expected = json!({"error_message": "The provided API key is invalid.",
        "html_attributions": [], "results": [], "status": "REQUEST_DENIED"});
    assert_eq!(answer, Ok(expected));
}

#[tokio::test]
async fn new_api_permission_denied_becomes_request_denied_with_googles_message() {
    let google = StandIn::start(Mode::Normal).await;
    let wrong = HyperPlaces::new(&config(BackendKind::Google, &google.base(), "wrong-key"))
        .expect("client");
    let answer = lookup(&wrong, &ucla(10.0, 5)).await;
    let expected = json!({"html_attributions": [], "results": [], "status": "REQUEST_DENIED",
        "error_message": "API key not valid. Please pass a valid API key."});
    assert_eq!(answer, Ok(expected));
}

#[tokio::test]
async fn new_api_quota_error_becomes_over_query_limit() {
    let body = json!({"error": {"code": 429, "message": "Quota exceeded.", "status": "RESOURCE_EXHAUSTED"}});
    let google = StandIn::start(Mode::Body(StatusCode::TOO_MANY_REQUESTS, body.to_string())).await;
    let answer = lookup(&client(BackendKind::Google, &google), &ucla(10.0, 5))
        .await
        .expect("mapped");
    assert_eq!(answer["status"], "OVER_QUERY_LIMIT");
    assert_eq!(answer["error_message"], "Quota exceeded.");
    assert_eq!(answer["results"], json!([]));
}

#[tokio::test]
async fn a_slow_answer_times_out() {
    for kind in [BackendKind::Google, BackendKind::GoogleLegacy] {
        let google = StandIn::start(Mode::Slow(Duration::from_secs(60))).await;
        let cfg = PlacesConfig {
            timeout: Duration::from_millis(300),
            ..config(kind, &google.base(), KEY)
        };
        let places = HyperPlaces::new(&cfg).expect("client");
        assert_eq!(
            lookup(&places, &ucla(10.0, 5)).await,
            Err(LookupError::Timeout),
            "{kind}"
        );
    }
}

#[tokio::test]
async fn waiting_for_a_free_slot_counts_against_the_timeout() {
    // One slot; the first call holds it until its timeout. If the wait for the slot did not
    // count, the second call would then get a fresh 2 s and its answer (1 s) would arrive.
    let google = StandIn::start(Mode::HangFirst(Duration::from_secs(1))).await;
    let cfg = PlacesConfig {
        timeout: Duration::from_secs(2),
        max_concurrent: 1,
        ..config(BackendKind::GoogleLegacy, &google.base(), KEY)
    };
    let places = HyperPlaces::new(&cfg).expect("client");
    let (qa, qb) = (ucla(10.0, 5), ucla(5.0, 5));
    let (a, b) = tokio::join!(lookup(&places, &qa), lookup(&places, &qb));
    assert_eq!(
        (a, b),
        (Err(LookupError::Timeout), Err(LookupError::Timeout))
    );
}

#[tokio::test]
async fn concurrent_calls_are_bounded() {
    let google = StandIn::start(Mode::Slow(Duration::from_millis(100))).await;
    let cfg = PlacesConfig {
        max_concurrent: 3,
        ..config(BackendKind::GoogleLegacy, &google.base(), KEY)
    };
    let places = HyperPlaces::new(&cfg).expect("client");
    let calls = (1..=12).map(|i| {
        let q = ucla(f64::from(i), 5);
        let places = &places;
        async move { lookup(places, &q).await }
    });
    let answers = join_all(calls).await;
    assert!(answers.iter().all(Result::is_ok));
    assert_eq!(google.requests(), 12);
    assert!(google.max_in_flight() <= 3, "{}", google.max_in_flight());
}

#[tokio::test]
async fn http_500_is_a_status_error_for_both_apis() {
    for kind in [BackendKind::Google, BackendKind::GoogleLegacy] {
        let google = StandIn::start(Mode::ServerError).await;
        assert_eq!(
            lookup(&client(kind, &google), &ucla(10.0, 5)).await,
            Err(LookupError::Status(500)),
            "{kind}"
        );
    }
}

#[tokio::test]
async fn a_garbage_body_is_a_bad_reply() {
    for kind in [BackendKind::Google, BackendKind::GoogleLegacy] {
        let google = StandIn::start(Mode::Garbage).await;
        let err = lookup(&client(kind, &google), &ucla(10.0, 5))
            .await
            .expect_err("garbage");
        let LookupError::BadReply(msg) = &err else {
            panic!("{err:?}")
        };
        assert!(msg.starts_with("answer is not JSON: "), "{msg}");
    }
}

#[tokio::test]
async fn json_that_is_not_an_answer_object_is_a_bad_reply() {
    for kind in [BackendKind::Google, BackendKind::GoogleLegacy] {
        let google = StandIn::start(Mode::Body(StatusCode::OK, "[1, 2, 3]".into())).await;
        let err = lookup(&client(kind, &google), &ucla(10.0, 5))
            .await
            .expect_err("not an object");
        assert_eq!(
            err,
            LookupError::BadReply("answer is not a JSON object".into()),
            "{kind}"
        );
    }
}

#[tokio::test]
async fn an_oversized_answer_is_a_bad_reply() {
    let google = StandIn::start(Mode::Huge).await;
    let err = lookup(&client(BackendKind::GoogleLegacy, &google), &ucla(10.0, 5)).await;
    assert_eq!(
        err,
        Err(LookupError::BadReply(
            "answer longer than 4194304 bytes".into()
        ))
    );
}

#[tokio::test]
async fn an_unreachable_service_is_unavailable() {
    // Bind and drop a listener: its port is very likely closed now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let base = format!("http://127.0.0.1:{port}");
    for kind in [BackendKind::Google, BackendKind::GoogleLegacy] {
        let places = HyperPlaces::new(&config(kind, &base, KEY)).expect("client");
        let err = lookup(&places, &ucla(10.0, 5))
            .await
            .expect_err("nobody listens");
        let LookupError::Unavailable(msg) = &err else {
            panic!("{err:?}")
        };
        assert!(!msg.is_empty());
        assert_key_absent(&err.to_string());
        assert_key_absent(&format!("{err:?}"));
    }
}

#[tokio::test]
async fn the_key_never_appears_in_errors_or_debug_output() {
    let modes = [
        Mode::ServerError,
        Mode::Garbage,
        Mode::Huge,
        Mode::Slow(Duration::from_secs(60)),
    ];
    for kind in [BackendKind::Google, BackendKind::GoogleLegacy] {
        for mode in modes.clone() {
            let google = StandIn::start(mode).await;
            let cfg = PlacesConfig {
                timeout: Duration::from_millis(300),
                ..config(kind, &google.base(), KEY)
            };
            let places = HyperPlaces::new(&cfg).expect("client");
            let err = lookup(&places, &ucla(10.0, 5)).await.expect_err("fails");
            assert_key_absent(&err.to_string());
            assert_key_absent(&format!("{err:?}"));
            assert_key_absent(&format!("{places:?}"));
            assert_key_absent(&format!("{cfg:?}"));
        }
    }
}

#[tokio::test]
async fn connections_are_kept_alive_between_calls() {
    let google = StandIn::start(Mode::Normal).await;
    let places = client(BackendKind::Google, &google);
    for _ in 0..5 {
        lookup(&places, &ucla(10.0, 5)).await.expect("answer");
    }
    assert_eq!(google.requests(), 5);
    assert_eq!(google.connections(), 1);
}

#[test]
fn google_kinds_need_a_key_and_a_good_base_url() {
    for kind in [BackendKind::Google, BackendKind::GoogleLegacy] {
        let mut cfg = config(kind, "http://127.0.0.1:9", "k");
        cfg.api_key = None;
        assert_eq!(
            HyperPlaces::new(&cfg).err(),
            Some(PlacesError::MissingKey(kind.name()))
        );
        cfg.api_key = Some(String::new());
        assert_eq!(
            herd_places::build(cfg).err(),
            Some(PlacesError::MissingKey(kind.name()))
        );
        let bad_url = config(kind, "ftp://example.com", "k");
        assert!(matches!(
            HyperPlaces::new(&bad_url),
            Err(PlacesError::BadBaseUrl { .. })
        ));
        let bad_key = config(kind, "http://127.0.0.1:9", "line\nbreak");
        assert_eq!(HyperPlaces::new(&bad_key).err(), Some(PlacesError::BadKey));
        let no_slots = PlacesConfig {
            max_concurrent: 0,
            ..config(kind, "http://127.0.0.1:9", "k")
        };
        assert!(matches!(
            HyperPlaces::new(&no_slots),
            Err(PlacesError::BadConfig(_))
        ));
    }
    let missing = PlacesError::MissingKey("google");
    assert_eq!(
        missing.to_string(),
        "places backend google needs an API key (PLACES_API_KEY)"
    );
}

#[test]
fn the_default_base_urls_are_googles() {
    let legacy = HyperPlaces::new(&PlacesConfig {
        kind: BackendKind::GoogleLegacy,
        api_key: Some("k".into()),
        ..PlacesConfig::default()
    })
    .expect("client");
    assert_eq!(legacy.base_url(), "https://maps.googleapis.com");
    let new = HyperPlaces::new(&PlacesConfig {
        kind: BackendKind::Google,
        api_key: Some("k".into()),
        ..PlacesConfig::default()
    })
    .expect("client");
    assert_eq!(new.base_url(), "https://places.googleapis.com");
}

#[test]
fn backend_kinds_parse_and_name_themselves() {
    for (text, kind) in [
        ("offline", BackendKind::Offline),
        ("google", BackendKind::Google),
        ("google-legacy", BackendKind::GoogleLegacy),
    ] {
        assert_eq!(text.parse::<BackendKind>(), Ok(kind));
        assert_eq!(kind.name(), text);
    }
    let err = "Google".parse::<BackendKind>().expect_err("case matters");
    assert_eq!(
        err.to_string(),
        "unknown places backend \"Google\" (expected offline, google or google-legacy)"
    );
}

#[test]
fn the_default_config_is_offline_with_documented_limits() {
    let cfg = PlacesConfig::default();
    assert_eq!(cfg.kind, BackendKind::Offline);
    assert_eq!(cfg.base_url, None);
    assert_eq!(cfg.api_key, None);
    assert_eq!(cfg.timeout, Duration::from_secs(5));
    assert_eq!(cfg.max_concurrent, 64);
    assert_eq!(cfg.cache_ttl, Duration::from_secs(60));
    assert_eq!(cfg.cache_entries, 10_000);
}

#[tokio::test]
async fn build_gives_a_working_lookup_for_every_kind() {
    let google = StandIn::start(Mode::Normal).await;
    for kind in [BackendKind::Google, BackendKind::GoogleLegacy] {
        let places = herd_places::build(config(kind, &google.base(), KEY)).expect("builds");
        let answer = tokio::time::timeout(GUARD, places.nearby(&ucla(10.0, 5)))
            .await
            .expect("in time");
        assert_eq!(answer.expect("answer")["status"], "OK");
    }
    let offline = herd_places::build(PlacesConfig::default()).expect("offline builds");
    let answer = offline.nearby(&ucla(10.0, 5)).await.expect("answer");
    assert_eq!(answer["results"].as_array().map(Vec::len), Some(5));
}

#[tokio::test]
async fn an_https_base_goes_through_tls() {
    // The stand-in speaks plain HTTP, so the TLS handshake the client starts must fail.
    let google = StandIn::start(Mode::Normal).await;
    let base = format!("https://{}", google.addr);
    for kind in [BackendKind::Google, BackendKind::GoogleLegacy] {
        let places = HyperPlaces::new(&config(kind, &base, KEY)).expect("client");
        let err = lookup(&places, &ucla(10.0, 5))
            .await
            .expect_err("no TLS there");
        assert!(matches!(err, LookupError::Unavailable(_)), "{err:?}");
        assert_key_absent(&err.to_string());
    }
    assert_eq!(google.requests(), 0, "no request was sent in the clear");
}

#[tokio::test]
async fn a_huge_timeout_means_unbounded_not_a_panic() {
    let google = StandIn::start(Mode::Normal).await;
    let cfg = PlacesConfig {
        timeout: Duration::MAX,
        ..config(BackendKind::Google, &google.base(), KEY)
    };
    let places = HyperPlaces::new(&cfg).expect("client");
    assert_eq!(
        lookup(&places, &ucla(10.0, 5)).await.expect("answer")["status"],
        "OK"
    );
}
