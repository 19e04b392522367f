//! TLS between servers and for clients, sealed sessions with a secret, and closed by default:
//! real sockets on loopback, certificates made here with the herd's own kind of CA.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use herd_core::peer::{Dialler, Handshake, START_TLS};
use herd_core::ServerName;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const KIWI: &[u8] = b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997\n";

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

/// A certificate for `name` signed by `ca` (already expired when `expired`): PEM cert, key.
fn leaf(ca: &Ca, name: &str, expired: bool) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Writes the CA and a certificate per name into `dir`; returns the config's `"tls"` entry.
fn herd_certs(dir: &Path, ca: &Ca, names: &[&str]) -> String {
    std::fs::write(dir.join("ca.pem"), ca.cert.pem()).unwrap();
    for n in names {
        let (cert, key) = leaf(ca, n, false);
        std::fs::write(dir.join(format!("{n}.pem")), cert).unwrap();
        std::fs::write(dir.join(format!("{n}.key")), key).unwrap();
    }
    let d = dir.display();
    format!(
        r#""tls": {{"ca": "{d}/ca.pem", "cert": "{d}/{{name}}.pem", "key": "{d}/{{name}}.key"}}"#
    )
}

async fn eventually_async(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    eventually(limit, &mut cond).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_herd_links_over_tls_only_and_plain_text_peers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tls = herd_certs(dir.path(), &ca(), &HERD);
    let herd = start(&config_json(&HERD, &LINKS, &tls)).await;
    all_linked(&herd, &LINKS).await;
    let goloman = herd.server("Goloman").unwrap().local_addr();
    let at = exchange(goloman, KIWI).await;
    assert!(
        at.starts_with(b"AT Goloman "),
        "{}",
        String::from_utf8_lossy(&at)
    );
    let everywhere = eventually_async(Duration::from_secs(10), || {
        herd.servers()
            .iter()
            .all(|s| s.record(b"kiwi.cs.ucla.edu").as_deref() == Some(at.trim_ascii_end()))
    })
    .await;
    assert!(everywhere, "the record reached every server over TLS");

    // A plain-text hello from a real neighbour's name gets no answer: the connection closes.
    let d = Dialler::new(
        ServerName::new("Hands").unwrap(),
        ServerName::new("Goloman").unwrap(),
        7,
        1,
        None,
    );
    let mut s = TcpStream::connect(goloman).await.unwrap();
    s.write_all(&d.hello().to_line()).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the server closes a plain-text peer");
    assert!(
        got.is_empty(),
        "and answers nothing: {:?}",
        String::from_utf8_lossy(&got)
    );
    herd.shutdown().await;
}

/// Dials `addr` as `claims` over TLS with `cert`/`key`, trusting `ca`; returns whether the
/// server answered the hello with its own.
async fn tls_hello(
    addr: std::net::SocketAddr,
    ca: &Ca,
    cert: &str,
    key: &str,
    claims: &str,
) -> bool {
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
        ServerName::new(claims).unwrap(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_certificate_for_another_name_from_another_ca_or_expired_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let herd_ca = ca();
    let tls = herd_certs(dir.path(), &herd_ca, &["Goloman"]);
    // Hands is unreachable from Goloman: only the scripted dialler below speaks for it.
    let json = config_json(&["Goloman", "Hands"], &[("Goloman", "Hands")], &tls)
        .replace(r#""Hands": "127.0.0.1:0""#, r#""Hands": "127.0.0.1:1""#);
    let config = herd_server::HerdConfig::parse(&json).unwrap();
    let names = vec![ServerName::new("Goloman").unwrap()];
    let herd = herd_server::start(&config, &names, static_places(), "static")
        .await
        .unwrap();
    let addr = herd.servers()[0].local_addr();

    let (hands, hands_key) = leaf(&herd_ca, "Hands", false);
    assert!(
        tls_hello(addr, &herd_ca, &hands, &hands_key, "Hands").await,
        "control: Hands's own certificate is accepted"
    );
    let (welsh, welsh_key) = leaf(&herd_ca, "Welsh", false);
    assert!(
        !tls_hello(addr, &herd_ca, &welsh, &welsh_key, "Hands").await,
        "a certificate naming Welsh cannot speak for Hands"
    );
    let other = ca();
    let (foreign, foreign_key) = leaf(&other, "Hands", false);
    assert!(
        !tls_hello(addr, &herd_ca, &foreign, &foreign_key, "Hands").await,
        "a certificate from another CA is refused"
    );
    let (old, old_key) = leaf(&herd_ca, "Hands", true);
    assert!(
        !tls_hello(addr, &herd_ca, &old, &old_key, "Hands").await,
        "an expired certificate is refused"
    );
    herd.shutdown().await;
}

/// Forwards bytes between a client of `listener` and `to`, changing the first `U ` line that
/// passes from the dialling side (one byte of its location) once.
async fn tampering_relay(
    listener: TcpListener,
    to: std::net::SocketAddr,
    tampered: Arc<std::sync::atomic::AtomicBool>,
) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            return;
        };
        let Ok(outbound) = TcpStream::connect(to).await else {
            continue;
        };
        let (mut ir, mut iw) = inbound.into_split();
        let (mut or, mut ow) = outbound.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut or, &mut iw).await;
        });
        let tampered = tampered.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match ir.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let chunk = &mut buf[..n];
                if !tampered.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Some(at) = find(chunk, b"+34.068930") {
                        chunk[at + 1] = b'9';
                        tampered.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                if ow.write_all(chunk).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_secret_a_byte_changed_after_the_handshake_drops_the_link_and_is_stored_nowhere() {
    // The link runs only through the relay: Hands dials Goloman through it, and Goloman's
    // entry for Hands is unreachable, so Goloman's own dials fail.
    let goloman_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let goloman_addr = goloman_l.local_addr().unwrap();
    drop(goloman_l);
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let tampered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(tampering_relay(relay, goloman_addr, tampered.clone()));
    let secret = unique_secret();
    let goloman_json = format!(
        r#"{{"servers": {{"Goloman": "{goloman_addr}", "Hands": "127.0.0.1:1"}},
            "links": [["Goloman", "Hands"]], "secret": "{secret}"}}"#
    );
    let hands_json = format!(
        r#"{{"servers": {{"Goloman": "{relay_addr}", "Hands": "127.0.0.1:0"}},
            "links": [["Goloman", "Hands"]], "secret": "{secret}"}}"#
    );
    let g = ServerName::new("Goloman").unwrap();
    let h = ServerName::new("Hands").unwrap();
    let goloman = herd_server::start(
        &herd_server::HerdConfig::parse(&goloman_json).unwrap(),
        std::slice::from_ref(&g),
        static_places(),
        "static",
    )
    .await
    .unwrap();
    let hands = herd_server::start(
        &herd_server::HerdConfig::parse(&hands_json).unwrap(),
        std::slice::from_ref(&h),
        static_places(),
        "static",
    )
    .await
    .unwrap();
    let linked = eventually_async(Duration::from_secs(10), || {
        !goloman.servers()[0].stats().links_up.is_empty()
    })
    .await;
    assert!(linked, "the relayed link comes up");
    let at = exchange(hands.servers()[0].local_addr(), KIWI).await;
    let real = at.trim_ascii_end().to_vec();
    let mut forged = real.clone();
    let p = find(&forged, b"+34.068930").unwrap();
    forged[p + 1] = b'9';
    // The first copy is changed on the way and dropped with its link; the link comes back
    // and reconciliation brings the real record.
    let healed = eventually_async(Duration::from_secs(10), || {
        let got = goloman.servers()[0].record(b"kiwi.cs.ucla.edu");
        assert_ne!(
            got.as_deref(),
            Some(&forged[..]),
            "the forged record was stored"
        );
        got.as_deref() == Some(&real[..])
    })
    .await;
    assert!(healed, "the real record arrives after the relink");
    assert!(
        tampered.load(std::sync::atomic::Ordering::SeqCst),
        "the relay changed the update on its way"
    );
    assert_eq!(
        hands.servers()[0].record(b"kiwi.cs.ucla.edu"),
        Some(real.clone())
    );
    assert!(
        goloman.servers()[0].stats().node.peer_errors == 0,
        "the change was caught by the seal, before any line reached the node"
    );
    goloman.shutdown().await;
    hands.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_tls_gets_the_bytes_a_plain_client_gets() {
    let dir = tempfile::tempdir().unwrap();
    let herd_ca = ca();
    let tls = herd_certs(dir.path(), &herd_ca, &["Goloman"]);
    let tls_addr = free_addr();
    let json = format!(
        r#"{{"servers": {{"Goloman": {{"addr": "127.0.0.1:0", "tls_listen": "{tls_addr}"}}}},
            "links": [], {tls}}}"#
    );
    let herd = start(&json).await;
    let plain = herd.servers()[0].local_addr();
    exchange(plain, KIWI).await;
    let request = b"WHATSAT kiwi.cs.ucla.edu 10 2\n\nnot a command\nWHATSAT nobody 1 1\n".to_vec();
    let want = exchange(plain, &request).await;

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(herd_ca.cert.pem().as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let s = TcpStream::connect(tls_addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("Goloman").unwrap();
    let mut t = connector.connect(name, s).await.unwrap();
    t.write_all(&request).await.unwrap();
    t.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), t.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want),
        "TLS and plain replies differ"
    );
    assert!(!want.is_empty());
    herd.shutdown().await;
}

#[test]
fn a_config_open_beyond_loopback_without_tls_or_secret_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("herd.json");
    std::fs::write(
        &cfg,
        r#"{"servers": {"A": {"addr": "127.0.0.1:1", "listen": "0.0.0.0:0"}}}"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herd-server"))
        .args(["--all", "--config"])
        .arg(&cfg)
        .arg("--log-dir")
        .arg(dir.path())
        .env_remove("HERD_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("insecure_peers"), "{err}");
}
