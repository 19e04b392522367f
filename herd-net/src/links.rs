//! The link table: the one owner of per-neighbour session state, and the node's [`PeerSink`].
//!
//! One slot per neighbour holds the link's current session (its id, the peer's epoch, which
//! side dialled, its outbound [`PeerQueue`] and the token that stops its tasks) and a watch
//! that tells the dialler whether the link is up. The node sends through the table, so a
//! message goes to the queue of the session that is current at that moment or fails.
//!
//! Both ends of a link dial each other, so a returning server is relinked at once. When both
//! dials succeed, each side keeps the same one: a newer session replaces the current one when
//! the peer restarted (another epoch) or when it comes from the same direction (its dialler
//! gave the old one up); of two sessions dialled in opposite directions, the one dialled by
//! the lexicographically smaller name is kept.

use std::sync::Arc;
use std::time::Instant;

use herd_core::{PeerId, PeerMsg, PeerSendError, PeerSink};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::queue::PeerQueue;

/// One session of a link, as the table keeps it.
#[derive(Debug)]
pub struct Session {
    /// Unique among this server's sessions.
    pub id: u64,
    /// The peer's incarnation, from its handshake.
    pub peer_epoch: u64,
    /// Whether this server dialled it.
    pub dialled_by_me: bool,
    /// Its outbound queue.
    pub queue: Arc<PeerQueue>,
    /// Stops the session's reader and writer.
    pub kill: CancellationToken,
}

/// What [`LinkTable::install`] did with a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// The link was down; the session is now its current one.
    New,
    /// The session replaced the link's previous one (which is stopped).
    Replaced,
    /// The current session is kept; the new one must be closed.
    Refused,
}

#[derive(Debug)]
struct Slot {
    session: Option<Session>,
    /// Whether this server's sessions are the ones kept among simultaneous dials.
    mine_preferred: bool,
    up: watch::Sender<bool>,
    /// The neighbour was removed: no session is ever installed again.
    removed: bool,
    /// Counters of the link across its sessions ([`LinkTable::view`]).
    counts: LinkCounts,
}

impl Slot {
    fn new(mine_preferred: bool) -> Self {
        Slot {
            session: None,
            mine_preferred,
            up: watch::Sender::new(false),
            removed: false,
            counts: LinkCounts::default(),
        }
    }
}

/// A link's traffic across all its sessions, for the admin listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounts {
    /// Peer messages handed to the link's queue.
    pub sent: u64,
    /// Peer messages received on it.
    pub received: u64,
    /// When a message last arrived (pings included).
    pub last_heard: Option<Instant>,
}

/// One link as the admin listener shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkView {
    /// Whether a session is open (handshake done; it may still be reconciling).
    pub session: bool,
    /// Bytes queued for the peer and not yet taken by the writer.
    pub queued: usize,
    /// Traffic counters.
    pub counts: LinkCounts,
}

/// Every neighbour's link: sessions, queues and up/down watches.
#[derive(Debug)]
pub struct LinkTable {
    slots: Vec<Slot>,
}

impl LinkTable {
    /// A table with every link down. `mine_preferred[i]`: of two sessions dialled in opposite
    /// directions with neighbour `i`, the one this server dialled is kept.
    pub fn new(mine_preferred: impl IntoIterator<Item = bool>) -> Self {
        Self {
            slots: mine_preferred.into_iter().map(Slot::new).collect(),
        }
    }

    /// Adds a link (down) for a new neighbour; returns its [`PeerId`], the next index.
    pub fn add(&mut self, mine_preferred: bool) -> PeerId {
        self.slots.push(Slot::new(mine_preferred));
        PeerId(self.slots.len() - 1)
    }

    /// Removes `peer`'s link for good: its current session is stopped and its queue closed,
    /// the link is marked down, and [`LinkTable::install`] refuses every later session.
    /// Returns whether a session was up.
    pub fn remove(&mut self, peer: PeerId) -> bool {
        let Some(slot) = self.slots.get_mut(peer.0) else {
            return false;
        };
        slot.removed = true;
        let had = slot.session.take().map(|old| {
            old.kill.cancel();
            old.queue.close();
        });
        slot.up.send_replace(false);
        had.is_some()
    }

    /// Makes `new` the current session of `peer`'s link, unless the current one is kept.
    /// A replaced session is stopped and its queue closed.
    pub fn install(&mut self, peer: PeerId, new: Session) -> Installed {
        let Some(slot) = self.slots.get_mut(peer.0).filter(|s| !s.removed) else {
            return Installed::Refused;
        };
        let mut outcome = Installed::New;
        if let Some(cur) = &slot.session {
            let preferred = |dialled_by_me: bool| dialled_by_me == slot.mine_preferred;
            let replace = new.peer_epoch != cur.peer_epoch
                || new.dialled_by_me == cur.dialled_by_me
                || (preferred(new.dialled_by_me) && !preferred(cur.dialled_by_me));
            if !replace {
                return Installed::Refused;
            }
            outcome = Installed::Replaced;
            if let Some(old) = slot.session.take() {
                old.kill.cancel();
                old.queue.close();
            }
        }
        slot.session = Some(new);
        slot.up.send_replace(true);
        outcome
    }

    /// Whether session `id` is `peer`'s current one.
    pub fn is_current(&self, peer: PeerId, id: u64) -> bool {
        self.slots
            .get(peer.0)
            .and_then(|s| s.session.as_ref())
            .is_some_and(|s| s.id == id)
    }

    /// Ends session `id` of `peer` if it is the current one (closing its queue and marking
    /// the link down); returns whether it was.
    pub fn end(&mut self, peer: PeerId, id: u64) -> bool {
        let Some(slot) = self.slots.get_mut(peer.0) else {
            return false;
        };
        if slot.session.as_ref().is_none_or(|s| s.id != id) {
            return false;
        }
        if let Some(s) = slot.session.take() {
            s.queue.close();
        }
        slot.up.send_replace(false);
        true
    }

    /// A watch of whether `peer`'s link has a session (for its dialler).
    pub fn watch(&self, peer: PeerId) -> Option<watch::Receiver<bool>> {
        self.slots.get(peer.0).map(|s| s.up.subscribe())
    }

    /// Notes `messages` received from `peer` at `at`.
    pub fn heard(&mut self, peer: PeerId, messages: u64, at: Instant) {
        if let Some(slot) = self.slots.get_mut(peer.0) {
            slot.counts.received += messages;
            slot.counts.last_heard = Some(at);
        }
    }

    /// `peer`'s link as the admin listener shows it.
    pub fn view(&self, peer: PeerId) -> Option<LinkView> {
        let slot = self.slots.get(peer.0)?;
        Some(LinkView {
            session: slot.session.is_some(),
            queued: slot.session.as_ref().map_or(0, |s| s.queue.queued()),
            counts: slot.counts,
        })
    }

    fn queue(&self, peer: PeerId) -> Option<&Arc<PeerQueue>> {
        self.slots
            .get(peer.0)
            .and_then(|s| s.session.as_ref())
            .map(|s| &s.queue)
    }
}

impl PeerSink for LinkTable {
    fn send(&mut self, to: PeerId, msg: &PeerMsg) -> Result<(), PeerSendError> {
        let slot = self.slots.get_mut(to.0).ok_or(PeerSendError::Unknown)?;
        let session = slot.session.as_ref().ok_or(PeerSendError::Down)?;
        session.queue.push(msg)?;
        slot.counts.sent += 1;
        Ok(())
    }

    fn backlog(&self, to: PeerId) -> usize {
        self.queue(to).map_or(0, |q| q.queued())
    }

    fn lag(&self, to: PeerId) -> usize {
        self.queue(to).map_or(0, |q| q.pending())
    }

    fn notify_drained(&mut self, to: PeerId) {
        if let Some(q) = self.queue(to) {
            q.want_drain();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Take;

    fn session(id: u64, queue: &Arc<PeerQueue>) -> Session {
        Session {
            id,
            peer_epoch: 1,
            dialled_by_me: true,
            queue: queue.clone(),
            kill: CancellationToken::new(),
        }
    }

    #[test]
    fn overflow_poisons_the_queue_and_discards_its_content() {
        let q = PeerQueue::new(20);
        let mut sink = LinkTable::new([true, true]);
        sink.install(PeerId(1), session(1, &q));
        assert_eq!(
            sink.send(PeerId(0), &PeerMsg::Synced { seq: 1 }),
            Err(PeerSendError::Down)
        );
        assert_eq!(
            sink.send(PeerId(5), &PeerMsg::Synced { seq: 1 }),
            Err(PeerSendError::Unknown)
        );
        assert_eq!(sink.send(PeerId(1), &PeerMsg::Synced { seq: 1 }), Ok(()));
        assert_eq!(q.queued(), 4);
        assert_eq!(
            sink.send(
                PeerId(1),
                &PeerMsg::Synced {
                    seq: 123_456_789_012
                }
            ),
            Ok(())
        );
        assert_eq!(
            sink.send(PeerId(1), &PeerMsg::Synced { seq: 3 }),
            Err(PeerSendError::Backlogged)
        );
        assert_eq!(
            sink.send(PeerId(1), &PeerMsg::Synced { seq: 3 }),
            Err(PeerSendError::Down)
        );
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out), Take::Closed { overflowed: true });
        assert!(out.is_empty());
    }

    #[test]
    fn backlog_counts_untaken_bytes_and_a_drain_request_is_taken_once() {
        let q = PeerQueue::new(1000);
        let mut sink = LinkTable::new([true]);
        assert_eq!(sink.backlog(PeerId(0)), 0, "down: nothing queued");
        sink.notify_drained(PeerId(0));
        sink.install(PeerId(0), session(1, &q));
        assert!(!q.take_drain_request(), "a request on a down link is void");
        sink.send(PeerId(0), &PeerMsg::Synced { seq: 12 }).unwrap();
        assert_eq!(sink.backlog(PeerId(0)), 5);
        sink.notify_drained(PeerId(0));
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out), Take::Data);
        assert_eq!(sink.backlog(PeerId(0)), 0);
        assert!(q.take_drain_request());
        assert!(!q.take_drain_request());
    }

    #[test]
    fn simultaneous_dials_keep_the_preferred_direction_and_a_restart_replaces() {
        let q = PeerQueue::new(1000);
        let mut t = LinkTable::new([false]);
        let up = t.watch(PeerId(0)).unwrap();
        assert_eq!(t.install(PeerId(0), session(1, &q)), Installed::New);
        assert!(*up.borrow());
        let theirs = Session {
            dialled_by_me: false,
            ..session(2, &q)
        };
        assert_eq!(t.install(PeerId(0), theirs), Installed::Replaced);
        assert!(t.is_current(PeerId(0), 2));
        assert_eq!(t.install(PeerId(0), session(3, &q)), Installed::Refused);
        let restarted = Session {
            peer_epoch: 9,
            ..session(4, &q)
        };
        assert_eq!(t.install(PeerId(0), restarted), Installed::Replaced);
        assert!(!t.end(PeerId(0), 2), "a replaced session ends nothing");
        assert!(t.end(PeerId(0), 4));
        assert!(!*up.borrow());
    }

    #[test]
    fn an_added_link_takes_the_next_id_and_a_removed_one_refuses_every_session() {
        let q = PeerQueue::new(1000);
        let mut t = LinkTable::new([true]);
        let added = t.add(false);
        assert_eq!(added, PeerId(1));
        assert_eq!(t.install(added, session(1, &q)), Installed::New);
        let live = Session {
            kill: CancellationToken::new(),
            ..session(2, &PeerQueue::new(1000))
        };
        let (kill, queue) = (live.kill.clone(), live.queue.clone());
        assert_eq!(t.install(PeerId(0), live), Installed::New);
        assert!(t.remove(PeerId(0)), "a session was up");
        assert!(kill.is_cancelled(), "its tasks are stopped");
        assert_eq!(
            queue.push(&PeerMsg::Synced { seq: 1 }),
            Err(PeerSendError::Down),
            "its queue is closed"
        );
        assert!(!*t.watch(PeerId(0)).unwrap().borrow());
        assert_eq!(t.install(PeerId(0), session(3, &q)), Installed::Refused);
        assert_eq!(
            t.send(PeerId(0), &PeerMsg::Synced { seq: 1 }),
            Err(PeerSendError::Down)
        );
        assert!(!t.remove(PeerId(0)), "nothing left to stop");
        assert!(t.is_current(added, 1), "the other link is untouched");
    }
}
