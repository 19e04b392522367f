//! The geofence index: circles on the sphere, found by the points they contain.
//!
//! A fence is a circle (centre and radius in metres, great-circle distance). The index answers
//! "which fences contain this point" at a cost that does not grow with the number of fences
//! elsewhere: each fence is filed under the few grid cells its bounding box covers, on the one
//! level of a multi-level grid whose cells are about its size. A lookup visits, on every level
//! that holds a fence, the single cell containing the point, and tests the fences filed there
//! exactly. The grid at level `k` splits latitude and longitude into `2^k` equal bands each.
//!
//! The bounding box is that of the spherical cap, widened by a margin far above the distance
//! function's rounding error, so a point the exact test finds inside is never missed.

use std::collections::HashMap;

use foldhash::fast::FixedState;

use crate::near::sphere::{distance_m, EARTH_RADIUS_M};

/// Levels of the grid (level `k` has `2^k × 2^k` cells).
const LEVELS: usize = 22;
/// A fence is filed on the finest level at which its bounding box covers at most this many
/// cells (more cells per fence, fewer fences per cell to test: 16 measured best of 4, 16, 64
/// with 10,000 fences of 1 km in a city, `cargo bench -p herd-core --bench fences`).
const MAX_CELLS: u64 = 16;
/// Degrees added around a bounding box (about 1 cm), far above the rounding error of the
/// distance test and far below any cell.
const MARGIN_DEG: f64 = 1e-7;

/// A handle to a fence in the index (its slot; reused once the fence is removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FenceSlot(u32);

/// A circle: centre in degrees, radius in metres.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Circle {
    /// Latitude of the centre, degrees.
    pub lat: f64,
    /// Longitude of the centre, degrees.
    pub lon: f64,
    /// Radius, metres (great-circle).
    pub radius_m: f64,
}

impl Circle {
    /// Whether `(lat, lon)` is inside (distance at most the radius).
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        distance_m(self.lat, self.lon, lat, lon) <= self.radius_m
    }
}

/// The unit vector of a point given in degrees.
fn unit(lat: f64, lon: f64) -> [f64; 3] {
    let (p, l) = (lat.to_radians(), lon.to_radians());
    [p.cos() * l.cos(), p.cos() * l.sin(), p.sin()]
}

/// How far from a fence's threshold a dot product must be for the quick test to decide: far
/// above the rounding of both the dot product (a few 1e-16) and the haversine distance that
/// defines inside, which is computed exactly whenever the quick test is that close.
const DOT_BAND: f64 = 1e-13;

/// A fence as a cell lists it: enough for the quick test without touching its entry.
#[derive(Debug, Clone, Copy)]
struct Filed {
    slot: u32,
    /// The centre's unit vector.
    centre: [f64; 3],
    /// Dot products at or above this are inside, at or below `outside` outside (the cosine
    /// of the angular radius, with [`DOT_BAND`] either side); in between, exact.
    inside: f64,
    outside: f64,
}

impl Filed {
    fn new(slot: u32, c: &Circle) -> Self {
        let cos_r = (c.radius_m / EARTH_RADIUS_M).cos();
        Self {
            slot,
            centre: unit(c.lat, c.lon),
            inside: cos_r + DOT_BAND,
            outside: cos_r - DOT_BAND,
        }
    }
}

#[derive(Debug)]
struct Entry<K> {
    key: K,
    circle: Circle,
    level: u8,
    cells: Vec<u64>,
}

/// Circles with a key each, found by a point they contain.
#[derive(Debug)]
pub struct FenceIndex<K> {
    entries: Vec<Option<Entry<K>>>,
    free: Vec<u32>,
    /// Per level: cell key → the fences filed there.
    levels: Vec<HashMap<u64, Vec<Filed>, FixedState>>,
    len: usize,
}

impl<K> Default for FenceIndex<K> {
    fn default() -> Self {
        Self::new()
    }
}

/// The band of `v` in `[lo, lo + span)` split into `n` bands, clamped to the last band.
fn band(v: f64, lo: f64, span: f64, n: u64) -> u64 {
    let b = ((v - lo) / span * n as f64).floor();
    if b <= 0.0 {
        0
    } else {
        (b as u64).min(n - 1)
    }
}

fn cell_key(lat_band: u64, lon_band: u64) -> u64 {
    (lat_band << 32) | lon_band
}

/// The cell of `(lat, lon)` at `level`.
fn cell_of(level: usize, lat: f64, lon: f64) -> u64 {
    let n = 1u64 << level;
    cell_key(band(lat, -90.0, 180.0, n), band(lon, -180.0, 360.0, n))
}

/// The bounding box of a circle: latitude range, and longitude ranges (one, or two when it
/// crosses the antimeridian; the whole circle of longitude when it holds a pole).
struct BBox {
    lat: (f64, f64),
    lons: Vec<(f64, f64)>,
}

fn bbox(c: &Circle) -> BBox {
    let delta = c.radius_m / EARTH_RADIUS_M;
    let dlat = delta.to_degrees() + MARGIN_DEG;
    let lat = ((c.lat - dlat).max(-90.0), (c.lat + dlat).min(90.0));
    let whole = vec![(-180.0, 180.0)];
    if c.lat + dlat >= 90.0 || c.lat - dlat <= -90.0 || delta >= std::f64::consts::FRAC_PI_2 {
        return BBox { lat, lons: whole };
    }
    // The widest longitude of a cap not holding a pole: asin(sin δ / cos φ).
    let s = delta.sin() / c.lat.to_radians().cos();
    if s >= 1.0 || s.is_nan() {
        return BBox { lat, lons: whole };
    }
    let dlon = s.asin().to_degrees() * (1.0 + 1e-9) + MARGIN_DEG;
    if dlon >= 180.0 {
        return BBox { lat, lons: whole };
    }
    let (lo, hi) = (c.lon - dlon, c.lon + dlon);
    let lons = if lo < -180.0 {
        vec![(lo + 360.0, 180.0), (-180.0, hi)]
    } else if hi > 180.0 {
        vec![(lo, 180.0), (-180.0, hi - 360.0)]
    } else {
        vec![(lo, hi)]
    };
    BBox { lat, lons }
}

/// The cells of `level` that `b` covers.
fn cells(level: usize, b: &BBox) -> Vec<u64> {
    let n = 1u64 << level;
    let (la0, la1) = (
        band(b.lat.0, -90.0, 180.0, n),
        band(b.lat.1, -90.0, 180.0, n),
    );
    let mut out = Vec::new();
    for &(lo0, lo1) in &b.lons {
        let (b0, b1) = (band(lo0, -180.0, 360.0, n), band(lo1, -180.0, 360.0, n));
        for la in la0..=la1 {
            for lo in b0..=b1 {
                out.push(cell_key(la, lo));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// How many cells of `level` `b` covers (without listing them).
fn cell_count(level: usize, b: &BBox) -> u64 {
    let n = 1u64 << level;
    let lat = band(b.lat.1, -90.0, 180.0, n) - band(b.lat.0, -90.0, 180.0, n) + 1;
    let lon: u64 = b
        .lons
        .iter()
        .map(|&(lo0, lo1)| band(lo1, -180.0, 360.0, n) - band(lo0, -180.0, 360.0, n) + 1)
        .sum();
    lat * lon.min(n)
}

impl<K> FenceIndex<K> {
    /// An empty index.
    pub fn new() -> Self {
        Self {
            entries: Vec::new(),
            free: Vec::new(),
            levels: (0..LEVELS)
                .map(|_| HashMap::with_hasher(FixedState::with_seed(0x6665_6e63)))
                .collect(),
            len: 0,
        }
    }

    /// How many fences it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Files `circle` under `key`; returns its slot.
    pub fn insert(&mut self, key: K, circle: Circle) -> FenceSlot {
        let b = bbox(&circle);
        let level = (0..LEVELS)
            .rev()
            .find(|&l| cell_count(l, &b) <= MAX_CELLS)
            .unwrap_or(0);
        let cells = cells(level, &b);
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.entries.push(None);
                u32::try_from(self.entries.len() - 1).expect("fewer than 2^32 fences")
            }
        };
        for &c in &cells {
            self.levels[level]
                .entry(c)
                .or_default()
                .push(Filed::new(slot, &circle));
        }
        self.entries[slot as usize] = Some(Entry {
            key,
            circle,
            level: level as u8,
            cells,
        });
        self.len += 1;
        FenceSlot(slot)
    }

    /// Removes the fence in `slot`; returns its key (`None` if the slot is empty).
    pub fn remove(&mut self, slot: FenceSlot) -> Option<K> {
        let entry = self.entries.get_mut(slot.0 as usize)?.take()?;
        let level = &mut self.levels[usize::from(entry.level)];
        for c in &entry.cells {
            if let Some(v) = level.get_mut(c) {
                v.retain(|f| f.slot != slot.0);
                if v.is_empty() {
                    level.remove(c);
                }
            }
        }
        self.free.push(slot.0);
        self.len -= 1;
        Some(entry.key)
    }

    /// The key and circle of the fence in `slot`.
    pub fn get(&self, slot: FenceSlot) -> Option<(&K, &Circle)> {
        self.entries
            .get(slot.0 as usize)?
            .as_ref()
            .map(|e| (&e.key, &e.circle))
    }

    /// Appends to `out` the slots of the fences containing `(lat, lon)`, in slot order.
    pub fn containing(&self, lat: f64, lon: f64, out: &mut Vec<FenceSlot>) {
        let start = out.len();
        if self.len == 0 {
            return;
        }
        let point = Point::new(lat, lon);
        for (level, cells) in self.levels.iter().enumerate() {
            if cells.is_empty() {
                continue;
            }
            let Some(filed) = cells.get(&cell_of(level, lat, lon)) else {
                continue;
            };
            for f in filed {
                if self.inside(f, &point) {
                    out.push(FenceSlot(f.slot));
                }
            }
        }
        // A fence is filed on one level, and once per cell, so it appears at most once.
        out[start..].sort_unstable();
    }

    /// The fences a point moving from `from` to `to` leaves (appended to `left`) and enters
    /// (to `entered`), each in slot order: what [`FenceIndex::containing`] of both would
    /// differ by, with one pass over a cell that holds both points.
    pub fn crossings(
        &self,
        from: (f64, f64),
        to: (f64, f64),
        left: &mut Vec<FenceSlot>,
        entered: &mut Vec<FenceSlot>,
    ) {
        let (l0, e0) = (left.len(), entered.len());
        if self.len == 0 || from == to {
            return;
        }
        let (a, b) = (Point::new(from.0, from.1), Point::new(to.0, to.1));
        for (level, cells) in self.levels.iter().enumerate() {
            if cells.is_empty() {
                continue;
            }
            let (ca, cb) = (cell_of(level, a.lat, a.lon), cell_of(level, b.lat, b.lon));
            if ca == cb {
                for f in cells.get(&ca).map_or(&[][..], Vec::as_slice) {
                    match (self.inside(f, &a), self.inside(f, &b)) {
                        (true, false) => left.push(FenceSlot(f.slot)),
                        (false, true) => entered.push(FenceSlot(f.slot)),
                        _ => {}
                    }
                }
                continue;
            }
            // Different cells: each point's fences, tested against the other point too (a
            // fence that holds a point is filed in that point's cell, so none is missed).
            let (fa, fb) = (
                cells.get(&ca).map_or(&[][..], Vec::as_slice),
                cells.get(&cb).map_or(&[][..], Vec::as_slice),
            );
            for f in fa {
                if self.inside(f, &a) && !self.inside(f, &b) {
                    left.push(FenceSlot(f.slot));
                }
            }
            for f in fb {
                if self.inside(f, &b) && !self.inside(f, &a) {
                    entered.push(FenceSlot(f.slot));
                }
            }
        }
        left[l0..].sort_unstable();
        entered[e0..].sort_unstable();
    }

    /// The quick test of filed fence `f` against `p`, exact when it is too close to call.
    fn inside(&self, f: &Filed, p: &Point) -> bool {
        let dot = f.centre[0] * p.v[0] + f.centre[1] * p.v[1] + f.centre[2] * p.v[2];
        if dot >= f.inside {
            true
        } else if dot <= f.outside {
            false
        } else {
            self.entries[f.slot as usize]
                .as_ref()
                .is_some_and(|e| e.circle.contains(p.lat, p.lon))
        }
    }
}

/// A point with its unit vector.
struct Point {
    lat: f64,
    lon: f64,
    v: [f64; 3],
}

impl Point {
    fn new(lat: f64, lon: f64) -> Self {
        Self {
            lat,
            lon,
            v: unit(lat, lon),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn brute(fences: &[(u32, Circle)], lat: f64, lon: f64) -> Vec<u32> {
        let mut v: Vec<u32> = fences
            .iter()
            .filter(|(_, c)| c.contains(lat, lon))
            .map(|(k, _)| *k)
            .collect();
        v.sort_unstable();
        v
    }

    fn found(index: &FenceIndex<u32>, lat: f64, lon: f64) -> Vec<u32> {
        let mut slots = Vec::new();
        index.containing(lat, lon, &mut slots);
        let mut v: Vec<u32> = slots.iter().map(|&s| *index.get(s).unwrap().0).collect();
        v.sort_unstable();
        v
    }

    /// Points near a fence's edge (where a bounding box that is too tight would miss them),
    /// near the poles and the antimeridian.
    fn point() -> impl Strategy<Value = (f64, f64)> {
        prop_oneof![
            (-90.0..=90.0f64, -180.0..=180.0f64),
            (89.0..=90.0f64, -180.0..=180.0f64),
            (
                -1.0..=1.0f64,
                prop_oneof![179.0..=180.0f64, -180.0..=-179.0f64]
            ),
            (34.0..34.2f64, -118.5..-118.3f64),
        ]
    }

    fn circle() -> impl Strategy<Value = Circle> {
        (point(), prop_oneof![1.0..100.0f64, 100.0..50_000.0f64]).prop_map(|((lat, lon), r)| {
            Circle {
                lat,
                lon,
                radius_m: r,
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn finds_exactly_the_fences_a_full_scan_finds(
            fences in prop::collection::vec(circle(), 1..40),
            points in prop::collection::vec(point(), 1..40),
            remove in prop::collection::vec(any::<bool>(), 40),
        ) {
            let mut index = FenceIndex::new();
            let mut held = Vec::new();
            let mut slots = Vec::new();
            for (i, c) in fences.iter().enumerate() {
                slots.push(index.insert(i as u32, *c));
                held.push((i as u32, *c));
            }
            for (i, &r) in remove.iter().enumerate().take(fences.len()) {
                if r {
                    prop_assert_eq!(index.remove(slots[i]), Some(i as u32));
                    held.retain(|(k, _)| *k != i as u32);
                }
            }
            prop_assert_eq!(index.len(), held.len());
            // Every point, and points on the edge of every fence (just inside and outside).
            let mut probes = points.clone();
            for c in &fences {
                let d = (c.radius_m / EARTH_RADIUS_M).to_degrees();
                for f in [0.999_999, 1.0 - 1e-11, 1.0, 1.0 + 1e-11, 1.000_001] {
                    probes.push(((c.lat + d * f).min(90.0), c.lon));
                    probes.push(((c.lat - d * f).max(-90.0), c.lon));
                }
            }
            for (lat, lon) in &probes {
                prop_assert_eq!(found(&index, *lat, *lon), brute(&held, *lat, *lon));
            }
            // Moving between any two probes: what is left and entered, as the scans differ.
            for pair in probes.windows(2) {
                let (from, to) = (pair[0], pair[1]);
                let (mut left, mut entered) = (Vec::new(), Vec::new());
                index.crossings(from, to, &mut left, &mut entered);
                let keys = |v: &[FenceSlot]| v.iter().map(|&s| *index.get(s).unwrap().0).collect::<Vec<u32>>();
                let (was, is) = (brute(&held, from.0, from.1), brute(&held, to.0, to.1));
                let want_left: Vec<u32> = was.iter().filter(|k| !is.contains(k)).copied().collect();
                let want_entered: Vec<u32> = is.iter().filter(|k| !was.contains(k)).copied().collect();
                let (mut got_left, mut got_entered) = (keys(&left), keys(&entered));
                got_left.sort_unstable();
                got_entered.sort_unstable();
                prop_assert_eq!(got_left, want_left);
                prop_assert_eq!(got_entered, want_entered);
            }
        }
    }

    #[test]
    fn an_edge_point_at_the_widest_longitude_is_found() {
        // The widest point of a cap lies east of the centre, at a latitude nearer the pole.
        let c = Circle {
            lat: 60.0,
            lon: 179.99,
            radius_m: 20_000.0,
        };
        let mut index = FenceIndex::new();
        index.insert(1u32, c);
        let delta = c.radius_m / EARTH_RADIUS_M;
        let dlon = (delta.sin() / c.lat.to_radians().cos()).asin().to_degrees();
        let lat_at = (c.lat.to_radians().sin() / delta.cos()).asin().to_degrees();
        for f in [0.999_99, 0.999_999_9] {
            let lon = c.lon + dlon * f - 360.0;
            let inside = c.contains(lat_at, lon);
            assert!(inside, "probe should be inside");
            assert_eq!(found(&index, lat_at, lon), vec![1]);
        }
    }

    #[test]
    fn slots_are_reused_and_removal_empties_the_cells() {
        let mut index = FenceIndex::new();
        let c = Circle {
            lat: 10.0,
            lon: 10.0,
            radius_m: 1000.0,
        };
        let a = index.insert(1u32, c);
        assert_eq!(index.remove(a), Some(1));
        assert_eq!(index.remove(a), None);
        assert!(index.is_empty());
        assert!(index.levels.iter().all(HashMap::is_empty));
        let b = index.insert(2u32, c);
        assert_eq!(a, b);
        assert_eq!(found(&index, 10.0, 10.0), vec![2]);
    }
}
