//! The client messages of one batch, logged together once the node's lock is released.
//!
//! Every client message and its reply is logged at `info`. With a bulk message log
//! ([`crate::msglog`]) the batch's lines are formatted into one buffer and handed over in one
//! call; without one each is a `tracing` event. Either way a line or reply is shown in at most
//! `log_line_bytes` ([`crate::Limits`]) bytes, then cut with its length noted.

use std::net::SocketAddr;
use std::sync::Arc;

use herd_core::Timestamp;
use tracing::info;

use crate::clock;
use crate::escape::Clipped;
use crate::msglog::{self, MessageLog};

/// What the log says about a line handled under the node lock.
#[derive(Debug, Clone, Copy)]
pub(super) enum Note {
    /// Answered at once; the reply is `out[start..end]`.
    Replied(usize, usize),
    /// Waiting on Places.
    Places,
    /// Waiting on the herd.
    Herd,
}

/// One connection's log lines of the batch under way.
pub(super) struct BatchLog {
    addr: SocketAddr,
    bulk: Option<Arc<dyn MessageLog>>,
    /// Longest shown line or reply ([`crate::Limits::log_line_bytes`]).
    max: usize,
    enabled: bool,
    /// The batch's lines, as where they lie in the connection's input.
    notes: Vec<((usize, usize), Note)>,
    /// This connection's fixed part of its message log lines (made on first use).
    prefix: Vec<u8>,
    /// The batch's log lines, formatted here and handed over in one call (reused).
    text: Vec<u8>,
    /// The batch's timestamp, formatted (reused).
    stamp: Vec<u8>,
}

impl BatchLog {
    pub(super) fn new(addr: SocketAddr, bulk: Option<Arc<dyn MessageLog>>, max: usize) -> Self {
        Self {
            addr,
            bulk,
            max,
            enabled: true,
            notes: Vec::new(),
            prefix: Vec::new(),
            text: Vec::new(),
            stamp: Vec::with_capacity(32),
        }
    }

    /// Starts a batch: whether anything is logged is decided once per batch.
    pub(super) fn begin(&mut self) {
        self.enabled = tracing::enabled!(tracing::Level::INFO);
    }

    /// Notes a line for the log, written by [`BatchLog::write`].
    pub(super) fn note(&mut self, line: (usize, usize), note: Note) {
        if self.enabled {
            self.notes.push((line, note));
        }
    }

    /// Logs the noted lines; `input` holds the lines noted, `out` the replies that
    /// [`Note::Replied`] points into.
    pub(super) fn write(&mut self, now: Timestamp, input: &[u8], out: &[u8]) {
        if self.notes.is_empty() {
            return;
        }
        let mut notes = std::mem::take(&mut self.notes);
        let mut text = std::mem::take(&mut self.text);
        text.clear();
        let mut stamp = std::mem::take(&mut self.stamp);
        stamp.clear();
        let bulk = self.bulk.is_some();
        let max = self.max;
        if bulk {
            msglog::push_timestamp(&mut stamp, now);
            if self.prefix.is_empty() {
                self.prefix = msglog::message_prefix(self.addr);
            }
        }
        for &((start, end), note) in &notes {
            let line = input.get(start..end).unwrap_or_default();
            let msg = Clipped::new(line, max);
            match note {
                Note::Replied(s, e) => {
                    let reply = out.get(s..e).unwrap_or_default();
                    if bulk {
                        msglog::push_message_clipped(
                            &mut text,
                            &stamp,
                            &self.prefix,
                            line,
                            reply,
                            max,
                        );
                    } else {
                        info!(addr = %self.addr, %msg, reply = %Clipped::new(reply, max), "client message");
                    }
                }
                Note::Places if bulk => msglog::push_event_clipped(
                    &mut text,
                    &stamp,
                    "client message; looking up places",
                    self.addr,
                    "msg",
                    line,
                    max,
                ),
                Note::Herd if bulk => msglog::push_event_clipped(
                    &mut text,
                    &stamp,
                    "client message; asking the herd",
                    self.addr,
                    "msg",
                    line,
                    max,
                ),
                Note::Places => info!(addr = %self.addr, %msg, "client message; looking up places"),
                Note::Herd => info!(addr = %self.addr, %msg, "client message; asking the herd"),
            }
        }
        if let Some(log) = self.bulk.as_ref().filter(|_| !text.is_empty()) {
            log.write_lines(&text);
        }
        text.clear();
        self.text = text;
        notes.clear();
        self.notes = notes;
        self.stamp = stamp;
    }
}

/// Logs a reply that was not ready at once (in bulk when the server has a message log).
pub(super) fn log_reply(
    bulk: Option<&Arc<dyn MessageLog>>,
    addr: SocketAddr,
    out: &[u8],
    max: usize,
) {
    match bulk {
        Some(log) => {
            if tracing::enabled!(tracing::Level::INFO) {
                let mut text = Vec::with_capacity(out.len().min(max) + 128);
                msglog::push_timestamp(&mut text, clock::now());
                msglog::push_event_clipped(&mut text, &[], "client reply", addr, "reply", out, max);
                log.write_lines(&text);
            }
        }
        None => info!(%addr, reply = %Clipped::new(out, max), "client reply"),
    }
}
