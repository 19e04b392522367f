//! The nearby index against a scan of the whole store: random stores (clustered and
//! spread, near the poles and the antimeridian), random updates, removals and expiry, random
//! queries: the same records in the same order every time.

use std::sync::Arc;
use std::time::Duration;

use herd_core::{
    parse_client_line, ClientLine, LocationStore, NearbyQuery, Record, ServerName, Timestamp,
};
use proptest::prelude::*;

fn record(client: &str, lat: f64, lon: f64, time: u64) -> Arc<Record> {
    let line = format!("IAMAT {client} {lat:+.6}{lon:+.6} {time}.0");
    let ClientLine::IAmAt(req) = parse_client_line(line.as_bytes()) else {
        panic!("bad line {line}")
    };
    Arc::new(Record::from_iamat(
        &ServerName::new("A").unwrap(),
        Timestamp(0),
        &req,
    ))
}

/// A position: spread over the globe, or in one of a few small clusters (one straddling the
/// antimeridian, one at a pole).
fn position() -> impl Strategy<Value = (f64, f64)> {
    let spread = (-90.0..=90.0f64, -180.0..=180.0f64);
    let clusters = (0usize..4, -0.05..0.05f64, -0.05..0.05f64).prop_map(|(c, a, b)| {
        let (lat, lon): (f64, f64) = [
            (34.07, -118.44),
            (0.0, 179.98),
            (89.97, 0.0),
            (-33.9, 151.2),
        ][c];
        ((lat + a).clamp(-90.0, 90.0), {
            let l = lon + b;
            if l > 180.0 {
                l - 360.0
            } else {
                l
            }
        })
    });
    prop_oneof![spread, clusters]
}

#[derive(Debug, Clone)]
enum Op {
    Put(u16, (f64, f64)),
    Remove(u16),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            8 => (0u16..300, position()).prop_map(|(c, p)| Op::Put(c, p)),
            1 => (0u16..300).prop_map(Op::Remove),
        ],
        1..400,
    )
}

fn query() -> impl Strategy<Value = ((f64, f64), f64, usize, Option<u16>)> {
    (
        position(),
        prop_oneof![0.0..2_000.0f64, 0.0..50_000.0f64, 0.0..20_000_000.0f64],
        1usize..60,
        prop::option::of(0u16..300),
    )
}

fn same(store: &LocationStore, q: &NearbyQuery<'_>) {
    let fast = store.nearby(q);
    let slow = store.nearby_scan(q);
    let lines = |v: &[herd_core::Nearby]| {
        v.iter()
            .map(|n| n.record.at_line().to_vec())
            .collect::<Vec<_>>()
    };
    assert_eq!(lines(&fast), lines(&slow), "query {q:?}");
    for (a, b) in fast.iter().zip(&slow) {
        assert_eq!(a.distance_m, b.distance_m);
    }
    assert!(fast.len() <= q.max);
    assert!(fast.windows(2).all(|w| w[0].distance_m <= w[1].distance_m));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_index_answers_what_a_scan_answers(ops in ops(), queries in prop::collection::vec(query(), 1..20)) {
        let mut store = LocationStore::new(5);
        store.set_nearby_index(true);
        for (t, op) in ops.iter().enumerate() {
            match op {
                Op::Put(c, (lat, lon)) => {
                    store.offer(record(&format!("c{c}"), *lat, *lon, t as u64 + 1));
                }
                Op::Remove(c) => {
                    store.remove(format!("c{c}").as_bytes());
                }
            }
        }
        for ((lat, lon), radius_m, max, exclude) in queries {
            let id = exclude.map(|c| format!("c{c}"));
            let q = NearbyQuery { lat, lon, radius_m, max, exclude: id.as_deref().map(str::as_bytes) };
            same(&store, &q);
        }
    }
}

#[test]
fn expired_records_leave_the_index_and_turning_it_on_late_indexes_what_is_held() {
    let mut store = LocationStore::with_ttl(9, Some(Duration::from_secs(100)));
    for i in 0..200u64 {
        store.offer(record(&format!("e{i}"), 10.0 + i as f64 * 1e-4, 20.0, i));
    }
    store.set_nearby_index(true);
    let q = NearbyQuery {
        lat: 10.0,
        lon: 20.0,
        radius_m: 50_000.0,
        max: 1000,
        exclude: None,
    };
    assert_eq!(store.nearby(&q).len(), 200);
    store.expire(Timestamp::from_parts(150, 0));
    let left = store.nearby(&q);
    assert_eq!(
        left.len(),
        149,
        "records with client time 51..=199 are alive at 150"
    );
    assert_eq!(left, store.nearby_scan(&q));
    store.set_nearby_index(false);
    assert!(!store.has_nearby_index());
    assert_eq!(
        store.nearby(&q).len(),
        149,
        "without the index the store scans"
    );
}

#[test]
fn many_clients_at_one_spot_are_all_found_in_id_order() {
    let mut store = LocationStore::new(1);
    store.set_nearby_index(true);
    for i in 0..500 {
        store.offer(record(&format!("same{i:03}"), 48.858370, 2.294481, 1));
    }
    let q = NearbyQuery {
        lat: 48.858370,
        lon: 2.294481,
        radius_m: 1.0,
        max: 10,
        exclude: Some(b"same000"),
    };
    let found = store.nearby(&q);
    let ids: Vec<&[u8]> = found.iter().map(|n| n.record.client()).collect();
    let want: Vec<String> = (1..=10).map(|i| format!("same{i:03}")).collect();
    assert_eq!(ids, want.iter().map(|s| s.as_bytes()).collect::<Vec<_>>());
    assert_eq!(found, store.nearby_scan(&q));
}
