//! The nearby index: which clients are near a point, nearest first.
//!
//! Every held record's position is a key in one ordered set: the Morton code (bits of
//! latitude and longitude interleaved) of its cell in a 2^18 × 2^18 grid of the
//! longitude/latitude plane (cells of 0.00137° × 0.00069°, about 150 × 76 m at the equator),
//! followed by the record's slot in the store. A Morton prefix is a quadtree node, and the
//! keys of a node are one contiguous range of the set, so the set is an implicit quadtree
//! that costs 8 bytes per client and O(log n) per update, whatever the density.
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

/// The positions of the store's records, by slot.
#[derive(Debug, Default, Clone)]
pub struct NearIndex {
    keys: BTreeSet<u64>,
}

impl NearIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Points indexed.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no point is indexed.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Indexes slot `slot` at (`lat`, `lon`) (slots at or above [`MAX_SLOTS`] are not held).
    pub fn insert(&mut self, slot: u32, lat: f64, lon: f64) {
        if slot < MAX_SLOTS {
            self.keys.insert(key(lat, lon, slot));
        }
    }

    /// Removes slot `slot`, indexed at (`lat`, `lon`).
    pub fn remove(&mut self, slot: u32, lat: f64, lon: f64) {
        if slot < MAX_SLOTS {
            self.keys.remove(&key(lat, lon, slot));
        }
    }

    /// Moves slot `slot` from one position to another.
    pub fn relocate(&mut self, slot: u32, from: (f64, f64), to: (f64, f64)) {
        let (old, new) = (key(from.0, from.1, slot), key(to.0, to.1, slot));
        if old != new && slot < MAX_SLOTS {
            self.keys.remove(&old);
            self.keys.insert(new);
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
                    let mut keys = self.keys.range(lo..=hi).copied();
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
}
