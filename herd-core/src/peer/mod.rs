//! The peer protocol between servers: messages, their line encoding, and the handshake.
//!
//! Every peer message is one `\n`-terminated line of ASCII fields separated by single spaces
//! (client ids and AT lines are carried as the bytes the client sent). See
//! `docs/peer-protocol.md` for the design and an example of each message. The handshake
//! that opens a link, with its own messages, is in [`handshake`]; [`PeerMsg`] is what flows
//! once the link is up.

use std::sync::Arc;

use thiserror::Error;

pub mod handshake;
pub mod seal;
pub mod tree;

pub use handshake::{is_handshake, Acceptor, Dialler, Handshake, HandshakeError, Proof, START_TLS};
pub use tree::{line_hash, record_hash, Announcement};

use crate::record::Record;
use crate::types::{push_u128, ServerName};

/// The tag every handshake line starts with; a connection whose first line starts with it is a
/// peer connection.
pub const HANDSHAKE_TAG: &[u8] = b"HERD/2";

/// One message between two servers once their link is up (after the [`Handshake`]).
#[derive(Debug, Clone, PartialEq)]
pub enum PeerMsg {
    /// Reconciliation request: "I am incarnation `epoch`; of your log (incarnation
    /// `your_epoch`) I have seen every change up to `seen`".
    Digest {
        /// The sender's incarnation.
        epoch: u64,
        /// The receiver's incarnation as the sender last knew it (0: never).
        your_epoch: u64,
        /// The last of the receiver's log numbers the sender has seen.
        seen: u64,
    },
    /// A location record, stored by the sender under its log number `seq`.
    Update {
        /// The sender's log number for this record.
        seq: u64,
        /// The record.
        record: Arc<Record>,
    },
    /// "You now have every change of my log up to `seq`" (ends a reconciliation).
    Synced {
        /// The sender's latest log number.
        seq: u64,
    },
    /// Does anyone know this client? A flood that collects answers back along its path.
    Query {
        /// The server whose client asked.
        origin: ServerName,
        /// The origin's id for this query.
        qid: u64,
        /// The client asked about.
        client: Box<[u8]>,
    },
    /// The answer to a query from the sender's part of the herd: a record, or none.
    Answer {
        /// The query's origin.
        origin: ServerName,
        /// The query's id.
        qid: u64,
        /// The newest record found, if any.
        record: Option<Arc<Record>>,
    },
    /// "I am behind with you: until my next [`PeerMsg::Synced`], my updates are a delta
    /// from my log (each client's latest record), not live ones." Sent when the link's lag
    /// passes [`crate::node::NodeConfig::catch_up_bytes`]; the receiver takes what follows
    /// as it takes a reconciliation delta (no prunes: a delta carries every origin).
    CatchUp,
    /// "I am here": sent by either side when its link has been quiet for the heartbeat
    /// interval. It needs no reply and changes nothing; any line received proves the
    /// sender alive, and a link silent for the peer timeout is dropped by the adapter.
    Ping,
    /// Broadcast tree: records the sender stored, announced instead of sent on a lazy link
    /// (one or more, in the sender's log order).
    Announce {
        /// The announcements.
        entries: Vec<Announcement>,
    },
    /// Broadcast tree: "send me your record of `client`, and push records like it (of its
    /// origin) to me from now on".
    Graft {
        /// The client whose record is missing.
        client: Box<[u8]>,
    },
    /// Broadcast tree: "stop pushing me records of `origin`'s clients; announce them".
    Prune {
        /// The origin server (an AT line's second field) whose records this link no longer
        /// carries eagerly.
        origin: Box<[u8]>,
    },
}

/// Why a peer line could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PeerParseError {
    /// Unknown message kind or wrong number of fields.
    #[error("malformed peer message")]
    Malformed,
    /// A number field is not a decimal or hex number in range.
    #[error("bad number in peer message")]
    Number,
    /// A carried AT line or name does not validate.
    #[error("bad field in peer message")]
    Field,
}

fn push_u64(out: &mut Vec<u8>, v: u64) {
    push_u128(out, u128::from(v));
}

fn parse_u64(s: &[u8]) -> Result<u64, PeerParseError> {
    if s.is_empty() || s.len() > 20 || !s.iter().all(u8::is_ascii_digit) {
        return Err(PeerParseError::Number);
    }
    s.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .ok_or(PeerParseError::Number)
    })
}

fn name(s: &[u8]) -> Result<ServerName, PeerParseError> {
    ServerName::from_bytes(s).map_err(|_| PeerParseError::Field)
}

fn record(s: &[u8]) -> Result<Arc<Record>, PeerParseError> {
    Record::parse(s)
        .map(Arc::new)
        .map_err(|_| PeerParseError::Field)
}

/// Splits off the first `N` space-separated fields; the rest (possibly with spaces) follows.
fn split_n<const N: usize>(line: &[u8]) -> Result<([&[u8]; N], &[u8]), PeerParseError> {
    let mut out: [&[u8]; N] = [&[]; N];
    let mut rest = line;
    for slot in out.iter_mut() {
        let end = rest.iter().position(|&b| b == b' ');
        match end {
            Some(i) => {
                *slot = &rest[..i];
                rest = &rest[i + 1..];
            }
            None => {
                *slot = rest;
                rest = &[];
            }
        }
    }
    Ok((out, rest))
}

impl PeerMsg {
    /// Appends the message's line, with its `\n`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            PeerMsg::Digest {
                epoch,
                your_epoch,
                seen,
            } => {
                out.extend_from_slice(b"D ");
                push_u64(out, *epoch);
                out.push(b' ');
                push_u64(out, *your_epoch);
                out.push(b' ');
                push_u64(out, *seen);
            }
            PeerMsg::Update { seq, record } => {
                out.extend_from_slice(b"U ");
                push_u64(out, *seq);
                out.push(b' ');
                out.extend_from_slice(record.at_line());
            }
            PeerMsg::Synced { seq } => {
                out.extend_from_slice(b"S ");
                push_u64(out, *seq);
            }
            PeerMsg::Query {
                origin,
                qid,
                client,
            } => {
                out.extend_from_slice(b"Q ");
                out.extend_from_slice(origin.as_str().as_bytes());
                out.push(b' ');
                push_u64(out, *qid);
                out.push(b' ');
                out.extend_from_slice(client);
            }
            PeerMsg::Answer {
                origin,
                qid,
                record,
            } => {
                out.extend_from_slice(b"R ");
                out.extend_from_slice(origin.as_str().as_bytes());
                out.push(b' ');
                push_u64(out, *qid);
                match record {
                    Some(r) => {
                        out.extend_from_slice(b" + ");
                        out.extend_from_slice(r.at_line());
                    }
                    None => out.extend_from_slice(b" -"),
                }
            }
            PeerMsg::Ping => out.push(b'P'),
            PeerMsg::CatchUp => out.push(b'C'),
            PeerMsg::Announce { entries } => tree::encode_announce(entries, out),
            PeerMsg::Graft { client } => {
                out.extend_from_slice(b"G ");
                out.extend_from_slice(client);
            }
            PeerMsg::Prune { origin } => {
                out.extend_from_slice(b"X ");
                out.extend_from_slice(origin);
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

    /// Parses one peer line (without its `\n`).
    ///
    /// # Errors
    /// [`PeerParseError`] when the line is not a well-formed peer message.
    pub fn parse(line: &[u8]) -> Result<Self, PeerParseError> {
        let (&kind, _) = line.split_first().ok_or(PeerParseError::Malformed)?;
        match kind {
            b'D' => {
                let ([k, e, y, s], rest) = split_n::<4>(line)?;
                expect(k == b"D" && rest.is_empty())?;
                Ok(PeerMsg::Digest {
                    epoch: parse_u64(e)?,
                    your_epoch: parse_u64(y)?,
                    seen: parse_u64(s)?,
                })
            }
            b'U' => {
                let ([k, seq], rest) = split_n::<2>(line)?;
                expect(k == b"U")?;
                Ok(PeerMsg::Update {
                    seq: parse_u64(seq)?,
                    record: record(rest)?,
                })
            }
            b'S' => {
                let ([k, seq], rest) = split_n::<2>(line)?;
                expect(k == b"S" && rest.is_empty())?;
                Ok(PeerMsg::Synced {
                    seq: parse_u64(seq)?,
                })
            }
            b'Q' => {
                let ([k, origin, qid, client], rest) = split_n::<4>(line)?;
                let client_ok =
                    !client.is_empty() && !client.iter().any(|&b| crate::types::is_space(b));
                expect(k == b"Q" && rest.is_empty() && client_ok)?;
                Ok(PeerMsg::Query {
                    origin: name(origin)?,
                    qid: parse_u64(qid)?,
                    client: client.into(),
                })
            }
            b'R' => Self::parse_answer(line),
            b'P' if line == b"P" => Ok(PeerMsg::Ping),
            b'C' if line == b"C" => Ok(PeerMsg::CatchUp),
            b'I' => match line.strip_prefix(b"I ") {
                Some(rest) => Ok(PeerMsg::Announce {
                    entries: tree::parse_announce(rest)?,
                }),
                None => Err(PeerParseError::Malformed),
            },
            b'G' | b'X' => {
                let ([k, field], rest) = split_n::<2>(line)?;
                expect(rest.is_empty() && (k == b"G" || k == b"X"))?;
                let field: Box<[u8]> = tree::client_id(field)?.into();
                Ok(if k == b"G" {
                    PeerMsg::Graft { client: field }
                } else {
                    PeerMsg::Prune { origin: field }
                })
            }
            _ => Err(PeerParseError::Malformed),
        }
    }

    fn parse_answer(line: &[u8]) -> Result<Self, PeerParseError> {
        let ([k, origin, qid, flag], rest) = split_n::<4>(line)?;
        expect(k == b"R")?;
        let record = match flag {
            b"-" if rest.is_empty() => None,
            b"+" => Some(record(rest)?),
            _ => return Err(PeerParseError::Malformed),
        };
        Ok(PeerMsg::Answer {
            origin: name(origin)?,
            qid: parse_u64(qid)?,
            record,
        })
    }
}

fn expect(ok: bool) -> Result<(), PeerParseError> {
    if ok {
        Ok(())
    } else {
        Err(PeerParseError::Malformed)
    }
}

/// The client id of an `Update` line (`U seq AT server diff client ...`, single spaces),
/// whether or not the rest of the line is valid; `None` for any other line. Cheap: it reads
/// no further than the client id.
pub fn update_client_of(line: &[u8]) -> Option<&[u8]> {
    let mut fields = line.split(|&b| b == b' ');
    match fields.next() {
        Some(b"U") => fields.nth(4),
        _ => None,
    }
}
