//! `certs`: a CA for the herd and one certificate per server, so a secure herd takes one
//! command to set up.
//!
//! Writes into `--out DIR`: `ca.pem` and `ca.key` (made once: an existing pair is reused, so a
//! server added later gets a certificate from the same CA), and for every server of the herd
//! config (or each `--name`) `NAME.pem` and `NAME.key`. A server's certificate names it by its
//! herd name (a DNS name: the name peers verify), by the host of its address in the config,
//! and by every `--host` given (container or DNS names clients use). Keys are written
//! readable by their owner only.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use serde_json::json;

use crate::config::Herd;
use crate::error::Failure;
use crate::Global;

/// The CA certificate's common name.
const CA_NAME: &str = "herd CA";
/// Default validity of a server certificate, in days.
const DEFAULT_DAYS: u32 = 825;
/// Validity of the CA certificate, in days.
const CA_DAYS: u32 = 3650;

/// `certs` arguments.
#[derive(Debug, Args)]
pub(crate) struct CertsArgs {
    /// Directory to write the CA and the certificates into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Only these servers (default: every server of the herd config).
    #[arg(long = "name", value_name = "NAME", value_delimiter = ',')]
    names: Vec<String>,
    /// More names every certificate carries (DNS names or IP addresses), e.g. container names.
    #[arg(long = "host", value_name = "HOST", value_delimiter = ',')]
    hosts: Vec<String>,
    /// Validity of the server certificates, in days.
    #[arg(long, default_value_t = DEFAULT_DAYS)]
    days: u32,
}

fn fail(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::usage(format!("{what}: {e}"))
}

fn write_file(path: &Path, text: &str, private: bool) -> Result<(), Failure> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if private {
        opts.mode(0o600);
    }
    opts.open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| fail(&format!("cannot write {}", path.display()), e))
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, CA_DAYS);
    params
}

/// The CA in `dir`: loaded when `ca.key` exists (its certificate made again from the same
/// name and key, so it signs as the same issuer), else made and written.
fn ca(dir: &Path) -> Result<(rcgen::Certificate, KeyPair, bool), Failure> {
    let key_path = dir.join("ca.key");
    let cert_path = dir.join("ca.pem");
    if key_path.exists() && cert_path.exists() {
        let text = std::fs::read_to_string(&key_path)
            .map_err(|e| fail(&format!("cannot read {}", key_path.display()), e))?;
        let key = KeyPair::from_pem(&text)
            .map_err(|e| fail(&format!("bad CA key {}", key_path.display()), e))?;
        let cert = ca_params()
            .self_signed(&key)
            .map_err(|e| fail("cannot sign the CA", e))?;
        return Ok((cert, key, false));
    }
    let key = KeyPair::generate().map_err(|e| fail("cannot make a key", e))?;
    let cert = ca_params()
        .self_signed(&key)
        .map_err(|e| fail("cannot sign the CA", e))?;
    write_file(&cert_path, &cert.pem(), false)?;
    write_file(&key_path, &key.serialize_pem(), true)?;
    Ok((cert, key, true))
}

fn san(name: &str) -> Result<SanType, Failure> {
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    // Labels of letters, digits and hyphens, not starting or ending with a hyphen.
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(Failure::usage(format!(
            "{name:?} is not a DNS name (TLS names servers by DNS names)"
        )));
    }
    let dns = name
        .to_owned()
        .try_into()
        .map_err(|e| fail(&format!("{name:?} is not a DNS name"), e))?;
    Ok(SanType::DnsName(dns))
}

/// Runs `certs`.
pub(crate) async fn run(g: &Global, a: CertsArgs) -> Result<u8, Failure> {
    let herd = Herd::load(g.config.as_deref())?;
    let servers: Vec<_> = if a.names.is_empty() {
        herd.servers.clone()
    } else {
        a.names
            .iter()
            .map(|n| herd.get(n).cloned())
            .collect::<Result<_, _>>()?
    };
    std::fs::create_dir_all(&a.out)
        .map_err(|e| fail(&format!("cannot create {}", a.out.display()), e))?;
    let (ca_cert, ca_key, made) = ca(&a.out)?;
    let mut written = Vec::new();
    for s in &servers {
        let mut names = vec![s.name.to_string()];
        if let Some((host, _)) = s.addr.rsplit_once(':') {
            names.push(host.trim_matches(['[', ']']).to_owned());
        }
        names.extend(a.hosts.iter().cloned());
        names.dedup();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, s.name.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_, _>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        validity(&mut params, a.days);
        let key = KeyPair::generate().map_err(|e| fail("cannot make a key", e))?;
        let cert = params
            .signed_by(&key, &ca_cert, &ca_key)
            .map_err(|e| fail(&format!("cannot sign {}'s certificate", s.name), e))?;
        let cert_path = a.out.join(format!("{}.pem", s.name));
        let key_path = a.out.join(format!("{}.key", s.name));
        write_file(&cert_path, &cert.pem(), false)?;
        write_file(&key_path, &key.serialize_pem(), true)?;
        written.push((s.name.to_string(), names, cert_path, key_path));
    }
    let ca_path = a.out.join("ca.pem");
    if g.json {
        let servers: Vec<_> = written
            .iter()
            .map(|(n, names, c, k)| json!({"server": n, "names": names, "cert": c, "key": k}))
            .collect();
        println!(
            "{}",
            json!({"ca": ca_path, "ca_made": made, "servers": servers})
        );
    } else {
        let how = if made { "made" } else { "reused" };
        println!("CA {} ({how})", ca_path.display());
        for (n, names, c, k) in &written {
            println!(
                "{n}: {} {} (names {})",
                c.display(),
                k.display(),
                names.join(", ")
            );
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans_are_ip_addresses_or_dns_names() {
        assert!(matches!(san("127.0.0.1"), Ok(SanType::IpAddress(_))));
        assert!(matches!(san("::1"), Ok(SanType::IpAddress(_))));
        assert!(matches!(san("Goloman"), Ok(SanType::DnsName(_))));
        assert!(san("not a name").is_err());
    }
}
