//! What a run counted and how it is shown: error kinds, each worker's [`Stats`], the progress
//! bar, and the end-of-run summary with its exit code.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use super::args::{LoadArgs, Mode};
use super::fences::FenceReport;
use super::pace::Shared;
use crate::config::Target;
use crate::error::{Failure, EXIT_INVALID, EXIT_NET};
use crate::Global;

/// Kinds of failed requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ErrorKind {
    /// The server answered `? `.
    Invalid,
    /// A reply neither `AT ` nor `? `, or too long.
    Malformed,
    /// The connection could not be made.
    Connect,
    /// A wait exceeded `--timeout`.
    Timeout,
    /// The server closed with requests unanswered.
    Closed,
    /// A read or write failed.
    Io,
}

const KINDS: [(ErrorKind, &str); 6] = [
    (ErrorKind::Invalid, "invalid"),
    (ErrorKind::Malformed, "malformed"),
    (ErrorKind::Connect, "connect"),
    (ErrorKind::Timeout, "timeout"),
    (ErrorKind::Closed, "closed"),
    (ErrorKind::Io, "io"),
];

/// A latency histogram: nanoseconds from 1 ns to 1 hour at three significant figures.
pub(super) fn histogram() -> Histogram<u64> {
    // Fixed bounds, so creating it cannot fail.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("static histogram bounds are valid")
}

/// p50, p90, p99, p99.9 and the maximum of `h`, in µs.
pub(super) fn quantiles_us(h: &Histogram<u64>) -> [f64; 5] {
    let us = |v: u64| v as f64 / 1e3;
    [
        us(h.value_at_quantile(0.5)),
        us(h.value_at_quantile(0.9)),
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999)),
        us(h.max()),
    ]
}

/// What one worker counted.
#[derive(Debug)]
pub(super) struct Stats {
    pub(super) ok: u64,
    errors: [u64; 6],
    pub(super) latency: Histogram<u64>,
    /// Normal replies to NEARBY (or GEOSEARCH), also counted in `ok`.
    pub(super) nearby_ok: u64,
    /// Their latencies (also in `latency`).
    pub(super) nearby: Histogram<u64>,
}

impl Stats {
    pub(super) fn new() -> Self {
        Self {
            ok: 0,
            errors: [0; 6],
            latency: histogram(),
            nearby_ok: 0,
            nearby: histogram(),
        }
    }

    /// A normal reply to a request of `kind` after `ns` nanoseconds.
    pub(super) fn ok_reply(&mut self, kind: super::gen::Kind, ns: u64) {
        self.ok += 1;
        self.latency.saturating_record(ns.max(1));
        if kind == super::gen::Kind::Nearby {
            self.nearby_ok += 1;
            self.nearby.saturating_record(ns.max(1));
        }
    }

    pub(super) fn error(&mut self, kind: ErrorKind, count: u64) {
        let i = KINDS.iter().position(|(k, _)| *k == kind).unwrap_or(0);
        self.errors[i] += count;
    }

    pub(super) fn merge(&mut self, other: &Stats) {
        self.ok += other.ok;
        for (a, b) in self.errors.iter_mut().zip(other.errors) {
            *a += b;
        }
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.nearby_ok += other.nearby_ok;
        let _ = self.nearby.add(&other.nearby);
    }

    fn errors_total(&self) -> u64 {
        self.errors.iter().sum()
    }
}

pub(super) async fn progress(
    shared: Arc<Shared>,
    duration: Option<Duration>,
    requests: Option<u64>,
    json: bool,
) {
    if json || !std::io::stderr().is_terminal() {
        return;
    }
    let bar = match (requests, duration) {
        (Some(n), None) => indicatif::ProgressBar::new(n),
        (_, d) => {
            indicatif::ProgressBar::new(d.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0)))
        }
    };
    let template = if requests.is_some() && duration.is_none() {
        "{bar:40} {pos}/{len} replies  {per_sec}  {elapsed_precise}"
    } else {
        "{bar:40} {elapsed_precise}  {msg}"
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while !shared.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let done = shared.done.load(Ordering::Relaxed);
        if requests.is_some() && duration.is_none() {
            bar.set_position(done);
        } else {
            let secs = started.elapsed().as_secs_f64().max(1e-9);
            bar.set_position(u64::try_from(started.elapsed().as_millis()).unwrap_or(0));
            bar.set_message(format!("{done} replies, {:.0}/s", done as f64 / secs));
        }
    }
    bar.finish_and_clear();
}

/// The end-of-run figures.
#[derive(Debug)]
struct Summary<'a> {
    mode: &'static str,
    targets: Vec<&'a str>,
    connections: usize,
    depth: Option<usize>,
    /// `--rate`, if given.
    rate_limit: Option<u64>,
    secs: f64,
    ok: u64,
    errors: Vec<(&'static str, u64)>,
    /// Latency in µs at p50, p90, p99, p99.9 and the maximum.
    latency_us: [f64; 5],
    /// `herd` or `resp`.
    protocol: &'static str,
    /// NEARBY replies and their latency, when the mix has NEARBYs.
    nearby: Option<(u64, [f64; 5])>,
    /// The fences' figures, under `--fences`.
    fences: Option<&'a FenceReport>,
}

impl<'a> Summary<'a> {
    fn new(
        a: &LoadArgs,
        targets: &'a [Target],
        total: &Stats,
        elapsed: Duration,
        fences: Option<&'a FenceReport>,
    ) -> Self {
        Self {
            mode: match a.mode {
                Mode::Classic => "classic",
                Mode::Pipelined => "pipelined",
            },
            targets: targets.iter().map(|t| t.label.as_str()).collect(),
            connections: a.connections,
            depth: (a.mode == Mode::Pipelined).then_some(a.depth),
            rate_limit: a.rate,
            secs: elapsed.as_secs_f64().max(1e-9),
            ok: total.ok,
            errors: KINDS
                .iter()
                .map(|(_, name)| *name)
                .zip(total.errors)
                .collect(),
            latency_us: quantiles_us(&total.latency),
            protocol: if a.resp { "resp" } else { "herd" },
            nearby: (a.nearby_ratio > 0.0).then(|| (total.nearby_ok, quantiles_us(&total.nearby))),
            fences,
        }
    }

    fn rate(&self) -> f64 {
        self.ok as f64 / self.secs
    }

    fn to_json(&self) -> serde_json::Value {
        let errors: serde_json::Map<String, serde_json::Value> = self
            .errors
            .iter()
            .map(|(name, n)| ((*name).to_string(), json!(n)))
            .collect();
        let [p50, p90, p99, p99_9, max] = self.latency_us;
        let nearby = self.nearby.map(|(ok, [p50, p90, p99, p99_9, max])| {
            json!({"ok": ok, "requests_per_s": ok as f64 / self.secs,
                   "latency_us": {"p50": p50, "p90": p90, "p99": p99, "p99_9": p99_9, "max": max}})
        });
        json!({
            "protocol": self.protocol,
            "nearby": nearby,
            "fences": self.fences.map(FenceReport::to_json),
            "mode": self.mode,
            "targets": self.targets,
            "connections": self.connections,
            "depth": self.depth,
            "rate_limit": self.rate_limit,
            "elapsed_s": self.secs,
            "ok": self.ok,
            "errors": errors,
            "requests_per_s": self.rate(),
            "latency_us": {"p50": p50, "p90": p90, "p99": p99, "p99_9": p99_9, "max": max},
        })
    }

    fn print_text(&self) {
        let depth = self
            .depth
            .map(|d| format!(", depth {d}"))
            .unwrap_or_default();
        let paced = self
            .rate_limit
            .map(|r| format!(", paced at {r} requests/s"))
            .unwrap_or_default();
        let resp = if self.protocol == "resp" {
            " (RESP)"
        } else {
            ""
        };
        println!(
            "load {}{resp} against {}: {} connections{depth}{paced}",
            self.mode,
            self.targets.join(", "),
            self.connections
        );
        println!(
            "{} ok replies in {:.3} s: {:.0} requests/s",
            self.ok,
            self.secs,
            self.rate()
        );
        let errors: Vec<String> = self
            .errors
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        if errors.is_empty() {
            println!("errors: none");
        } else {
            println!("errors: {}", errors.join(", "));
        }
        if self.ok > 0 {
            let [p50, p90, p99, p99_9, max] = self.latency_us;
            println!(
                "latency µs: p50 {p50:.1}  p90 {p90:.1}  p99 {p99:.1}  p99.9 {p99_9:.1}  max {max:.1}"
            );
        }
        if let Some((ok, [p50, _, p99, _, max])) = self.nearby {
            println!("nearby: {ok} ok, latency µs: p50 {p50:.1}  p99 {p99:.1}  max {max:.1}");
        }
        if let Some(f) = self.fences {
            f.print_text();
        }
    }
}

/// Prints the summary; exit 0 when something was answered normally, 1 when every reply was
/// `? `, 2 when nothing was answered.
pub(super) fn report(
    g: &Global,
    a: &LoadArgs,
    targets: &[Target],
    total: &Stats,
    elapsed: Duration,
    fences: Option<&FenceReport>,
) -> Result<u8, Failure> {
    let summary = Summary::new(a, targets, total, elapsed, fences);
    if g.json {
        println!("{}", summary.to_json());
    } else {
        summary.print_text();
    }
    let invalid = total.errors[0];
    if total.ok > 0 || total.errors_total() == 0 {
        Ok(0)
    } else if invalid == total.errors_total() {
        eprintln!("herd-cli: every reply was `? ` (invalid)");
        Ok(EXIT_INVALID)
    } else {
        Err(Failure {
            code: EXIT_NET,
            message: format!("no request was answered ({} failed)", total.errors_total()),
        })
    }
}
