//! Changes without restarts: a newly read config is compared with the running one and the
//! difference applied to every server this process runs ([`Herd::reload`]).
//!
//! What a reload changes, for each server running here: its neighbours (links added and
//! removed, a neighbour's dial address), the limits (see [`herd_net::ServerHandle::set_limits`]
//! for which apply at once and which to new connections), the peer secret and the TLS files
//! (reloaded when their paths or contents change; new sessions and connections use them).
//! The set of servers a process runs is fixed at start: a config that drops or renames one
//! of them, or moves one of its addresses (`listen`, `stats`, `tls_listen`), is refused
//! whole, as is one that fails to parse or validate, or whose TLS files do not load; the
//! running config is then untouched. Other changes that only a restart applies (`data_dir`,
//! `journal_fsync`, `places`, the log rotation, `limits.journal_compact_lines`) are named in
//! the summary and otherwise left as they are; `limits.shutdown_grace_ms` applies to the
//! next shutdown. Nothing here changes the wire protocol.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use herd_core::ServerName;
use herd_net::{Limits, Neighbour};
use thiserror::Error;

use crate::config::{HerdConfig, SECRET_ENV};
use crate::Herd;

/// Where the process read its config and the command-line overrides applied to it, so that
/// a reload reads it again the same way ([`reread`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigSource {
    /// The config file (`--config`); `None`: the built-in default herd.
    pub path: Option<PathBuf>,
    /// `--data-dir`, which overrides the config's `"data_dir"`.
    pub data_dir: Option<PathBuf>,
}

/// Why a config was not reloaded; the running config is untouched.
#[derive(Debug, Error)]
pub enum ReloadError {
    /// The file cannot be read, or is not a valid config.
    #[error("config not reloaded: {0:#}")]
    Invalid(anyhow::Error),
    /// A server running in this process is not in the new config.
    #[error(
        "config not reloaded: server {0} runs in this process and is not in the new config \
         (removing or renaming a running server needs a restart)"
    )]
    ServerGone(ServerName),
    /// An address a running server listens on changed.
    #[error(
        "config not reloaded: server {server}'s {what} address changes from {old} to {new} \
         (a listen address needs a restart)"
    )]
    ListenChanged {
        /// The server.
        server: ServerName,
        /// Which address: `listen`, `stats` or `tls_listen`.
        what: &'static str,
        /// The running one.
        old: String,
        /// The new config's.
        new: String,
    },
    /// The TLS files of a running server do not load.
    #[error("config not reloaded: server {server}: TLS files: {error}")]
    Tls {
        /// The server.
        server: ServerName,
        /// What is wrong with them.
        error: String,
    },
    /// The herd was started without a [`ConfigSource`] to read again.
    #[error("config not reloaded: this process knows no config file to read again")]
    NoSource,
}

/// Reads the config of `source` as the process read it at start: the file (or the built-in
/// herd), `--data-dir` applied, and the peer security check.
///
/// # Errors
/// [`ReloadError::Invalid`] naming the file and the problem.
pub fn reread(source: &ConfigSource) -> Result<HerdConfig, ReloadError> {
    let mut config = HerdConfig::load(source.path.as_deref()).map_err(ReloadError::Invalid)?;
    if let Some(dir) = &source.data_dir {
        config.data_dir = Some(dir.clone());
    }
    config
        .check_peer_security()
        .map_err(|e| ReloadError::Invalid(e.into()))?;
    config
        .check_admin_security()
        .map_err(|e| ReloadError::Invalid(e.into()))?;
    Ok(config)
}

/// How one running server's neighbours change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerPlan {
    /// The server.
    pub name: ServerName,
    /// New neighbours, with their dial addresses.
    pub added: Vec<Neighbour>,
    /// Neighbours no longer linked.
    pub removed: Vec<ServerName>,
    /// Neighbours kept whose dial address changes, with the new one.
    pub readdressed: Vec<Neighbour>,
}

impl ServerPlan {
    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.readdressed.is_empty()
    }
}

/// The difference between the running config and a new one, for the servers running here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Per running server, in start order.
    pub servers: Vec<ServerPlan>,
    /// Whether the limits differ.
    pub limits: bool,
    /// Whether the effective peer secret differs.
    pub secret: bool,
    /// Changes only a restart applies, by config key.
    pub restart_only: Vec<&'static str>,
}

/// Where `n` is dialled under `config`: its `addr`, or, for a server running in this process
/// that was configured on port 0, the address it actually got (`locals`).
pub(crate) fn dial_addr(
    config: &HerdConfig,
    locals: &[(ServerName, SocketAddr)],
    n: &ServerName,
) -> String {
    let Some(sc) = config.server(n.as_str()) else {
        return String::new();
    };
    let configured_port_zero = sc.addr.rsplit(':').next() == Some("0");
    match locals.iter().find(|(name, _)| name == n) {
        Some((_, local)) if configured_port_zero => local.to_string(),
        _ => sc.addr.clone(),
    }
}

fn neighbours_of(
    config: &HerdConfig,
    locals: &[(ServerName, SocketAddr)],
    name: &ServerName,
) -> Vec<Neighbour> {
    config
        .neighbours(name)
        .into_iter()
        .map(|n| Neighbour {
            addr: dial_addr(config, locals, &n),
            name: n,
        })
        .collect()
}

fn show(a: Option<SocketAddr>) -> String {
    a.map_or_else(|| "none".to_owned(), |a| a.to_string())
}

/// Compares `old` (the running config) with `new` for the servers `running` here (`locals`:
/// their bound addresses).
///
/// # Errors
/// [`ReloadError::ServerGone`] or [`ReloadError::ListenChanged`]: the change needs a restart.
pub fn plan(
    old: &HerdConfig,
    new: &HerdConfig,
    running: &[ServerName],
    locals: &[(ServerName, SocketAddr)],
) -> Result<Plan, ReloadError> {
    let mut servers = Vec::with_capacity(running.len());
    for name in running {
        let now = old.server(name.as_str());
        let Some(next) = new.server(name.as_str()) else {
            return Err(ReloadError::ServerGone(name.clone()));
        };
        let addresses: [(&'static str, Option<SocketAddr>, Option<SocketAddr>); 4] = [
            ("listen", now.map(|s| s.listen), Some(next.listen)),
            ("stats", now.and_then(|s| s.stats), next.stats),
            ("admin", now.and_then(|s| s.admin), next.admin),
            (
                "tls_listen",
                now.and_then(|s| s.tls_listen),
                next.tls_listen,
            ),
        ];
        for (what, a, b) in addresses {
            if a != b {
                return Err(ReloadError::ListenChanged {
                    server: name.clone(),
                    what,
                    old: show(a),
                    new: show(b),
                });
            }
        }
        let before = neighbours_of(old, locals, name);
        let after = neighbours_of(new, locals, name);
        let mut sp = ServerPlan {
            name: name.clone(),
            added: Vec::new(),
            removed: Vec::new(),
            readdressed: Vec::new(),
        };
        for n in &after {
            match before.iter().find(|b| b.name == n.name) {
                None => sp.added.push(n.clone()),
                Some(b) if b.addr != n.addr => sp.readdressed.push(n.clone()),
                Some(_) => {}
            }
        }
        sp.removed = before
            .iter()
            .filter(|b| !after.iter().any(|n| n.name == b.name))
            .map(|b| b.name.clone())
            .collect();
        servers.push(sp);
    }
    let mut restart_only = Vec::new();
    let restart_checks: [(&'static str, bool); 10] = [
        ("data_dir", old.data_dir != new.data_dir),
        ("journal_fsync", old.journal_fsync != new.journal_fsync),
        ("places", old.places != new.places),
        (
            "limits.log_max_bytes",
            old.log_rotation.max_bytes != new.log_rotation.max_bytes,
        ),
        (
            "limits.log_keep",
            old.log_rotation.keep != new.log_rotation.keep,
        ),
        (
            "limits.journal_compact_lines",
            old.limits.journal_compact_lines != new.limits.journal_compact_lines,
        ),
        (
            "limits.nearby_index",
            old.limits.nearby_index != new.limits.nearby_index,
        ),
        (
            "limits.dissemination",
            old.limits.dissemination != new.limits.dissemination,
        ),
        (
            "limits.admin_max_connections",
            old.admin_limits.max_connections != new.admin_limits.max_connections,
        ),
        (
            "limits.admin_header_timeout_ms",
            old.admin_limits.header_timeout != new.admin_limits.header_timeout,
        ),
    ];
    for (key, changed) in restart_checks {
        if changed {
            restart_only.push(key);
        }
    }
    Ok(Plan {
        servers,
        limits: old.limits != new.limits,
        secret: old.effective_secret() != new.effective_secret(),
        restart_only,
    })
}

impl Plan {
    /// The one-line summary of a reload: `reloaded: Goloman +link Frank, limits changed`.
    pub fn summary(&self, tls: &[ServerName]) -> String {
        let mut parts: Vec<String> = Vec::new();
        for sp in self.servers.iter().filter(|sp| !sp.is_empty()) {
            let mut s = sp.name.to_string();
            for n in &sp.added {
                let _ = write!(s, " +link {}", n.name);
            }
            for n in &sp.removed {
                let _ = write!(s, " -link {n}");
            }
            for n in &sp.readdressed {
                let _ = write!(s, " ~link {} at {}", n.name, n.addr);
            }
            parts.push(s);
        }
        if self.limits {
            parts.push("limits changed".into());
        }
        if self.secret {
            parts.push("secret changed".into());
        }
        if !tls.is_empty() {
            let names: Vec<&str> = tls.iter().map(ServerName::as_str).collect();
            parts.push(format!("TLS files reloaded for {}", names.join(" ")));
        }
        let mut line = if parts.is_empty() {
            "reloaded: no changes".to_owned()
        } else {
            format!("reloaded: {}", parts.join(", "))
        };
        if !self.restart_only.is_empty() {
            let _ = write!(
                line,
                "; not applied until a restart: {}",
                self.restart_only.join(", ")
            );
        }
        line
    }
}

/// What a reload remembers of the running config.
pub(crate) struct Running {
    /// The config the servers run with now.
    pub(crate) config: HerdConfig,
    /// Per running server (start order), the bytes of its TLS files as last loaded.
    pub(crate) tls_files: Vec<Option<Vec<u8>>>,
    /// Where to read the config again.
    pub(crate) source: Option<ConfigSource>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The TLS files hold private keys: never printed.
        f.debug_struct("Running")
            .field("config", &self.config)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The bytes of the TLS files of server `name` under `config` (CA, certificate, key), or
/// `None` without TLS.
///
/// # Errors
/// A file cannot be read.
pub(crate) fn tls_files(
    config: &HerdConfig,
    name: &ServerName,
) -> Result<Option<Vec<u8>>, std::io::Error> {
    let Some(tls) = &config.tls else {
        return Ok(None);
    };
    let paths = tls.paths(name);
    let mut bytes = Vec::new();
    for p in [&paths.ca, &paths.cert, &paths.key] {
        let file = std::fs::read(p)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
        bytes.extend_from_slice(&(file.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&file);
    }
    Ok(Some(bytes))
}

impl Herd {
    /// Remembers where the config was read, for [`Herd::reload_from_source`].
    pub fn set_source(&self, source: ConfigSource) {
        self.running().source = Some(source);
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Running> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the config again from where the process read it ([`Herd::set_source`], with
    /// the same overrides) and applies it ([`Herd::reload`]).
    ///
    /// # Errors
    /// [`ReloadError`]; the running config is untouched.
    pub fn reload_from_source(&self) -> Result<String, ReloadError> {
        let source = self.running().source.clone().ok_or(ReloadError::NoSource)?;
        let new = reread(&source)?;
        self.reload(&new)
    }

    /// Applies `new` to every server running here (see the module's documentation for what
    /// changes and what is refused) and returns the one-line summary. One reload runs at a
    /// time; callable through a shared reference (an `Arc<Herd>`).
    ///
    /// # Errors
    /// [`ReloadError`]: nothing was changed.
    pub fn reload(&self, new: &HerdConfig) -> Result<String, ReloadError> {
        new.check_peer_security()
            .map_err(|e| ReloadError::Invalid(e.into()))?;
        new.check_admin_security()
            .map_err(|e| ReloadError::Invalid(e.into()))?;
        let mut running = self.running();
        let names: Vec<ServerName> = self.servers.iter().map(|s| s.name().clone()).collect();
        let plan = plan(&running.config, new, &names, &self.locals)?;
        // Everything that can fail is done before anything changes.
        let mut tls_new: Vec<Option<Option<herd_net::tls::HerdTls>>> = Vec::new();
        let mut tls_bytes = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let tls_error = |e: &dyn std::fmt::Display| ReloadError::Tls {
                server: name.clone(),
                error: e.to_string(),
            };
            let bytes = tls_files(new, name).map_err(|e| tls_error(&e))?;
            let old = running.tls_files.get(i).cloned().flatten();
            if bytes == old {
                tls_new.push(None);
            } else {
                let loaded = match &new.tls {
                    Some(t) => Some(
                        herd_net::tls::HerdTls::load(&t.paths(name)).map_err(|e| tls_error(&e))?,
                    ),
                    None => None,
                };
                tls_new.push(Some(loaded));
            }
            tls_bytes.push(bytes);
        }
        let limits: Option<Limits> = plan.limits.then(|| crate::fit_open_files(new, &names));
        let secret: Option<Arc<[u8]>> = new.effective_secret().map(|s| Arc::from(s.into_bytes()));
        let mut tls_reloaded = Vec::new();
        for ((server, sp), tls) in self.servers.iter().zip(&plan.servers).zip(tls_new) {
            for n in &sp.removed {
                server.remove_neighbour(n);
            }
            for n in &sp.readdressed {
                server.set_neighbour_addr(&n.name, n.addr.clone());
            }
            if let Some(limits) = &limits {
                server.set_limits(limits.clone());
            }
            if plan.secret {
                server.set_secret(secret.clone());
            }
            if let Some(tls) = tls {
                server.set_tls(tls);
                tls_reloaded.push(server.name().clone());
            }
            // Added last: a new link's first handshake uses the new secret and TLS.
            for n in &sp.added {
                server.add_neighbour(n.clone());
            }
        }
        running.config = new.clone();
        running.tls_files = tls_bytes;
        // The admin listeners show the new herd and take the new token.
        *self
            .admin_config()
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = crate::admin_config(new);
        Ok(plan.summary(&tls_reloaded))
    }
}

/// The resolved herd of `config`, for `herd-server --check-config`: every server with its
/// addresses and neighbours, the links, and every setting with the value it takes (defaults
/// filled in).
pub fn describe(config: &HerdConfig) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "herd: {} servers, {} links",
        config.servers.len(),
        config.links.len()
    );
    for s in &config.servers {
        let names: Vec<String> = config
            .neighbours(&s.name)
            .iter()
            .map(ToString::to_string)
            .collect();
        let _ = writeln!(
            out,
            "server {}: addr {}, listen {}, admin {}, stats {}, tls_listen {}; neighbours: {}",
            s.name,
            s.addr,
            s.listen,
            show(s.admin),
            show(s.stats),
            show(s.tls_listen),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(" ")
            }
        );
    }
    for (a, b) in &config.links {
        let _ = writeln!(out, "link {a} {b}");
    }
    let secret = match (
        std::env::var(SECRET_ENV).ok().filter(|s| !s.is_empty()),
        &config.secret,
    ) {
        (Some(_), _) => format!("set (from {SECRET_ENV})"),
        (None, Some(_)) => "set (from the config)".to_owned(),
        (None, None) => "none".to_owned(),
    };
    let _ = writeln!(out, "secret: {secret}");
    match &config.tls {
        Some(t) => {
            let _ = writeln!(
                out,
                "tls: ca {}, cert {}, key {}",
                t.ca.display(),
                t.cert,
                t.key
            );
        }
        None => {
            let _ = writeln!(out, "tls: none");
        }
    }
    let _ = writeln!(out, "insecure_peers: {}", config.insecure_peers);
    let _ = writeln!(
        out,
        "data_dir: {}; journal_fsync: {}",
        config.data_dir.as_ref().map_or_else(
            || "none (in memory only)".to_owned(),
            |d| d.display().to_string()
        ),
        config.journal_fsync
    );
    let ms = |d: std::time::Duration| d.as_millis().to_string();
    let off = |d: Option<std::time::Duration>| d.map_or_else(|| "off".to_owned(), ms);
    let l = &config.limits;
    let limits: [(&str, String); 21] = [
        ("max_line_bytes", l.max_line_bytes.to_string()),
        ("max_clients", l.max_clients.to_string()),
        ("idle_timeout_ms", ms(l.idle_timeout)),
        ("line_timeout_ms", ms(l.line_timeout)),
        ("max_clients_per_ip", l.max_clients_per_ip.to_string()),
        ("log_line_bytes", l.log_line_bytes.to_string()),
        ("peer_queue_bytes", l.peer_queue_bytes.to_string()),
        ("resync_window_bytes", l.resync_window_bytes.to_string()),
        ("peer_catch_up_bytes", l.peer_catch_up_bytes.to_string()),
        ("journal_compact_lines", l.journal_compact_lines.to_string()),
        ("places_timeout_ms", ms(l.places_timeout)),
        ("shutdown_grace_ms", ms(l.shutdown_grace)),
        ("heartbeat_ms", ms(l.heartbeat)),
        ("peer_timeout_ms", ms(l.peer_timeout)),
        ("max_client_id_bytes", l.max_client_id_bytes.to_string()),
        ("max_records", l.max_records.to_string()),
        ("record_ttl_ms", off(l.record_ttl)),
        ("max_future_skew_ms", off(l.max_future_skew)),
        (
            "max_fences_per_connection",
            l.max_fences_per_connection.to_string(),
        ),
        ("max_fences", l.max_fences.to_string()),
        ("fence_queue_lines", l.fence_queue_lines.to_string()),
    ];
    for (key, value) in limits {
        let _ = writeln!(out, "limits.{key}: {value}");
    }
    let rotation = crate::logging::Rotation::default();
    let _ = writeln!(
        out,
        "limits.log_max_bytes: {}",
        config.log_rotation.max_bytes.unwrap_or(rotation.max_bytes)
    );
    let _ = writeln!(
        out,
        "limits.log_keep: {}",
        config.log_rotation.keep.unwrap_or(rotation.keep)
    );
    let _ = writeln!(
        out,
        "limits.admin_max_connections: {}\nlimits.admin_header_timeout_ms: {}",
        config.admin_limits.max_connections,
        ms(config.admin_limits.header_timeout),
    );
    let token = match (
        std::env::var(crate::config::ADMIN_TOKEN_ENV)
            .ok()
            .filter(|s| !s.is_empty()),
        &config.admin_token,
    ) {
        (Some(_), _) => format!("set (from {})", crate::config::ADMIN_TOKEN_ENV),
        (None, Some(_)) => "set (from the config)".to_owned(),
        (None, None) => "none".to_owned(),
    };
    let _ = writeln!(out, "admin_token: {token}");
    let p = &config.places;
    let _ = writeln!(
        out,
        "places.max_concurrent: {}\nplaces.cache_ttl_ms: {}\nplaces.cache_entries: {}",
        p.max_concurrent,
        ms(p.cache_ttl),
        p.cache_entries
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn name(s: &str) -> ServerName {
        ServerName::new(s).unwrap()
    }

    fn config(json: &str) -> HerdConfig {
        HerdConfig::parse(json).unwrap()
    }

    const SERVERS: &str = r#""A": "127.0.0.1:1001", "B": "127.0.0.1:1002", "C": "127.0.0.1:1003""#;

    fn herd(links: &str, extra: &str) -> HerdConfig {
        config(&format!(
            r#"{{"servers": {{{SERVERS}}}, "links": [{links}]{extra}}}"#
        ))
    }

    fn nb(n: &str, addr: &str) -> Neighbour {
        Neighbour {
            name: name(n),
            addr: addr.into(),
        }
    }

    #[test]
    fn links_added_and_removed_are_planned_per_running_server() {
        let old = herd(r#"["A", "B"]"#, "");
        let new = herd(r#"["A", "C"], ["B", "C"]"#, "");
        let p = plan(&old, &new, &[name("A"), name("B")], &[]).unwrap();
        assert_eq!(
            p.servers,
            [
                ServerPlan {
                    name: name("A"),
                    added: vec![nb("C", "127.0.0.1:1003")],
                    removed: vec![name("B")],
                    readdressed: vec![],
                },
                ServerPlan {
                    name: name("B"),
                    added: vec![nb("C", "127.0.0.1:1003")],
                    removed: vec![name("A")],
                    readdressed: vec![],
                },
            ]
        );
        assert!(!p.limits && !p.secret && p.restart_only.is_empty());
        assert_eq!(
            p.summary(&[]),
            "reloaded: A +link C -link B, B +link C -link A"
        );
        assert_eq!(
            plan(&old, &old, &[name("A")], &[]).unwrap().summary(&[]),
            "reloaded: no changes"
        );
    }

    #[test]
    fn a_new_server_and_a_moved_neighbour_are_planned_for_the_running_ones() {
        let old = herd(r#"["A", "B"]"#, "");
        let new = config(
            r#"{"servers": {"A": "127.0.0.1:1001", "B": {"addr": "10.0.0.9:1002", "listen": "127.0.0.1:1002"},
                "C": "127.0.0.1:1003", "Frank": "127.0.0.1:1009"},
                "links": [["A", "B"], ["A", "Frank"], ["B", "Frank"]],
                "limits": {"max_records": 10}, "secret": "s"}"#,
        );
        let p = plan(&old, &new, &[name("A")], &[]).unwrap();
        assert_eq!(
            p.servers,
            [ServerPlan {
                name: name("A"),
                added: vec![nb("Frank", "127.0.0.1:1009")],
                removed: vec![],
                readdressed: vec![nb("B", "10.0.0.9:1002")],
            }]
        );
        assert!(p.limits);
        assert_eq!(
            p.summary(&[]),
            "reloaded: A +link Frank ~link B at 10.0.0.9:1002, limits changed, secret changed"
        );
    }

    #[test]
    fn a_neighbour_on_port_zero_running_here_is_dialled_where_it_listens() {
        let json = |links: &str| {
            config(&format!(
                r#"{{"servers": {{"A": "127.0.0.1:0", "B": "127.0.0.1:0"}}, "links": [{links}]}}"#
            ))
        };
        let locals = [
            (name("A"), "127.0.0.1:4001".parse().unwrap()),
            (name("B"), "127.0.0.1:4002".parse().unwrap()),
        ];
        let p = plan(
            &json(""),
            &json(r#"["A", "B"]"#),
            &[name("A"), name("B")],
            &locals,
        )
        .unwrap();
        assert_eq!(p.servers[0].added, [nb("B", "127.0.0.1:4002")]);
        assert_eq!(p.servers[1].added, [nb("A", "127.0.0.1:4001")]);
    }

    #[test]
    fn dropping_a_running_server_or_moving_its_addresses_needs_a_restart() {
        let old = herd(r#"["A", "B"]"#, "");
        let without_b = config(r#"{"servers": {"A": "127.0.0.1:1001", "C": "127.0.0.1:1003"}}"#);
        let e = plan(&old, &without_b, &[name("A"), name("B")], &[]).unwrap_err();
        assert!(
            matches!(&e, ReloadError::ServerGone(n) if n.as_str() == "B"),
            "{e}"
        );
        assert!(e.to_string().contains("needs a restart"), "{e}");
        // Dropping a server that does not run here is a change like any other.
        assert!(plan(&old, &without_b, &[name("A")], &[]).is_ok());

        let moved = config(
            r#"{"servers": {"A": {"addr": "127.0.0.1:1001", "listen": "127.0.0.1:2001"},
                "B": "127.0.0.1:1002", "C": "127.0.0.1:1003"}}"#,
        );
        let e = plan(&old, &moved, &[name("A")], &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config not reloaded: server A's listen address changes from 127.0.0.1:1001 to \
             127.0.0.1:2001 (a listen address needs a restart)"
        );
        let stats = config(
            r#"{"servers": {"A": {"addr": "127.0.0.1:1001", "stats": "127.0.0.1:3001"},
                "B": "127.0.0.1:1002", "C": "127.0.0.1:1003"}}"#,
        );
        let e = plan(&old, &stats, &[name("A")], &[]).unwrap_err();
        assert!(
            matches!(e, ReloadError::ListenChanged { what: "stats", .. }),
            "{e}"
        );
    }

    #[test]
    fn changes_only_a_restart_applies_are_named_in_the_summary() {
        let old = herd("", "");
        let new = herd(
            "",
            r#", "data_dir": "/tmp/x", "places": {"max_concurrent": 3}, "limits": {"log_keep": 1}"#,
        );
        let p = plan(&old, &new, &[name("A")], &[]).unwrap();
        assert_eq!(p.restart_only, ["data_dir", "places", "limits.log_keep"]);
        assert!(!p.limits, "the log rotation is not a server limit");
        assert_eq!(
            p.summary(&[name("A")]),
            "reloaded: TLS files reloaded for A; not applied until a restart: data_dir, \
             places, limits.log_keep"
        );
    }

    #[test]
    fn a_reread_applies_the_command_line_overrides_and_the_start_checks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herd.json");
        std::fs::write(
            &path,
            r#"{"servers": {"A": "127.0.0.1:1"}, "data_dir": "/x"}"#,
        )
        .unwrap();
        let source = ConfigSource {
            path: Some(path.clone()),
            data_dir: Some("/y".into()),
        };
        let config = reread(&source).unwrap();
        assert_eq!(config.data_dir.as_deref(), Some(Path::new("/y")));
        assert_eq!(
            reread(&ConfigSource::default()).unwrap(),
            HerdConfig::default_herd()
        );
        // Beyond loopback without a secret or TLS: refused as at start.
        std::fs::write(&path, r#"{"servers": {"A": "10.1.2.3:1"}}"#).unwrap();
        let e = reread(&source).unwrap_err();
        assert!(e.to_string().contains("beyond loopback"), "{e}");
        std::fs::remove_file(&path).unwrap();
        let e = reread(&source).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("config not reloaded: cannot read config"),
            "{e}"
        );
    }

    #[test]
    fn the_resolved_herd_names_every_server_link_and_limit() {
        let text = describe(&herd(
            r#"["A", "B"]"#,
            r#", "limits": {"record_ttl_ms": 5000}"#,
        ));
        for want in [
            "herd: 3 servers, 1 links\n",
            "server A: addr 127.0.0.1:1001, listen 127.0.0.1:1001, admin none, stats none, tls_listen none; neighbours: B\n",
            "server C: addr 127.0.0.1:1003, listen 127.0.0.1:1003, admin none, stats none, tls_listen none; neighbours: none\n",
            "link A B\n",
            "limits.max_line_bytes: 65536\n",
            "limits.record_ttl_ms: 5000\n",
            "limits.max_future_skew_ms: off\n",
            "limits.log_keep: 5\n",
            "tls: none\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
    }
}
