//! `load`: the benchmark client.
//!
//! Workers (one per connection, or per concurrent client in classic mode) are spread over the
//! targets round-robin. Each keeps its buffers for the whole run and writes requests with
//! herd-core's formatting; replies are framed by what was sent (one line, or up to the empty
//! line of a WHATSAT reply) and classified by their first bytes (`AT ` or `? `) without
//! allocating. Latencies go into a per-worker HDR histogram, merged at the end.
//!
//! Layout: [`args`] holds the arguments and the checked plan; [`pace`] the shared budget and
//! `--rate` turns; [`gen`] the request generator; [`workers`] the connections that send and
//! count; [`report`](mod@report) the counts, the progress bar and the summary. This module runs them.

mod args;
mod gen;
mod pace;
mod report;
mod workers;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_core::protocol::write_iamat;

use self::args::{plan, resolve, Mode, Plan};
use self::gen::Gen;
use self::pace::{Pace, Shared};
use self::report::{progress, report, Stats};
use self::workers::Worker;
use crate::config::Target;
use crate::conn::Conn;
use crate::error::Failure;
use crate::reply::Expect;
use crate::util::{write_posix, write_u128};
use crate::Global;

pub(crate) use self::args::LoadArgs;

/// Run length when neither `--duration` nor `--requests` is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// Before a run with WHATSATs: one IAMAT per client of the pool at each target, so WHATSATs
/// find their client.
async fn warm_up(targets: &[Target], plan: &Plan, timeout: Duration) -> Result<(), Failure> {
    let mut time = Vec::new();
    // A second older than the run's own times, so the run's IAMATs still count as new.
    write_posix(plan.base_nanos.saturating_sub(1_000_000_000), &mut time);
    for target in targets {
        let mut conn = Conn::open(&target.addr, &target.label, timeout).await?;
        let mut out = Vec::new();
        let mut id = Vec::new();
        let mut start = 0;
        while start < plan.pool {
            let end = (start + 256).min(plan.pool);
            out.clear();
            for client in start..end {
                id.clear();
                id.extend_from_slice(&plan.prefix);
                id.push(b'-');
                write_u128(u128::from(client), &mut id);
                write_iamat(&id, &plan.location, &time, &mut out);
            }
            conn.writer.write(&out).await?;
            for _ in start..end {
                conn.reader.reply(Expect::Line).await?;
            }
            start = end;
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
    if plan.whatsat_per_million > 0 && !a.no_warmup {
        warm_up(&targets, &plan, g.timeout).await?;
    }
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
    report(g, &a, &targets, &total, elapsed)
}
