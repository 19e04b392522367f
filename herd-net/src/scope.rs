//! Which server a piece of work belongs to, for routing log events to that server's file.
//!
//! Several servers may run in one process. Every task a server spawns is wrapped in
//! [`Scoped`], which marks the current thread with the server's index while the task is
//! polled; a log writer reads it with [`current`]. Events are emitted synchronously during
//! the poll, so the mark is always the emitting task's.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

thread_local! {
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the server whose task runs on this thread, if any.
pub fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

/// Runs `f` with the thread marked as working for server `index`.
pub fn enter<R>(index: usize, f: impl FnOnce() -> R) -> R {
    let before = CURRENT.with(|c| c.replace(Some(index)));
    let out = f();
    CURRENT.with(|c| c.set(before));
    out
}

/// A future that marks the thread with its server's index while it is polled.
#[derive(Debug)]
pub struct Scoped<F> {
    index: usize,
    inner: Pin<Box<F>>,
}

impl<F: Future> Scoped<F> {
    /// Wraps `inner` for server `index`.
    pub fn new(index: usize, inner: F) -> Self {
        Self {
            index,
            inner: Box::pin(inner),
        }
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let index = self.index;
        enter(index, || self.inner.as_mut().poll(cx))
    }
}
