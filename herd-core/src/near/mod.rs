//! The nearby index: which clients are near a point, nearest first.
//!
//! Every held record's position is a key in one ordered set: the Morton code (bits of
//! latitude and longitude interleaved) of its cell in a 2^18 × 2^18 grid of the
//! longitude/latitude plane (cells of 0.00137° × 0.00069°, about 150 × 76 m at the equator),
//! followed by the record's slot in the store. A Morton prefix is a quadtree node, and the
//! keys of a node are one contiguous range of the set, so the set is an implicit quadtree
//! that costs about 8 bytes per client, whatever the density (a sorted vector and a buffer
//! of recent changes, see [`NearIndex`]).
//!
//! A search is best first: a heap of quadtree nodes and points, each keyed by a lower bound
//! of its distance from the query point ([`sphere::rect_lower_bound_m`]) or by its exact
//! distance ([`sphere::distance_m`]). A node with few keys is opened into its points, a
//! larger one into its four children; nodes beyond the radius are dropped. Points leave the
//! heap nearest first, so the search stops as soon as it has the count asked for (plus any
//! point at the same distance as the last, for a deterministic order: distance, then client
//! id).

pub mod sphere;

use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap};

/// Bits per axis of the grid.
const GRID_BITS: u32 = 18;
/// Bits of the key below the Morton code: the store slot.
const SLOT_BITS: u32 = 64 - 2 * GRID_BITS;
/// Slots the index can hold (2^28, about 268 million clients).
pub const MAX_SLOTS: u32 = 1 << SLOT_BITS;
/// A node with at most this many keys is opened into its points.
const LEAF_KEYS: usize = 48;

/// The grid cell of a position: (x from longitude, y from latitude).
fn cell(lat: f64, lon: f64) -> (u32, u32) {
    let side = f64::from(1u32 << GRID_BITS);
    let max = (1u32 << GRID_BITS) - 1;
    let scale = |v: f64, lo: f64, span: f64| {
        let f = ((v - lo) / span * side).floor();
        if f.is_nan() || f < 0.0 {
            0
        } else if f >= side {
            max
        } else {
            f as u32
        }
    };
    (scale(lon, -180.0, 360.0), scale(lat, -90.0, 180.0))
}

/// Interleaves the low [`GRID_BITS`] bits of `x` and `y` (y's bit above x's).
fn morton(x: u32, y: u32) -> u64 {
    fn spread(v: u32) -> u64 {
        let mut v = u64::from(v) & ((1 << GRID_BITS) - 1);
        v = (v | (v << 16)) & 0x0000_FFFF_0000_FFFF;
        v = (v | (v << 8)) & 0x00FF_00FF_00FF_00FF;
        v = (v | (v << 4)) & 0x0F0F_0F0F_0F0F_0F0F;
        v = (v | (v << 2)) & 0x3333_3333_3333_3333;
        v = (v | (v << 1)) & 0x5555_5555_5555_5555;
        v
    }
    spread(x) | (spread(y) << 1)
}

fn key(lat: f64, lon: f64, slot: u32) -> u64 {
    let (x, y) = cell(lat, lon);
    (morton(x, y) << SLOT_BITS) | u64::from(slot & (MAX_SLOTS - 1))
}

fn slot_of(key: u64) -> u32 {
    (key & u64::from(MAX_SLOTS - 1)) as u32
}

/// A quadtree node: level `level` has 2^level × 2^level nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Node {
    level: u32,
    x: u32,
    y: u32,
}

impl Node {
    const ROOT: Node = Node {
        level: 0,
        x: 0,
        y: 0,
    };

    /// The node's keys: `lo..=hi`.
    fn keys(self) -> (u64, u64) {
        let shift = GRID_BITS - self.level;
        let base = morton(self.x << shift, self.y << shift) << SLOT_BITS;
        let bits = 2 * shift + SLOT_BITS;
        let last = if bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        (base, base + last)
    }

    /// (lat0, lat1, lon0, lon1) in degrees.
    fn rect(self) -> (f64, f64, f64, f64) {
        let n = f64::from(1u32 << self.level);
        let (w, h) = (360.0 / n, 180.0 / n);
        let lon0 = -180.0 + f64::from(self.x) * w;
        let lat0 = -90.0 + f64::from(self.y) * h;
        (lat0, lat0 + h, lon0, lon0 + w)
    }

    fn children(self) -> [Node; 4] {
        let (l, x, y) = (self.level + 1, self.x * 2, self.y * 2);
        [
            Node { level: l, x, y },
            Node {
                level: l,
                x: x + 1,
                y,
            },
            Node {
                level: l,
                x,
                y: y + 1,
            },
            Node {
                level: l,
                x: x + 1,
                y: y + 1,
            },
        ]
    }
}

/// A heap entry: smallest distance first; at equal distance nodes before points (a node may
/// still hold a point at that distance), points by slot (the caller orders ties by id).
#[derive(Debug, Clone, Copy)]
struct Entry {
    dist: f64,
    item: Item,
}

#[derive(Debug, Clone, Copy)]
enum Item {
    Node(Node),
    Point(u32),
}

impl Entry {
    fn rank(&self) -> (u8, u32) {
        match self.item {
            Item::Node(_) => (0, 0),
            Item::Point(s) => (1, s),
        }
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap.
        other
            .dist
            .total_cmp(&self.dist)
            .then_with(|| other.rank().cmp(&self.rank()))
    }
}

/// A found point: its slot and distance in metres.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Found {
    /// The store slot.
    pub slot: u32,
    /// Its distance from the query point, in metres.
    pub distance_m: f64,
}

/// Fewest buffered changes that make [`NearIndex`] merge them into its sorted keys.
const MERGE_MIN: usize = 4096;
/// The buffered changes are merged when they reach 1/`MERGE_SHARE` of the sorted keys (or
/// [`MERGE_MIN`]): each merge moves every key once, so a change costs about `MERGE_SHARE`
/// key moves, and the buffers cost about 20 bytes a change (1/`MERGE_SHARE` of that a key).
const MERGE_SHARE: usize = 32;

/// The positions of the store's records, by slot.
///
/// The keys are one sorted `Vec<u64>` (8 bytes a client, against 15 to 19 for a `BTreeSet`,
/// whose nodes are a third to half empty) plus two small ordered sets of the changes since
/// the last merge: keys added (not in the vector) and keys removed (still in the vector).
/// A search reads the three together; when the changes reach a share of the keys they are
/// merged into the vector in one pass, in place.
#[derive(Debug, Default, Clone)]
pub struct NearIndex {
    /// Sorted, no duplicates.
    main: Vec<u64>,
    /// Keys held that are not in `main`.
    added: BTreeSet<u64>,
    /// Keys of `main` that are no longer held.
    removed: BTreeSet<u64>,
}

impl NearIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// An index of the given slots at their (`lat`, `lon`), built in one sort.
    pub fn from_points(points: impl IntoIterator<Item = (u32, f64, f64)>) -> Self {
        let mut main: Vec<u64> = points
            .into_iter()
            .filter(|&(slot, _, _)| slot < MAX_SLOTS)
            .map(|(slot, lat, lon)| key(lat, lon, slot))
            .collect();
        main.sort_unstable();
        main.dedup();
        Self {
            main,
            ..Self::default()
        }
    }

    /// Points indexed.
    pub fn len(&mut self) -> usize {
        self.main.len() + self.added.len() - self.removed.len()
    }

    /// Whether no point is indexed.
    pub fn is_empty(&mut self) -> bool {
        self.len() == 0
    }

    fn add(&mut self, key: u64) {
        // A key removed since the last merge is still in `main`: it is simply back.
        if !self.removed.remove(&key) {
            self.added.insert(key);
        }
        self.maybe_merge();
    }

    fn take(&mut self, key: u64) {
        if !self.added.remove(&key) {
            self.removed.insert(key);
        }
        self.maybe_merge();
    }

    fn maybe_merge(&mut self) {
        let changes = self.added.len() + self.removed.len();
        if changes >= MERGE_MIN.max(self.main.len() / MERGE_SHARE) {
            self.flush();
        }
    }

    /// Merges the buffered changes into the sorted keys (searches do not need it: they read
    /// the buffers too).
    pub fn flush(&mut self) {
        if !self.removed.is_empty() {
            let removed = std::mem::take(&mut self.removed);
            let mut gone = removed.iter().peekable();
            self.main.retain(|k| {
                while gone.next_if(|&&g| g < *k).is_some() {}
                gone.next_if(|&&g| g == *k).is_none()
            });
        }
        if !self.added.is_empty() {
            // Merge from the back, in place: the vector grows by the added keys and each
            // step puts the larger of the two tails at the end.
            let added = std::mem::take(&mut self.added);
            let old = self.main.len();
            self.main.resize(old + added.len(), 0);
            let (mut i, mut w) = (old, self.main.len());
            for &a in added.iter().rev() {
                while i > 0 && self.main[i - 1] > a {
                    i -= 1;
                    w -= 1;
                    self.main[w] = self.main[i];
                }
                w -= 1;
                self.main[w] = a;
            }
        }
    }

    /// The keys in `lo..=hi`, in no particular order.
    fn range(&self, lo: u64, hi: u64) -> impl Iterator<Item = u64> + '_ {
        let a = self.main.partition_point(|&k| k < lo);
        let b = a + self.main[a..].partition_point(|&k| k <= hi);
        let removed = &self.removed;
        self.main[a..b]
            .iter()
            .copied()
            .filter(move |k| removed.is_empty() || !removed.contains(k))
            .chain(self.added.range(lo..=hi).copied())
    }

    /// Indexes slot `slot` at (`lat`, `lon`) (slots at or above [`MAX_SLOTS`] are not held).
    pub fn insert(&mut self, slot: u32, lat: f64, lon: f64) {
        if slot < MAX_SLOTS {
            self.add(key(lat, lon, slot));
        }
    }

    /// Removes slot `slot`, indexed at (`lat`, `lon`).
    pub fn remove(&mut self, slot: u32, lat: f64, lon: f64) {
        if slot < MAX_SLOTS {
            self.take(key(lat, lon, slot));
        }
    }

    /// Moves slot `slot` from one position to another.
    pub fn relocate(&mut self, slot: u32, from: (f64, f64), to: (f64, f64)) {
        let (old, new) = (key(from.0, from.1, slot), key(to.0, to.1, slot));
        if old != new && slot < MAX_SLOTS {
            self.take(old);
            self.add(new);
        }
    }

    /// The indexed points within `radius_m` of (`lat`, `lon`), nearest first, at least the
    /// `max` nearest of them (more only when points beyond the `max`th are at exactly its
    /// distance, so the caller can order ties), skipping slots `skip` says to.
    /// `position(slot)` gives a slot's exact position.
    pub fn nearest(
        &self,
        lat: f64,
        lon: f64,
        radius_m: f64,
        max: usize,
        position: impl Fn(u32) -> (f64, f64),
        skip: impl Fn(u32) -> bool,
    ) -> Vec<Found> {
        let mut out: Vec<Found> = Vec::new();
        if max == 0 || !(lat.is_finite() && lon.is_finite() && radius_m >= 0.0) {
            return out;
        }
        let mut heap = BinaryHeap::new();
        heap.push(Entry {
            dist: 0.0,
            item: Item::Node(Node::ROOT),
        });
        let mut enough_at: Option<f64> = None;
        while let Some(e) = heap.pop() {
            if enough_at.is_some_and(|d| e.dist > d) {
                break;
            }
            match e.item {
                Item::Point(slot) => {
                    out.push(Found {
                        slot,
                        distance_m: e.dist,
                    });
                    if out.len() == max {
                        enough_at = Some(e.dist);
                    }
                }
                Item::Node(node) => {
                    let (lo, hi) = node.keys();
                    let mut keys = self.range(lo, hi);
                    let first: Vec<u64> = keys.by_ref().take(LEAF_KEYS + 1).collect();
                    if first.is_empty() {
                        continue;
                    }
                    if first.len() <= LEAF_KEYS || node.level == GRID_BITS {
                        for k in first.into_iter().chain(keys) {
                            let slot = slot_of(k);
                            if skip(slot) {
                                continue;
                            }
                            let (plat, plon) = position(slot);
                            let dist = sphere::distance_m(lat, lon, plat, plon);
                            if dist <= radius_m {
                                heap.push(Entry {
                                    dist,
                                    item: Item::Point(slot),
                                });
                            }
                        }
                    } else {
                        for child in node.children() {
                            let (lat0, lat1, lon0, lon1) = child.rect();
                            let bound =
                                sphere::rect_lower_bound_m(lat, lon, lat0, lat1, lon0, lon1);
                            if bound <= radius_m {
                                heap.push(Entry {
                                    dist: bound,
                                    item: Item::Node(child),
                                });
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_cover_the_globe_and_clamp_the_edges() {
        assert_eq!(cell(-90.0, -180.0), (0, 0));
        assert_eq!(cell(90.0, 180.0), ((1 << 18) - 1, (1 << 18) - 1));
        assert_eq!(cell(f64::NAN, 0.0).1, 0);
        assert_eq!(morton(1, 0), 1);
        assert_eq!(morton(0, 1), 2);
        assert_eq!(morton(3, 3), 15);
    }

    #[test]
    fn a_node_holds_exactly_the_keys_of_its_cells() {
        let n = Node {
            level: 5,
            x: 7,
            y: 20,
        };
        let (lo, hi) = n.keys();
        let (lat0, lat1, lon0, lon1) = n.rect();
        let inside = key((lat0 + lat1) / 2.0, (lon0 + lon1) / 2.0, 3);
        assert!((lo..=hi).contains(&inside));
        let outside = key(lat1 + 0.01, lon0 + 0.001, 3);
        assert!(!(lo..=hi).contains(&outside));
        for c in n.children() {
            let (clo, chi) = c.keys();
            assert!(lo <= clo && chi <= hi);
        }
    }

    #[test]
    fn merged_and_buffered_keys_read_alike() {
        // A model set against the index through inserts, removals and re-inserts across
        // several merges.
        let mut idx = NearIndex::new();
        let mut model = BTreeSet::new();
        let mut x = 12345u64;
        for step in 0..40_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let slot = (x % 3000) as u32;
            let (lat, lon) = (((x >> 20) % 100) as f64 * 0.01, 0.5);
            let k = key(lat, lon, slot);
            let held = model.iter().copied().find(|&m| slot_of(m) == slot);
            match held {
                Some(old) if step % 3 == 0 => {
                    idx.take(old);
                    model.remove(&old);
                }
                Some(old) => {
                    if old != k {
                        idx.take(old);
                        idx.add(k);
                        model.remove(&old);
                        model.insert(k);
                    }
                }
                None => {
                    idx.add(k);
                    model.insert(k);
                }
            }
            if step % 5003 == 0 {
                idx.flush();
            }
            if step % 997 == 0 {
                let mut got: Vec<u64> = idx.range(0, u64::MAX).collect();
                got.sort_unstable();
                assert_eq!(got, model.iter().copied().collect::<Vec<_>>());
            }
        }
        assert_eq!(idx.len(), model.len());
        idx.flush();
        assert_eq!(idx.main, model.iter().copied().collect::<Vec<_>>());
        assert!(idx.added.is_empty() && idx.removed.is_empty());
    }
}
