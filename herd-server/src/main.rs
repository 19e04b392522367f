//! The `herd-server` command: start servers of a herd config in this process.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use herd_server::{config::HerdConfig, logging, places, reload, Herd};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{info, warn};

/// Exit status for an invalid command line or config.
const EXIT_CONFIG: u8 = 64;
/// Exit status for a failure to start (port in use, log file, ...).
const EXIT_START: u8 = 1;

/// The version `--version` prints: the package's and the git commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("HERD_GIT_COMMIT"),
    ")"
);

/// Run servers of a herd (the proxy herd of docs/client-protocol.md).
#[derive(Debug, Parser)]
#[command(name = "herd-server", version = VERSION)]
struct Cli {
    /// Servers of the config to start in this process; default: the names in the HERD_NAME
    /// environment variable (separated by spaces).
    #[arg(
        value_name = "NAME",
        conflicts_with_all = ["all", "check_config", "name_from_hostname"]
    )]
    names: Vec<String>,
    /// Validate the config (--config, else the built-in herd), print the herd it resolves
    /// to (servers with their addresses, links, every limit with its value) and exit: 0
    /// when it is valid, 64 with the error on stderr when not. Starts nothing.
    #[arg(long, conflicts_with_all = ["all", "name_from_hostname", "probe_ready"])]
    check_config: bool,
    /// Start every server of the config.
    #[arg(long, conflicts_with = "name_from_hostname")]
    all: bool,
    /// Start the server named like this machine's host name (a pod's name in a StatefulSet,
    /// e.g. herd-2).
    #[arg(long)]
    name_from_hostname: bool,
    /// Exit 0 when the admin listener at ADDR (IP:PORT) answers GET /readyz with 200, else 1;
    /// starts nothing (the container image's health check: scratch has no curl).
    #[arg(
        long,
        value_name = "ADDR",
        hide = true,
        conflicts_with_all = ["names", "all", "name_from_hostname"]
    )]
    probe_ready: Option<String>,
    /// Herd config (JSON); default: the file HERD_CONFIG names, else the built-in default herd.
    #[arg(long, value_name = "FILE", env = "HERD_CONFIG")]
    config: Option<PathBuf>,
    /// Places backend: offline | google | google-legacy; default: google when PLACES_API_KEY
    /// is set, else offline.
    #[arg(long, value_name = "BACKEND")]
    places: Option<String>,
    /// Base URL for the google backends (default: Google's own).
    #[arg(long, value_name = "URL")]
    places_url: Option<String>,
    /// Log directory; server NAME appends to DIR/NAME.log.
    #[arg(long, value_name = "DIR", default_value = "logs")]
    log_dir: PathBuf,
    /// Keep a journal of every stored update in DIR/NAME.journal, written before the update
    /// is acknowledged and read back at start, so acknowledged updates survive a crash
    /// (overrides the config's "data_dir"; default: none, the store lives in memory only).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Rotate DIR/NAME.log before it would grow past this size: it becomes NAME.log.1 (the
    /// older ones shift up) and a new NAME.log is started. Bytes, or with a K, M or G suffix
    /// (powers of 1024); 0 never rotates. Overrides the config's "limits.log_max_bytes";
    /// default 256M.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    log_max_bytes: Option<u64>,
    /// Rotated log files kept per server (NAME.log.1 … NAME.log.K; the oldest is deleted).
    /// Overrides the config's "limits.log_keep"; default 5.
    #[arg(long, value_name = "K")]
    log_keep: Option<usize>,
    /// Log line format: text (`STAMP LEVEL message key=value ...`, a value with a space or a
    /// quote in double quotes) or json (one JSON object per line, the fields as keys).
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    log_format: logging::LogFormat,
    /// Worker threads of the runtime that runs this process's servers (1 to 1024); default:
    /// one per CPU the process may use. A server's store is one critical section, so more
    /// workers buy parallel socket work and log formatting; on a small host it shares with
    /// its clients, 1 can be faster (it leaves them the other cores).
    #[arg(long, value_name = "N", env = "HERD_WORKERS", value_parser = parse_workers)]
    workers: Option<usize>,
}

/// Most worker threads `--workers` takes.
const MAX_WORKERS: usize = 1024;

fn parse_workers(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_WORKERS).contains(&n) => Ok(n),
        _ => Err(format!(
            "{text:?} is not a number of worker threads from 1 to {MAX_WORKERS}"
        )),
    }
}

/// `123`, `64K`, `256M`, `1G` (binary multiples; `KiB`, `MiB`, `GiB` too) as bytes.
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let num: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 1048576, 64K, 256M, 1G)"))?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (K, M or G)")),
    };
    num.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// The log rotation: each of the command line's options, else the config's, else the default.
fn rotation(cli: &Cli, config: &HerdConfig) -> logging::Rotation {
    let d = logging::Rotation::default();
    logging::Rotation {
        max_bytes: cli
            .log_max_bytes
            .or(config.log_rotation.max_bytes)
            .unwrap_or(d.max_bytes),
        keep: cli.log_keep.or(config.log_rotation.keep).unwrap_or(d.keep),
    }
}

/// The environment variable naming the servers to start when the command line names none.
const NAME_ENV: &str = "HERD_NAME";

/// The servers to start: the command line's names, else this host's name
/// (`--name-from-hostname`), else `HERD_NAME`'s names.
fn server_names(
    cli: &Cli,
    env: Option<String>,
    hostname: impl FnOnce() -> std::io::Result<String>,
) -> anyhow::Result<Vec<String>> {
    if cli.name_from_hostname {
        let host = hostname().context("--name-from-hostname: cannot read the host name")?;
        let host = host.trim();
        anyhow::ensure!(
            !host.is_empty(),
            "--name-from-hostname: the host name is empty"
        );
        return Ok(vec![host.to_owned()]);
    }
    if !cli.names.is_empty() {
        return Ok(cli.names.clone());
    }
    let from_env: Vec<String> = env
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    anyhow::ensure!(
        !from_env.is_empty(),
        "no server to start: name them (herd-server NAME...), or give --all, \
         --name-from-hostname or {NAME_ENV}"
    );
    Ok(from_env)
}

/// This machine's host name (the kernel's: a container's or pod's own name).
fn hostname() -> std::io::Result<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
}

/// `--probe-ready`: GET /readyz at `addr` over plain HTTP/1.1, with every wait bounded.
fn probe_ready(addr: &str) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    use std::net::ToSocketAddrs as _;
    const WAIT: std::time::Duration = std::time::Duration::from_secs(2);
    let sock = addr
        .to_socket_addrs()
        .with_context(|| format!("--probe-ready {addr:?}: not an address"))?
        .next()
        .with_context(|| format!("--probe-ready {addr:?}: no address"))?;
    let mut conn = std::net::TcpStream::connect_timeout(&sock, WAIT)
        .with_context(|| format!("cannot connect to {sock}"))?;
    conn.set_read_timeout(Some(WAIT))?;
    conn.set_write_timeout(Some(WAIT))?;
    write!(
        conn,
        "GET /readyz HTTP/1.1\r\nHost: {sock}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = Vec::with_capacity(256);
    conn.take(4096).read_to_end(&mut head)?;
    let text = String::from_utf8_lossy(&head);
    let code = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    match code {
        Some("200") => Ok(()),
        Some(code) => anyhow::bail!("GET /readyz at {sock}: {code} {body}"),
        None => anyhow::bail!("GET /readyz at {sock}: not an HTTP answer"),
    }
}

struct Failure(u8, anyhow::Error);

fn config_err(e: impl Into<anyhow::Error>) -> Failure {
    Failure(EXIT_CONFIG, e.into())
}

/// SIGHUP, SIGTERM, SIGINT and SIGUSR1, listened to from before the servers start: a signal
/// that arrives as soon as "listening on" is printed must not find its default action (which
/// for all four ends the process).
struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
    usr1: Signal,
}

impl Signals {
    fn listen() -> anyhow::Result<Self> {
        Ok(Self {
            hup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            usr1: signal(SignalKind::user_defined1()).context("cannot listen for SIGUSR1")?,
        })
    }
}

/// What SIGHUP does: reopens every log file (for logrotate and the like; the lines logged
/// before it go to the old file), then reads the config again and applies it (one line with
/// the summary; a config that cannot be applied: one line with why, the running one stays).
fn on_sighup(herd: &Herd) {
    info!("SIGHUP received; reopening the log files and reloading the config");
    logging::reopen();
    match herd.reload_from_source() {
        Ok(summary) => info!("{summary}"),
        Err(e) => warn!("{e}"),
    }
}

/// `--check-config`: the config as a start would read it, validated and printed.
fn check_config(cli: &Cli) -> Result<(), Failure> {
    let config = reload::reread(&source(cli)).map_err(read_err)?;
    print!("{}", reload::describe(&config));
    Ok(())
}

/// A config that cannot be read at start: its own message (without the reload's prefix).
fn read_err(e: reload::ReloadError) -> Failure {
    match e {
        reload::ReloadError::Invalid(e) => config_err(e),
        e => config_err(e),
    }
}

/// Where the config comes from, with the command line's overrides.
fn source(cli: &Cli) -> reload::ConfigSource {
    reload::ConfigSource {
        path: cli.config.clone(),
        data_dir: cli.data_dir.clone(),
    }
}

/// Serves until SIGTERM or SIGINT; SIGUSR1 logs the stats, SIGHUP reloads.
async fn serve(herd: std::sync::Arc<Herd>, mut sig: Signals) -> anyhow::Result<bool> {
    loop {
        tokio::select! {
            _ = sig.term.recv() => { info!("SIGTERM received"); break; }
            _ = sig.int.recv() => { info!("SIGINT received"); break; }
            _ = sig.usr1.recv() => herd.log_stats(),
            _ = sig.hup.recv() => on_sighup(&herd),
        }
    }
    Ok(herd.shutdown().await)
}

async fn main_async(cli: Cli) -> Result<(), Failure> {
    let filter = logging::filter_from_env().map_err(config_err)?;
    let source = source(&cli);
    let config = reload::reread(&source).map_err(read_err)?;
    let names: Vec<String> = if cli.all {
        config.servers.iter().map(|s| s.name.to_string()).collect()
    } else {
        server_names(&cli, std::env::var(NAME_ENV).ok(), hostname).map_err(config_err)?
    };
    let names = herd_server::select(&config, &names).map_err(config_err)?;
    let pc = places::choose(
        &config,
        cli.places.as_deref(),
        cli.places_url.clone(),
        std::env::var("PLACES_API_KEY").ok(),
    )
    .map_err(config_err)?;
    let backend = pc.kind.name();
    let places = places::build(pc).map_err(config_err)?;
    let signals = Signals::listen().map_err(|e| Failure(EXIT_START, e))?;
    let settings = logging::LogSettings {
        rotation: rotation(&cli, &config),
        format: cli.log_format,
    };
    let _guards = logging::init(&cli.log_dir, &names, settings, filter)
        .map_err(|e| Failure(EXIT_START, e))?;
    let herd = herd_server::start(&config, &names, places, backend)
        .await
        .map_err(|e| Failure(EXIT_START, e.into()))?;
    herd.set_source(source);
    let herd = std::sync::Arc::new(herd);
    let weak = std::sync::Arc::downgrade(&herd);
    herd.serve_admin(&herd_server::AdminExtras {
        reload: Some(std::sync::Arc::new(move || match weak.upgrade() {
            Some(h) => h.reload_from_source().map_err(|e| e.to_string()),
            None => Err("the server is shutting down".to_owned()),
        })),
        map: Some(std::sync::Arc::new(|| {
            herd_places::OfflinePlaces::shared()
                .map(|p| p.outline(2.0))
                .unwrap_or_default()
        })),
        log_lines_dropped: Some(std::sync::Arc::new(logging::dropped_lines)),
    });
    for s in herd.servers() {
        let sc = config.server(s.name().as_str());
        let dial = sc.map(|c| c.addr.as_str()).unwrap_or("?");
        let admin = sc
            .and_then(|c| c.admin)
            .map(|a| format!(", admin http://{a}/"))
            .unwrap_or_default();
        eprintln!(
            "herd-server: {} listening on {} (peers dial {}), places backend {}{}",
            s.name(),
            s.local_addr(),
            dial,
            backend,
            admin
        );
    }
    if let Some(dir) = &config.data_dir {
        eprintln!(
            "herd-server: journals in {} (acknowledged updates survive a crash)",
            dir.display()
        );
    }
    let in_time = serve(herd, signals)
        .await
        .map_err(|e| Failure(EXIT_START, e))?;
    eprintln!(
        "herd-server: stopped{}",
        if in_time {
            ""
        } else {
            " (grace period exceeded)"
        }
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(addr) = &cli.probe_ready {
        return match probe_ready(addr) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("herd-server: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.workers {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herd-server: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_START);
        }
    };
    let result = if cli.check_config {
        check_config(&cli)
    } else {
        runtime.block_on(main_async(cli))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, e)) => {
            eprintln!("herd-server: {e:#}");
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_size, rotation, server_names, Cli};
    use clap::Parser;
    use herd_server::{config::HerdConfig, logging};

    #[test]
    fn log_rotation_comes_from_the_command_line_then_the_config_then_the_default() {
        let plain = HerdConfig::parse(r#"{"servers": {"A": "127.0.0.1:1"}}"#).unwrap();
        let set = HerdConfig::parse(
            r#"{"servers": {"A": "127.0.0.1:1"}, "limits": {"log_max_bytes": 1000, "log_keep": 0}}"#,
        )
        .unwrap();
        let cli = |args: &[&str]| Cli::parse_from(["herd-server", "--all"].iter().chain(args));
        assert_eq!(rotation(&cli(&[]), &plain), logging::Rotation::default());
        assert_eq!(
            rotation(&cli(&[]), &set),
            logging::Rotation {
                max_bytes: 1000,
                keep: 0
            }
        );
        assert_eq!(
            rotation(&cli(&["--log-max-bytes", "64K"]), &set),
            logging::Rotation {
                max_bytes: 64 << 10,
                keep: 0
            }
        );
        assert_eq!(
            rotation(&cli(&["--log-keep", "3", "--log-max-bytes", "0"]), &set),
            logging::Rotation {
                max_bytes: 0,
                keep: 3
            }
        );
    }

    #[test]
    fn server_names_come_from_the_command_line_the_host_name_or_herd_name() {
        let cli = |args: &[&str]| Cli::try_parse_from(["herd-server"].iter().chain(args));
        let host = || Ok("herd-2\n".to_owned());
        let no_host = || Err(std::io::Error::other("no /proc"));
        let names = |args: &[&str], env: Option<&str>| {
            server_names(&cli(args).unwrap(), env.map(str::to_owned), host)
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            names(&["A", "B"], Some("C")),
            Ok(vec!["A".into(), "B".into()])
        );
        assert_eq!(names(&[], Some(" C  D ")), Ok(vec!["C".into(), "D".into()]));
        assert_eq!(
            names(&["--name-from-hostname"], Some("C")),
            Ok(vec!["herd-2".into()])
        );
        assert!(names(&[], None).unwrap_err().contains("no server to start"));
        assert!(names(&[], Some("  ")).is_err());
        let err = server_names(&cli(&["--name-from-hostname"]).unwrap(), None, no_host);
        assert!(format!("{:#}", err.unwrap_err()).contains("cannot read the host name"));
        let empty = server_names(&cli(&["--name-from-hostname"]).unwrap(), None, || {
            Ok("\n".into())
        });
        assert!(empty.is_err());
        assert!(cli(&["--name-from-hostname", "A"]).is_err());
        assert!(cli(&["--name-from-hostname", "--all"]).is_err());
        assert!(cli(&["--all", "A"]).is_err());
        assert!(cli(&["--probe-ready", "127.0.0.1:1", "A"]).is_err());
        // Pod names are valid server names.
        let config = HerdConfig::parse(
            r#"{"servers": {"herd-0": "127.0.0.1:1", "herd-2": "127.0.0.1:2"}, "links": [["herd-0", "herd-2"]]}"#,
        )
        .unwrap();
        let picked = names(&["--name-from-hostname"], None).unwrap();
        let selected = herd_server::select(&config, &picked).unwrap();
        assert_eq!(selected[0].as_str(), "herd-2");
    }

    #[test]
    fn the_log_format_is_text_unless_json_is_asked_for() {
        let cli = |args: &[&str]| Cli::try_parse_from(["herd-server", "--all"].iter().chain(args));
        assert_eq!(cli(&[]).unwrap().log_format, logging::LogFormat::Text);
        assert_eq!(
            cli(&["--log-format", "json"]).unwrap().log_format,
            logging::LogFormat::Json
        );
        assert!(cli(&["--log-format", "xml"]).is_err());
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }
}
