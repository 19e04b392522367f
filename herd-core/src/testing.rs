//! Test doubles for the ports (enabled by the `testing` feature).

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use async_trait::async_trait;
use serde_json::Value;

use crate::lookup::{LookupError, PlacesLookup, PlacesQuery};
use crate::peer::PeerMsg;
use crate::ports::{IdSource, PeerId, PeerSendError, PeerSink};

/// Ids from a seeded generator (SplitMix64): deterministic per seed.
#[derive(Debug, Clone)]
pub struct SeededIds(u64);

impl SeededIds {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
}

impl IdSource for SeededIds {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A sink that records every message; a peer can be marked as refusing.
#[derive(Debug, Default, Clone)]
pub struct RecordingPeerSink {
    /// Messages sent, in order.
    pub sent: Vec<(PeerId, PeerMsg)>,
    /// Peers whose sends fail with [`PeerSendError::Backlogged`].
    pub refusing: Vec<PeerId>,
    /// When set, encoded bytes sent to each peer count as its backlog until [`Self::drain`];
    /// when not, the backlog is always 0 (an infinitely fast transport).
    pub track_backlog: bool,
    /// Encoded bytes sent per peer since its last [`Self::drain`] (with `track_backlog`).
    pub queued: Vec<(PeerId, usize)>,
    /// Peers for which the node asked to be told when their queue is taken, in order.
    pub drain_requests: Vec<PeerId>,
}

impl RecordingPeerSink {
    /// Takes the recorded messages.
    pub fn take(&mut self) -> Vec<(PeerId, PeerMsg)> {
        std::mem::take(&mut self.sent)
    }

    /// The transport took everything queued for `peer`: its backlog is 0 again. Returns
    /// whether the node had asked to hear of it (the request is consumed).
    pub fn drain(&mut self, peer: PeerId) -> bool {
        self.queued.retain(|(p, _)| *p != peer);
        let asked = self.drain_requests.contains(&peer);
        self.drain_requests.retain(|p| *p != peer);
        asked
    }
}

impl PeerSink for RecordingPeerSink {
    fn send(&mut self, to: PeerId, msg: &PeerMsg) -> Result<(), PeerSendError> {
        if self.refusing.contains(&to) {
            return Err(PeerSendError::Backlogged);
        }
        if self.track_backlog {
            let mut line = Vec::new();
            msg.encode(&mut line);
            match self.queued.iter_mut().find(|(p, _)| *p == to) {
                Some((_, n)) => *n += line.len(),
                None => self.queued.push((to, line.len())),
            }
        }
        self.sent.push((to, msg.clone()));
        Ok(())
    }

    fn backlog(&self, to: PeerId) -> usize {
        self.queued
            .iter()
            .find(|(p, _)| *p == to)
            .map_or(0, |(_, n)| *n)
    }

    fn notify_drained(&mut self, to: PeerId) {
        if !self.drain_requests.contains(&to) {
            self.drain_requests.push(to);
        }
    }
}

/// Places that answers every query with the same JSON, counting calls.
#[derive(Debug)]
pub struct StaticPlaces {
    answer: Value,
    calls: AtomicUsize,
}

impl StaticPlaces {
    /// Answers with `answer`.
    pub fn new(answer: Value) -> Self {
        Self {
            answer,
            calls: AtomicUsize::new(0),
        }
    }

    /// How many lookups were made.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl PlacesLookup for StaticPlaces {
    async fn nearby(&self, _q: &PlacesQuery) -> Result<Value, LookupError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(self.answer.clone())
    }
}

/// Places that always fails with the given error.
#[derive(Debug, Clone)]
pub struct FailingPlaces(pub LookupError);

#[async_trait]
impl PlacesLookup for FailingPlaces {
    async fn nearby(&self, _q: &PlacesQuery) -> Result<Value, LookupError> {
        Err(self.0.clone())
    }
}

/// Drives a future that is ready without waiting (the test doubles' futures) to completion.
///
/// # Panics
/// When the future is not ready on its first poll.
pub fn block_on_ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("block_on_ready: the future is not ready"),
    }
}
