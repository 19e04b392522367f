//! Drives the peer handshake state machines (`Dialler`, `Acceptor`) with fuzzed input.
//!
//! The input's first bytes choose the two servers' names, epochs, nonces and secret, and a
//! mutation (which handshake line, which byte, what xor); the rest, split at `\n`, gives
//! arbitrary lines: every one is fed to a dialler as the acceptor's reply, and the first two
//! to an acceptor as the dialler's hello and auth (with the secret and without one).
//!
//! Invariants checked:
//! - nothing panics; every parsed message re-encodes to a line that parses back to it;
//! - a fuzzed reply the dialler accepts comes from its peer, is addressed to it, and carries
//!   exactly the proof an honest acceptor would send (none without a secret);
//! - a fuzzed hello + auth the acceptor accepts come from a neighbour, are addressed to it, and
//!   the auth carries exactly the proof an honest dialler would send (none without a secret);
//! - an honest dialler/acceptor pair with the same secret (or none) completes, each learning
//!   the other's epoch; with different secrets, or a secret on one side only, it fails
//!   (even secrets that differ only in trailing NUL bytes);
//! - flipping bits of any byte of either proof is refused (`BadProof`), and so is the
//!   acceptor's proof reflected back as the dialler's;
//! - one byte of one honest line mutated: if the handshake still completes with a secret,
//!   the messages are the honest ones (the proofs cover names, nonces and epochs).
#![no_main]

use std::sync::Arc;

use herd_core::peer::{Acceptor, Dialler, HandshakeError, Proof};
use herd_core::{Handshake, ServerName};
use libfuzzer_sys::fuzz_target;

/// Reads the input's header; past its end every byte reads as 0.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, _| acc << 8 | u64::from(self.u8()))
    }

    fn u128(&mut self) -> u128 {
        u128::from(self.u64()) << 64 | u128::from(self.u64())
    }

    /// A valid server name of 1 to 8 printable ASCII bytes.
    fn name(&mut self) -> ServerName {
        let len = 1 + usize::from(self.u8() % 8);
        let bytes: Vec<u8> = (0..len).map(|_| b'!' + self.u8() % 94).collect();
        ServerName::from_bytes(&bytes).expect("printable ASCII of 1..=8 bytes is a valid name")
    }

    /// No secret, or one of 0 to 31 bytes.
    fn secret(&mut self) -> Option<Arc<[u8]>> {
        let flag = self.u8();
        if flag & 1 == 0 {
            return None;
        }
        let len = usize::from(flag >> 3);
        Some((0..len).map(|_| self.u8()).collect::<Vec<u8>>().into())
    }
}

/// Parses a line and checks that the message re-encodes to a line parsing back to it.
fn parse(line: &[u8]) -> Option<Handshake> {
    let msg = Handshake::parse(line).ok()?;
    let again = msg.to_line();
    assert_eq!(again.last(), Some(&b'\n'), "encoded line ends with \\n");
    let back = Handshake::parse(&again[..again.len() - 1]).expect("encoded line parses");
    assert_eq!(back, msg, "parse(encode(m)) == m");
    Some(msg)
}

/// `line` without its `\n`.
fn strip(mut line: Vec<u8>) -> Vec<u8> {
    assert_eq!(line.pop(), Some(b'\n'));
    line
}

fn proof_of(msg: &Handshake) -> Option<Proof> {
    match msg {
        Handshake::Hello { proof, .. } | Handshake::Auth { proof } => *proof,
    }
}

fn with_proof(msg: &Handshake, p: Option<Proof>) -> Handshake {
    let mut m = msg.clone();
    match &mut m {
        Handshake::Hello { proof, .. } | Handshake::Auth { proof } => *proof = p,
    }
    m
}

/// A fuzzed reply fed to a dialler `me` → `peer`.
fn dial_reply(me: &ServerName, peer: &ServerName, epoch: u64, nonce: u128, secret: &Option<Arc<[u8]>>, line: &[u8]) {
    let d = Dialler::new(me.clone(), peer.clone(), epoch, nonce, secret.clone());
    let Some(reply) = parse(line) else { return };
    let Ok((peer_epoch, auth)) = d.on_reply(&reply) else {
        return;
    };
    let Handshake::Hello { from, to, epoch: e, nonce: na, proof } = &reply else {
        panic!("dialler accepted a reply that is not a hello: {reply:?}");
    };
    assert_eq!(from, peer, "accepted reply from another server");
    assert_eq!(to, me, "accepted reply addressed to another server");
    assert_eq!(peer_epoch, *e);
    // What an honest acceptor with the same secret and nonce would have answered.
    let mut honest = Acceptor::new(peer.clone(), *e, *na, secret.clone());
    let (_, _, want) = honest
        .on_hello(&d.hello(), std::slice::from_ref(me))
        .expect("an honest acceptor takes the dialler's hello");
    assert_eq!(*proof, proof_of(&want), "dialler accepted a proof an honest acceptor would not send");
    assert_eq!(proof.is_some(), secret.is_some());
    assert_eq!(proof_of(&auth).is_some(), secret.is_some());
    // And the auth the dialler sends is what the honest acceptor takes.
    assert_eq!(honest.on_auth(&auth), Ok(()), "honest acceptor refuses the dialler's auth");
}

/// A fuzzed hello and auth fed to an acceptor `me`.
fn accept(
    me: &ServerName,
    neighbours: &[ServerName],
    epoch: u64,
    nonce: u128,
    secret: &Option<Arc<[u8]>>,
    hello_line: &[u8],
    auth_line: &[u8],
) {
    let mut a = Acceptor::new(me.clone(), epoch, nonce, secret.clone());
    let auth = parse(auth_line);
    if let Some(auth) = &auth {
        // No hello yet: nothing is accepted.
        assert_eq!(a.on_auth(auth), Err(HandshakeError::Unexpected), "auth before hello");
    }
    let Some(hello) = parse(hello_line) else { return };
    let Ok((who, their_epoch, reply)) = a.on_hello(&hello, neighbours) else {
        return;
    };
    let Handshake::Hello { from, to, epoch: e, nonce: nd, proof: None } = &hello else {
        panic!("acceptor took a hello with a proof, or not a hello: {hello:?}");
    };
    assert_eq!(to, me, "accepted hello addressed to another server");
    assert!(neighbours.contains(from), "accepted hello from a stranger");
    assert_eq!((&who, their_epoch), (from, *e));
    let Handshake::Hello { from: rf, to: rt, epoch: re, nonce: rn, proof: rp } = &reply else {
        panic!("acceptor's reply is not a hello: {reply:?}");
    };
    assert_eq!((rf, rt, *re, *rn), (me, from, epoch, nonce));
    assert_eq!(rp.is_some(), secret.is_some());
    // What an honest dialler with the same secret and nonce would send.
    let honest = Dialler::new(from.clone(), me.clone(), *e, *nd, secret.clone());
    let (_, want) = honest.on_reply(&reply).expect("an honest dialler takes the acceptor's reply");
    let Some(auth) = auth else { return };
    match a.on_auth(&auth) {
        Ok(()) => assert_eq!(auth, want, "acceptor took an auth an honest dialler would not send"),
        Err(_) => assert_ne!(auth, want, "acceptor refused the honest dialler's auth"),
    }
}

/// An honest dialler `d` (`dn`, epoch `de`, nonce `dnon`) and acceptor `an` run through the
/// line encoding.
#[allow(clippy::too_many_arguments)]
fn honest_run(
    dn: &ServerName,
    an: &ServerName,
    (de, dnon): (u64, u128),
    (ae, anon): (u64, u128),
    dial_secret: &Option<Arc<[u8]>>,
    acc_secret: &Option<Arc<[u8]>>,
) -> Result<(Handshake, Handshake, Handshake), HandshakeError> {
    let d = Dialler::new(dn.clone(), an.clone(), de, dnon, dial_secret.clone());
    let mut a = Acceptor::new(an.clone(), ae, anon, acc_secret.clone());
    let hello = parse(&strip(d.hello().to_line())).expect("hello parses");
    let (who, e, reply) = a.on_hello(&hello, std::slice::from_ref(dn))?;
    assert_eq!((&who, e), (dn, de));
    let reply = parse(&strip(reply.to_line())).expect("reply parses");
    let (e, auth) = d.on_reply(&reply)?;
    assert_eq!(e, ae);
    let auth = parse(&strip(auth.to_line())).expect("auth parses");
    a.on_auth(&auth)?;
    Ok((hello, reply, auth))
}

/// The honest handshake with one byte of one of its lines xored before it is parsed.
#[allow(clippy::too_many_arguments)]
fn mutated_run(
    dn: &ServerName,
    an: &ServerName,
    (de, dnon): (u64, u128),
    (ae, anon): (u64, u128),
    secret: &Option<Arc<[u8]>>,
    honest: &(Handshake, Handshake, Handshake),
    (which, pos, xor): (u8, usize, u8),
) {
    let mutate = |step: u8, mut line: Vec<u8>| {
        if step == which % 3 && !line.is_empty() {
            let i = pos % line.len();
            line[i] ^= xor;
        }
        line
    };
    let d = Dialler::new(dn.clone(), an.clone(), de, dnon, secret.clone());
    let mut a = Acceptor::new(an.clone(), ae, anon, secret.clone());
    let Some(hello) = parse(&mutate(0, strip(d.hello().to_line()))) else { return };
    let Ok((_, _, reply)) = a.on_hello(&hello, std::slice::from_ref(dn)) else { return };
    let Some(reply) = parse(&mutate(1, strip(reply.to_line()))) else { return };
    let Ok((_, auth)) = d.on_reply(&reply) else { return };
    let Some(auth) = parse(&mutate(2, strip(auth.to_line()))) else { return };
    if a.on_auth(&auth).is_err() {
        return;
    }
    // The handshake completed despite the mutation.
    if secret.is_some() {
        // The proofs cover the epochs too: nothing of an honest line may change.
        assert_eq!(hello, honest.0, "tampered hello accepted");
        assert_eq!(reply, honest.1, "tampered reply accepted");
        assert_eq!(auth, honest.2, "tampered auth accepted");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor(data);
    let dn = c.name();
    let an = c.name();
    let other = c.name();
    let (de, dnon) = (c.u64(), c.u128());
    let (ae, anon) = (c.u64(), c.u128());
    let secret = c.secret();
    let other_secret = c.secret();
    let (which, pos, xor) = (c.u8(), usize::from(c.u8()), c.u8());
    let lines: Vec<&[u8]> = c.0.split(|&b| b == b'\n').collect();

    // 1. Arbitrary replies to a dialler, with the fuzzed secret and without one.
    for line in &lines {
        dial_reply(&dn, &an, de, dnon, &secret, line);
        dial_reply(&dn, &an, de, dnon, &None, line);
    }

    // 2. An arbitrary hello then an arbitrary auth to an acceptor, with and without a secret.
    let hello_line = lines.first().copied().unwrap_or_default();
    let auth_line = lines.get(1).copied().unwrap_or_default();
    let neighbours = [other.clone(), dn.clone()];
    accept(&an, &neighbours, ae, anon, &secret, hello_line, auth_line);
    accept(&an, &neighbours, ae, anon, &None, hello_line, auth_line);

    // 3. The honest pair completes with the same secret, or with none.
    for s in [&secret, &None] {
        let honest = honest_run(&dn, &an, (de, dnon), (ae, anon), s, s)
            .unwrap_or_else(|e| panic!("honest handshake failed: {e}"));
        mutated_run(&dn, &an, (de, dnon), (ae, anon), s, &honest, (which, pos, xor));
    }

    // ... and fails when the secrets differ or only one side has one. (Secrets that differed
    // only in trailing NUL bytes used to be one HMAC key: a finding of this target, kept in
    // `regressions/handshake/`; the key is now a hash of the secret.)
    if secret != other_secret {
        let r = honest_run(&dn, &an, (de, dnon), (ae, anon), &secret, &other_secret);
        let want = match (&secret, &other_secret) {
            (Some(_), None) => HandshakeError::MissingProof,
            _ => HandshakeError::BadProof,
        };
        assert_eq!(r.err(), Some(want), "handshake with {secret:?} vs {other_secret:?}");
    }

    // 4. With a secret, any change to a byte of either proof is refused, and so is the
    // acceptor's proof sent back as the dialler's.
    let Some(s) = &secret else { return };
    let secret = Some(s.clone());
    let d = Dialler::new(dn.clone(), an.clone(), de, dnon, secret.clone());
    let mut a = Acceptor::new(an.clone(), ae, anon, secret.clone());
    let (_, _, reply) = a.on_hello(&d.hello(), std::slice::from_ref(&dn)).expect("honest hello");
    let (_, auth) = d.on_reply(&reply).expect("honest reply");
    let flip = if xor == 0 { 1 } else { xor };
    let i = pos % 32;
    let mut bad = proof_of(&reply).expect("reply has a proof");
    bad[i] ^= flip;
    assert_eq!(d.on_reply(&with_proof(&reply, Some(bad))).err(), Some(HandshakeError::BadProof));
    assert_eq!(d.on_reply(&with_proof(&reply, None)).err(), Some(HandshakeError::MissingProof));
    let mut bad = proof_of(&auth).expect("auth has a proof");
    bad[i] ^= flip;
    assert_eq!(a.on_auth(&with_proof(&auth, Some(bad))), Err(HandshakeError::BadProof));
    assert_eq!(a.on_auth(&with_proof(&auth, None)), Err(HandshakeError::MissingProof));
    assert_eq!(
        a.on_auth(&Handshake::Auth { proof: proof_of(&reply) }),
        Err(HandshakeError::BadProof),
        "acceptor's own proof reflected as the dialler's"
    );
    assert_eq!(a.on_auth(&auth), Ok(()), "the honest auth still passes");
});
