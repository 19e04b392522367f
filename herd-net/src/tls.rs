//! TLS for peer links and client connections: TLS 1.3 with rustls (ring provider).
//!
//! Every server of a secure herd has a certificate and key signed by the herd's own CA
//! (`herd-cli certs` makes them). Its certificate names the server by a DNS name equal to the
//! server's herd name (so herd names used with TLS must be valid DNS names, distinct without
//! regard to case). Peer links authenticate both ways:
//! - the dialler verifies that the acceptor's certificate chains to the CA and names the
//!   neighbour it dialled (rustls's server name check);
//! - the acceptor requires a client certificate that chains to the CA, and once the dialler's
//!   hello says who it is, checks that the certificate names that server
//!   ([`certificate_names`]).
//!
//! Client connections over TLS (`tls_listen`) authenticate the server only, with the same
//! certificate.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use thiserror::Error;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Where a server's TLS files are (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// The server's certificate (its chain, leaf first).
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// The herd's CA certificate.
    pub ca: PathBuf,
}

/// Why TLS could not be set up.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("cannot read {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the configuration (a key that does not match the certificate, ...).
    #[error("tls configuration: {0}")]
    Config(String),
}

fn file_err(path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate in the file"));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs(path)? {
        roots.add(c).map_err(|e| file_err(path, e))?;
    }
    Ok(Arc::new(roots))
}

fn config_err(e: impl fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

/// One server's TLS contexts: for dialling peers, accepting peers, and accepting clients.
#[derive(Clone)]
pub struct HerdTls {
    connector: TlsConnector,
    peer_acceptor: TlsAcceptor,
    client_acceptor: TlsAcceptor,
}

impl fmt::Debug for HerdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HerdTls").finish_non_exhaustive()
    }
}

impl HerdTls {
    /// Loads the files and builds the three contexts (TLS 1.3 only).
    ///
    /// # Errors
    /// [`TlsError`] when a file is missing or unreadable, or the key does not fit.
    pub fn load(paths: &TlsPaths) -> Result<Self, TlsError> {
        let chain = certs(&paths.cert)?;
        let key = key(&paths.key)?;
        let roots = roots(&paths.ca)?;
        let versions = &[&rustls::version::TLS13];

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(config_err)?;
        let peer_server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(config_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(config_err)?;
        let client_server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(config_err)?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(config_err)?;
        let dialler = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(config_err)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(config_err)?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(dialler)),
            peer_acceptor: TlsAcceptor::from(Arc::new(peer_server)),
            client_acceptor: TlsAcceptor::from(Arc::new(client_server)),
        })
    }

    /// For dialling a neighbour (presents this server's certificate).
    pub fn connector(&self) -> &TlsConnector {
        &self.connector
    }

    /// For accepting a neighbour (requires its certificate).
    pub fn peer_acceptor(&self) -> &TlsAcceptor {
        &self.peer_acceptor
    }

    /// For accepting clients on the TLS client address (no client certificate).
    pub fn client_acceptor(&self) -> &TlsAcceptor {
        &self.client_acceptor
    }
}

/// The name to verify a neighbour's certificate against when dialling it.
///
/// # Errors
/// [`TlsError::Config`] when the herd name is not a valid DNS name.
pub fn peer_server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned())
        .map_err(|_| TlsError::Config(format!("server name {name:?} is not a DNS name")))
}

/// Whether `cert` (a peer's end-entity certificate, already verified against the CA) names
/// the server `name`.
pub fn certificate_names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(server_name) = ServerName::try_from(name) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&server_name).is_ok())
}

/// A stream whose first bytes were already read (into `head`) and are read again first: the
/// start of a TLS handshake that arrived with the line before it.
#[derive(Debug)]
pub struct Prefixed<S> {
    head: BytesMut,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, read as if `head` came first.
    pub fn new(head: BytesMut, inner: S) -> Self {
        Self { head, inner }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.head.is_empty() {
            let n = self.head.len().min(buf.remaining());
            buf.put_slice(&self.head[..n]);
            self.head.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn leaf(ca: &Ca, name: &str) -> (String, String) {
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
        let p = dir.join(file);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_certificate_names_exactly_its_server() {
        let ca = ca();
        let (cert, _) = leaf(&ca, "Hands");
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert!(certificate_names(&der, "Hands"));
        assert!(
            certificate_names(&der, "hands"),
            "DNS names compare without case"
        );
        assert!(!certificate_names(&der, "Welsh"));
        assert!(!certificate_names(&der, "not a dns name"));
    }

    #[test]
    fn contexts_load_from_pem_files_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        let (cert, key) = leaf(&ca, "Goloman");
        let paths = TlsPaths {
            cert: write(dir.path(), "g.pem", &cert),
            key: write(dir.path(), "g.key", &key),
            ca: write(dir.path(), "ca.pem", &ca.cert.pem()),
        };
        HerdTls::load(&paths).unwrap();
        let missing = TlsPaths {
            key: dir.path().join("nope.key"),
            ..paths.clone()
        };
        let e = HerdTls::load(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.key"), "{e}");
        let empty = TlsPaths {
            cert: write(dir.path(), "empty.pem", ""),
            ..paths
        };
        let e = HerdTls::load(&empty).unwrap_err().to_string();
        assert!(e.contains("no certificate"), "{e}");
    }

    #[test]
    fn herd_names_that_are_not_dns_names_are_refused_for_dialling() {
        assert!(peer_server_name("Goloman").is_ok());
        assert!(peer_server_name("a b").is_err());
    }
}
