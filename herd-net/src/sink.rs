//! `TcpPeerSink`: the node's peer messages, encoded into one bounded buffer per link.
//!
//! The node calls [`PeerSink::send`] under its lock; the message is encoded straight into the
//! link's outbound buffer and the link's writer task is woken. The writer takes the whole
//! buffer at once and writes it with one large write, so a burst of updates costs one system
//! call. When a buffer would exceed its bound the queue is *poisoned*: its content is thrown
//! away, the writer stops without sending anything more of that session, and the link is
//! dropped; reconciliation on reconnect repairs what was lost.
//!
//! A reconciliation delta never gets near that bound: the node hands it over a window at a
//! time ([`PeerSink::backlog`]) and asks to hear when the writer has taken the queue
//! ([`PeerSink::notify_drained`]); the writer then calls `Node::handle_link_drained`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use herd_core::{PeerId, PeerMsg, PeerSendError, PeerSink};
use tokio::sync::Notify;

/// The outbound queue of one link session.
#[derive(Debug)]
pub struct PeerQueue {
    inner: Mutex<QueueInner>,
    wake: Notify,
    max_bytes: usize,
    /// The node asked to hear when the writer has taken what is queued.
    drain_wanted: AtomicBool,
}

#[derive(Debug, Default)]
struct QueueInner {
    buf: Vec<u8>,
    /// Set when the queue overflowed or the session ended: nothing more is sent.
    closed: bool,
    overflowed: bool,
}

/// What the writer gets from [`PeerQueue::take`].
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    /// Bytes to write (swapped into the caller's buffer).
    Data,
    /// Nothing queued now.
    Empty,
    /// The session is over; `overflowed` tells whether it was a queue overflow.
    Closed {
        /// The queue overflowed.
        overflowed: bool,
    },
}

impl PeerQueue {
    /// An empty queue holding at most `max_bytes`.
    pub fn new(max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(QueueInner::default()),
            wake: Notify::new(),
            max_bytes,
            drain_wanted: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, QueueInner> {
        // A panic while holding this lock cannot leave the buffer inconsistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `msg`; poisons the queue when it would grow past its bound.
    ///
    /// # Errors
    /// [`PeerSendError::Down`] on a closed queue, [`PeerSendError::Backlogged`] on overflow.
    pub fn push(&self, msg: &PeerMsg) -> Result<(), PeerSendError> {
        let mut q = self.lock();
        if q.closed {
            return Err(PeerSendError::Down);
        }
        msg.encode(&mut q.buf);
        if q.buf.len() > self.max_bytes {
            q.closed = true;
            q.overflowed = true;
            q.buf = Vec::new();
            drop(q);
            self.wake.notify_one();
            return Err(PeerSendError::Backlogged);
        }
        drop(q);
        // `Notify` keeps at most one permit: waking an awake writer costs one atomic operation.
        self.wake.notify_one();
        Ok(())
    }

    /// Swaps the queued bytes into `into` (which must be empty).
    pub fn take(&self, into: &mut Vec<u8>) -> Take {
        let mut q = self.lock();
        if q.closed {
            return Take::Closed {
                overflowed: q.overflowed,
            };
        }
        if q.buf.is_empty() {
            return Take::Empty;
        }
        std::mem::swap(&mut q.buf, into);
        Take::Data
    }

    /// Closes the queue: later pushes fail, the writer stops after what it holds.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// Waits until something is queued or the queue is closed.
    pub async fn wait(&self) {
        self.wake.notified().await;
    }

    /// Bytes queued now.
    pub fn queued(&self) -> usize {
        self.lock().buf.len()
    }

    /// Asks the writer to report when it has taken what is queued (wakes it, so that the
    /// request is seen even when the queue was taken just before).
    pub fn want_drain(&self) {
        self.drain_wanted.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Takes the drain request, if any: the writer then calls the node.
    pub fn take_drain_request(&self) -> bool {
        self.drain_wanted.swap(false, Ordering::AcqRel)
    }
}

/// The node's [`PeerSink`]: one optional queue per neighbour (present while its link is up).
#[derive(Debug)]
pub struct TcpPeerSink {
    queues: Vec<Option<Arc<PeerQueue>>>,
}

impl TcpPeerSink {
    /// A sink for `neighbours` links, all down.
    pub fn new(neighbours: usize) -> Self {
        Self {
            queues: vec![None; neighbours],
        }
    }

    /// Routes `peer`'s messages to `queue` (a new session).
    pub fn attach(&mut self, peer: PeerId, queue: Arc<PeerQueue>) {
        if let Some(slot) = self.queues.get_mut(peer.0) {
            if let Some(old) = slot.replace(queue) {
                old.close();
            }
        }
    }

    /// Detaches `peer`'s queue if it is `queue`, closing it.
    pub fn detach(&mut self, peer: PeerId, queue: &Arc<PeerQueue>) {
        if let Some(slot) = self.queues.get_mut(peer.0) {
            if slot.as_ref().is_some_and(|q| Arc::ptr_eq(q, queue)) {
                *slot = None;
            }
        }
        queue.close();
    }
}

impl PeerSink for TcpPeerSink {
    fn send(&mut self, to: PeerId, msg: &PeerMsg) -> Result<(), PeerSendError> {
        let slot = self.queues.get(to.0).ok_or(PeerSendError::Unknown)?;
        let queue = slot.as_ref().ok_or(PeerSendError::Down)?;
        queue.push(msg)
    }

    fn backlog(&self, to: PeerId) -> usize {
        self.queues
            .get(to.0)
            .and_then(Option::as_ref)
            .map_or(0, |q| q.queued())
    }

    fn notify_drained(&mut self, to: PeerId) {
        if let Some(q) = self.queues.get(to.0).and_then(Option::as_ref) {
            q.want_drain();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_poisons_the_queue_and_discards_its_content() {
        let q = PeerQueue::new(20);
        let mut sink = TcpPeerSink::new(2);
        sink.attach(PeerId(1), q.clone());
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
        let mut sink = TcpPeerSink::new(1);
        assert_eq!(sink.backlog(PeerId(0)), 0, "down: nothing queued");
        sink.notify_drained(PeerId(0));
        sink.attach(PeerId(0), q.clone());
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
    fn take_swaps_out_everything_queued() {
        let q = PeerQueue::new(1000);
        q.push(&PeerMsg::Synced { seq: 1 }).unwrap();
        q.push(&PeerMsg::Synced { seq: 2 }).unwrap();
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out), Take::Data);
        assert_eq!(out, b"S 1\nS 2\n");
        out.clear();
        assert_eq!(q.take(&mut out), Take::Empty);
    }
}
