//! The offline gazetteer: real places near real coordinates, empty oceans, the ±180°
//! meridian, the poles, radius and count cuts, nearest-first order, and the grid index
//! against an exhaustive scan.

use std::sync::Arc;

use herd_core::{MaxItems, PlacesLookup, PlacesQuery, RadiusKm};
use herd_places::offline::{Hit, EMBEDDED_GAZETTEER};
use herd_places::{OfflinePlaces, PlacesError};
use serde_json::json;

const UCLA: (f64, f64) = (34.068930, -118.445127);

fn places() -> Arc<OfflinePlaces> {
    OfflinePlaces::shared().expect("embedded gazetteer decodes")
}

fn query(lat: f64, lon: f64, km: f64, max: u8) -> PlacesQuery {
    PlacesQuery {
        lat,
        lon,
        radius: RadiusKm::from_km(km).expect("radius in range"),
        max_items: MaxItems::new(max).expect("count in range"),
    }
}

fn names(hits: &[Hit]) -> Vec<&str> {
    hits.iter().map(|h| h.name.as_str()).collect()
}

/// An independent great-circle distance (haversine, same Earth radius) to check the crate's.
fn haversine_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (p1, p2) = (a.0.to_radians(), b.0.to_radians());
    let (dp, dl) = ((b.0 - a.0).to_radians(), (b.1 - a.1).to_radians());
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6371.0088 * h.sqrt().asin()
}

#[test]
fn the_whole_cities500_set_is_embedded() {
    assert_eq!(places().len(), 234_908);
}

#[test]
fn ucla_neighbourhoods_are_found_within_ten_km() {
    let hits = places().search(UCLA.0, UCLA.1, 10.0, usize::MAX);
    let found = names(&hits);
    for expected in [
        "Westwood",
        "Brentwood",
        "Beverly Hills",
        "Century City",
        "Santa Monica",
        "Bel Air",
    ] {
        assert!(
            found.contains(&expected),
            "{expected} missing from {found:?}"
        );
    }
    for h in &hits {
        let check = haversine_km(UCLA, (h.lat, h.lon));
        assert!(
            (check - h.distance_km).abs() < 1e-6,
            "{} {check} {}",
            h.name,
            h.distance_km
        );
        assert!(h.distance_km <= 10.0, "{h:?}");
    }
    // Culver City (about 7.8 km away) is in, Inglewood (about 14 km) is not.
    assert!(found.contains(&"Culver City"));
    assert!(!found.contains(&"Inglewood"));
}

#[test]
fn vicinities_name_the_admin_area_and_country_worldwide() {
    let find = |lat: f64, lon: f64, name: &str| {
        let hits = places().search(lat, lon, 5.0, usize::MAX);
        hits.into_iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("{name} not found"))
    };
    assert_eq!(
        find(48.8566, 2.3522, "Paris").vicinity,
        "Ile-de-France, France"
    );
    assert_eq!(find(52.52, 13.405, "Berlin").vicinity, "Berlin, Germany");
    assert_eq!(
        find(34.0522, -118.2437, "Los Angeles").vicinity,
        "California, United States"
    );
}

#[tokio::test]
async fn answers_come_in_the_legacy_shape_nearest_first() {
    let answer = places()
        .nearby(&query(UCLA.0, UCLA.1, 10.0, 2))
        .await
        .expect("offline never fails");
    let expected = json!({
        "html_attributions": [],
        "results": [
            {
                "geometry": {"location": {"lat": 34.08334, "lng": -118.44869}},
                "name": "Bel Air",
                "place_id": "5327259",
                "population": 8253,
                "types": ["locality", "political"],
                "vicinity": "California, United States"
            },
            {
                "geometry": {"location": {"lat": 34.05612, "lng": -118.43063}},
                "name": "Westwood",
                "place_id": "5408522",
                "population": 2019,
                "types": ["locality", "political"],
                "vicinity": "California, United States"
            }
        ],
        "status": "OK"
    });
    assert_eq!(answer, expected);
    let keys: Vec<&String> = answer.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["html_attributions", "results", "status"]);
}

#[test]
fn results_are_nearest_first_and_cut_to_max_items() {
    let all = places().search(48.8566, 2.3522, 20.0, usize::MAX);
    assert!(all.len() > 50, "Paris has many neighbours: {}", all.len());
    assert!(all.windows(2).all(|w| w[0].distance_km <= w[1].distance_km));
    let three = places().search(48.8566, 2.3522, 20.0, 3);
    assert_eq!(three, all[..3].to_vec());
    assert_eq!(places().search(48.8566, 2.3522, 20.0, 0), Vec::new());
}

#[test]
fn a_smaller_radius_keeps_exactly_the_closer_places() {
    let wide = places().search(UCLA.0, UCLA.1, 10.0, usize::MAX);
    let narrow = places().search(UCLA.0, UCLA.1, 4.0, usize::MAX);
    let expected: Vec<Hit> = wide.into_iter().filter(|h| h.distance_km <= 4.0).collect();
    assert!(!narrow.is_empty());
    assert_eq!(narrow, expected);
}

#[tokio::test]
async fn an_empty_ocean_spot_gives_zero_results() {
    let answer = places()
        .nearby(&query(-30.0, -140.0, 50.0, 20))
        .await
        .expect("offline never fails");
    assert_eq!(
        answer,
        json!({"html_attributions": [], "results": [], "status": "ZERO_RESULTS"})
    );
}

#[test]
fn places_across_the_antimeridian_are_found_from_both_sides() {
    // Egvekinot lies west of 180° (lon -179.1); ask from the east side of the line.
    let east = places().search(66.3, 179.95, 50.0, 20);
    assert!(names(&east).contains(&"Egvekinot"), "{east:?}");
    // Beringovskiy lies east of it (lon 179.35); ask from the west side.
    let west = places().search(63.06, -179.9, 50.0, 20);
    assert!(names(&west).contains(&"Beringovskiy"), "{west:?}");
    // +180 and -180 are the same meridian.
    let plus = places().search(66.3, 180.0, 50.0, 20);
    let minus = places().search(66.3, -180.0, 50.0, 20);
    assert_eq!(names(&plus), names(&minus));
    assert!(names(&plus).contains(&"Egvekinot"), "{plus:?}");
}

#[tokio::test]
async fn the_poles_answer_without_panicking() {
    for (lat, lon) in [
        (90.0, 0.0),
        (90.0, 180.0),
        (-90.0, -45.0),
        (89.9, 10.0),
        (-89.99, 179.99),
    ] {
        let answer = places()
            .nearby(&query(lat, lon, 50.0, 20))
            .await
            .expect("offline never fails");
        assert_eq!(answer["status"], "ZERO_RESULTS", "{lat} {lon}");
    }
    // The northernmost towns are still found near the pole.
    let svalbard = places().search(78.3, 15.0, 30.0, 20);
    assert_eq!(names(&svalbard), ["Longyearbyen"]);
    let greenland = places().search(77.5, -69.0, 20.0, 20);
    assert_eq!(names(&greenland), ["Qaanaaq"]);
}

#[test]
fn the_grid_index_agrees_with_an_exhaustive_scan() {
    let places = places();
    let mut spots = vec![
        (UCLA.0, UCLA.1),
        (48.8566, 2.3522),
        (90.0, 0.0),
        (-90.0, 0.0),
        (89.7, 100.0),
        (-89.7, -100.0),
        (66.3, 179.99),
        (66.3, -179.99),
        (-8.52, 179.9),
        (-14.3, -179.9),
        (-16.8, 180.0),
        (0.0, 0.0),
        (35.0, 139.7),
        (78.2, 15.6),
    ];
    // A fixed pseudo-random sample (64-bit LCG) over the globe, biased to nothing.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    for _ in 0..40 {
        spots.push((next() * 180.0 - 90.0, next() * 360.0 - 180.0));
    }
    for (lat, lon) in spots {
        for km in [0.5, 10.0, 50.0] {
            let indexed = places.search(lat, lon, km, usize::MAX);
            let scanned = places.search_exhaustive(lat, lon, km, usize::MAX);
            assert_eq!(indexed, scanned, "at {lat} {lon} within {km} km");
        }
    }
}

#[test]
fn bad_coordinates_find_nothing() {
    assert!(places().search(f64::NAN, 0.0, 10.0, 20).is_empty());
    assert!(places().search(0.0, f64::INFINITY, 10.0, 20).is_empty());
    assert!(places().search(0.0, 0.0, -1.0, 20).is_empty());
}

#[test]
fn corrupt_gazetteers_are_rejected_with_a_message() {
    let err = OfflinePlaces::from_compressed(b"not zlib at all").expect_err("garbage");
    assert!(matches!(err, PlacesError::Data(_)), "{err:?}");
    let half = &EMBEDDED_GAZETTEER[..EMBEDDED_GAZETTEER.len() / 2];
    let err = OfflinePlaces::from_compressed(half).expect_err("truncated");
    assert!(matches!(err, PlacesError::Data(_)), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("offline gazetteer unreadable: "),
        "{err}"
    );
}

#[test]
fn the_outline_keeps_one_place_per_cell_and_covers_the_continents() {
    let places = herd_places::OfflinePlaces::shared().unwrap();
    let outline = places.outline(2.0);
    assert!(
        outline.len() > 1000 && outline.len() < 16_200,
        "{}",
        outline.len()
    );
    let mut cells = std::collections::HashSet::new();
    for [lat, lon] in &outline {
        assert!((-90.0..=90.0).contains(lat) && (-180.0..=180.0).contains(lon));
        assert!(
            cells.insert(
                ((lat + 90.0) / 2.0).floor() as i64 * 1000 + ((lon + 180.0) / 2.0).floor() as i64
            ),
            "two points in one cell"
        );
    }
    // Near London, Sydney and São Paulo there are points; in the middle of the Pacific none.
    let near = |la: f32, lo: f32| {
        outline
            .iter()
            .any(|[a, b]| (a - la).abs() < 3.0 && (b - lo).abs() < 3.0)
    };
    assert!(near(51.5, -0.1) && near(-33.9, 151.2) && near(-23.5, -46.6));
    assert!(!near(-30.0, -130.0));
    // A cell size that is not a positive number falls back to one degree.
    assert_eq!(places.outline(-1.0).len(), places.outline(1.0).len());
}
