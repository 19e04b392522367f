//! The arguments of `load`, checked into the [`Plan`] every request generator shares, and
//! the targets they name.

use std::time::Duration;

use clap::{Args, ValueEnum};
use herd_core::{ClientId, Location, MaxItems, RadiusKm, ServerName};

use crate::config::{Herd, Target};
use crate::error::Failure;
use crate::util::{now_nanos, write_posix};
use crate::Global;

/// How requests travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// Connect, send one request, half-close, read to the end: the assignment's own client.
    Classic,
    /// Persistent connections, each with up to `--depth` requests in flight.
    Pipelined,
}

/// Arguments of `load`.
#[derive(Debug, Args)]
pub(crate) struct LoadArgs {
    /// classic (a connection per request) or pipelined (persistent connections).
    #[arg(long, value_enum, default_value = "pipelined")]
    pub(super) mode: Mode,
    /// Connections (pipelined) or concurrent clients (classic).
    #[arg(short = 'c', long, default_value_t = 64)]
    pub(super) connections: usize,
    /// Requests in flight per connection (pipelined).
    #[arg(short = 'd', long, default_value_t = 16)]
    pub(super) depth: usize,
    /// Run for this long (default 10s unless --requests is given).
    #[arg(long, value_parser = crate::util::parse_duration, conflicts_with = "requests")]
    pub(super) duration: Option<Duration>,
    /// Send this many requests in all.
    #[arg(short = 'n', long)]
    pub(super) requests: Option<u64>,
    /// Size K of the client id pool (the store grows to K clients).
    #[arg(short = 'k', long, default_value_t = 1000)]
    pub(super) clients: u64,
    /// Share of WHATSAT among requests, 0 to 1 (the rest are IAMAT).
    #[arg(long, default_value_t = 0.0)]
    pub(super) whatsat_ratio: f64,
    /// WHATSAT radius in km.
    #[arg(long, default_value = "1")]
    pub(super) radius: String,
    /// WHATSAT max items.
    #[arg(long, default_value = "1")]
    pub(super) max_items: String,
    /// Every IAMAT carries a new, increasing client time, so each is stored and flooded
    /// (each connection then owns its own clients, which needs --clients ≥ --connections).
    #[arg(long)]
    pub(super) fresh: bool,
    /// Client ids are PREFIX-<n>.
    #[arg(long, default_value = "load")]
    pub(super) prefix: String,
    /// Location sent in every IAMAT.
    #[arg(
        long,
        allow_hyphen_values = true,
        default_value = "+34.068930-118.445127"
    )]
    pub(super) location: String,
    /// Spread over every server of the config.
    #[arg(long, conflicts_with = "echo_server")]
    pub(crate) all: bool,
    /// Run a trivial in-process server and load it (measures the load generator itself).
    #[arg(long)]
    pub(super) echo_server: bool,
    /// Skip the warm-up (one IAMAT per client per target before a run with WHATSATs).
    #[arg(long)]
    pub(super) no_warmup: bool,
    /// Runtime worker threads (all cores by default; 1 runs everything on the main thread).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// Pace the run at N requests/s in all, spread evenly over the connections (each sends
    /// every connections/N s, their turns interleaved); a connection that falls behind
    /// catches up as fast as --depth allows. A paced connection takes its replies at its
    /// next turn (no wake-up per reply), so its latency figures are high by up to one turn.
    /// Without it, every connection sends as fast as replies come back.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(super) rate: Option<u64>,
}

/// Everything a request generator needs, shared by the workers.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) prefix: Vec<u8>,
    pub(super) pool: u64,
    pub(super) whatsat_per_million: u64,
    pub(super) location: Vec<u8>,
    pub(super) fixed_time: Vec<u8>,
    pub(super) base_nanos: u128,
    pub(super) fresh: bool,
    pub(super) radius: String,
    pub(super) max: MaxItems,
}

/// Validated settings of a run.
pub(super) fn plan(a: &LoadArgs) -> Result<Plan, Failure> {
    if a.connections == 0 || a.depth == 0 || a.clients == 0 {
        return Err(Failure::usage(
            "--connections, --depth and --clients must be at least 1",
        ));
    }
    if a.fresh && a.clients < u64::try_from(a.connections).unwrap_or(u64::MAX) {
        return Err(Failure::usage(
            "--fresh gives each connection its own clients: --clients must be at least --connections",
        ));
    }
    if !(0.0..=1.0).contains(&a.whatsat_ratio) {
        return Err(Failure::usage("--whatsat-ratio must be between 0 and 1"));
    }
    let prefix = format!("{}-0", a.prefix);
    ClientId::new(prefix.as_bytes())
        .map_err(|_| Failure::usage(format!("bad --prefix {:?}: no white space", a.prefix)))?;
    Location::parse(a.location.as_bytes())
        .map_err(|_| Failure::usage(format!("bad --location {:?}", a.location)))?;
    RadiusKm::parse(a.radius.as_bytes()).map_err(|_| {
        Failure::usage(format!(
            "bad --radius {:?}: more than 0, at most 50",
            a.radius
        ))
    })?;
    let max = MaxItems::parse(a.max_items.as_bytes())
        .map_err(|_| Failure::usage(format!("bad --max-items {:?}: 1 to 20", a.max_items)))?;
    let base_nanos = now_nanos();
    let mut fixed_time = Vec::new();
    write_posix(base_nanos, &mut fixed_time);
    Ok(Plan {
        prefix: a.prefix.as_bytes().to_vec(),
        pool: a.clients,
        // A share in [0, 1] times a million fits easily.
        whatsat_per_million: (a.whatsat_ratio * 1e6).round() as u64,
        location: a.location.as_bytes().to_vec(),
        fixed_time,
        base_nanos,
        fresh: a.fresh,
        radius: a.radius.clone(),
        max,
    })
}

pub(super) async fn resolve(g: &Global, a: &LoadArgs) -> Result<Vec<Target>, Failure> {
    if a.echo_server {
        if a.all || !g.server.is_empty() || !g.to.is_empty() {
            return Err(Failure::usage(
                "--echo-server loads its own in-process server: no --all, --server or --to",
            ));
        }
        let name = ServerName::new("Echo").map_err(|_| Failure::usage("bad echo name"))?;
        let addr = crate::echo::spawn("127.0.0.1:0", name).await?;
        return Ok(vec![Target {
            label: format!("echo-server {addr}"),
            ..Target::address(&addr.to_string())
        }]);
    }
    if a.all {
        if !g.server.is_empty() || !g.to.is_empty() {
            return Err(Failure::usage(
                "--all takes every server of the config: no --server or --to",
            ));
        }
        let herd = Herd::load(g.config.as_deref())?;
        return Ok(herd.servers.iter().map(Target::of).collect());
    }
    crate::config::targets(&g.server, &g.to, g.config.as_deref())
}
