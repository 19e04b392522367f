//! herd-cli: the herd's client for people and scripts, its load generator and its
//! propagation probe.
//!
//! Layout: [`config`] reads a herd config (server name → dial address); [`reply`] is the one
//! reply type (what a request gets, read, written, shown as JSON, answered by the echo server),
//! built on herd-core's grammar; [`conn`] is one client connection that brings a reply's lines;
//! [`output`] prints replies as text or JSON; [`basic`] holds `iamat`, `whatsat`, `nearby` and
//! `send`; [`fence`] the geofence watcher (and, in [`fence::proto`], the fence lines `load`
//! shares);
//! [`load`] the benchmark client; [`echo`] the trivial in-process server that shows the load
//! generator is not the bottleneck; [`probe`] measures propagation between two servers; [`certs`] makes the herd's TLS files.
//!
//! Options: each command takes its own set of the shared options (`--server`, `--to`,
//! `--config`, `--json`, `--timeout`, `--tls`/`--ca`, and `load`'s `--all`), so its `--help`
//! lists only those; the same options may come before the command ([`Before`]), and are
//! merged into its own ([`Before::merge`]) or refused when it does not take them.
//!
//! Exit codes: 0 a normal reply, 1 the server answered `? `, 2 a connection, timeout or
//! malformed-reply error, 64 bad usage or config (all checked before connecting). With
//! `--json` a failure is also one JSON object on stdout, `{"error": ..., "exit_code": ...}`.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod basic;
mod certs;
mod config;
mod conn;
mod echo;
mod error;
mod fence;
mod load;
mod output;
mod probe;
mod reply;
mod util;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::error::Failure;

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "herd-cli",
    version,
    about = "Client, load generator and probe for the herd",
    after_help = "Options given before the command apply to it, as if given after it; each \
                  command takes only some of them (`herd-cli COMMAND --help` lists its own). \
                  Exit codes: 0 a normal reply, 1 the server answered `? `, 2 a connection, \
                  timeout or malformed-reply error, 64 bad usage or config (checked before \
                  connecting). With --json a failure is also one JSON object on stdout, \
                  {\"error\": MESSAGE, \"exit_code\": CODE}, its last line."
)]
struct Cli {
    #[command(flatten)]
    before: Before,
    #[command(subcommand)]
    command: Command,
}

/// `--server` and `--to`: which server(s) to talk to.
#[derive(Debug, Args, Clone, Default)]
struct ServerOpts {
    /// Server address(es) to talk to, HOST:PORT (comma separated for `load`).
    #[arg(long, value_name = "HOST:PORT", value_delimiter = ',', conflicts_with = "to", value_parser = util::parse_server_addr)]
    server: Vec<String>,
    /// Server name(s) from the herd config (comma separated for `load`).
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    to: Vec<String>,
}

/// `--config`.
#[derive(Debug, Args, Clone, Default)]
struct ConfigOpt {
    /// Herd config file (JSON); the built-in default herd when absent.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// `--json`.
#[derive(Debug, Args, Clone, Default)]
struct JsonOpt {
    /// Print JSON (one object per reply, or one summary object); a failure is one more
    /// object, {"error": MESSAGE, "exit_code": CODE}, as stdout's last line.
    #[arg(long)]
    json: bool,
}

/// `--timeout`.
#[derive(Debug, Args, Clone, Default)]
struct TimeoutOpt {
    /// Bound on every network wait (connect, write, each reply), e.g. 500ms, 5s, 1m
    /// (default 10s).
    #[arg(long, value_name = "DUR", value_parser = util::parse_timeout)]
    timeout: Option<Duration>,
}

/// `--tls` and `--ca`.
#[derive(Debug, Args, Clone, Default)]
struct TlsOpts {
    /// Talk TLS to the servers' TLS client address ("tls_listen"), verified with --ca.
    #[arg(long)]
    tls: bool,
    /// The herd's CA certificate (PEM) that --tls verifies servers against.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
}

/// The options of the commands that send requests to one server: `iamat`, `whatsat`, `send`.
#[derive(Debug, Args, Clone, Default)]
struct RequestOpts {
    #[command(flatten)]
    servers: ServerOpts,
    #[command(flatten)]
    config: ConfigOpt,
    #[command(flatten)]
    json: JsonOpt,
    #[command(flatten)]
    timeout: TimeoutOpt,
    #[command(flatten)]
    tls: TlsOpts,
}

/// The options that may come before the command (as in `herd-cli --to Hands whatsat ...`):
/// every option some command takes of these, `load`'s `--all` included. Each is applied to
/// the command, and refused (exit 64) when the command does not take it.
#[derive(Debug, Args, Clone, Default)]
struct Before {
    #[command(flatten)]
    request: RequestOpts,
    /// `load` only: spread over every server of the config.
    #[arg(long)]
    all: bool,
}

/// The settings a command runs with: the options given before it and after it, merged.
#[derive(Debug, Clone)]
pub(crate) struct Global {
    /// `--server` addresses, checked `HOST:PORT`.
    pub(crate) server: Vec<String>,
    /// `--to` names.
    pub(crate) to: Vec<String>,
    /// `--config`.
    pub(crate) config: Option<PathBuf>,
    /// `--json`.
    pub(crate) json: bool,
    /// `--timeout`, 10 s by default.
    pub(crate) timeout: Duration,
    /// `--tls` (always with `--ca`).
    pub(crate) tls: bool,
    /// `--ca`.
    pub(crate) ca: Option<PathBuf>,
}

/// `--timeout`'s default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl Global {
    /// The TLS settings asked for, if any.
    fn client_tls(&self) -> Result<Option<conn::ClientTls>, Failure> {
        match (&self.ca, self.tls) {
            (Some(ca), true) => conn::ClientTls::load(ca).map(Some),
            _ => Ok(None),
        }
    }
}

/// Which of the options that may come before a command the command takes.
#[derive(Debug, Clone, Copy, Default)]
struct Takes {
    servers: bool,
    config: bool,
    json: bool,
    timeout: bool,
    tls: bool,
    all: bool,
}

/// One single-valued option from before and after the command: given twice is an error.
fn one_of<T: Clone>(
    flag: &str,
    before: &Option<T>,
    after: &Option<T>,
) -> Result<Option<T>, Failure> {
    match (before, after) {
        (Some(_), Some(_)) => Err(Failure::usage(format!(
            "{flag} is given both before and after the command: give it once"
        ))),
        (Some(v), None) | (None, Some(v)) => Ok(Some(v.clone())),
        (None, None) => Ok(None),
    }
}

/// The group of options a flag belongs to (what [`Takes`] says yes or no to).
#[derive(Debug, Clone, Copy)]
enum Group {
    Servers,
    Config,
    Json,
    Timeout,
    Tls,
    All,
}

impl Takes {
    /// Whether the command takes the options of `group`.
    fn takes(&self, group: Group) -> bool {
        match group {
            Group::Servers => self.servers,
            Group::Config => self.config,
            Group::Json => self.json,
            Group::Timeout => self.timeout,
            Group::Tls => self.tls,
            Group::All => self.all,
        }
    }
}

impl Before {
    /// The flags given, each with its group.
    fn given(&self) -> Vec<(&'static str, Group)> {
        let r = &self.request;
        [
            ("--server", Group::Servers, !r.servers.server.is_empty()),
            ("--to", Group::Servers, !r.servers.to.is_empty()),
            ("--config", Group::Config, r.config.config.is_some()),
            ("--json", Group::Json, r.json.json),
            ("--timeout", Group::Timeout, r.timeout.timeout.is_some()),
            ("--tls", Group::Tls, r.tls.tls),
            ("--ca", Group::Tls, r.tls.ca.is_some()),
            ("--all", Group::All, self.all),
        ]
        .into_iter()
        .filter(|&(_, _, given)| given)
        .map(|(flag, group, _)| (flag, group))
        .collect()
    }

    /// Merges these options with the command's own (`after`, holding only what the command
    /// takes): refuses an option the command does not take, and one given twice.
    fn merge(&self, command: &str, takes: Takes, after: &RequestOpts) -> Result<Global, Failure> {
        for (flag, group) in self.given() {
            if !takes.takes(group) {
                let hint = if (flag == "--tls" || flag == "--ca") && command == "load" {
                    " (load speaks plain TCP only; --tls is for iamat, whatsat, send and probe)"
                } else {
                    ""
                };
                return Err(Failure::usage(format!(
                    "{flag} is not an option of {command}{hint}; see `herd-cli {command} --help`"
                )));
            }
        }
        let (b, a) = (&self.request, after);
        let mut server = b.servers.server.clone();
        server.extend(a.servers.server.iter().cloned());
        let mut to = b.servers.to.clone();
        to.extend(a.servers.to.iter().cloned());
        if !server.is_empty() && !to.is_empty() {
            return Err(Failure::usage(
                "--server and --to exclude each other: give the addresses or the names",
            ));
        }
        let tls = b.tls.tls || a.tls.tls;
        let ca = one_of("--ca", &b.tls.ca, &a.tls.ca)?;
        match (tls, &ca) {
            (true, None) => return Err(Failure::usage("--tls needs --ca FILE (the herd's CA)")),
            (false, Some(_)) => return Err(Failure::usage("--ca is only used with --tls")),
            _ => {}
        }
        Ok(Global {
            server,
            to,
            config: one_of("--config", &b.config.config, &a.config.config)?,
            json: b.json.json || a.json.json,
            timeout: one_of("--timeout", &b.timeout.timeout, &a.timeout.timeout)?
                .unwrap_or(DEFAULT_TIMEOUT),
            tls,
            ca,
        })
    }
}

/// `iamat`.
#[derive(Debug, Args)]
struct IamatCmd {
    #[command(flatten)]
    args: basic::IamatArgs,
    #[command(flatten)]
    opts: RequestOpts,
}

/// `whatsat`.
#[derive(Debug, Args)]
struct WhatsatCmd {
    #[command(flatten)]
    args: basic::WhatsatArgs,
    #[command(flatten)]
    opts: RequestOpts,
}

/// `nearby`.
#[derive(Debug, Args)]
struct NearbyCmd {
    #[command(flatten)]
    args: basic::NearbyArgs,
    #[command(flatten)]
    opts: RequestOpts,
}

/// `fence`.
#[derive(Debug, Args)]
struct FenceCmd {
    #[command(flatten)]
    args: fence::FenceArgs,
    #[command(flatten)]
    opts: RequestOpts,
}

/// `send`.
#[derive(Debug, Args)]
struct SendCmd {
    #[command(flatten)]
    args: basic::SendArgs,
    #[command(flatten)]
    opts: RequestOpts,
}

/// `load`: plain TCP, so no `--tls`/`--ca`.
#[derive(Debug, Args)]
struct LoadCmd {
    #[command(flatten)]
    args: load::LoadArgs,
    #[command(flatten)]
    servers: ServerOpts,
    #[command(flatten)]
    config: ConfigOpt,
    #[command(flatten)]
    json: JsonOpt,
    #[command(flatten)]
    timeout: TimeoutOpt,
}

/// `probe`: A and B are its arguments, so no `--server`/`--to`.
#[derive(Debug, Args)]
struct ProbeCmd {
    #[command(flatten)]
    args: probe::ProbeArgs,
    #[command(flatten)]
    config: ConfigOpt,
    #[command(flatten)]
    json: JsonOpt,
    #[command(flatten)]
    timeout: TimeoutOpt,
    #[command(flatten)]
    tls: TlsOpts,
}

/// `certs`: reads the config, talks to no server.
#[derive(Debug, Args)]
struct CertsCmd {
    #[command(flatten)]
    args: certs::CertsArgs,
    #[command(flatten)]
    config: ConfigOpt,
    #[command(flatten)]
    json: JsonOpt,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Report a client's location: sends IAMAT and prints the AT reply.
    Iamat(IamatCmd),
    /// Ask what is near a client: sends WHATSAT and prints the AT line and the places JSON.
    Whatsat(WhatsatCmd),
    /// Which clients are near a client or a point (herd extension): sends NEARBY and prints
    /// the subject's AT line and the JSON of the clients found, nearest first.
    Nearby(NearbyCmd),
    /// Geofences (herd extension): sends FENCE for each ID LOCATION KM, waits for each
    /// FENCED, then prints the ENTER/EXIT events the server pushes until Ctrl-C, --count or
    /// --duration.
    Fence(FenceCmd),
    /// Send raw lines (the arguments, or stdin when none) and print each reply.
    Send(SendCmd),
    /// Benchmark client: many requests over many connections, then throughput and latency.
    Load(Box<LoadCmd>),
    /// Propagation latency: IAMAT at server A, then watch server B until it holds the record.
    Probe(ProbeCmd),
    /// A trivial server answering each line as fast as it can (for measuring `load` itself).
    EchoServer(echo::EchoArgs),
    /// Make a CA for the herd and a certificate per server (for TLS between servers).
    Certs(CertsCmd),
}

/// A command with its settings merged, ready to run.
enum Ready {
    Iamat(basic::IamatArgs),
    Whatsat(basic::WhatsatArgs),
    Nearby(basic::NearbyArgs),
    Fence(fence::FenceArgs),
    Send(basic::SendArgs),
    Load(Box<load::LoadArgs>),
    Probe(probe::ProbeArgs),
    EchoServer(echo::EchoArgs),
    Certs(certs::CertsArgs),
}

/// Every option a request command takes.
const REQUEST: Takes = Takes {
    servers: true,
    config: true,
    json: true,
    timeout: true,
    tls: true,
    all: false,
};

impl Cli {
    /// Merges the options given before the command into its own (see [`Before::merge`]).
    fn ready(self) -> Result<(Global, Ready), Failure> {
        let b = &self.before;
        let none = Takes::default();
        Ok(match self.command {
            Command::Iamat(c) => (b.merge("iamat", REQUEST, &c.opts)?, Ready::Iamat(c.args)),
            Command::Whatsat(c) => (
                b.merge("whatsat", REQUEST, &c.opts)?,
                Ready::Whatsat(c.args),
            ),
            Command::Nearby(c) => (b.merge("nearby", REQUEST, &c.opts)?, Ready::Nearby(c.args)),
            Command::Fence(c) => (b.merge("fence", REQUEST, &c.opts)?, Ready::Fence(c.args)),
            Command::Send(c) => (b.merge("send", REQUEST, &c.opts)?, Ready::Send(c.args)),
            Command::Load(mut c) => {
                let takes = Takes {
                    tls: false,
                    all: true,
                    ..REQUEST
                };
                let after = RequestOpts {
                    servers: c.servers,
                    config: c.config,
                    json: c.json,
                    timeout: c.timeout,
                    tls: TlsOpts::default(),
                };
                let g = b.merge("load", takes, &after)?;
                c.args.all |= b.all;
                (g, Ready::Load(Box::new(c.args)))
            }
            Command::Probe(c) => {
                let takes = Takes {
                    servers: false,
                    ..REQUEST
                };
                let after = RequestOpts {
                    servers: ServerOpts::default(),
                    config: c.config,
                    json: c.json,
                    timeout: c.timeout,
                    tls: c.tls,
                };
                (b.merge("probe", takes, &after)?, Ready::Probe(c.args))
            }
            Command::EchoServer(a) => (
                b.merge("echo-server", none, &RequestOpts::default())?,
                Ready::EchoServer(a),
            ),
            Command::Certs(c) => {
                let takes = Takes {
                    config: true,
                    json: true,
                    ..none
                };
                let after = RequestOpts {
                    config: c.config,
                    json: c.json,
                    ..RequestOpts::default()
                };
                (b.merge("certs", takes, &after)?, Ready::Certs(c.args))
            }
        })
    }
}

/// Whether `--json` is among the arguments (before a `--`): how a usage error clap reports,
/// before anything is merged, knows to be JSON too.
fn json_asked(args: &[std::ffi::OsString]) -> bool {
    args.iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .any(|a| a == "--json")
}

/// A clap error as one line: its message without the `error: ` prefix, the usage and the hint.
fn clap_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let text = text.trim().strip_prefix("error: ").unwrap_or(text.trim());
    let end = ["\n\nUsage:", "\n\nFor more information"]
        .iter()
        .filter_map(|cut| text.find(cut))
        .min()
        .unwrap_or(text.len());
    text[..end].split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Reports a failure: one line on stderr, and with `--json` also one JSON object on stdout.
fn report_failure(failure: &Failure, json: bool) {
    eprintln!("herd-cli: {}", failure.message);
    if json {
        let v = json!({"error": failure.message, "exit_code": failure.code});
        println!("{v}");
    }
}

fn main() -> ExitCode {
    let args = fence::hoist_options(std::env::args_os().collect());
    let json = json_asked(&args);
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            if !e.use_stderr() {
                // --help or --version: not an error.
                let _ = e.print();
                return ExitCode::from(0);
            }
            let _ = e.print();
            if json {
                let v = json!({"error": clap_message(&e), "exit_code": error::EXIT_USAGE});
                println!("{v}");
            }
            return ExitCode::from(error::EXIT_USAGE);
        }
    };
    let (g, command) = match cli.ready() {
        Ok(ready) => ready,
        Err(failure) => {
            report_failure(&failure, json);
            return ExitCode::from(failure.code);
        }
    };
    let json = g.json;
    match run(g, command) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            report_failure(&failure, json);
            ExitCode::from(failure.code)
        }
    }
}

fn run(g: Global, command: Ready) -> Result<u8, Failure> {
    let threads = match &command {
        Ready::Load(a) => a.threads,
        Ready::EchoServer(a) => a.threads,
        _ => Some(1),
    };
    // One thread means the current-thread runtime: no worker thread beside the main one, so
    // no cross-thread wake-ups and one runnable thread at most.
    let runtime = if threads != Some(1) {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if let Some(n) = threads {
            b.worker_threads(n.max(1));
        }
        b.enable_all().build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .map_err(|e| Failure::usage(format!("cannot start the async runtime: {e}")))?;
    let result = runtime.block_on(async move {
        match command {
            Ready::Iamat(a) => basic::iamat(&g, a).await,
            Ready::Whatsat(a) => basic::whatsat(&g, a).await,
            Ready::Nearby(a) => basic::nearby(&g, a).await,
            Ready::Fence(a) => fence::run(&g, a).await,
            Ready::Send(a) => basic::send(&g, a).await,
            Ready::Load(a) => load::run(&g, *a).await,
            Ready::Probe(a) => probe::run(&g, a).await,
            Ready::EchoServer(a) => echo::run(&g, a).await,
            Ready::Certs(a) => certs::run(&g, a).await,
        }
    });
    // A blocked stdin read (in `send`) must not hold the process open after the answer.
    runtime.shutdown_background();
    result
}
