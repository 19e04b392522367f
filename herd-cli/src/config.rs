//! The herd config, read leniently for what a client needs: server names and dial addresses.
//!
//! The format is the server's (`{"servers": {"Goloman": "127.0.0.1:12000", ...}, "links": ...}`),
//! where a server entry is either the address string or an object with `addr` (or `listen`).
//! Other keys (`links`, `secret`, `limits`, ..., and in a server's object `stats`, `admin` and
//! any other) are ignored here, so a client reads a config a newer server accepts. Server
//! order is the file's.

use std::path::Path;

use herd_core::ServerName;
use serde_json::Value;

use crate::error::Failure;

/// The built-in default herd (five servers on 127.0.0.1:12000–12004): the repository's own
/// `deploy/herd.json`, so client and server default to the same herd.
pub(crate) const DEFAULT_HERD: &str = include_str!("../../deploy/herd.json");

/// One server of a herd: its name and the address to dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Server {
    /// The server's name.
    pub(crate) name: ServerName,
    /// HOST:PORT to connect to.
    pub(crate) addr: String,
    /// HOST:PORT of its TLS client address (`tls_addr`, or `tls_listen` made dialable).
    pub(crate) tls_addr: Option<String>,
}

/// The servers of a herd, in config order.
#[derive(Debug, Clone)]
pub(crate) struct Herd {
    /// Servers in the order the config lists them.
    pub(crate) servers: Vec<Server>,
}

impl Herd {
    /// Reads `path`, or the built-in default herd when `None`.
    pub(crate) fn load(path: Option<&Path>) -> Result<Self, Failure> {
        match path {
            None => Self::parse(DEFAULT_HERD),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    Failure::usage(format!("cannot read config {}: {e}", p.display()))
                })?;
                Self::parse(&text)
                    .map_err(|f| Failure::usage(format!("config {}: {}", p.display(), f.message)))
            }
        }
    }

    /// Parses a config's text.
    pub(crate) fn parse(text: &str) -> Result<Self, Failure> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| Failure::usage(format!("not JSON: {e}")))?;
        let Some(map) = v.get("servers").and_then(Value::as_object) else {
            return Err(Failure::usage("no \"servers\" object"));
        };
        let mut servers = Vec::with_capacity(map.len());
        for (name, entry) in map {
            let name = ServerName::new(name)
                .map_err(|_| Failure::usage(format!("bad server name {name:?}")))?;
            let addr = dial_addr(entry).ok_or_else(|| {
                Failure::usage(format!(
                    "server {name}: expected \"HOST:PORT\" or an object with \"addr\""
                ))
            })?;
            let tls_addr = tls_dial_addr(entry);
            servers.push(Server {
                name,
                addr,
                tls_addr,
            });
        }
        if servers.is_empty() {
            return Err(Failure::usage("the config names no server"));
        }
        Ok(Self { servers })
    }

    /// The server called `name`.
    pub(crate) fn get(&self, name: &str) -> Result<&Server, Failure> {
        self.servers
            .iter()
            .find(|s| s.name.as_str() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.servers.iter().map(|s| s.name.as_str()).collect();
                Failure::usage(format!(
                    "no server {name:?} in the config (it has {})",
                    known.join(", ")
                ))
            })
    }
}

/// The address to dial for one server entry; a wildcard listen address dials loopback.
fn dial_addr(entry: &Value) -> Option<String> {
    let addr = match entry {
        Value::String(s) => s.as_str(),
        Value::Object(o) => o
            .get("addr")
            .or_else(|| o.get("listen"))
            .and_then(Value::as_str)?,
        _ => return None,
    };
    dialable(addr)
}

/// The TLS client address to dial for one server entry, if it has one.
fn tls_dial_addr(entry: &Value) -> Option<String> {
    let o = entry.as_object()?;
    let addr = o
        .get("tls_addr")
        .or_else(|| o.get("tls_listen"))
        .and_then(Value::as_str)?;
    dialable(addr)
}

/// `addr` with a wildcard host replaced by loopback, if it is HOST:PORT.
fn dialable(addr: &str) -> Option<String> {
    let (host, port) = addr.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = match host {
        "0.0.0.0" | "" => "127.0.0.1",
        "[::]" => "[::1]",
        h => h,
    };
    Some(format!("{host}:{port}"))
}

/// A resolved target: a label for messages and the address to dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The server's name, or the address when given with `--server`.
    pub(crate) label: String,
    /// HOST:PORT to connect to.
    pub(crate) addr: String,
    /// HOST:PORT of its TLS client address, when known (`--server` gives it directly).
    pub(crate) tls_addr: Option<String>,
    /// The name its TLS certificate must carry: the server's name, or the host given.
    pub(crate) tls_name: String,
}

impl Target {
    /// A server of the config.
    pub(crate) fn of(s: &Server) -> Self {
        Self {
            label: s.name.to_string(),
            addr: s.addr.clone(),
            tls_addr: s.tls_addr.clone(),
            tls_name: s.name.to_string(),
        }
    }

    /// A server given by its address (`--server HOST:PORT`): its TLS certificate must name
    /// HOST.
    pub(crate) fn address(a: &str) -> Self {
        Self {
            label: a.to_owned(),
            addr: a.to_owned(),
            tls_addr: Some(a.to_owned()),
            tls_name: a
                .rsplit_once(':')
                .map_or(a, |(h, _)| h)
                .trim_matches(['[', ']'])
                .to_owned(),
        }
    }
}

/// Resolves `--server`/`--to`/`--config` into targets; the first server of the herd by default.
pub(crate) fn targets(
    servers: &[String],
    names: &[String],
    config: Option<&Path>,
) -> Result<Vec<Target>, Failure> {
    if !servers.is_empty() {
        return Ok(servers.iter().map(|a| Target::address(a)).collect());
    }
    let herd = Herd::load(config)?;
    if names.is_empty() {
        return Ok(vec![Target::of(&herd.servers[0])]);
    }
    names.iter().map(|n| herd.get(n).map(Target::of)).collect()
}

/// Resolves exactly one target (for the commands that talk to one server).
pub(crate) fn single_target(
    servers: &[String],
    names: &[String],
    config: Option<&Path>,
) -> Result<Target, Failure> {
    let mut all = targets(servers, names, config)?;
    if all.len() != 1 {
        return Err(Failure::usage(
            "this command talks to one server: give one --server or --to",
        ));
    }
    Ok(all.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_herd_starts_with_goloman_on_12000() {
        let herd = Herd::load(None).unwrap();
        let names: Vec<&str> = herd.servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["Goloman", "Hands", "Holiday", "Welsh", "Wilkes"]);
        assert_eq!(herd.servers[0].addr, "127.0.0.1:12000");
        assert_eq!(herd.get("Wilkes").unwrap().addr, "127.0.0.1:12004");
    }

    #[test]
    fn object_entries_with_addr_or_listen_are_accepted() {
        let herd = Herd::parse(
            r#"{"servers": {"A": {"addr": "10.0.0.1:1", "listen": "0.0.0.0:1"},
                            "B": {"listen": "0.0.0.0:2"}}, "secret": "x", "limits": {}}"#,
        )
        .unwrap();
        assert_eq!(herd.get("A").unwrap().addr, "10.0.0.1:1");
        assert_eq!(herd.get("B").unwrap().addr, "127.0.0.1:2");
        assert_eq!(herd.get("B").unwrap().tls_addr, None);
        let tls = Herd::parse(
            r#"{"servers": {"A": {"listen": "0.0.0.0:1", "tls_listen": "0.0.0.0:3"}}}"#,
        )
        .unwrap();
        assert_eq!(
            tls.get("A").unwrap().tls_addr.as_deref(),
            Some("127.0.0.1:3")
        );
    }

    #[test]
    fn keys_a_client_does_not_use_are_ignored_admin_included() {
        // `admin` (a server's HTTP admin address) and `stats` are for operators, not clients.
        let herd = Herd::parse(
            r#"{"servers": {"A": {"addr": "10.0.0.1:1", "admin": "127.0.0.1:14001",
                                  "stats": "127.0.0.1:13001", "future_key": [1, 2]}},
                "links": [], "tls": {"ca": "ca.pem"}, "places": {}}"#,
        )
        .unwrap();
        assert_eq!(herd.get("A").unwrap().addr, "10.0.0.1:1");
        assert_eq!(herd.get("A").unwrap().tls_addr, None);
    }

    #[test]
    fn bad_configs_are_usage_errors() {
        for text in [
            "nope",
            "{}",
            r#"{"servers": {}}"#,
            r#"{"servers": {"A": 12}}"#,
            r#"{"servers": {"A": "no-port"}}"#,
            r#"{"servers": {"A B": "h:1"}}"#,
        ] {
            assert_eq!(Herd::parse(text).unwrap_err().code, 64, "{text}");
        }
    }

    #[test]
    fn unknown_name_lists_the_known_ones() {
        let err = targets(&[], &["Nowhere".into()], None).unwrap_err();
        assert!(err.message.contains("Goloman"), "{}", err.message);
    }
}
