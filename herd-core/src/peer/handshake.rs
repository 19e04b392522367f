//! The handshake that opens a peer link: the two `HELLO`s and the dialler's `AUTH`, and the
//! state of each side while it runs.
//!
//! Handshake messages are a type of their own ([`Handshake`]): they are only ever exchanged
//! before the link is up, and a handshake line arriving afterwards is not a [`super::PeerMsg`]
//! (it fails to parse, so the link is dropped). See `docs/peer-protocol.md`.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

use super::seal::SessionKeys;
use super::{expect, name, parse_u64, push_u64, split_n, PeerParseError, HANDSHAKE_TAG};
use crate::types::ServerName;

/// The line a dialler sends first when the herd uses TLS: the TLS handshake follows at
/// once, and the usual handshake lines travel inside it.
pub const START_TLS: &[u8] = b"HERD/2 TLS";

/// A 256-bit HMAC-SHA256 proof of the shared secret.
pub type Proof = [u8; 32];

/// One message of the handshake.
#[derive(Debug, Clone, PartialEq)]
pub enum Handshake {
    /// First line of each side: who I am, whom I think I reach, my incarnation and a nonce;
    /// the accepting side adds its proof of the secret.
    Hello {
        /// The sender.
        from: ServerName,
        /// The server the sender means to reach.
        to: ServerName,
        /// The sender's incarnation (changes on every restart).
        epoch: u64,
        /// A fresh random nonce.
        nonce: u128,
        /// Proof of the secret (acceptor's reply only, and only when a secret is configured).
        proof: Option<Proof>,
    },
    /// The dialler's proof of the secret (`None` when no secret is configured).
    Auth {
        /// The proof.
        proof: Option<Proof>,
    },
}

impl Handshake {
    /// Appends the message's line, with its `\n`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Handshake::Hello {
                from,
                to,
                epoch,
                nonce,
                proof,
            } => {
                out.extend_from_slice(HANDSHAKE_TAG);
                out.extend_from_slice(b" HELLO ");
                out.extend_from_slice(from.as_str().as_bytes());
                out.push(b' ');
                out.extend_from_slice(to.as_str().as_bytes());
                out.push(b' ');
                push_u64(out, *epoch);
                out.push(b' ');
                push_hex(out, &nonce.to_be_bytes());
                out.push(b' ');
                push_proof(out, proof);
            }
            Handshake::Auth { proof } => {
                out.extend_from_slice(HANDSHAKE_TAG);
                out.extend_from_slice(b" AUTH ");
                push_proof(out, proof);
            }
        }
        out.push(b'\n');
    }

    /// The message's line, with its `\n`.
    pub fn to_line(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(128);
        self.encode(&mut v);
        v
    }

    /// Parses one handshake line (without its `\n`).
    ///
    /// # Errors
    /// [`PeerParseError`] when the line is not a well-formed handshake message.
    pub fn parse(line: &[u8]) -> Result<Self, PeerParseError> {
        let ([tag, kind], rest) = split_n::<2>(line)?;
        expect(tag == HANDSHAKE_TAG)?;
        match kind {
            b"HELLO" => {
                let ([from, to, epoch, nonce, proof], tail) = split_n::<5>(rest)?;
                expect(tail.is_empty())?;
                Ok(Handshake::Hello {
                    from: name(from)?,
                    to: name(to)?,
                    epoch: parse_u64(epoch)?,
                    nonce: u128::from_be_bytes(parse_hex::<16>(nonce)?),
                    proof: parse_proof(proof)?,
                })
            }
            b"AUTH" => {
                let ([proof], tail) = split_n::<1>(rest)?;
                expect(tail.is_empty())?;
                Ok(Handshake::Auth {
                    proof: parse_proof(proof)?,
                })
            }
            _ => Err(PeerParseError::Malformed),
        }
    }
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
}

fn push_proof(out: &mut Vec<u8>, proof: &Option<Proof>) {
    match proof {
        Some(p) => push_hex(out, p),
        None => out.push(b'-'),
    }
}

fn parse_hex<const N: usize>(s: &[u8]) -> Result<[u8; N], PeerParseError> {
    if s.len() != 2 * N {
        return Err(PeerParseError::Number);
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(PeerParseError::Number),
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Ok(out)
}

fn parse_proof(s: &[u8]) -> Result<Option<Proof>, PeerParseError> {
    if s == b"-" {
        Ok(None)
    } else {
        parse_hex::<32>(s).map(Some)
    }
}

/// Whether a connection's first line opens the peer handshake.
pub fn is_handshake(first_line: &[u8]) -> bool {
    first_line.starts_with(HANDSHAKE_TAG) && first_line.get(HANDSHAKE_TAG.len()) == Some(&b' ')
}

// === Handshake ===

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    /// The line is not the handshake message expected at this step.
    #[error("unexpected handshake message")]
    Unexpected,
    /// The hello names a server that is not a configured neighbour.
    #[error("{0} is not a neighbour")]
    NotNeighbour(String),
    /// The hello is addressed to another server.
    #[error("hello addressed to {0}")]
    WrongAddressee(String),
    /// The peer's proof of the shared secret is missing or wrong.
    #[error("peer failed authentication")]
    BadProof,
    /// One side has a secret configured and the other sent no proof.
    #[error("peer sent no proof but a secret is configured")]
    MissingProof,
}

/// What both proofs and the session keys cover: both names, both nonces, both epochs.
struct Transcript<'a> {
    dialler: &'a ServerName,
    acceptor: &'a ServerName,
    nd: u128,
    na: u128,
    ed: u64,
    ea: u64,
}

/// The HMAC key made from the shared secret: `SHA-256("herd/1 secret" ‖ secret)`. Hashing
/// first keeps HMAC's own key padding from making a secret and the same secret with zero
/// bytes appended (or a long secret and its hash) the same key.
fn hmac_key(secret: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = Sha256::new();
    h.update(b"herd/1 secret");
    h.update(secret);
    h.finalize().into()
}

/// HMAC-SHA256 over the role label and the transcript (each name preceded by its length).
fn proof(secret: &[u8], role: &[u8], t: &Transcript<'_>) -> Proof {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&hmac_key(secret))
        .expect("hmac accepts any key length");
    for part in [
        role,
        t.dialler.as_str().as_bytes(),
        t.acceptor.as_str().as_bytes(),
    ] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac.update(&t.nd.to_be_bytes());
    mac.update(&t.na.to_be_bytes());
    mac.update(&t.ed.to_be_bytes());
    mac.update(&t.ea.to_be_bytes());
    mac.finalize().into_bytes().into()
}

/// The keys of a sealed session ([`super::seal`]): one per direction, from the secret and the
/// transcript, as seen by the dialler (`dialling`) or the acceptor.
fn session_keys(secret: &[u8], t: &Transcript<'_>, dialling: bool) -> SessionKeys {
    let d2a = proof(secret, b"herd/1 seal dial", t);
    let a2d = proof(secret, b"herd/1 seal accept", t);
    if dialling {
        SessionKeys {
            send: d2a,
            recv: a2d,
        }
    } else {
        SessionKeys {
            send: a2d,
            recv: d2a,
        }
    }
}

fn check(
    secret: Option<&[u8]>,
    got: &Option<Proof>,
    want: impl FnOnce(&[u8]) -> Proof,
) -> Result<(), HandshakeError> {
    match (secret, got) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(HandshakeError::BadProof),
        (Some(_), None) => Err(HandshakeError::MissingProof),
        (Some(s), Some(p)) => {
            // Constant-time comparison through the MAC crate's verify would need the MAC
            // object; comparing every byte without early exit gives the same guarantee.
            let w = want(s);
            let diff = w.iter().zip(p).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                Ok(())
            } else {
                Err(HandshakeError::BadProof)
            }
        }
    }
}

/// The dialling side of a handshake.
#[derive(Debug, Clone)]
pub struct Dialler {
    me: ServerName,
    peer: ServerName,
    epoch: u64,
    nonce: u128,
    secret: Option<Arc<[u8]>>,
}

impl Dialler {
    /// Starts a handshake from `me` (incarnation `epoch`) to `peer`, with a fresh `nonce`.
    pub fn new(
        me: ServerName,
        peer: ServerName,
        epoch: u64,
        nonce: u128,
        secret: Option<Arc<[u8]>>,
    ) -> Self {
        Self {
            me,
            peer,
            epoch,
            nonce,
            secret,
        }
    }

    /// The first line to send.
    pub fn hello(&self) -> Handshake {
        Handshake::Hello {
            from: self.me.clone(),
            to: self.peer.clone(),
            epoch: self.epoch,
            nonce: self.nonce,
            proof: None,
        }
    }

    /// Checks the acceptor's hello; on success returns the peer's epoch and the `Auth` to send,
    /// after which the link is up.
    ///
    /// # Errors
    /// [`HandshakeError`] when the reply is not the expected peer's valid hello.
    pub fn on_reply(&self, reply: &Handshake) -> Result<(u64, Handshake), HandshakeError> {
        let Handshake::Hello {
            from,
            to,
            epoch,
            nonce,
            proof: got,
        } = reply
        else {
            return Err(HandshakeError::Unexpected);
        };
        if *from != self.peer {
            return Err(HandshakeError::NotNeighbour(from.to_string()));
        }
        if *to != self.me {
            return Err(HandshakeError::WrongAddressee(to.to_string()));
        }
        let secret = self.secret.as_deref();
        let t = self.transcript(*nonce, *epoch);
        check(secret, got, |s| proof(s, b"herd/1 accept", &t))?;
        let mine = secret.map(|s| proof(s, b"herd/1 dial", &t));
        Ok((*epoch, Handshake::Auth { proof: mine }))
    }

    /// The keys sealing the session that `reply` (the acceptor's hello, accepted by
    /// [`Dialler::on_reply`]) opens; `None` without a secret.
    pub fn session_keys(&self, reply: &Handshake) -> Option<SessionKeys> {
        let (Handshake::Hello { nonce, epoch, .. }, Some(secret)) = (reply, self.secret.as_deref())
        else {
            return None;
        };
        Some(session_keys(secret, &self.transcript(*nonce, *epoch), true))
    }

    fn transcript(&self, na: u128, ea: u64) -> Transcript<'_> {
        Transcript {
            dialler: &self.me,
            acceptor: &self.peer,
            nd: self.nonce,
            na,
            ed: self.epoch,
            ea,
        }
    }
}

/// The accepting side of a handshake.
#[derive(Debug, Clone)]
pub struct Acceptor {
    me: ServerName,
    epoch: u64,
    nonce: u128,
    secret: Option<Arc<[u8]>>,
    /// The dialler's name, nonce and epoch, once its hello is accepted.
    dialler: Option<(ServerName, u128, u64)>,
}

impl Acceptor {
    /// Waits for a hello to `me` (incarnation `epoch`), answering with a fresh `nonce`.
    pub fn new(me: ServerName, epoch: u64, nonce: u128, secret: Option<Arc<[u8]>>) -> Self {
        Self {
            me,
            epoch,
            nonce,
            secret,
            dialler: None,
        }
    }

    /// Checks the dialler's hello against the neighbour list; returns the dialler's name and
    /// epoch and the hello to answer with.
    ///
    /// # Errors
    /// [`HandshakeError`] when it is not a hello from a neighbour addressed to this server.
    pub fn on_hello(
        &mut self,
        hello: &Handshake,
        neighbours: &[ServerName],
    ) -> Result<(ServerName, u64, Handshake), HandshakeError> {
        let Handshake::Hello {
            from,
            to,
            epoch,
            nonce,
            proof: None,
        } = hello
        else {
            return Err(HandshakeError::Unexpected);
        };
        if *to != self.me {
            return Err(HandshakeError::WrongAddressee(to.to_string()));
        }
        if !neighbours.contains(from) {
            return Err(HandshakeError::NotNeighbour(from.to_string()));
        }
        self.dialler = Some((from.clone(), *nonce, *epoch));
        let mine = self
            .secret
            .as_deref()
            .zip(self.transcript())
            .map(|(s, t)| proof(s, b"herd/1 accept", &t));
        let reply = Handshake::Hello {
            from: self.me.clone(),
            to: from.clone(),
            epoch: self.epoch,
            nonce: self.nonce,
            proof: mine,
        };
        Ok((from.clone(), *epoch, reply))
    }

    /// Checks the dialler's `Auth`; on success the link is up.
    ///
    /// # Errors
    /// [`HandshakeError`] when it is not an `Auth` or the proof is wrong.
    pub fn on_auth(&self, auth: &Handshake) -> Result<(), HandshakeError> {
        let (Handshake::Auth { proof: got }, Some(t)) = (auth, self.transcript()) else {
            return Err(HandshakeError::Unexpected);
        };
        check(self.secret.as_deref(), got, |s| {
            proof(s, b"herd/1 dial", &t)
        })
    }

    fn transcript(&self) -> Option<Transcript<'_>> {
        let (dialler, nd, ed) = self.dialler.as_ref()?;
        Some(Transcript {
            dialler,
            acceptor: &self.me,
            nd: *nd,
            na: self.nonce,
            ed: *ed,
            ea: self.epoch,
        })
    }

    /// The keys sealing the session (after [`Acceptor::on_hello`]); `None` without a secret.
    pub fn session_keys(&self) -> Option<SessionKeys> {
        let (Some(secret), Some(t)) = (self.secret.as_deref(), self.transcript()) else {
            return None;
        };
        Some(session_keys(secret, &t, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> ServerName {
        ServerName::new(s).unwrap()
    }

    fn run(dial_secret: Option<&str>, acc_secret: Option<&str>) -> Result<(), HandshakeError> {
        let ds = dial_secret.map(|s| Arc::from(s.as_bytes()));
        let acs = acc_secret.map(|s| Arc::from(s.as_bytes()));
        let d = Dialler::new(n("A"), n("B"), 11, 5, ds);
        let mut a = Acceptor::new(n("B"), 22, 9, acs);
        let hello = Handshake::parse(d.hello().to_line().strip_suffix(b"\n").unwrap()).unwrap();
        let (who, epoch, reply) = a.on_hello(&hello, &[n("A")])?;
        assert_eq!((who, epoch), (n("A"), 11));
        let reply = Handshake::parse(reply.to_line().strip_suffix(b"\n").unwrap()).unwrap();
        let (epoch, auth) = d.on_reply(&reply)?;
        assert_eq!(epoch, 22);
        a.on_auth(&Handshake::parse(auth.to_line().strip_suffix(b"\n").unwrap()).unwrap())
    }

    #[test]
    fn handshake_succeeds_with_matching_secrets_or_none() {
        assert_eq!(run(None, None), Ok(()));
        assert_eq!(run(Some("s3cret"), Some("s3cret")), Ok(()));
    }

    #[test]
    fn both_sides_derive_mirrored_session_keys_that_differ_per_session() {
        let secret: Option<Arc<[u8]>> = Some(Arc::from(&b"s3cret"[..]));
        let keys = |nd: u128, na: u128| {
            let d = Dialler::new(n("A"), n("B"), 1, nd, secret.clone());
            let mut a = Acceptor::new(n("B"), 2, na, secret.clone());
            let (_, _, reply) = a.on_hello(&d.hello(), &[n("A")]).unwrap();
            d.on_reply(&reply).unwrap();
            (d.session_keys(&reply).unwrap(), a.session_keys().unwrap())
        };
        let (dk, ak) = keys(5, 9);
        assert_eq!(dk.send, ak.recv);
        assert_eq!(dk.recv, ak.send);
        assert_ne!(dk.send, dk.recv, "each direction has its own key");
        let (other, _) = keys(5, 10);
        assert_ne!(other, dk, "a new nonce makes new keys");
        let plain = Dialler::new(n("A"), n("B"), 1, 5, None);
        assert_eq!(plain.session_keys(&plain.hello()), None);
    }

    #[test]
    fn a_secret_and_the_same_secret_with_zero_bytes_appended_do_not_match() {
        assert_eq!(
            run(Some("\0\0\0\0"), Some("")),
            Err(HandshakeError::BadProof)
        );
        assert_eq!(
            run(Some("s3cret\0"), Some("s3cret")),
            Err(HandshakeError::BadProof)
        );
    }

    #[test]
    fn a_changed_epoch_fails_the_proofs() {
        let secret: Option<Arc<[u8]>> = Some(Arc::from(&b"s3cret"[..]));
        let d = Dialler::new(n("A"), n("B"), 1, 5, secret.clone());
        let mut a = Acceptor::new(n("B"), 2, 9, secret.clone());
        let Handshake::Hello {
            from, to, nonce, ..
        } = d.hello()
        else {
            unreachable!()
        };
        let forged = Handshake::Hello {
            from,
            to,
            epoch: 77,
            nonce,
            proof: None,
        };
        let (_, _, reply) = a.on_hello(&forged, &[n("A")]).unwrap();
        assert_eq!(d.on_reply(&reply), Err(HandshakeError::BadProof));
    }

    #[test]
    fn handshake_fails_on_any_secret_mismatch() {
        assert_eq!(run(Some("a"), Some("b")), Err(HandshakeError::BadProof));
        assert_eq!(run(None, Some("b")), Err(HandshakeError::BadProof));
        assert_eq!(run(Some("a"), None), Err(HandshakeError::MissingProof));
    }

    #[test]
    fn handshake_refuses_strangers() {
        let d = Dialler::new(n("X"), n("B"), 1, 1, None);
        let mut a = Acceptor::new(n("B"), 2, 2, None);
        assert!(matches!(
            a.on_hello(&d.hello(), &[n("A")]),
            Err(HandshakeError::NotNeighbour(_))
        ));
    }
}
