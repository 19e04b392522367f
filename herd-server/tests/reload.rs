//! `Herd::reload` in process: through an `Arc<Herd>` as the admin interface calls it, TLS
//! files renewed in place are picked up by new sessions, and bad files change nothing.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use herd_core::peer::{Dialler, Handshake, START_TLS};
use herd_core::ServerName;
use herd_server::{HerdConfig, ReloadError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn ca() -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A certificate for `name` signed by `ca`: PEM cert, key.
fn leaf(ca: &Ca, name: &str) -> (String, String) {
    let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Writes the CA and a certificate per name into `dir`; returns the config's `"tls"` entry.
fn herd_certs(dir: &Path, ca: &Ca, names: &[&str]) -> String {
    std::fs::write(dir.join("ca.pem"), ca.cert.pem()).unwrap();
    for n in names {
        let (cert, key) = leaf(ca, n);
        std::fs::write(dir.join(format!("{n}.pem")), cert).unwrap();
        std::fs::write(dir.join(format!("{n}.key")), key).unwrap();
    }
    let d = dir.display();
    format!(
        r#""tls": {{"ca": "{d}/ca.pem", "cert": "{d}/{{name}}.pem", "key": "{d}/{{name}}.key"}}"#
    )
}

/// Dials Goloman at `addr` over TLS as Hands with a certificate from `ca`, trusting `ca`;
/// returns whether Goloman answered the hello with its own.
async fn hello_as_hands(addr: std::net::SocketAddr, ca: &Ca) -> bool {
    let (cert, key) = leaf(ca, "Hands");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert.pem().as_bytes()).unwrap())
        .unwrap();
    let chain = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut start = START_TLS.to_vec();
    start.push(b'\n');
    s.write_all(&start).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("Goloman").unwrap();
    let Ok(Ok(mut tls)) =
        tokio::time::timeout(Duration::from_secs(5), connector.connect(name, s)).await
    else {
        return false;
    };
    let d = Dialler::new(
        ServerName::new("Hands").unwrap(),
        ServerName::new("Goloman").unwrap(),
        7,
        1,
        None,
    );
    if tls.write_all(&d.hello().to_line()).await.is_err() || tls.flush().await.is_err() {
        return false;
    }
    let mut line = String::new();
    let mut r = BufReader::new(tls);
    let read = tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await;
    matches!(read, Ok(Ok(n)) if n > 0)
        && Handshake::parse(line.trim_end().as_bytes())
            .is_ok_and(|h| matches!(h, Handshake::Hello { .. }))
}

/// Runs `herd.reload(config)` on a blocking thread, as an admin handler holding an
/// `Arc<Herd>` would.
async fn reload(herd: &Arc<herd_server::Herd>, config: &HerdConfig) -> Result<String, ReloadError> {
    let (herd, config) = (herd.clone(), config.clone());
    tokio::task::spawn_blocking(move || herd.reload(&config))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_files_renewed_in_place_are_used_by_new_sessions_and_bad_ones_change_nothing() {
    let names = ["Goloman", "Hands"];
    let links = [("Goloman", "Hands")];
    let dir = tempfile::tempdir().unwrap();
    let first = ca();
    let tls = herd_certs(dir.path(), &first, &names);
    let json = config_json(&names, &links, &tls);
    let config = HerdConfig::parse(&json).unwrap();
    let herd = Arc::new(start(&json).await);
    all_linked(&herd, &links).await;
    let goloman = herd.server("Goloman").unwrap().local_addr();
    assert!(hello_as_hands(goloman, &first).await, "control");

    assert_eq!(
        reload(&herd, &config).await.unwrap(),
        "reloaded: no changes"
    );

    // A new CA and certificates at the same paths.
    let second = ca();
    herd_certs(dir.path(), &second, &names);
    assert_eq!(
        reload(&herd, &config).await.unwrap(),
        "reloaded: TLS files reloaded for Goloman Hands"
    );
    assert!(
        hello_as_hands(goloman, &second).await,
        "new sessions use the new files"
    );
    assert!(
        !hello_as_hands(goloman, &first).await,
        "the old CA is no longer trusted"
    );
    assert_eq!(
        herd.server("Goloman").unwrap().stats().links_up,
        [ServerName::new("Hands").unwrap()],
        "the session that was up stays up"
    );

    // A certificate that does not load: refused, the running files stay.
    std::fs::write(dir.path().join("Hands.pem"), "not a certificate").unwrap();
    let e = reload(&herd, &config).await.unwrap_err();
    assert!(
        matches!(&e, ReloadError::Tls { server, .. } if server.as_str() == "Hands"),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with("config not reloaded: server Hands: TLS files:"),
        "{e}"
    );
    assert!(hello_as_hands(goloman, &second).await);

    let herd = Arc::try_unwrap(herd).expect("no other holder");
    assert!(herd.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_between_two_servers_of_one_process_is_added_and_removed_by_reload() {
    let names = ["A", "B", "C"];
    let secret = format!("\"secret\": \"{}\"", unique_secret());
    let without = HerdConfig::parse(&config_json(&names, &[("A", "B")], &secret)).unwrap();
    let with = HerdConfig::parse(&config_json(&names, &[("A", "B"), ("B", "C")], &secret)).unwrap();
    let herd = Arc::new(
        herd_server::start(
            &without,
            &without
                .servers
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>(),
            static_places(),
            "static",
        )
        .await
        .unwrap(),
    );
    all_linked(&herd, &[("A", "B")]).await;
    let c = herd.server("C").unwrap().local_addr();
    assert!(exchange(c, b"IAMAT kiwi +1+1 1\n")
        .await
        .starts_with(b"AT C "));
    assert_eq!(
        reload(&herd, &with).await.unwrap(),
        "reloaded: B +link C, C +link B"
    );
    all_linked(&herd, &[("A", "B"), ("B", "C")]).await;
    let everywhere = eventually(Duration::from_secs(10), || {
        herd.servers().iter().all(|s| s.record(b"kiwi").is_some())
    })
    .await;
    assert!(everywhere, "C's record reached A through the new link");
    assert_eq!(
        reload(&herd, &without).await.unwrap(),
        "reloaded: B -link C, C -link B"
    );
    all_linked(&herd, &[("A", "B")]).await;
    let herd = Arc::try_unwrap(herd).expect("no other holder");
    assert!(herd.shutdown().await);
}
