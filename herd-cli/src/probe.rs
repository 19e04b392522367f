//! `probe`: how long a location update takes to travel from server A to server B.
//!
//! Each round uses a fresh client id. First a seed IAMAT at A, and B is polled until it holds
//! it: from then on B knows the client, so a WHATSAT there is answered from B's own store and
//! never starts a herd query (which would fetch the record instead of waiting for the flood).
//! Then the measured IAMAT (a newer client time) goes to A, and B is polled with WHATSAT (small
//! radius, one item) over one persistent connection until its AT line is the one A returned.
//! The figure runs from writing that IAMAT to reading B's first reply that carries it.

use std::time::{Duration, Instant};

use clap::Args;
use herd_core::protocol::{write_iamat, write_whatsat};
use herd_core::{ClientId, Location, MaxItems, RadiusKm};
use serde_json::json;

use crate::config::{Herd, Target};
use crate::conn::Conn;
use crate::error::Failure;
use crate::util::{micros, now_nanos, quantile, write_posix};
use crate::Global;

/// What the figure includes, printed with it.
fn includes(a: &str, b: &str) -> String {
    format!(
        "from writing the IAMAT to {a} until reading {b}'s first WHATSAT reply that carries \
         {a}'s new AT line: {a}'s handling of the IAMAT, the flood along the links from {a} to \
         {b}, and up to one WHATSAT round trip at {b} (the polling granularity, which includes \
         {b}'s Places lookup: run the servers with --places offline)"
    )
}

/// Arguments of `probe`.
#[derive(Debug, Args)]
pub(crate) struct ProbeArgs {
    /// Server A, where the IAMAT goes: a name from the config, or HOST:PORT.
    from: String,
    /// Server B, which is watched: a name from the config, or HOST:PORT.
    to: String,
    /// Rounds, each with a fresh client id.
    #[arg(short = 'r', long, default_value_t = 20)]
    repeat: usize,
    /// Bound on one round's wait for B to hold a record.
    #[arg(long, value_parser = crate::util::parse_duration, default_value = "10s")]
    deadline: Duration,
    /// Pause between two WHATSATs at B (0: back to back).
    #[arg(long, value_parser = crate::util::parse_duration, default_value = "0s")]
    poll_interval: Duration,
    /// WHATSAT radius in km.
    #[arg(long, default_value = "0.1")]
    radius: String,
    /// Location sent in the IAMATs.
    #[arg(
        long,
        allow_hyphen_values = true,
        default_value = "+34.068930-118.445127"
    )]
    location: String,
    /// Client ids are PREFIX-<pid>-<start>-<round>.
    #[arg(long, default_value = "probe")]
    prefix: String,
}

/// A name from the config, or an address: one with a `:`, or an IP address without a port
/// (which is then refused as one, not looked up as a name).
fn resolve(name: &str, herd: &Herd) -> Result<Target, Failure> {
    if name.contains(':') || name.parse::<std::net::IpAddr>().is_ok() {
        let addr = crate::util::parse_server_addr(name).map_err(Failure::usage)?;
        return Ok(Target::address(&addr));
    }
    herd.get(name).map(Target::of)
}

/// Timings of one round.
#[derive(Debug, Clone, Copy)]
struct Round {
    propagation: Duration,
    iamat_rtt: Duration,
    polls: u32,
}

/// The fixed parts of every round.
#[derive(Debug)]
struct Probe {
    a: Conn,
    b: Conn,
    a_label: String,
    b_label: String,
    location: Vec<u8>,
    radius: String,
    deadline: Duration,
    poll_interval: Duration,
    whatsat_rtts: Vec<Duration>,
}

impl Probe {
    async fn iamat(&mut self, client: &[u8], nanos: u128) -> Result<Vec<u8>, Failure> {
        let mut time = Vec::new();
        write_posix(nanos, &mut time);
        let mut line = Vec::new();
        write_iamat(client, &self.location, &time, &mut line);
        let reply = self
            .a
            .request(line.strip_suffix(b"\n").unwrap_or(&line))
            .await?;
        match reply.record() {
            Some(record) => Ok(record.at_line().to_vec()),
            None => Err(Failure::net(format!(
                "{} did not accept the probe's IAMAT: {:?}",
                self.a_label,
                String::from_utf8_lossy(&reply.wire())
            ))),
        }
    }

    /// Polls B until its record for `client` is `want`; returns how many WHATSATs it took.
    async fn watch(&mut self, client: &[u8], want: &[u8]) -> Result<u32, Failure> {
        let started = Instant::now();
        let mut line = Vec::new();
        let one = MaxItems::parse(b"1").map_err(|_| Failure::usage("max items"))?;
        write_whatsat(client, &self.radius, one, &mut line);
        let request = line.strip_suffix(b"\n").unwrap_or(&line).to_vec();
        let mut polls = 0;
        loop {
            let sent = Instant::now();
            let reply = self.b.request(&request).await?;
            self.whatsat_rtts.push(sent.elapsed());
            polls += 1;
            if reply.record().is_some_and(|r| r.at_line() == want) {
                return Ok(polls);
            }
            if started.elapsed() >= self.deadline {
                return Err(Failure::net(format!(
                    "{} did not hold the record within {:?} (last reply {:?})",
                    self.b_label,
                    self.deadline,
                    String::from_utf8_lossy(&reply.wire())
                )));
            }
            if !self.poll_interval.is_zero() {
                tokio::time::sleep(self.poll_interval).await;
            }
        }
    }

    async fn round(&mut self, client: &[u8]) -> Result<Round, Failure> {
        let seed_time = now_nanos();
        let seed = self.iamat(client, seed_time).await?;
        self.watch(client, &seed).await?;
        let started = Instant::now();
        let line = self.iamat(client, now_nanos().max(seed_time + 1)).await?;
        let iamat_rtt = started.elapsed();
        let polls = self.watch(client, &line).await?;
        Ok(Round {
            propagation: started.elapsed(),
            iamat_rtt,
            polls,
        })
    }
}

/// `probe`: R rounds, then the distribution.
pub(crate) async fn run(g: &Global, a: ProbeArgs) -> Result<u8, Failure> {
    if a.repeat == 0 {
        return Err(Failure::usage("--repeat must be at least 1"));
    }
    RadiusKm::parse(a.radius.as_bytes()).map_err(|_| {
        Failure::usage(format!(
            "bad --radius {:?}: more than 0, at most 50",
            a.radius
        ))
    })?;
    let location = Location::parse(a.location.as_bytes())
        .map_err(|_| Failure::usage(format!("bad --location {:?}", a.location)))?;
    let herd = Herd::load(g.config.as_deref())?;
    let (ta, tb) = (resolve(&a.from, &herd)?, resolve(&a.to, &herd)?);
    let tls = g.client_tls()?;
    let mut probe = Probe {
        a: Conn::to(&ta, tls.as_ref(), g.timeout).await?,
        b: Conn::to(&tb, tls.as_ref(), g.timeout).await?,
        a_label: ta.label.clone(),
        b_label: tb.label.clone(),
        location: location.as_bytes().to_vec(),
        radius: a.radius.clone(),
        deadline: a.deadline,
        poll_interval: a.poll_interval,
        whatsat_rtts: Vec::new(),
    };
    let run_id = now_nanos() / 1_000_000;
    let mut rounds = Vec::with_capacity(a.repeat);
    for i in 0..a.repeat {
        let client = format!("{}-{}-{run_id}-{i}", a.prefix, std::process::id());
        if ClientId::new(client.as_bytes()).is_err() {
            return Err(Failure::usage("--prefix must not hold white space"));
        }
        rounds.push(probe.round(client.as_bytes()).await?);
    }
    report(g, &ta, &tb, &rounds, &mut probe.whatsat_rtts);
    Ok(0)
}

fn report(g: &Global, ta: &Target, tb: &Target, rounds: &[Round], whatsat: &mut [Duration]) {
    let mut prop: Vec<Duration> = rounds.iter().map(|r| r.propagation).collect();
    let mut iamat: Vec<Duration> = rounds.iter().map(|r| r.iamat_rtt).collect();
    prop.sort();
    iamat.sort();
    whatsat.sort();
    let q = |v: &[Duration], x: f64| quantile(v, x).map_or(0.0, micros);
    let polls: u32 = rounds.iter().map(|r| r.polls).sum();
    if g.json {
        let v = json!({
            "from": ta.label,
            "to": tb.label,
            "rounds": rounds.len(),
            "propagation_us": {
                "p50": q(&prop, 0.5), "p90": q(&prop, 0.9), "p99": q(&prop, 0.99), "max": q(&prop, 1.0),
            },
            "iamat_rtt_us_p50": q(&iamat, 0.5),
            "whatsat_rtt_us_p50": q(whatsat, 0.5),
            "polls_per_round": f64::from(polls) / rounds.len() as f64,
            "includes": includes(&ta.label, &tb.label),
        });
        println!("{v}");
        return;
    }
    println!(
        "propagation {} → {} over {} rounds, µs: p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
        ta.label,
        tb.label,
        rounds.len(),
        q(&prop, 0.5),
        q(&prop, 0.9),
        q(&prop, 0.99),
        q(&prop, 1.0)
    );
    println!(
        "for scale, µs: IAMAT round trip at {} p50 {:.1}; WHATSAT round trip at {} p50 {:.1}; {:.1} polls per round",
        ta.label,
        q(&iamat, 0.5),
        tb.label,
        q(whatsat, 0.5),
        f64::from(polls) / rounds.len() as f64
    );
    println!("each figure runs {}", includes(&ta.label, &tb.label));
}
