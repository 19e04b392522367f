//! `load`: the benchmark client.
//!
//! Workers (one per connection, or per concurrent client in classic mode) are spread over the
//! targets round-robin. Each keeps its buffers for the whole run and writes requests with
//! herd-core's formatting (or, under `--resp`, as RESP commands to Redis: the same
//! connections, window and client ids, so both sides are driven by the same code); replies
//! are framed by what was sent (one line, up to the empty line of a WHATSAT or NEARBY reply,
//! or one RESP reply) and classified by their first bytes (`AT `, `? `, or RESP's `-`)
//! without allocating. Latencies go into a per-worker HDR histogram (NEARBY's also into one
//! of their own), merged at the end.
//!
//! Layout: [`args`] holds the arguments and the checked plan; [`pace`] the shared budget and
//! `--rate` turns; [`gen`] the request generator; [`resp`] RESP's commands and framing;
//! [`workers`] the connections that send and count; [`fences`] the fences kept open during
//! a run and their events matched to IAMATs; [`report`](mod@report) the counts, the progress
//! bar and the summary. This module runs them.

mod args;
mod fences;
mod gen;
mod pace;
mod report;
mod resp;
mod workers;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use self::args::{plan, resolve, Mode, Plan, Proto};
use self::fences::Acks;
use self::gen::{home_of, write_id, write_update, Gen};
use self::pace::{Pace, Shared};
use self::report::{progress, report, Stats};
use self::workers::Worker;
use crate::config::Target;
use crate::error::Failure;
use crate::reply::{Expect, Kind};
use crate::util::write_posix;
use crate::Global;

pub(crate) use self::args::LoadArgs;

/// Run length when neither `--duration` nor `--requests` is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// Connections per target the warm-up uses at once.
const WARM_CONNS: u64 = 4;
/// Requests per warm-up write.
const WARM_BATCH: u64 = 256;

/// One warm-up connection: the clients `first`, `first + step`, ... of the pool, in batches.
async fn warm_one(
    target: Target,
    plan: Arc<Plan>,
    first: u64,
    step: u64,
    timeout: Duration,
) -> Result<(), Failure> {
    let mut stream = crate::conn::connect(&target.addr, timeout).await?;
    let mut time = Vec::new();
    // A second older than the run's own times, so the run's IAMATs still count as new.
    write_posix(plan.base_nanos.saturating_sub(1_000_000_000), &mut time);
    let (mut out, mut id, mut scratch, mut input) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let bad = |what: String| Failure::net(format!("warm-up at {}: {what}", target.label));
    let mut client = first;
    while client < plan.pool {
        out.clear();
        let mut batch = 0;
        while batch < WARM_BATCH && client < plan.pool {
            write_id(&plan.prefix, client, &mut id);
            write_update(
                &plan,
                &id,
                home_of(&plan, client),
                &time,
                &mut scratch,
                &mut out,
            );
            batch += 1;
            client += step;
        }
        match tokio::time::timeout(timeout, stream.write_all(&out)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(bad(format!("writing: {e}"))),
            Err(_) => return Err(bad("a write timed out".into())),
        }
        while batch > 0 {
            let framed = match &plan.proto {
                Proto::Herd => crate::reply::frame(&input, Expect::Line),
                Proto::Resp(_) => resp::frame(&input),
            };
            match framed {
                Some((len, Kind::At)) => {
                    input.drain(..len);
                    batch -= 1;
                    continue;
                }
                Some((_, _)) => {
                    let shown =
                        String::from_utf8_lossy(&input[..input.len().min(200)]).into_owned();
                    return Err(bad(format!("the reply {shown:?} is not a normal one")));
                }
                None => {}
            }
            input.reserve(16 * 1024);
            match tokio::time::timeout(timeout, stream.read_buf(&mut input)).await {
                Ok(Ok(0)) => return Err(bad("the server closed the connection".into())),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(bad(format!("reading: {e}"))),
                Err(_) => return Err(bad(format!("no reply within {timeout:?}"))),
            }
        }
    }
    Ok(())
}

/// Before a run with WHATSATs or NEARBYs: one IAMAT (or GEOADD) per client of the pool at
/// each target, each client at its home position (see [`home_of`]), so WHATSATs find their
/// client and NEARBYs a filled store.
async fn warm_up(targets: &[Target], plan: &Arc<Plan>, timeout: Duration) -> Result<(), Failure> {
    for target in targets {
        let conns = WARM_CONNS.min(plan.pool);
        let tasks: Vec<_> = (0..conns)
            .map(|c| {
                tokio::spawn(warm_one(
                    target.clone(),
                    Arc::clone(plan),
                    c,
                    conns,
                    timeout,
                ))
            })
            .collect();
        for t in tasks {
            t.await
                .map_err(|e| Failure::net(format!("a warm-up task failed: {e}")))??;
        }
    }
    Ok(())
}

/// `load`: runs the benchmark and prints the summary.
pub(crate) async fn run(g: &Global, a: LoadArgs) -> Result<u8, Failure> {
    if g.tls {
        return Err(Failure::usage(
            "load speaks plain TCP only (--tls is for iamat, whatsat, send and probe)",
        ));
    }
    let plan = Arc::new(plan(&a)?);
    let targets = resolve(g, &a).await?;
    let warm = plan.whatsat_per_million > 0 || plan.nearby_per_million > 0 || a.warmup_only;
    if warm && !a.no_warmup {
        let t0 = Instant::now();
        warm_up(&targets, &plan, g.timeout).await?;
        if a.warmup_only {
            let secs = t0.elapsed().as_secs_f64();
            let clients = plan.pool;
            if g.json {
                println!(
                    "{}",
                    json!({"warmup": {"clients": clients, "targets": targets.len(), "elapsed_s": secs}})
                );
            } else {
                println!(
                    "warm-up: {clients} clients at each of {} target(s) in {secs:.3} s",
                    targets.len()
                );
            }
            return Ok(0);
        }
    }
    let acks = Arc::new(Acks::new(Instant::now()));
    let fences = fences::open(g, &a, &plan, &targets, &acks).await?;
    let proto = Arc::new(plan.proto.clone());
    let duration = match (a.duration, a.requests) {
        (Some(d), _) => Some(d),
        (None, Some(_)) => None,
        (None, None) => Some(DEFAULT_DURATION),
    };
    let started = Instant::now();
    let shared = Arc::new(Shared::new(a.requests, duration.map(|d| started + d)));
    let workers = u64::try_from(a.connections).unwrap_or(u64::MAX);
    let mut handles = Vec::with_capacity(a.connections);
    for i in 0..a.connections {
        let worker = Worker {
            addr: Arc::from(targets[i % targets.len()].addr.as_str()),
            shared: Arc::clone(&shared),
            timeout: g.timeout,
            depth: a.depth,
            pace: a.rate.map(|r| Pace::new(started, r, i, a.connections)),
            proto: Arc::clone(&proto),
            acks: fences.is_some().then(|| Arc::clone(&acks)),
        };
        let gen = Gen::new(Arc::clone(&plan), u64::try_from(i).unwrap_or(0), workers);
        handles.push(match a.mode {
            Mode::Pipelined => tokio::spawn(worker.pipelined(gen)),
            Mode::Classic => tokio::spawn(worker.classic(gen)),
        });
    }
    let progress = tokio::spawn(progress(Arc::clone(&shared), duration, a.requests, g.json));
    let interrupt = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                shared.stop.store(true, Ordering::Relaxed);
            }
        })
    };
    let mut total = Stats::new();
    for h in handles {
        let stats = h
            .await
            .map_err(|e| Failure::net(format!("a load worker failed: {e}")))?;
        total.merge(&stats);
    }
    let elapsed = started.elapsed();
    interrupt.abort();
    shared.stop.store(true, Ordering::Relaxed);
    let _ = progress.await;
    let fence_report = match fences {
        Some(f) => Some(f.finish().await),
        None => None,
    };
    report(g, &a, &targets, &total, elapsed, fence_report.as_ref())
}
