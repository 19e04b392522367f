//! Reconciliation of a link that has come up: the digest each side sends, and the delta it
//! answers with, paced by the sink's backlog ([`super::NodeConfig::resync_window`]).

use std::collections::VecDeque;
use std::sync::Arc;

use super::{LinkState, Node};
use crate::peer::PeerMsg;
use crate::ports::{PeerId, PeerSink};
use crate::store::{is_expired, Change};
use crate::types::Timestamp;

/// A reconciliation delta on its way to a neighbour.
#[derive(Debug, Clone, Default)]
pub(super) struct Resync {
    /// Changes still to send, in log order (each record is read from the store when it is
    /// sent: a change superseded meanwhile is listed again under its new number).
    pending: VecDeque<Change>,
    /// The highest log position covered so far: what changed after it is sent next.
    covered: u64,
    /// A catch-up of a link that fell behind, not a reconciliation after a link came up.
    catch_up: bool,
}

impl<S: PeerSink> Node<S> {
    pub(super) fn on_digest(
        &mut self,
        now: Timestamp,
        from: PeerId,
        epoch: u64,
        your_epoch: u64,
        seen: u64,
    ) {
        let link = &mut self.links[from.0];
        if link.peer_epoch != epoch {
            // The peer restarted: its log is new, everything of it is unseen.
            link.peer_epoch = epoch;
            link.seen = 0;
            self.last_source += 1;
            link.source = self.last_source;
        }
        let since = if your_epoch == self.epoch { seen } else { 0 };
        self.stats.resyncs += 1;
        link.state = LinkState::Syncing;
        link.resync = Some(Resync {
            pending: VecDeque::new(),
            covered: since,
            catch_up: false,
        });
        self.continue_resync(now, from);
    }

    /// `peer`'s link is too far behind ([`super::NodeConfig::catch_up_bytes`]): every change
    /// up to `covered` has been queued for it (announcements flushed now); what follows goes
    /// as a paced delta from the log, like a reconciliation's, ended by `S`.
    pub(super) fn start_catch_up(&mut self, peer: PeerId, covered: u64) {
        self.flush_announcements(peer);
        self.stats.catch_ups += 1;
        self.send(peer, &PeerMsg::CatchUp);
        let link = &mut self.links[peer.0];
        if link.state != LinkState::Up {
            // The send failed: the link is down.
            return;
        }
        link.state = LinkState::Syncing;
        link.resync = Some(Resync {
            pending: VecDeque::new(),
            covered,
            catch_up: true,
        });
        // Wait for the writer to take what is queued before adding to it.
        self.sink.notify_drained(peer);
    }

    /// With `peer`'s link being caught up, the log number its delta has reached.
    pub(super) fn catch_up_covered(&self, peer: PeerId) -> Option<u64> {
        let link = &self.links[peer.0];
        match (&link.resync, link.state) {
            (Some(r), LinkState::Syncing) if r.catch_up => Some(r.covered),
            _ => None,
        }
    }

    /// The sink has taken what was queued for `peer` (after [`PeerSink::notify_drained`]):
    /// the reconciliation delta under way, if any, goes on.
    pub fn handle_link_drained(&mut self, now: Timestamp, peer: PeerId) {
        self.expire(now);
        if self.links.get(peer.0).is_some_and(|l| l.resync.is_some()) {
            self.continue_resync(now, peer);
        }
    }

    /// Hands the delta to the sink while the peer's backlog is below the window. When the
    /// window is full it asks the sink to say when the queue is taken; when the delta is
    /// through (including what changed meanwhile) it sends `Synced` and the link is up.
    /// Records of the snapshot that have expired by `now` are left out.
    fn continue_resync(&mut self, now: Timestamp, peer: PeerId) {
        loop {
            let link = &mut self.links[peer.0];
            let Some(resync) = link.resync.as_mut() else {
                return;
            };
            if resync.pending.is_empty() {
                // What changed since the last snapshot, leaving out what this incarnation of
                // the peer sent us: it holds that (or something newer), so no echo.
                let more = self.store.changes_since_except(resync.covered, link.source);
                if more.is_empty() {
                    link.resync = None;
                    link.state = LinkState::Up;
                    let seq = self.store.seq();
                    self.send(peer, &PeerMsg::Synced { seq });
                    return;
                }
                resync.pending = more.into();
            }
            // An empty queue always takes one more message, whatever the window: nothing
            // else would wake the delta up.
            let backlog = self.sink.backlog(peer);
            if backlog > 0 && backlog >= self.cfg.resync_window {
                self.sink.notify_drained(peer);
                return;
            }
            let Some(change) = self.links[peer.0]
                .resync
                .as_mut()
                .and_then(|r| r.pending.pop_front())
            else {
                return;
            };
            let seq = change.seq;
            if let Some(r) = self.links[peer.0].resync.as_mut() {
                r.covered = seq;
            }
            let Some(record) = self.store.change(change) else {
                continue;
            };
            if self
                .cfg
                .record_ttl
                .is_some_and(|ttl| is_expired(&record, ttl, now))
            {
                continue;
            }
            self.stats.updates_sent += 1;
            if self.links[peer.0]
                .resync
                .as_ref()
                .is_some_and(|r| r.catch_up)
            {
                self.stats.catch_up_records += 1;
            } else {
                self.stats.resync_records += 1;
            }
            let record = Arc::new(record);
            self.send(peer, &PeerMsg::Update { seq, record });
        }
    }
}
