//! The herd config file (JSON): servers, links, secret and limits; parsed and validated.
//!
//! ```json
//! {"servers": {"A": "127.0.0.1:12000",
//!              "B": {"addr": "10.0.0.2:12001", "listen": "0.0.0.0:12001", "stats": "127.0.0.1:13001"}},
//!  "links": [["A", "B"]],
//!  "secret": "optional shared secret",
//!  "limits": {"max_line_bytes": 65536, "max_clients": 10000, "idle_timeout_ms": 300000,
//!             "line_timeout_ms": 10000, "max_clients_per_ip": 256, "log_line_bytes": 512,
//!             "peer_queue_bytes": 67108864, "resync_window_bytes": 1048576,
//!             "peer_catch_up_bytes": 4194304,
//!             "journal_compact_lines": 100000,
//!             "places_timeout_ms": 5000, "shutdown_grace_ms": 5000,
//!             "heartbeat_ms": 250, "peer_timeout_ms": 1000, "max_client_id_bytes": 256,
//!             "max_records": 1000000, "record_ttl_ms": 86400000, "max_future_skew_ms": 60000,
//!             "log_max_bytes": 268435456, "log_keep": 5}}
//! ```
//! `"tls": {"ca": "tls/ca.pem", "cert": "tls/{name}.pem", "key": "tls/{name}.key"}` turns
//! on TLS between servers (`herd-cli certs` makes the files; `{name}` is each server's name),
//! and a server entry's `"tls_listen"` adds a TLS client address. Closed by default: a
//! config with a server listening beyond loopback needs `"tls"`, a `"secret"` or
//! `"insecure_peers": true` ([`HerdConfig::check_peer_security`]).
//! `max_records` defaults to a bound sized to the machine's memory
//! ([`herd_net::limits::default_max_records`]); `record_ttl_ms` and `max_future_skew_ms` are
//! off unless set. `log_max_bytes` and `log_keep` are the log rotation
//! ([`HerdConfig::log_rotation`]); `--log-max-bytes` and `--log-keep` override them.
//! An optional `"data_dir"` turns on each server's journal (`DIR/NAME.journal`, see
//! `herd_net::journal`); `"journal_fsync": true` makes it sync every write to the disk. Unknown keys anywhere are an error. `addr` is where peers dial the server; `listen`
//! (default: `addr`) is where it binds; `admin` is an optional HTTP admin address
//! (`/metrics`, `/livez`, `/readyz`, `/stats`, the status page `/`, `POST /reload`; see
//! `herd_net::admin`), which needs `"admin_token"` (or `HERD_ADMIN_TOKEN`) when it is beyond
//! loopback ([`HerdConfig::check_admin_security`]); `limits.admin_max_connections` (default
//! 64) and `limits.admin_header_timeout_ms` (default 10000) bound it. `stats` is the older
//! raw-TCP stats address, kept for scripts: it answers every connection with the same JSON
//! object as `/stats`, on one line.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use herd_core::ServerName;
use herd_net::limits::Limits;
use serde::Deserialize;
use thiserror::Error;

/// The default herd, `deploy/herd.json`, compiled in.
pub const DEFAULT_HERD: &str = include_str!("../../deploy/herd.json");

/// The environment variable that, when set, overrides the config's `"secret"`.
pub const SECRET_ENV: &str = "HERD_SECRET";

/// Why a config is not usable.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// Not valid JSON or not the expected shape (unknown key, wrong type).
    #[error("invalid config: {0}")]
    Syntax(String),
    /// A server name is not a valid name.
    #[error("invalid server name {0:?}")]
    BadName(String),
    /// An address does not parse.
    #[error("server {server}: invalid {what} address {addr:?} (expected IP:PORT)")]
    BadAddr {
        /// The server.
        server: String,
        /// Which address.
        what: &'static str,
        /// The text given.
        addr: String,
    },
    /// A link names a server that does not exist.
    #[error("link {0}-{1} names a server that is not in \"servers\"")]
    UnknownServer(String, String),
    /// A link from a server to itself.
    #[error("link {0}-{0} links a server to itself")]
    SelfLink(String),
    /// A link listed twice.
    #[error("link {0}-{1} is listed twice")]
    DuplicateLink(String, String),
    /// A limit is out of range.
    #[error("limit {0} must be greater than 0")]
    BadLimit(&'static str),
    /// Two limits are out of order.
    #[error("limit {0} must be less than {1}")]
    LimitOrder(&'static str, &'static str),
    /// No servers.
    #[error("config has no servers")]
    Empty,
    /// A server listens beyond loopback and peers would join unauthenticated.
    #[error(
        "server {server} listens on {listen}, beyond loopback, but peers are not authenticated: \
         configure \"tls\" or a \"secret\" (or {env}), or set \"insecure_peers\": true",
        env = SECRET_ENV
    )]
    InsecurePeers {
        /// The server.
        server: String,
        /// Its listen address.
        listen: SocketAddr,
    },
    /// A TLS client address without TLS files.
    #[error("server {0} has a \"tls_listen\" address but the config has no \"tls\"")]
    TlsListenWithoutTls(String),
    /// The secret is empty.
    #[error("secret must not be empty")]
    EmptySecret,
    /// The admin token is empty.
    #[error("admin_token must not be empty")]
    EmptyAdminToken,
    /// An admin listener beyond loopback without a token.
    #[error(
        "server {server} has its admin listener on {admin}, beyond loopback, without a token: \
         set \"admin_token\" (or {env}), or put the admin address on loopback",
        env = ADMIN_TOKEN_ENV
    )]
    AdminWithoutToken {
        /// The server.
        server: String,
        /// Its admin address.
        admin: SocketAddr,
    },
}

/// The environment variable that, when set, overrides the config's `"admin_token"`.
pub const ADMIN_TOKEN_ENV: &str = "HERD_ADMIN_TOKEN";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    servers: BTreeMap<String, RawServer>,
    #[serde(default)]
    links: Vec<(String, String)>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    places: RawPlaces,
    #[serde(default)]
    data_dir: Option<std::path::PathBuf>,
    #[serde(default)]
    journal_fsync: bool,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    insecure_peers: bool,
    #[serde(default)]
    admin_token: Option<String>,
}

/// TLS files (`"tls"` key): `{name}` in `cert` and `key` is each server's name.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: std::path::PathBuf,
    cert: String,
    key: String,
}

/// Where the herd's TLS files are: the CA, and each server's certificate and key, named by a
/// pattern in which `{name}` stands for the server's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The herd's CA certificate (PEM).
    pub ca: std::path::PathBuf,
    /// Each server's certificate (PEM), `{name}` replaced.
    pub cert: String,
    /// Each server's private key (PEM), `{name}` replaced.
    pub key: String,
}

impl TlsConfig {
    /// The files of server `name`.
    pub fn paths(&self, name: &ServerName) -> herd_net::tls::TlsPaths {
        herd_net::tls::TlsPaths {
            cert: self.cert.replace("{name}", name.as_str()).into(),
            key: self.key.replace("{name}", name.as_str()).into(),
            ca: self.ca.clone(),
        }
    }
}

/// Tuning of the Places backend (`"places"` key); the timeout is `limits.places_timeout_ms`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPlaces {
    max_concurrent: Option<usize>,
    cache_ttl_ms: Option<u64>,
    cache_entries: Option<usize>,
}

/// How the server uses its Places backend, from the config's optional `"places"` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacesTuning {
    /// Most upstream calls in flight at once (default [`herd_places::DEFAULT_MAX_CONCURRENT`]).
    pub max_concurrent: usize,
    /// How long a cached answer is reused (default [`herd_places::DEFAULT_CACHE_TTL`]).
    pub cache_ttl: Duration,
    /// Most cached answers; 0 turns the cache off (default
    /// [`herd_places::DEFAULT_CACHE_ENTRIES`]).
    pub cache_entries: usize,
}

impl Default for PlacesTuning {
    fn default() -> Self {
        let d = herd_places::PlacesConfig::default();
        Self {
            max_concurrent: d.max_concurrent,
            cache_ttl: d.cache_ttl,
            cache_entries: d.cache_entries,
        }
    }
}

impl RawPlaces {
    fn validate(self) -> Result<PlacesTuning, ConfigError> {
        let d = PlacesTuning::default();
        let ttl_ms = u64::try_from(d.cache_ttl.as_millis()).unwrap_or(u64::MAX);
        Ok(PlacesTuning {
            max_concurrent: positive(
                self.max_concurrent,
                d.max_concurrent,
                "places.max_concurrent",
            )?,
            cache_ttl: Duration::from_millis(positive(
                self.cache_ttl_ms,
                ttl_ms,
                "places.cache_ttl_ms",
            )?),
            // 0 is allowed here: it is the cache's off switch.
            cache_entries: self.cache_entries.unwrap_or(d.cache_entries),
        })
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawServer {
    Addr(String),
    Full(RawServerFull),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerFull {
    addr: String,
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    stats: Option<String>,
    #[serde(default)]
    tls_listen: Option<String>,
    #[serde(default)]
    admin: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_line_bytes: Option<usize>,
    max_clients: Option<usize>,
    idle_timeout_ms: Option<u64>,
    line_timeout_ms: Option<u64>,
    max_clients_per_ip: Option<usize>,
    log_line_bytes: Option<usize>,
    peer_queue_bytes: Option<usize>,
    resync_window_bytes: Option<usize>,
    peer_catch_up_bytes: Option<usize>,
    journal_compact_lines: Option<u64>,
    places_timeout_ms: Option<u64>,
    shutdown_grace_ms: Option<u64>,
    heartbeat_ms: Option<u64>,
    peer_timeout_ms: Option<u64>,
    max_client_id_bytes: Option<usize>,
    max_records: Option<usize>,
    record_ttl_ms: Option<u64>,
    max_future_skew_ms: Option<u64>,
    log_max_bytes: Option<u64>,
    log_keep: Option<usize>,
    admin_max_connections: Option<usize>,
    nearby_index: Option<bool>,
    max_fences_per_connection: Option<usize>,
    max_fences: Option<usize>,
    fence_queue_lines: Option<usize>,
    admin_header_timeout_ms: Option<u64>,
    dissemination: Option<RawDissemination>,
}

/// `limits.dissemination`: how records reach the other servers.
#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawDissemination {
    Tree,
    Flood,
}

/// Log file rotation from the config's `limits.log_max_bytes` and `limits.log_keep`; the
/// command line's `--log-max-bytes` and `--log-keep` override each (`None`: not set here,
/// the logger's default then).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogRotation {
    /// Size past which a log file is rotated (0: never).
    pub max_bytes: Option<u64>,
    /// Rotated files kept (0: none).
    pub keep: Option<usize>,
}

/// One server of the herd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Its name.
    pub name: ServerName,
    /// Where its peers dial it (`host:port`).
    pub addr: String,
    /// Where it binds.
    pub listen: SocketAddr,
    /// Optional stats (admin) address.
    pub stats: Option<SocketAddr>,
    /// Optional TLS client address: the same line protocol over TLS (needs `"tls"`).
    pub tls_listen: Option<SocketAddr>,
    /// Optional admin HTTP address (metrics, health, stats, status page, reload).
    pub admin: Option<SocketAddr>,
}

impl ServerConfig {
    /// Where another server (or a person) reaches this server's admin listener: its admin
    /// address, with the host of `addr` when the admin address is a wildcard (`0.0.0.0`).
    pub fn admin_dial(&self) -> Option<String> {
        let admin = self.admin?;
        if !admin.ip().is_unspecified() {
            return Some(admin.to_string());
        }
        let host = match self.addr.rsplit_once(':') {
            Some((h, _)) if !h.is_empty() => h.to_owned(),
            _ => "127.0.0.1".to_owned(),
        };
        let host = match host.parse::<std::net::IpAddr>() {
            Ok(ip) if ip.is_unspecified() => "127.0.0.1".to_owned(),
            _ => host,
        };
        Some(format!("{host}:{}", admin.port()))
    }
}

/// A validated herd config.
#[derive(Clone, PartialEq, Eq)]
pub struct HerdConfig {
    /// The servers, sorted by name.
    pub servers: Vec<ServerConfig>,
    /// The links, each once.
    pub links: Vec<(ServerName, ServerName)>,
    /// The shared peer secret, if any.
    pub secret: Option<String>,
    /// The limits, for every server.
    pub limits: Limits,
    /// Log rotation as the config sets it (`limits.log_max_bytes`, `limits.log_keep`).
    pub log_rotation: LogRotation,
    /// Places backend tuning (concurrency, cache).
    pub places: PlacesTuning,
    /// Where each server keeps its journal (`DIR/NAME.journal`); `None`: in memory only.
    pub data_dir: Option<std::path::PathBuf>,
    /// Whether journal writes are followed by `fdatasync` (power-cut durability).
    pub journal_fsync: bool,
    /// TLS for peer links and TLS client addresses, if configured.
    pub tls: Option<TlsConfig>,
    /// The operator's choice to let peers join from beyond loopback with neither TLS nor a
    /// secret.
    pub insecure_peers: bool,
    /// The admin listeners' bearer token, if any (see [`HerdConfig::effective_admin_token`]).
    pub admin_token: Option<String>,
    /// The admin listeners' limits (`limits.admin_max_connections`,
    /// `limits.admin_header_timeout_ms`).
    pub admin_limits: herd_net::admin::AdminLimits,
}

impl std::fmt::Debug for HerdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HerdConfig")
            .field("servers", &self.servers)
            .field("links", &self.links)
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .field("limits", &self.limits)
            .field("log_rotation", &self.log_rotation)
            .field("places", &self.places)
            .field("data_dir", &self.data_dir)
            .field("journal_fsync", &self.journal_fsync)
            .field("tls", &self.tls)
            .field("insecure_peers", &self.insecure_peers)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("admin_limits", &self.admin_limits)
            .finish()
    }
}

fn sock(server: &str, what: &'static str, addr: &str) -> Result<SocketAddr, ConfigError> {
    addr.parse().map_err(|_| ConfigError::BadAddr {
        server: server.to_owned(),
        what,
        addr: addr.to_owned(),
    })
}

fn positive<T: Default + PartialEq>(
    v: Option<T>,
    default: T,
    name: &'static str,
) -> Result<T, ConfigError> {
    match v {
        None => Ok(default),
        Some(v) if v == T::default() => Err(ConfigError::BadLimit(name)),
        Some(v) => Ok(v),
    }
}

impl RawLimits {
    /// The limits, and the log rotation the config sets (also under `"limits"`).
    fn validate(self) -> Result<(Limits, LogRotation), ConfigError> {
        use herd_net::limits as d;
        fn ms_of(d: Duration) -> u64 {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
        }
        let ms =
            |v: Option<u64>, d: Duration, n| positive(v, ms_of(d), n).map(Duration::from_millis);
        // Off unless set; when set, greater than 0.
        let opt_ms = |v: Option<u64>, n| match v {
            Some(0) => Err(ConfigError::BadLimit(n)),
            v => Ok(v.map(Duration::from_millis)),
        };
        let heartbeat = ms(self.heartbeat_ms, d::DEFAULT_HEARTBEAT, "heartbeat_ms")?;
        let peer_timeout = ms(
            self.peer_timeout_ms,
            d::DEFAULT_PEER_TIMEOUT,
            "peer_timeout_ms",
        )?;
        if heartbeat >= peer_timeout {
            return Err(ConfigError::LimitOrder("heartbeat_ms", "peer_timeout_ms"));
        }
        let limits = Limits {
            max_line_bytes: positive(
                self.max_line_bytes,
                d::DEFAULT_MAX_LINE_BYTES,
                "max_line_bytes",
            )?,
            max_clients: positive(self.max_clients, d::DEFAULT_MAX_CLIENTS, "max_clients")?,
            idle_timeout: ms(
                self.idle_timeout_ms,
                d::DEFAULT_IDLE_TIMEOUT,
                "idle_timeout_ms",
            )?,
            line_timeout: ms(
                self.line_timeout_ms,
                d::DEFAULT_LINE_TIMEOUT,
                "line_timeout_ms",
            )?,
            max_clients_per_ip: positive(
                self.max_clients_per_ip,
                d::DEFAULT_MAX_CLIENTS_PER_IP,
                "max_clients_per_ip",
            )?,
            log_line_bytes: positive(
                self.log_line_bytes,
                d::DEFAULT_LOG_LINE_BYTES,
                "log_line_bytes",
            )?,
            peer_queue_bytes: positive(
                self.peer_queue_bytes,
                d::DEFAULT_PEER_QUEUE_BYTES,
                "peer_queue_bytes",
            )?,
            resync_window_bytes: positive(
                self.resync_window_bytes,
                d::DEFAULT_RESYNC_WINDOW_BYTES,
                "resync_window_bytes",
            )?,
            // 0 is allowed: a link is never caught up.
            peer_catch_up_bytes: self
                .peer_catch_up_bytes
                .unwrap_or(d::DEFAULT_PEER_CATCH_UP_BYTES),
            journal_compact_lines: positive(
                self.journal_compact_lines,
                d::DEFAULT_JOURNAL_COMPACT_LINES,
                "journal_compact_lines",
            )?,
            places_timeout: ms(
                self.places_timeout_ms,
                d::DEFAULT_PLACES_TIMEOUT,
                "places_timeout_ms",
            )?,
            shutdown_grace: ms(
                self.shutdown_grace_ms,
                d::DEFAULT_SHUTDOWN_GRACE,
                "shutdown_grace_ms",
            )?,
            heartbeat,
            peer_timeout,
            max_client_id_bytes: positive(
                self.max_client_id_bytes,
                d::DEFAULT_MAX_CLIENT_ID_BYTES,
                "max_client_id_bytes",
            )?,
            max_records: match self.max_records {
                None => d::default_max_records(),
                Some(0) => return Err(ConfigError::BadLimit("max_records")),
                Some(n) => n,
            },
            record_ttl: opt_ms(self.record_ttl_ms, "record_ttl_ms")?,
            max_future_skew: opt_ms(self.max_future_skew_ms, "max_future_skew_ms")?,
            nearby_index: self.nearby_index.unwrap_or(true),
            max_fences_per_connection: positive(
                self.max_fences_per_connection,
                d::DEFAULT_MAX_FENCES_PER_CONNECTION,
                "max_fences_per_connection",
            )?,
            max_fences: positive(self.max_fences, d::DEFAULT_MAX_FENCES, "max_fences")?,
            fence_queue_lines: positive(
                self.fence_queue_lines,
                d::DEFAULT_FENCE_QUEUE_LINES,
                "fence_queue_lines",
            )?,
            dissemination: match self.dissemination {
                None | Some(RawDissemination::Tree) => herd_core::Dissemination::Tree,
                Some(RawDissemination::Flood) => herd_core::Dissemination::Flood,
            },
        };
        // 0 is allowed for both: it is their off switch, as on the command line.
        let rotation = LogRotation {
            max_bytes: self.log_max_bytes,
            keep: self.log_keep,
        };
        Ok((limits, rotation))
    }
}

impl RawLimits {
    fn admin_limits(&self) -> Result<herd_net::admin::AdminLimits, ConfigError> {
        let d = herd_net::admin::AdminLimits::default();
        let header_ms = u64::try_from(d.header_timeout.as_millis()).unwrap_or(u64::MAX);
        Ok(herd_net::admin::AdminLimits {
            max_connections: positive(
                self.admin_max_connections,
                d.max_connections,
                "admin_max_connections",
            )?,
            header_timeout: Duration::from_millis(positive(
                self.admin_header_timeout_ms,
                header_ms,
                "admin_header_timeout_ms",
            )?),
            peer_status_timeout: d.peer_status_timeout,
        })
    }
}

impl HerdConfig {
    /// The config in file `path`, or the built-in default herd when there is none.
    ///
    /// # Errors
    /// The file cannot be read or is not a valid config (the message names the file).
    pub fn load(path: Option<&std::path::Path>) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let Some(path) = path else {
            return Ok(Self::default_herd());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("config {}", path.display()))
    }

    /// Parses and validates a config's JSON text.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first problem found.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        if raw.servers.is_empty() {
            return Err(ConfigError::Empty);
        }
        let mut servers = Vec::with_capacity(raw.servers.len());
        for (name, server) in raw.servers {
            let valid = ServerName::new(&name).map_err(|_| ConfigError::BadName(name.clone()))?;
            let (addr, listen, stats, tls_listen, admin) = match server {
                RawServer::Addr(a) => (a, None, None, None, None),
                RawServer::Full(f) => (f.addr, f.listen, f.stats, f.tls_listen, f.admin),
            };
            let admin = admin.map(|s| sock(&name, "admin", &s)).transpose()?;
            let tls_listen = tls_listen
                .map(|s| sock(&name, "tls_listen", &s))
                .transpose()?;
            if tls_listen.is_some() && raw.tls.is_none() {
                return Err(ConfigError::TlsListenWithoutTls(name));
            }
            let listen = match listen {
                Some(l) => sock(&name, "listen", &l)?,
                None => sock(&name, "addr", &addr)?,
            };
            let stats = stats.map(|s| sock(&name, "stats", &s)).transpose()?;
            servers.push(ServerConfig {
                name: valid,
                addr,
                listen,
                stats,
                tls_listen,
                admin,
            });
        }
        let links = validate_links(&servers, raw.links)?;
        if raw.secret.as_deref() == Some("") {
            return Err(ConfigError::EmptySecret);
        }
        if raw.admin_token.as_deref() == Some("") {
            return Err(ConfigError::EmptyAdminToken);
        }
        let admin_limits = raw.limits.admin_limits()?;
        let (limits, log_rotation) = raw.limits.validate()?;
        Ok(Self {
            servers,
            links,
            secret: raw.secret,
            limits,
            log_rotation,
            places: raw.places.validate()?,
            data_dir: raw.data_dir.filter(|d| !d.as_os_str().is_empty()),
            journal_fsync: raw.journal_fsync,
            tls: raw.tls.map(|t| TlsConfig {
                ca: t.ca,
                cert: t.cert,
                key: t.key,
            }),
            insecure_peers: raw.insecure_peers,
            admin_token: raw.admin_token,
            admin_limits,
        })
    }

    /// The admin token: the environment variable [`ADMIN_TOKEN_ENV`] if set, else the
    /// config's `"admin_token"`.
    pub fn effective_admin_token(&self) -> Option<String> {
        std::env::var(ADMIN_TOKEN_ENV)
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| self.admin_token.clone())
    }

    /// Closed by default: an admin listener beyond loopback needs a token.
    ///
    /// # Errors
    /// [`ConfigError::AdminWithoutToken`] naming the first such server.
    pub fn check_admin_security(&self) -> Result<(), ConfigError> {
        if self.effective_admin_token().is_some() {
            return Ok(());
        }
        match self
            .servers
            .iter()
            .find_map(|s| s.admin.filter(|a| !a.ip().is_loopback()).map(|a| (s, a)))
        {
            Some((s, admin)) => Err(ConfigError::AdminWithoutToken {
                server: s.name.to_string(),
                admin,
            }),
            None => Ok(()),
        }
    }

    /// Closed by default: a server that peers can dial from beyond loopback needs TLS or a
    /// secret (from the config or the environment), unless `"insecure_peers": true` says the
    /// operator chose otherwise.
    ///
    /// # Errors
    /// [`ConfigError::InsecurePeers`] naming the first such server.
    pub fn check_peer_security(&self) -> Result<(), ConfigError> {
        if self.tls.is_some() || self.insecure_peers || self.effective_secret().is_some() {
            return Ok(());
        }
        match self.servers.iter().find(|s| !s.listen.ip().is_loopback()) {
            Some(s) => Err(ConfigError::InsecurePeers {
                server: s.name.to_string(),
                listen: s.listen,
            }),
            None => Ok(()),
        }
    }

    /// The built-in default herd.
    ///
    /// # Panics
    /// Never: the default herd is tested to be valid.
    pub fn default_herd() -> Self {
        Self::parse(DEFAULT_HERD).expect("the built-in herd config is valid")
    }

    /// A server by name.
    pub fn server(&self, name: &str) -> Option<&ServerConfig> {
        self.servers.iter().find(|s| s.name.as_str() == name)
    }

    /// The neighbours of `name`, in config order.
    pub fn neighbours(&self, name: &ServerName) -> Vec<ServerName> {
        self.links
            .iter()
            .filter_map(|(a, b)| {
                if a == name {
                    Some(b.clone())
                } else if b == name {
                    Some(a.clone())
                } else {
                    None
                }
            })
            .collect()
    }

    /// The effective secret: the environment variable [`SECRET_ENV`] if set, else the config's.
    pub fn effective_secret(&self) -> Option<String> {
        std::env::var(SECRET_ENV)
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| self.secret.clone())
    }
}

fn validate_links(
    servers: &[ServerConfig],
    raw: Vec<(String, String)>,
) -> Result<Vec<(ServerName, ServerName)>, ConfigError> {
    let find = |n: &str| {
        servers
            .iter()
            .find(|s| s.name.as_str() == n)
            .map(|s| s.name.clone())
    };
    let mut seen = HashSet::new();
    let mut links = Vec::with_capacity(raw.len());
    for (a, b) in raw {
        let (Some(na), Some(nb)) = (find(&a), find(&b)) else {
            return Err(ConfigError::UnknownServer(a, b));
        };
        if na == nb {
            return Err(ConfigError::SelfLink(a));
        }
        let key = if na < nb {
            (na.clone(), nb.clone())
        } else {
            (nb.clone(), na.clone())
        };
        if !seen.insert(key) {
            return Err(ConfigError::DuplicateLink(a, b));
        }
        links.push((na, nb));
    }
    Ok(links)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_tuning_is_read_and_zero_cache_entries_turns_the_cache_off() {
        let c = HerdConfig::parse(
            r#"{"servers": {"A": "127.0.0.1:1"},
                "places": {"max_concurrent": 3, "cache_ttl_ms": 1500, "cache_entries": 0}}"#,
        )
        .unwrap();
        assert_eq!(
            c.places,
            PlacesTuning {
                max_concurrent: 3,
                cache_ttl: Duration::from_millis(1500),
                cache_entries: 0
            }
        );
        let d = HerdConfig::parse(r#"{"servers": {"A": "127.0.0.1:1"}}"#).unwrap();
        assert_eq!(d.places, PlacesTuning::default());
        for bad in [
            r#""max_concurrent": 0"#,
            r#""cache_ttl_ms": 0"#,
            r#""cache": 1"#,
        ] {
            let text = format!(r#"{{"servers": {{"A": "127.0.0.1:1"}}, "places": {{{bad}}}}}"#);
            assert!(HerdConfig::parse(&text).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_herd_is_the_assignments_topology() {
        let c = HerdConfig::default_herd();
        let names: Vec<&str> = c.servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["Goloman", "Hands", "Holiday", "Welsh", "Wilkes"]);
        assert_eq!(c.links.len(), 6);
        assert_eq!(
            c.server("Welsh").unwrap().listen,
            "127.0.0.1:12003".parse().unwrap()
        );
        let g = ServerName::new("Goloman").unwrap();
        assert_eq!(c.neighbours(&g).len(), 3);
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn the_container_example_in_deploy_is_valid() {
        let c = HerdConfig::parse(include_str!("../../deploy/herd-container.json")).unwrap();
        let w = c.server("Welsh").unwrap();
        assert_eq!(w.addr, "welsh:12000");
        assert_eq!(w.listen, "0.0.0.0:12000".parse().unwrap());
        assert_eq!(c.links, HerdConfig::default_herd().links);
        let paths = c.tls.as_ref().unwrap().paths(&w.name);
        assert_eq!(
            paths.cert,
            std::path::PathBuf::from("/etc/herd/tls/Welsh.pem")
        );
        assert!(c.check_peer_security().is_ok(), "TLS makes it closed");
    }

    #[test]
    fn peers_beyond_loopback_need_tls_a_secret_or_an_explicit_choice() {
        // The environment's secret would count: these configs are checked without it.
        if std::env::var_os(SECRET_ENV).is_some() {
            return;
        }
        let open = r#"{"servers": {"A": {"addr": "a:1", "listen": "0.0.0.0:1"}}"#;
        let c = HerdConfig::parse(&format!("{open}}}")).unwrap();
        let e = c.check_peer_security().unwrap_err().to_string();
        assert!(e.contains("server A listens on 0.0.0.0:1"), "{e}");
        assert!(e.contains("insecure_peers"), "{e}");
        for extra in [
            r#", "secret": "s""#,
            r#", "insecure_peers": true"#,
            r#", "tls": {"ca": "c", "cert": "{name}.pem", "key": "{name}.key"}"#,
        ] {
            let c = HerdConfig::parse(&format!("{open}{extra}}}")).unwrap();
            assert!(c.check_peer_security().is_ok(), "{extra}");
        }
        assert!(
            HerdConfig::default_herd().check_peer_security().is_ok(),
            "loopback"
        );
        let e = HerdConfig::parse(
            r#"{"servers": {"A": {"addr": "127.0.0.1:1", "tls_listen": "127.0.0.1:2"}}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("tls_listen"), "{e}");
    }

    #[test]
    fn listen_override_and_limits_are_read() {
        let c = HerdConfig::parse(
            r#"{"servers": {"A": {"addr": "a.example:1", "listen": "0.0.0.0:1", "stats": "127.0.0.1:2"}},
                "limits": {"max_line_bytes": 10, "max_clients": 3, "idle_timeout_ms": 4,
                           "peer_queue_bytes": 5, "places_timeout_ms": 6, "shutdown_grace_ms": 7,
                           "resync_window_bytes": 8, "journal_compact_lines": 9,
                           "peer_catch_up_bytes": 14, "line_timeout_ms": 11, "max_clients_per_ip": 12, "log_line_bytes": 13},
                "data_dir": "/d", "journal_fsync": true}"#,
        )
        .unwrap();
        let a = &c.servers[0];
        assert_eq!(
            (a.addr.as_str(), a.listen.to_string().as_str()),
            ("a.example:1", "0.0.0.0:1")
        );
        assert_eq!(a.stats, Some("127.0.0.1:2".parse().unwrap()));
        let l = &c.limits;
        assert_eq!(
            (l.max_line_bytes, l.max_clients, l.peer_queue_bytes),
            (10, 3, 5)
        );
        assert_eq!(l.idle_timeout, Duration::from_millis(4));
        assert_eq!(l.places_timeout, Duration::from_millis(6));
        assert_eq!(l.shutdown_grace, Duration::from_millis(7));
        assert_eq!(l.resync_window_bytes, 8);
        assert_eq!(l.peer_catch_up_bytes, 14);
        assert_eq!(l.journal_compact_lines, 9);
        assert_eq!(l.line_timeout, Duration::from_millis(11));
        assert_eq!((l.max_clients_per_ip, l.log_line_bytes), (12, 13));
        assert_eq!(c.data_dir.as_deref(), Some(std::path::Path::new("/d")));
        assert!(c.journal_fsync);
        assert_eq!(l.resync_window(), 1, "at most a quarter of the peer queue");
    }

    #[test]
    fn hostile_load_limits_and_log_rotation_are_read() {
        let c = HerdConfig::parse(
            r#"{"servers": {"A": "127.0.0.1:1"},
                "limits": {"heartbeat_ms": 100, "peer_timeout_ms": 400,
                           "max_client_id_bytes": 64, "max_records": 3,
                           "record_ttl_ms": 300, "max_future_skew_ms": 1000,
                           "log_max_bytes": 0, "log_keep": 2,
                           "dissemination": "flood"}}"#,
        )
        .unwrap();
        let l = &c.limits;
        assert_eq!(l.dissemination, herd_core::Dissemination::Flood);
        assert_eq!(
            l.peer_catch_up_bytes,
            herd_net::limits::DEFAULT_PEER_CATCH_UP_BYTES,
            "4 MiB unless set"
        );
        assert_eq!(l.heartbeat, Duration::from_millis(100));
        assert_eq!(l.peer_timeout, Duration::from_millis(400));
        assert_eq!((l.max_client_id_bytes, l.max_records), (64, 3));
        assert_eq!(l.record_ttl, Some(Duration::from_millis(300)));
        assert_eq!(l.max_future_skew, Some(Duration::from_millis(1000)));
        assert_eq!(
            c.log_rotation,
            LogRotation {
                max_bytes: Some(0),
                keep: Some(2)
            }
        );
        let d = HerdConfig::parse(
            r#"{"servers": {"A": "127.0.0.1:1"},
                "limits": {"record_ttl_ms": null, "max_records": null}}"#,
        )
        .unwrap();
        assert_eq!(d.limits, Limits::default(), "null is the default");
        assert_eq!(d.limits.dissemination, herd_core::Dissemination::Tree);
        assert_eq!(d.limits.record_ttl, None, "off by default");
        assert_eq!(d.limits.max_future_skew, None, "off by default");
        assert_eq!(
            d.limits.max_records,
            herd_net::limits::default_max_records(),
            "sized to the memory"
        );
        assert_eq!(
            d.limits.max_client_id_bytes,
            herd_core::node::DEFAULT_MAX_CLIENT_ID_BYTES
        );
        assert_eq!(d.log_rotation, LogRotation::default());
    }

    #[test]
    fn hostile_load_limits_out_of_range_are_refused() {
        let cases = [
            (
                r#""max_client_id_bytes": 0"#,
                "max_client_id_bytes must be greater than 0",
            ),
            (r#""max_records": 0"#, "max_records must be greater than 0"),
            (
                r#""record_ttl_ms": 0"#,
                "record_ttl_ms must be greater than 0",
            ),
            (
                r#""max_future_skew_ms": 0"#,
                "max_future_skew_ms must be greater than 0",
            ),
            (
                r#""heartbeat_ms": 0"#,
                "heartbeat_ms must be greater than 0",
            ),
            (
                r#""peer_timeout_ms": 0"#,
                "peer_timeout_ms must be greater than 0",
            ),
            (
                r#""heartbeat_ms": 1000, "peer_timeout_ms": 1000"#,
                "heartbeat_ms must be less than peer_timeout_ms",
            ),
            (
                r#""heartbeat_ms": 2000"#,
                "heartbeat_ms must be less than peer_timeout_ms",
            ),
            (r#""record_ttl_ms": -1"#, "invalid config"),
            (r#""log_keep": "5""#, "invalid config"),
            (r#""dissemination": "gossip""#, "invalid config"),
        ];
        for (bad, want) in cases {
            let text = format!(r#"{{"servers": {{"A": "127.0.0.1:1"}}, "limits": {{{bad}}}}}"#);
            let err = HerdConfig::parse(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        let cases = [
            (
                r#"{"servers": {"A": "127.0.0.1:1"}, "extra": 1}"#,
                "unknown field",
            ),
            (
                r#"{"servers": {"A": {"addr": "127.0.0.1:1", "lisen": "x"}}}"#,
                "invalid config",
            ),
            (
                r#"{"servers": {"A": "127.0.0.1:1"}, "links": [["A","B"]]}"#,
                "not in \"servers\"",
            ),
            (
                r#"{"servers": {"A": "127.0.0.1:1"}, "links": [["A","A"]]}"#,
                "to itself",
            ),
            (
                r#"{"servers": {"A": "127.0.0.1:1", "B": "127.0.0.1:2"}, "links": [["A","B"],["B","A"]]}"#,
                "twice",
            ),
            (r#"{"servers": {"A": "nowhere"}}"#, "invalid addr address"),
            (
                r#"{"servers": {"A B": "127.0.0.1:1"}}"#,
                "invalid server name",
            ),
            (r#"{"servers": {}}"#, "no servers"),
            (
                r#"{"servers": {"A": "127.0.0.1:1"}, "limits": {"max_clients": 0}}"#,
                "max_clients",
            ),
            (
                r#"{"servers": {"A": "127.0.0.1:1"}, "limits": {"max_client": 3}}"#,
                "unknown field",
            ),
            (
                r#"{"servers": {"A": "127.0.0.1:1"}, "limits": {"line_timeout_ms": 0}}"#,
                "line_timeout_ms",
            ),
            (
                r#"{"servers": {"A": "127.0.0.1:1"}, "limits": {"max_clients_per_ip": 0}}"#,
                "max_clients_per_ip",
            ),
            (
                r#"{"servers": {"A": "127.0.0.1:1"}, "limits": {"log_line_bytes": 0}}"#,
                "log_line_bytes",
            ),
            (
                r#"{"servers": {"A": "127.0.0.1:1"}, "limits": {"line_timeout": 5}}"#,
                "unknown field",
            ),
            (
                r#"{"servers": {"A": "127.0.0.1:1"}, "secret": ""}"#,
                "secret",
            ),
            ("not json", "invalid config"),
        ];
        for (text, want) in cases {
            let err = HerdConfig::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }
}
