//! herd-server: runs servers of a herd config in one process.
//!
//! Layout: [`config`] parses and validates the herd config; [`logging`] installs per-server
//! log files; this module fits the client limit to the open-file limit
//! ([`herd_net::fdlimit`]), binds every listener, starts the servers ([`herd_net::start`]) and
//! shuts them down within the grace period; [`reload`] applies a changed config to them while
//! they run. `main.rs` is the command line around [`run`].
//! There is no protocol logic here: lines mean what herd-core says they mean.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![deny(rust_2018_idioms)]

pub mod config;
pub mod logging;
pub mod places;
pub mod reload;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use herd_core::{PlacesLookup, ServerName};
use herd_net::admin::{
    AdminConfig, AdminLimits, AdminSpec, BuildInfo, Counted, HerdMember, MapSource, ReloadHook,
    SharedAdminConfig,
};
use herd_net::{Limits, Neighbour, ServerHandle, ServerSpec, ServerStats};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::{ConfigError, HerdConfig};
pub use reload::{ConfigSource, ReloadError};

/// Why the herd could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// A name given is not a server of the config.
    #[error("unknown server {0:?} (not in the config)")]
    UnknownServer(String),
    /// The same name given twice.
    #[error("server {0} given twice")]
    Duplicate(String),
    /// A listener could not be bound (port in use, ...). The cause is the error's
    /// [`source`](std::error::Error::source), not part of its message (`{:#}` with anyhow
    /// shows both, once each).
    #[error("server {server}: cannot listen on {addr}")]
    Bind {
        /// The server.
        server: String,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A server could not start after binding (its journal cannot be read or written, ...).
    /// The cause is the error's source, as for [`StartError::Bind`].
    #[error("server {server}: cannot start")]
    Start {
        /// The server.
        server: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Servers of one herd running in this process.
#[derive(Debug)]
pub struct Herd {
    servers: Vec<ServerHandle>,
    token: CancellationToken,
    tracker: TaskTracker,
    /// The running config, for reloads ([`Herd::reload`]) and the shutdown grace.
    live: std::sync::Mutex<reload::Running>,
    /// Where each server running here listens (for neighbours configured on port 0).
    locals: Vec<(ServerName, SocketAddr)>,
    /// Bound admin listeners not yet served ([`Herd::serve_admin`]), by server index.
    admin_listeners: std::sync::Mutex<Vec<(usize, TcpListener)>>,
    /// The herd's shape and admin token as the admin listeners see them (a reload changes it).
    admin_config: SharedAdminConfig,
    admin_limits: AdminLimits,
}

/// The version and commit this binary was built from.
pub const BUILD: BuildInfo = BuildInfo {
    version: env!("CARGO_PKG_VERSION"),
    // Set by build.rs: git's short commit, else HERD_COMMIT of the build, else `unknown`.
    commit: env!("HERD_GIT_COMMIT"),
};

/// What the admin listeners get from the process around the herd.
#[derive(Clone, Default)]
pub struct AdminExtras {
    /// `POST /reload`.
    pub reload: Option<ReloadHook>,
    /// The status page's world outline.
    pub map: Option<MapSource>,
    /// The log writer's count of dropped lines.
    pub log_lines_dropped: Option<Counted>,
}

/// The herd's shape and admin token as the admin listeners show them.
pub fn admin_config(config: &HerdConfig) -> AdminConfig {
    AdminConfig {
        servers: config
            .servers
            .iter()
            .map(|s| HerdMember {
                name: s.name.clone(),
                addr: s.addr.clone(),
                admin: s.admin_dial(),
            })
            .collect(),
        links: config.links.clone(),
        token: config.effective_admin_token(),
    }
}

async fn bind(server: &ServerName, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            server: server.to_string(),
            addr,
            source,
        })
}

/// Resolves the given names against the config (in order, each once).
///
/// # Errors
/// [`StartError::UnknownServer`] or [`StartError::Duplicate`].
pub fn select(config: &HerdConfig, names: &[String]) -> Result<Vec<ServerName>, StartError> {
    let mut out: Vec<ServerName> = Vec::with_capacity(names.len());
    for n in names {
        let s = config
            .server(n)
            .ok_or_else(|| StartError::UnknownServer(n.clone()))?;
        if out.contains(&s.name) {
            return Err(StartError::Duplicate(n.clone()));
        }
        out.push(s.name.clone());
    }
    Ok(out)
}

/// Binds and starts the servers `names` of `config` (each name's position is its log index).
///
/// A neighbour that runs in this process and is configured on port 0 is dialled at the
/// address it actually got, so tests can run a whole herd on ephemeral ports.
///
/// # Errors
/// [`StartError`] when a name is unknown or a listener cannot be bound; nothing keeps running.
pub async fn start(
    config: &HerdConfig,
    names: &[ServerName],
    places: Arc<dyn PlacesLookup>,
    places_backend: &'static str,
) -> Result<Herd, StartError> {
    let limits = fit_open_files(config, names);
    let mut bound = Vec::with_capacity(names.len());
    for name in names {
        let sc = config
            .server(name.as_str())
            .ok_or_else(|| StartError::UnknownServer(name.to_string()))?;
        let listener = bind(name, sc.listen).await?;
        let stats = match sc.stats {
            Some(a) => Some(bind(name, a).await?),
            None => None,
        };
        let tls_clients = match sc.tls_listen {
            Some(a) => Some(bind(name, a).await?),
            None => None,
        };
        let admin = match sc.admin {
            Some(a) => Some(bind(name, a).await?),
            None => None,
        };
        let local = listener.local_addr().map_err(|source| StartError::Bind {
            server: name.to_string(),
            addr: sc.listen,
            source,
        })?;
        bound.push((name.clone(), listener, stats, tls_clients, admin, local));
    }
    let secret: Option<Arc<[u8]>> = config.effective_secret().map(|s| Arc::from(s.into_bytes()));
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut servers = Vec::with_capacity(bound.len());
    let mut tls_files = Vec::with_capacity(bound.len());
    let locals: Vec<(ServerName, SocketAddr)> = bound.iter().map(|b| (b.0.clone(), b.5)).collect();
    let mut admin_listeners = Vec::new();
    for (index, (name, listener, stats, tls_clients, admin, _)) in bound.into_iter().enumerate() {
        if let Some(l) = admin {
            admin_listeners.push((index, l));
        }
        // What a reload compares the files with; one that cannot be read is reloaded then.
        tls_files.push(reload::tls_files(config, &name).ok().flatten());
        let tls = match &config.tls {
            Some(t) => Some(herd_net::tls::HerdTls::load(&t.paths(&name)).map_err(|e| {
                StartError::Start {
                    server: name.to_string(),
                    source: std::io::Error::other(e.to_string()),
                }
            })?),
            None => None,
        };
        let neighbours = config
            .neighbours(&name)
            .into_iter()
            .map(|n| Neighbour {
                addr: reload::dial_addr(config, &locals, &n),
                name: n,
            })
            .collect();
        let spec = ServerSpec {
            name: name.clone(),
            neighbours,
            limits: limits.clone(),
            secret: secret.clone(),
            places: places.clone(),
            places_backend,
            log_index: index,
            message_log: logging::message_log(index),
            journal: config
                .data_dir
                .as_ref()
                .map(|d| herd_net::journal::JournalSpec {
                    path: d.join(format!("{name}.journal")),
                    fsync: config.journal_fsync,
                }),
            tls,
        };
        let handle =
            herd_net::start(spec, listener, token.clone(), tracker.clone()).map_err(|source| {
                StartError::Start {
                    server: name.to_string(),
                    source,
                }
            })?;
        if let Some(s) = stats {
            handle.serve_stats(s);
        }
        if let Some(l) = tls_clients {
            handle
                .serve_tls_clients(l)
                .map_err(|source| StartError::Start {
                    server: name.to_string(),
                    source,
                })?;
        }
        servers.push(handle);
    }
    Ok(Herd {
        servers,
        token,
        tracker,
        live: std::sync::Mutex::new(reload::Running {
            config: config.clone(),
            tls_files,
            source: None,
        }),
        locals,
        admin_listeners: std::sync::Mutex::new(admin_listeners),
        admin_config: Arc::new(std::sync::RwLock::new(admin_config(config))),
        admin_limits: config.admin_limits,
    })
}

/// The limits the servers `names` of `config` run with: the config's, with `max_clients`
/// lowered when this process's open-file limit, raised to its hard limit first, cannot hold
/// that many client connections per server besides everything else (said in one line).
pub(crate) fn fit_open_files(config: &HerdConfig, names: &[ServerName]) -> Limits {
    let mut limits = config.limits.clone();
    let files = herd_net::fdlimit::raise();
    let neighbours: Vec<usize> = names.iter().map(|n| config.neighbours(n).len()).collect();
    let reserved = herd_net::fdlimit::reserved(&neighbours, config.places.max_concurrent as u64);
    let fit = herd_net::fdlimit::fit(files.soft, reserved, names.len(), limits.max_clients);
    if fit < limits.max_clients {
        warn!(
            soft_limit_found = files.before,
            soft_limit = files.soft,
            hard_limit = files.hard,
            servers = names.len(),
            reserved,
            max_clients = limits.max_clients,
            lowered_to = fit,
            "open-file limit too low for max_clients; max_clients lowered (raise the hard limit, ulimit -Hn, to serve more)"
        );
        limits.max_clients = fit;
    } else if files.soft > files.before {
        tracing::debug!(
            from = files.before,
            to = files.soft,
            "open-file limit raised"
        );
    }
    limits
}

impl Herd {
    /// The running servers, in start order.
    pub fn servers(&self) -> &[ServerHandle] {
        &self.servers
    }

    /// A running server by name.
    pub fn server(&self, name: &str) -> Option<&ServerHandle> {
        self.servers.iter().find(|s| s.name().as_str() == name)
    }

    /// Starts serving the admin listeners bound at start (each server's `admin` address);
    /// a second call does nothing.
    pub fn serve_admin(&self, extras: &AdminExtras) {
        let listeners = std::mem::take(
            &mut *self
                .admin_listeners
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for (index, listener) in listeners {
            let Some(server) = self.servers.get(index) else {
                continue;
            };
            server.serve_admin(
                listener,
                AdminSpec {
                    config: self.admin_config.clone(),
                    reload: extras.reload.clone(),
                    map: extras.map.clone(),
                    build: BUILD,
                    log_lines_dropped: extras.log_lines_dropped.clone(),
                    limits: self.admin_limits,
                },
            );
        }
    }

    /// The herd's shape and token as the admin listeners see them; a reload replaces it.
    pub fn admin_config(&self) -> &SharedAdminConfig {
        &self.admin_config
    }

    /// Logs every server's counters in its own log.
    pub fn log_stats(&self) {
        for (i, s) in self.servers.iter().enumerate() {
            let stats = s.stats();
            herd_net::scope::enter(i, || log_stats(&stats));
        }
    }

    /// Stops accepting, finishes replies in flight, closes links; waits at most the grace
    /// period. Returns whether everything finished in time. The servers' files (the journal
    /// and its lock) are released when the `Herd` is dropped.
    pub async fn shutdown(&self) -> bool {
        info!("shutting down");
        self.token.cancel();
        self.tracker.close();
        let grace = self.live.lock().map_or_else(
            |e| e.into_inner().config.limits.shutdown_grace,
            |r| r.config.limits.shutdown_grace,
        );
        let in_time = tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok();
        if !in_time {
            warn!(
                grace_ms = grace.as_millis(),
                "shutdown grace period over; tasks still running are abandoned"
            );
        }
        self.log_stats();
        in_time
    }
}

fn log_stats(stats: &ServerStats) {
    info!(stats = %stats.to_json_line().trim_end(), "counters");
}

/// Starts the servers, runs until `shutdown` completes, then shuts down gracefully.
///
/// # Errors
/// [`StartError`] when the servers cannot start.
pub async fn run(
    config: &HerdConfig,
    names: &[ServerName],
    places: Arc<dyn PlacesLookup>,
    places_backend: &'static str,
    shutdown: impl Future<Output = ()>,
) -> Result<bool, StartError> {
    let herd = start(config, names, places, places_backend).await?;
    shutdown.await;
    Ok(herd.shutdown().await)
}
