//! What geofences cost an update: the same stream of IAMATs (clients moving about a city)
//! through a node holding no fence, and holding 10,000 fences of 1 km in the same city
//! (25 fences a square kilometre: a point is inside about 80 of them).
//!
//! `metro` spreads the same 10,000 fences over a 200 × 200 km region (one every 4 km², a point
//! inside about one of them) with the clients still in the city.
//!
//! Two streams: `walk` moves a client up to about 50 m from where it was (as phones report:
//! crossings are rare, so this is the index's own cost), `jump` puts it anywhere in the city
//! (every update leaves and enters about 80 fences: the cost of the events themselves).
//!
//! Run: `cargo bench -p herd-core --bench fences`. Read the ratio of the two `iamat` rows of
//! one run (events are drained, as the adapter does, but not written anywhere).

#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use herd_core::testing::{RecordingPeerSink, SeededIds};
use herd_core::{Node, NodeConfig, ServerName, Timestamp};

const NOW: Timestamp = Timestamp(1_520_023_935_000_000_000);
/// Clients in the store.
const CLIENTS: usize = 100_000;
/// IAMATs per measured batch.
const BATCH: usize = 10_000;

/// A small deterministic generator (xorshift), so both rows see the same stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A point in a 20 × 20 km square around UCLA.
    fn point(&mut self) -> (f64, f64) {
        let a = (self.next() % 1_000_000) as f64 / 1e6;
        let b = (self.next() % 1_000_000) as f64 / 1e6;
        (34.0 + a * 0.18, -118.55 + b * 0.216)
    }
}

fn iamat(client: usize, (lat, lon): (f64, f64), t: u64) -> Vec<u8> {
    format!("IAMAT c{client} {lat:+.6}{lon:+.6} {t}").into_bytes()
}

/// A point in a 200 × 200 km square around the city.
fn metro_point(rng: &mut Rng) -> (f64, f64) {
    let a = (rng.next() % 1_000_000) as f64 / 1e6;
    let b = (rng.next() % 1_000_000) as f64 / 1e6;
    (33.2 + a * 1.8, -119.5 + b * 2.16)
}

fn node(fences: usize, metro: bool) -> Node<RecordingPeerSink> {
    let cfg = NodeConfig::new(ServerName::new("Goloman").unwrap(), vec![]);
    let mut n = Node::new(cfg, RecordingPeerSink::default(), &mut SeededIds::new(3));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::new();
    for c in 0..CLIENTS {
        let _ = n.handle_client_line(NOW, &iamat(c, rng.point(), 1_520_000_000), &mut out);
        out.clear();
    }
    // 100 fences per subscriber, as the default limit allows.
    for f in 0..fences {
        let (lat, lon) = if metro {
            metro_point(&mut rng)
        } else {
            rng.point()
        };
        let line = format!("FENCE f{f} {lat:+.6}{lon:+.6} 1");
        let _ = n.handle_client_line_from(NOW, Some((f / 100) as u64), line.as_bytes(), &mut out);
        out.clear();
    }
    while n.poll_event().is_some() {}
    n
}

fn updates(c: &mut Criterion) {
    let mut g = c.benchmark_group("fences");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(20);
    let rows = [
        ("walk", true, 0, false),
        ("walk", true, 10_000, false),
        ("walk_metro", true, 10_000, true),
        ("jump", false, 0, false),
        ("jump", false, 10_000, false),
    ];
    for (stream, walk, fences, metro) in rows {
        {
            let mut n = node(fences, metro);
            let mut rng = Rng(0x2545_f491_4f6c_dd1d);
            let mut t = 1_520_000_001u64;
            let mut out = Vec::with_capacity(1 << 20);
            // Where each client is now (the node was filled from the same generator's seed).
            let mut at: Vec<(f64, f64)> = {
                let mut r = Rng(0x9e37_79b9_7f4a_7c15);
                (0..CLIENTS).map(|_| r.point()).collect()
            };
            g.bench_function(format!("{stream}/{fences}_fences"), |b| {
                b.iter_batched(
                    || {
                        t += 1;
                        (0..BATCH)
                            .map(|_| {
                                let c = rng.next() as usize % CLIENTS;
                                let p = if walk {
                                    // Up to ±0.00045° (about 50 m) each way.
                                    let d = |r: &mut Rng| ((r.next() % 901) as f64 - 450.0) * 1e-6;
                                    (at[c].0 + d(&mut rng), at[c].1 + d(&mut rng))
                                } else {
                                    rng.point()
                                };
                                at[c] = p;
                                iamat(c, p, t)
                            })
                            .collect::<Vec<_>>()
                    },
                    |lines| {
                        for line in &lines {
                            let _ = n.handle_client_line(NOW, line, &mut out);
                            out.clear();
                        }
                        let mut events = 0usize;
                        while let Some(e) = n.poll_event() {
                            black_box(&e);
                            events += 1;
                        }
                        black_box(events)
                    },
                    BatchSize::LargeInput,
                )
            });
        }
    }
    g.finish();
}

criterion_group!(benches, updates);
criterion_main!(benches);
