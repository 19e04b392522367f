//! herd-cli: the herd's client for people and scripts, its load generator and its
//! propagation probe.
//!
//! Layout: [`config`] reads a herd config (server name → dial address); [`reply`] is the one
//! reply type (what a request gets, read, written, shown as JSON, answered by the echo server),
//! built on herd-core's grammar; [`conn`] is one client connection that brings a reply's lines;
//! [`output`] prints replies as text or JSON; [`basic`] holds `iamat`, `whatsat` and `send`;
//! [`load`] the benchmark client; [`echo`] the trivial in-process server that shows the load
//! generator is not the bottleneck; [`probe`] measures propagation between two servers; [`certs`] makes the herd's TLS files.
//!
//! Exit codes: 0 a normal reply, 1 the server answered `? `, 2 a connection, timeout or
//! malformed-reply error, 64 bad usage or config.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod basic;
mod certs;
mod config;
mod conn;
mod echo;
mod error;
mod load;
mod output;
mod probe;
mod reply;
mod util;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::error::Failure;

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "herd-cli",
    version,
    about = "Client, load generator and probe for the herd"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options that every subcommand shares.
#[derive(Debug, Args, Clone)]
struct Global {
    /// Server address(es) to talk to, HOST:PORT (comma separated for `load`).
    #[arg(long, global = true, value_delimiter = ',', conflicts_with = "to")]
    server: Vec<String>,
    /// Server name(s) from the herd config (comma separated for `load`).
    #[arg(long, global = true, value_delimiter = ',')]
    to: Vec<String>,
    /// Herd config file (JSON); the built-in default herd when absent.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Print one JSON object per reply (or one summary object) instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Bound on every network wait (connect, write, each reply), e.g. 500ms, 5s, 1m.
    #[arg(long, global = true, value_name = "DUR", default_value = "10s", value_parser = util::parse_duration)]
    timeout: Duration,
    /// Talk TLS to the servers' TLS client address ("tls_listen"), verified with --ca.
    #[arg(long, global = true, requires = "ca")]
    tls: bool,
    /// The herd's CA certificate (PEM) that --tls verifies servers against.
    #[arg(long, global = true, value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
}

impl Global {
    /// The TLS settings asked for, if any.
    fn client_tls(&self) -> Result<Option<conn::ClientTls>, Failure> {
        match (&self.ca, self.tls) {
            (Some(ca), true) => conn::ClientTls::load(ca).map(Some),
            _ => Ok(None),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Report a client's location: sends IAMAT and prints the AT reply.
    Iamat(basic::IamatArgs),
    /// Ask what is near a client: sends WHATSAT and prints the AT line and the places JSON.
    Whatsat(basic::WhatsatArgs),
    /// Send raw lines (the arguments, or stdin when none) and print each reply.
    Send(basic::SendArgs),
    /// Benchmark client: many requests over many connections, then throughput and latency.
    Load(load::LoadArgs),
    /// Propagation latency: IAMAT at server A, then watch server B until it holds the record.
    Probe(probe::ProbeArgs),
    /// A trivial server answering each line as fast as it can (for measuring `load` itself).
    EchoServer(echo::EchoArgs),
    /// Make a CA for the herd and a certificate per server (for TLS between servers).
    Certs(certs::CertsArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("herd-cli: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

fn run(cli: Cli) -> Result<u8, Failure> {
    let threads = match &cli.command {
        Command::Load(a) => a.threads,
        Command::EchoServer(a) => a.threads,
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
    let g = cli.global;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Iamat(a) => basic::iamat(&g, a).await,
            Command::Whatsat(a) => basic::whatsat(&g, a).await,
            Command::Send(a) => basic::send(&g, a).await,
            Command::Load(a) => load::run(&g, a).await,
            Command::Probe(a) => probe::run(&g, a).await,
            Command::EchoServer(a) => echo::run(&g, a).await,
            Command::Certs(a) => certs::run(&g, a).await,
        }
    });
    // A blocked stdin read (in `send`) must not hold the process open after the answer.
    runtime.shutdown_background();
    result
}
