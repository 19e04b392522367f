//! `PeerQueue`: the outbound buffer of one link session, bounded.
//!
//! The node's sink ([`crate::links::LinkTable`]) encodes each message straight into the
//! link's buffer and wakes the link's writer task. The writer takes the whole
//! buffer at once and writes it with one large write, so a burst of updates costs one system
//! call. When a buffer would exceed its bound the queue is *poisoned*: its content is thrown
//! away, the writer stops without sending anything more of that session, and the link is
//! dropped; reconciliation on reconnect repairs what was lost.
//!
//! A reconciliation delta never gets near that bound: the node hands it over a window at a
//! time (`PeerSink::backlog`) and asks to hear when the writer has taken the queue
//! (`PeerSink::notify_drained`); the writer then calls `Node::handle_link_drained`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use herd_core::{PeerMsg, PeerSendError};
use tokio::sync::Notify;

/// The outbound queue of one link session.
#[derive(Debug)]
pub struct PeerQueue {
    inner: Mutex<QueueInner>,
    wake: Notify,
    max_bytes: usize,
    /// The node asked to hear when the writer has taken what is queued.
    drain_wanted: AtomicBool,
    /// Bytes pushed and not yet written: queued, or taken by the writer and not through.
    pending: AtomicUsize,
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
            pending: AtomicUsize::new(0),
        })
    }

    /// Bytes pushed and not yet written: queued, or taken by the writer and not through
    /// (what the link is behind by, short of the kernel's buffers).
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// The writer wrote `bytes` it had taken.
    pub fn written(&self, bytes: usize) {
        let _ = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |p| {
                Some(p.saturating_sub(bytes))
            });
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
        let before = q.buf.len();
        msg.encode(&mut q.buf);
        if q.buf.len() > self.max_bytes {
            q.closed = true;
            q.overflowed = true;
            q.buf = Vec::new();
            drop(q);
            self.pending.store(0, Ordering::Release);
            self.wake.notify_one();
            return Err(PeerSendError::Backlogged);
        }
        // Counted under the lock, so the writer, which takes under it, never subtracts bytes
        // not yet added (that clamped at zero and left the count too high for good: the link
        // looked ever further behind and was caught up with every record).
        self.pending
            .fetch_add(q.buf.len() - before, Ordering::AcqRel);
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn pending_counts_what_is_queued_or_taken_until_it_is_written() {
        let q = PeerQueue::new(1000);
        q.push(&PeerMsg::Synced { seq: 1 }).unwrap();
        q.push(&PeerMsg::Synced { seq: 2 }).unwrap();
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out), Take::Data);
        assert_eq!(q.pending(), 8, "taken is not written");
        q.push(&PeerMsg::Synced { seq: 3 }).unwrap();
        q.written(out.len());
        assert_eq!(q.pending(), 4);
        q.written(100);
        assert_eq!(q.pending(), 0, "never below zero");
        let small = PeerQueue::new(6);
        small.push(&PeerMsg::Synced { seq: 1 }).unwrap();
        assert_eq!(small.pending(), 4);
        assert!(small.push(&PeerMsg::Synced { seq: 2 }).is_err());
        assert_eq!(small.pending(), 0, "an overflowed queue holds nothing");
    }
}
