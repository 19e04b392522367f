//! Line codec throughput: pipelined input decoded in one buffer, and a long line that arrives
//! in many small reads (the search resumes where it stopped, so this stays linear); and the
//! per-message log line (both sides escaped).
//!
//! Run: `cargo bench -p herd-net --bench codec`

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use herd_net::LineCodec;
use tokio_util::codec::Decoder;

fn pipelined(c: &mut Criterion) {
    let mut input = Vec::new();
    for i in 0..10_000 {
        input.extend_from_slice(
            format!("IAMAT client{i} +34.068930-118.445127 1520023934.918963997\r\n").as_bytes(),
        );
    }
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.bench_function("10k pipelined lines", |b| {
        b.iter_batched(
            || BytesMut::from(&input[..]),
            |mut buf| {
                let mut codec = LineCodec::default();
                let mut n = 0;
                while let Ok(Some(line)) = codec.decode(&mut buf) {
                    n += line.len();
                }
                n
            },
            BatchSize::SmallInput,
        )
    });
    let long = vec![b'x'; 60 * 1024];
    g.throughput(Throughput::Bytes(long.len() as u64));
    g.bench_function("60 KiB line in 64-byte reads", |b| {
        b.iter(|| {
            let mut codec = LineCodec::default();
            let mut buf = BytesMut::with_capacity(long.len() + 1);
            for chunk in long.chunks(64) {
                buf.extend_from_slice(chunk);
                assert!(matches!(codec.decode(&mut buf), Ok(None)));
            }
            buf.extend_from_slice(b"\n");
            codec.decode(&mut buf).ok().flatten().map(|l| l.len())
        })
    });
    g.finish();
}

/// The per-message log line of an IAMAT and its reply (escaping both), as the server
/// formats it for every client message at the default log level.
fn message_log_line(c: &mut Criterion) {
    let msg = b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997";
    let reply =
        b"AT Goloman +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997\n";
    let stamp = b"2026-11-26T07:00:00.000000Z";
    let prefix = herd_net::msglog::message_prefix("127.0.0.1:40000".parse().expect("addr"));
    let mut out = Vec::with_capacity(64 * 1024);
    let mut g = c.benchmark_group("msglog");
    g.throughput(Throughput::Elements(1));
    g.bench_function("iamat message line", |b| {
        b.iter(|| {
            if out.len() > 60 * 1024 {
                out.clear();
            }
            herd_net::msglog::push_message_with(&mut out, stamp, &prefix, msg, reply);
            out.len()
        })
    });
    g.finish();
}

criterion_group!(benches, pipelined, message_log_line);
criterion_main!(benches);
