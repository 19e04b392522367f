//! Geofences (a herd extension): `FENCE`, `UNFENCE` and the `ENTER`/`EXIT` events.
//!
//! A fence belongs to a subscriber (a client connection, named by the adapter) and is a
//! circle. Whenever the store's record of a client changes (a client's IAMAT, a peer's
//! update, a reconciliation, an expiry) the node compares the fences containing the old
//! position with those containing the new one and queues one [`NodeEvent::Fence`] per
//! crossing: `EXIT` lines first (with the new record, or the expired one), then `ENTER`
//! lines, each group in fence order. A client's first record counts as coming from nowhere.
//! Fences are local to the server: every server holds every record, so a fence sees the
//! updates of the whole herd. The cost of an update with no fence near it is one store
//! lookup and one grid probe per level in use ([`crate::fence`]).

use std::collections::HashMap;

use foldhash::fast::FixedState;

use super::{ClientAction, Node, NodeEvent};
use crate::fence::{Circle, FenceIndex, FenceSlot};
use crate::ports::PeerSink;
use crate::protocol::{write_fence_event, write_fenced, write_unfenced, FenceRequest};
use crate::record::Record;

/// Who holds a fence: an adapter's name for a client connection.
pub type Subscriber = u64;

/// Default most fences one subscriber holds ([`super::NodeConfig::max_fences_per_subscriber`]).
pub const DEFAULT_MAX_FENCES_PER_SUBSCRIBER: usize = 100;
/// Default most fences a node holds ([`super::NodeConfig::max_fences`]).
pub const DEFAULT_MAX_FENCES: usize = 100_000;

/// A fence's key in the index.
type Key = (Subscriber, Box<[u8]>);

/// The fences of a node.
#[derive(Debug, Default)]
pub(super) struct Fences {
    index: FenceIndex<Key>,
    by_sub: HashMap<Subscriber, HashMap<Box<[u8]>, FenceSlot>, FixedState>,
    /// Scratch lists of the fences left and entered by one change.
    left: Vec<FenceSlot>,
    entered: Vec<FenceSlot>,
}

impl Fences {
    /// Whether no fence is held (then updates cost nothing here).
    pub(super) fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

impl<S: PeerSink> Node<S> {
    /// How many fences the node holds.
    pub fn fence_count(&self) -> usize {
        self.fences.index.len()
    }

    /// Ends every fence of `sub` (its connection closed); returns how many.
    pub fn drop_subscriber(&mut self, sub: Subscriber) -> usize {
        let Some(held) = self.fences.by_sub.remove(&sub) else {
            return 0;
        };
        for &slot in held.values() {
            self.fences.index.remove(slot);
        }
        held.len()
    }

    /// `FENCE`: files the fence for `sub` (replacing one of the same id) and acknowledges it;
    /// `? <line>` without a subscriber or over a limit.
    pub(super) fn fence(
        &mut self,
        sub: Option<Subscriber>,
        line: &[u8],
        req: &FenceRequest<'_>,
        out: &mut Vec<u8>,
    ) -> ClientAction {
        let Some(sub) = sub else {
            return self.invalid(line, out);
        };
        let circle = Circle {
            lat: req.lat,
            lon: req.lon,
            radius_m: req.radius.metres(),
        };
        let fences = &mut self.fences;
        let held = fences.by_sub.get(&sub);
        let replaced = held.and_then(|h| h.get(req.id)).copied();
        if replaced.is_none() {
            let count = held.map_or(0, HashMap::len);
            if count >= self.cfg.max_fences_per_subscriber
                || fences.index.len() >= self.cfg.max_fences
            {
                self.stats.fences_refused += 1;
                return self.invalid(line, out);
            }
        }
        if let Some(slot) = replaced {
            fences.index.remove(slot);
        }
        let slot = fences.index.insert((sub, req.id.into()), circle);
        fences
            .by_sub
            .entry(sub)
            .or_default()
            .insert(req.id.into(), slot);
        write_fenced(req, out);
        ClientAction::Replied
    }

    /// `UNFENCE`: ends the fence of `sub` with this id; `? <line>` for an unknown one.
    pub(super) fn unfence(
        &mut self,
        sub: Option<Subscriber>,
        line: &[u8],
        id: &[u8],
        out: &mut Vec<u8>,
    ) -> ClientAction {
        let slot = sub
            .and_then(|s| self.fences.by_sub.get_mut(&s))
            .and_then(|held| held.remove(id));
        let Some(slot) = slot else {
            return self.invalid(line, out);
        };
        self.fences.index.remove(slot);
        write_unfenced(id, out);
        ClientAction::Replied
    }

    /// Queues the events of a client's record changing from position `old` to `new`
    /// (`None`: not held); `record` is the line the events carry.
    pub(super) fn fence_crossings(
        &mut self,
        old: Option<(f64, f64)>,
        new: Option<(f64, f64)>,
        record: &Record,
    ) {
        if old == new {
            // Same place (a phone standing still): no crossing.
            return;
        }
        let fences = &mut self.fences;
        fences.left.clear();
        fences.entered.clear();
        match (old, new) {
            (Some(from), Some(to)) => {
                fences
                    .index
                    .crossings(from, to, &mut fences.left, &mut fences.entered)
            }
            (Some((lat, lon)), None) => fences.index.containing(lat, lon, &mut fences.left),
            (None, Some((lat, lon))) => fences.index.containing(lat, lon, &mut fences.entered),
            (None, None) => {}
        }
        let exits = fences.left.iter();
        let enters = fences.entered.iter();
        let tagged = exits.map(|s| (false, s)).chain(enters.map(|s| (true, s)));
        for (enter, &slot) in tagged {
            let Some(((subscriber, id), _)) = fences.index.get(slot) else {
                continue;
            };
            let mut line = Vec::new();
            write_fence_event(enter, id, record.at_line(), &mut line);
            self.stats.fence_events += 1;
            self.events.push_back(NodeEvent::Fence {
                subscriber: *subscriber,
                line,
            });
        }
    }
}
