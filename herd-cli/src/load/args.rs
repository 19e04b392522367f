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
    /// Share of `NEARBY POINT <location> <km> <n>` among requests, 0 to 1 (herd extension;
    /// with --resp, `GEOSEARCH ... BYRADIUS ... COUNT n ASC`). Their latency is reported
    /// apart.
    #[arg(long, default_value_t = 0.0)]
    pub(super) nearby_ratio: f64,
    /// NEARBY radius in km (more than 0, at most 50).
    #[arg(long, default_value = "1")]
    pub(super) nearby_km: String,
    /// NEARBY max items (1 to 1000).
    #[arg(long, default_value = "50")]
    pub(super) nearby_count: String,
    /// Spread positions over a square of this many km a side around --location: every IAMAT
    /// (and the warm-up's) at a random point of it, every NEARBY about one. Without it every
    /// request is at --location.
    #[arg(long, value_name = "KM")]
    pub(super) area: Option<f64>,
    /// Only the warm-up (one IAMAT, or GEOADD, per client of the pool at each target), then
    /// exit: fills a store for a later run or a memory figure.
    #[arg(long)]
    pub(super) warmup_only: bool,
    /// Speak RESP to a Redis server instead: each IAMAT is `GEOADD <key> <lon> <lat> <client>`
    /// and each NEARBY `GEOSEARCH <key> FROMLONLAT <lon> <lat> BYRADIUS <km> km COUNT <n> ASC`,
    /// with the same connections, window, threads and client ids.
    #[arg(long, conflicts_with_all = ["echo_server", "fences"])]
    pub(super) resp: bool,
    /// The Redis key of --resp.
    #[arg(long, default_value = "herd", requires = "resp")]
    pub(super) resp_key: String,
    /// Keep this many fences open while loading (herd extension), placed at random in the
    /// --area, on --fence-server/--fence-to (the first target by default); their ENTER and
    /// EXIT events are counted and each matched to its IAMAT (needs --fresh) for the event
    /// latency: from the IAMAT's AT reply to the event at the fence connection.
    #[arg(long, default_value_t = 0, value_name = "F")]
    pub(super) fences: u64,
    /// Radius of each fence, km.
    #[arg(long, default_value = "0.1", value_name = "KM")]
    pub(super) fence_km: String,
    /// Most fences on one subscriber connection (the server's per-connection limit is 100
    /// by default).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub(super) fences_per_conn: u64,
    /// Where the fences are made: HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "fence_to", value_parser = crate::util::parse_server_addr)]
    pub(super) fence_server: Option<String>,
    /// Where the fences are made: a server name of the config.
    #[arg(long, value_name = "NAME")]
    pub(super) fence_to: Option<String>,
}

/// Which protocol the load speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Proto {
    /// The herd's client protocol.
    Herd,
    /// RESP to Redis, on this key.
    Resp(Vec<u8>),
}

/// The square positions are drawn from: its centre and extent in degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Area {
    pub(super) lat: f64,
    pub(super) lon: f64,
    /// Height in degrees of latitude.
    pub(super) dlat: f64,
    /// Width in degrees of longitude.
    pub(super) dlon: f64,
}

impl Area {
    /// A square `km` a side around (`lat`, `lon`), kept inside the valid ranges.
    pub(super) fn new(lat: f64, lon: f64, km: f64) -> Self {
        const KM_PER_DEGREE: f64 = 111.195;
        let dlat = (km / KM_PER_DEGREE).min(180.0);
        let dlon = (km / (KM_PER_DEGREE * lat.to_radians().cos().max(0.01))).min(360.0);
        Self {
            lat,
            lon,
            dlat,
            dlon,
        }
    }

    /// The point at fractions `u`, `v` (each in [0, 1)) across the square.
    pub(super) fn point(&self, u: f64, v: f64) -> (f64, f64) {
        let lat = (self.lat + (u - 0.5) * self.dlat).clamp(-90.0, 90.0);
        let mut lon = self.lon + (v - 0.5) * self.dlon;
        if lon > 180.0 {
            lon -= 360.0;
        } else if lon < -180.0 {
            lon += 360.0;
        }
        (lat, lon)
    }
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
    pub(super) nearby_per_million: u64,
    pub(super) nearby_km: String,
    pub(super) nearby_count: String,
    /// Where positions come from; `None`: every request at `location`.
    pub(super) area: Option<Area>,
    /// `location` as degrees.
    pub(super) center: (f64, f64),
    pub(super) proto: Proto,
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
    if !(0.0..=1.0).contains(&a.nearby_ratio) || a.whatsat_ratio + a.nearby_ratio > 1.0 {
        return Err(Failure::usage(
            "--nearby-ratio must be between 0 and 1, and with --whatsat-ratio at most 1",
        ));
    }
    if a.resp && a.whatsat_ratio > 0.0 {
        return Err(Failure::usage(
            "--resp has no WHATSAT (Redis has no places): use --nearby-ratio for GEOSEARCH",
        ));
    }
    RadiusKm::parse(a.nearby_km.as_bytes()).map_err(|_| {
        Failure::usage(format!(
            "bad --nearby-km {:?}: more than 0, at most 50",
            a.nearby_km
        ))
    })?;
    let count_ok = !a.nearby_count.is_empty()
        && a.nearby_count.bytes().all(|b| b.is_ascii_digit())
        && a.nearby_count
            .parse::<u32>()
            .is_ok_and(|n| (1..=u32::from(herd_core::protocol::MAX_NEARBY)).contains(&n));
    if !count_ok {
        return Err(Failure::usage(format!(
            "bad --nearby-count {:?}: 1 to 1000",
            a.nearby_count
        )));
    }
    if let Some(km) = a.area {
        if !(km > 0.0 && km <= 20_000.0) {
            return Err(Failure::usage(format!(
                "bad --area {km}: more than 0, at most 20000 km"
            )));
        }
    }
    if a.fences > 0 {
        if !a.fresh {
            return Err(Failure::usage(
                "--fences needs --fresh: an event is matched to its IAMAT by its client time",
            ));
        }
        if a.fences_per_conn == 0 {
            return Err(Failure::usage("--fences-per-conn must be at least 1"));
        }
        RadiusKm::parse(a.fence_km.as_bytes()).map_err(|_| {
            Failure::usage(format!(
                "bad --fence-km {:?}: more than 0, at most 50",
                a.fence_km
            ))
        })?;
    } else if a.fence_server.is_some() || a.fence_to.is_some() {
        return Err(Failure::usage(
            "--fence-server and --fence-to say where --fences go: give --fences too",
        ));
    }
    if a.warmup_only && a.requests.is_some() | a.duration.is_some() {
        return Err(Failure::usage(
            "--warmup-only sends only the warm-up: no --requests or --duration",
        ));
    }
    let prefix = format!("{}-0", a.prefix);
    ClientId::new(prefix.as_bytes())
        .map_err(|_| Failure::usage(format!("bad --prefix {:?}: no white space", a.prefix)))?;
    let center = Location::degrees(a.location.as_bytes())
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
        nearby_per_million: (a.nearby_ratio * 1e6).round() as u64,
        nearby_km: a.nearby_km.clone(),
        nearby_count: a.nearby_count.clone(),
        area: a.area.map(|km| Area::new(center.0, center.1, km)),
        center,
        proto: if a.resp {
            Proto::Resp(a.resp_key.as_bytes().to_vec())
        } else {
            Proto::Herd
        },
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
