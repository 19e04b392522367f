//! Offline gazetteer: load time (inflate, decode, grid index) and query time with the whole
//! data set loaded.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use herd_core::{MaxItems, PlacesQuery, RadiusKm};
use herd_places::OfflinePlaces;

fn load(c: &mut Criterion) {
    let mut group = c.benchmark_group("offline_load");
    group.sample_size(10);
    group.bench_function("inflate_decode_index", |b| {
        b.iter(|| OfflinePlaces::load().expect("embedded gazetteer decodes"))
    });
    group.finish();
}

fn query(c: &mut Criterion) {
    let places = OfflinePlaces::load().expect("embedded gazetteer decodes");
    let spots = [
        ("ucla_10km", 34.068930, -118.445127, 10.0),
        ("ucla_50km", 34.068930, -118.445127, 50.0),
        ("paris_50km", 48.8566, 2.3522, 50.0),
        ("taveuni_50km_meridian", -16.85, 179.95, 50.0),
        ("north_pole_50km", 90.0, 0.0, 50.0),
        ("pacific_10km_empty", -30.0, -140.0, 10.0),
    ];
    let max = MaxItems::new(20).expect("20 is allowed");
    let mut group = c.benchmark_group("offline_query");
    for (name, lat, lon, km) in spots {
        let q = PlacesQuery {
            lat,
            lon,
            radius: RadiusKm::from_km(km).expect("radius"),
            max_items: max,
        };
        group.bench_function(name, |b| b.iter(|| places.answer(black_box(&q))));
    }
    group.bench_function("search_only_ucla_10km", |b| {
        b.iter(|| places.search(black_box(34.068930), black_box(-118.445127), 10.0, 20))
    });
    group.bench_function("search_only_paris_50km", |b| {
        b.iter(|| places.search(black_box(48.8566), black_box(2.3522), 50.0, 20))
    });
    group.finish();
}

criterion_group!(benches, load, query);
criterion_main!(benches);
