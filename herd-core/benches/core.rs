//! Micro-benchmarks of the hot path: parse/format, the store, the flood decision.
//!
//! Run: `cargo bench -p herd-core --bench core`

#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use herd_core::peer::PeerMsg;
use herd_core::protocol::{write_whatsat_reply, ClientLine};
use herd_core::testing::SeededIds;
use herd_core::{
    parse_client_line, LocationStore, MaxItems, Node, NodeConfig, PeerId, PeerSendError, PeerSink,
    Record, ServerName, Timestamp,
};

const IAMAT: &[u8] = b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997";
const NOW: Timestamp = Timestamp(1_520_023_935_182_837_383);

/// Encodes every message like the real sink does, into a reused buffer.
#[derive(Default)]
struct EncodingSink(Vec<u8>);

impl PeerSink for EncodingSink {
    fn send(&mut self, _to: PeerId, msg: &PeerMsg) -> Result<(), PeerSendError> {
        if self.0.len() > 1 << 20 {
            self.0.clear();
        }
        msg.encode(&mut self.0);
        Ok(())
    }

    fn backlog(&self, _to: PeerId) -> usize {
        0
    }

    fn notify_drained(&mut self, _to: PeerId) {}
}

fn record(client: &str, t: u64) -> Arc<Record> {
    let line = format!("IAMAT {client} +34.068930-118.445127 {t}.918963997");
    let ClientLine::IAmAt(req) = parse_client_line(line.as_bytes()) else {
        unreachable!("valid bench line")
    };
    Arc::new(Record::from_iamat(
        &ServerName::new("Goloman").expect("name"),
        NOW,
        &req,
    ))
}

fn grammar(c: &mut Criterion) {
    let mut g = c.benchmark_group("grammar");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_iamat", |b| {
        b.iter(|| black_box(parse_client_line(black_box(IAMAT))))
    });
    let r = record("kiwi.cs.ucla.edu", 1_520_023_934);
    let line = PeerMsg::Update {
        seq: 42,
        record: r.clone(),
    }
    .to_line();
    let body = &line[..line.len() - 1];
    g.bench_function("parse_peer_update", |b| {
        b.iter(|| black_box(PeerMsg::parse(black_box(body))))
    });
    let mut out = Vec::with_capacity(256);
    g.bench_function("encode_peer_update", |b| {
        b.iter(|| {
            out.clear();
            PeerMsg::Update {
                seq: 42,
                record: r.clone(),
            }
            .encode(&mut out);
            black_box(out.len())
        })
    });
    let sample: serde_json::Value = serde_json::from_str(include_str!(
        "../../herd-places/tests/fixtures/nearbysearch-legacy.json"
    ))
    .unwrap_or_else(|_| serde_json::json!({"results": [], "status": "OK"}));
    let max = MaxItems::new(20).expect("20 is valid");
    g.bench_function("format_whatsat_reply", |b| {
        b.iter(|| {
            out.clear();
            write_whatsat_reply(r.at_line(), Ok(sample.clone()), max, &mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

fn store(c: &mut Criterion) {
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    let records: Vec<Arc<Record>> = (0..100_000)
        .map(|i| record(&format!("client{i}"), 1_000 + i))
        .collect();
    g.bench_function("offer_new_client_of_100k", |b| {
        b.iter_batched(
            || LocationStore::new(7),
            |mut s| {
                for r in &records[..1000] {
                    black_box(s.offer(r.clone()));
                }
                s
            },
            criterion::BatchSize::LargeInput,
        )
    });
    let mut full = LocationStore::new(7);
    for r in &records {
        full.offer(r.clone());
    }
    let stale = record("client500", 1);
    g.bench_function("offer_stale_in_100k", |b| {
        b.iter(|| black_box(full.offer(stale.clone())))
    });
    g.bench_function("get_in_100k", |b| {
        b.iter(|| black_box(full.get(black_box(b"client777"))))
    });
    // What a pipelined read batch does: 16 newer records of clients spread over a store of a
    // million (records far apart in memory), offered one by one, with and without warming the
    // store for the batch first. The difference is the cache misses that warming overlaps.
    let million: Vec<Arc<Record>> = (0..1_000_000)
        .map(|i| record(&format!("client{i}"), 1_000 + i))
        .collect();
    let mut big = LocationStore::new(7);
    for r in &million {
        big.offer(r.clone());
    }
    drop(million);
    let mut t = 10_000_000u64;
    let mut next = 0usize;
    let mut batch = move || {
        t += 1;
        (0..16)
            .map(|_| {
                next = (next + 7_919 * 13) % 1_000_000;
                record(&format!("client{next}"), t)
            })
            .collect::<Vec<_>>()
    };
    g.throughput(Throughput::Elements(16));
    g.bench_function("offer_16_newer_in_1m", |b| {
        b.iter_batched(
            &mut batch,
            |recs| {
                for r in recs {
                    black_box(big.offer(r));
                }
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("offer_16_newer_in_1m_warmed", |b| {
        b.iter_batched(
            &mut batch,
            |recs| {
                let clients: Vec<&[u8]> = recs.iter().map(|r| r.client()).collect();
                black_box(big.warm(&clients));
                for r in &recs {
                    black_box(big.offer(r.clone()));
                }
            },
            criterion::BatchSize::SmallInput,
        )
    });
    // What one pass of a catch-up asks at a million clients: the changes of the last 40,000
    // log numbers (a link some 4 MiB behind), each still its client's latest.
    for i in 0..40_000u64 {
        big.offer(record(&format!("client{}", i * 25), 20_000_000 + i));
    }
    let since = big.seq() - 40_000;
    g.throughput(Throughput::Elements(1));
    g.bench_function("changes_since_last_40k_of_1m", |b| {
        b.iter(|| black_box(big.changes_since_except(black_box(since), 0)))
    });
    g.finish();
}

fn flood(c: &mut Criterion) {
    let mut g = c.benchmark_group("node");
    g.throughput(Throughput::Elements(1));
    let names =
        ["Goloman", "Hands", "Holiday", "Wilkes"].map(|n| ServerName::new(n).expect("name"));
    let cfg = NodeConfig::new(names[0].clone(), names[1..].to_vec());
    let mut node = Node::new(cfg, EncodingSink::default(), &mut SeededIds::new(1));
    for p in 0..3 {
        node.handle_link_up(NOW, PeerId(p));
        let digest = PeerMsg::Digest {
            epoch: 9,
            your_epoch: 0,
            seen: 0,
        };
        node.handle_peer_msg(NOW, PeerId(p), digest)
            .expect("the peer message is handled");
    }
    let mut out = Vec::with_capacity(256);
    let mut t: u64 = 1_000_000_000;
    // A new record each time: parse, build the AT line, store, flood to three neighbours.
    g.bench_function("iamat_new_record_flooded_to_3", |b| {
        b.iter(|| {
            t += 1;
            let line = format!("IAMAT kiwi +34.068930-118.445127 {t}");
            out.clear();
            black_box(node.handle_client_line(NOW, line.as_bytes(), &mut out))
        })
    });
    // The flood decision for a duplicate arriving from a peer: parse, compare, drop.
    let dup = PeerMsg::Update {
        seq: 1,
        record: record("kiwi", 5),
    }
    .to_line();
    let dup = &dup[..dup.len() - 1];
    g.bench_function("peer_update_duplicate_dropped", |b| {
        b.iter(|| black_box(node.handle_peer_line(NOW, PeerId(0), black_box(dup))))
    });
    g.finish();
}

/// A record of `client` at (`lat`, `lon`).
fn placed(client: &str, lat: f64, lon: f64, t: u64) -> Arc<Record> {
    let line = format!("IAMAT {client} {lat:+.6}{lon:+.6} {t}.5");
    let ClientLine::IAmAt(req) = parse_client_line(line.as_bytes()) else {
        unreachable!("valid bench line")
    };
    Arc::new(Record::from_iamat(
        &ServerName::new("Goloman").expect("name"),
        NOW,
        &req,
    ))
}

/// A deterministic spread of `n` points in a 20 km × 20 km square around UCLA (a dense
/// city: 2,500 clients per km² at a million).
fn city(n: usize) -> Vec<Arc<Record>> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|i| {
            let lat = 34.0 + next() * 0.18;
            let lon = -118.55 + next() * 0.217;
            placed(&format!("c{i}"), lat, lon, 1_000 + i as u64)
        })
        .collect()
}

/// NEARBY at 1 km for 50 clients in a city of a million, and what the index costs an update.
fn nearby(c: &mut Criterion) {
    use herd_core::NearbyQuery;
    let mut g = c.benchmark_group("nearby");
    g.throughput(Throughput::Elements(1));
    g.sample_size(30);
    let points = city(1_000_000);
    let mut store = LocationStore::new(3);
    store.set_nearby_index(true);
    for r in &points {
        store.offer(r.clone());
    }
    let q = NearbyQuery {
        lat: 34.09,
        lon: -118.44,
        radius_m: 1000.0,
        max: 50,
        exclude: None,
    };
    g.bench_function("index_1km_50_of_1m_city", |b| {
        b.iter(|| black_box(store.nearby(black_box(&q))))
    });
    let moves: Vec<Arc<Record>> = city(10_000)
        .into_iter()
        .enumerate()
        .map(|(i, r)| placed(&format!("c{i}"), r.lat(), r.lon(), 5_000_000 + i as u64))
        .collect();
    for (name, index) in [
        ("move_10k_of_1m_with_index", true),
        ("move_10k_of_1m_without_index", false),
    ] {
        let mut s = LocationStore::new(3);
        s.set_nearby_index(index);
        for r in &points {
            s.offer(r.clone());
        }
        let mut round = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                round += 1;
                for r in &moves[..100] {
                    // Each round a newer time, so every offer replaces the record.
                    let newer = placed(
                        std::str::from_utf8(r.client()).unwrap_or("c"),
                        r.lat() + (round % 7) as f64 * 1e-3,
                        r.lon(),
                        10_000_000 + round,
                    );
                    black_box(s.offer(newer));
                }
            })
        });
    }
    g.finish();
}

/// A peer update received by a server: the line parsed (the AT line validated, its time and
/// position read) and the record offered to a store of 100,000 clients that keeps the
/// nearby index, each record newer than the one held (and moved by a few metres), as at
/// every hop of a flood.
fn peer(c: &mut Criterion) {
    let mut g = c.benchmark_group("peer");
    let mut s = LocationStore::new(5);
    s.set_nearby_index(true);
    for r in city(100_000) {
        s.offer(r);
    }
    let mut round = 0u64;
    let mut next = 0usize;
    let mut batch = move || {
        round += 1;
        (0..64)
            .map(|_| {
                next = (next + 7_919) % 100_000;
                let lat = 34.0 + (next % 1000) as f64 * 1.8e-4 + (round % 5) as f64 * 1e-5;
                let lon = -118.55 + (next / 1000) as f64 * 2.17e-3;
                let r = placed(&format!("c{next}"), lat, lon, 10_000_000 + round);
                PeerMsg::Update {
                    seq: round,
                    record: r,
                }
                .to_line()
            })
            .collect::<Vec<_>>()
    };
    g.throughput(Throughput::Elements(64));
    g.bench_function("parse_64_updates", |b| {
        b.iter_batched(
            &mut batch,
            |lines| {
                for l in &lines {
                    black_box(PeerMsg::parse(&l[..l.len() - 1]).is_ok());
                }
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("parse_and_store_64_newer_updates_in_100k", |b| {
        b.iter_batched(
            &mut batch,
            |lines| {
                for l in &lines {
                    if let Ok(PeerMsg::Update { record, .. }) = PeerMsg::parse(&l[..l.len() - 1]) {
                        black_box(s.offer(record));
                    }
                }
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, grammar, store, flood, nearby, peer);
criterion_main!(benches);
