//! The offline gazetteer: real places near real coordinates, empty oceans, the ±180°
//! meridian, the poles, radius and count cuts, nearest-first order.

use herd_core::{MaxItems, PlacesLookup, PlacesQuery, RadiusKm};
use herd_places::offline::Hit;
use herd_places::OfflinePlaces;
use serde_json::Value;

fn places() -> std::sync::Arc<OfflinePlaces> {
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

#[test]
fn the_whole_cities500_set_is_embedded() {
    assert_eq!(places().len(), 234_908);
}

#[test]
fn ucla_neighbourhoods_are_found_within_ten_km() {
    let hits = places().search(34.068930, -118.445127, 10.0, usize::MAX);
    let found = names(&hits);
    for expected in ["Westwood", "Brentwood", "Beverly Hills", "Century City", "Santa Monica", "Bel Air"] {
        assert!(found.contains(&expected), "{expected} missing from {found:?}");
    }
    assert!(hits.iter().all(|h| h.distance_km <= 10.0));
}
