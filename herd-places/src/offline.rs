//! The offline backend: GeoNames populated places embedded in the binary.
//!
//! `data/cities500.bin.gz` (made by `data/convert.py`; data CC BY 4.0, GeoNames) is one zlib
//! stream of column arrays. At start it is inflated and indexed on a 0.5° latitude/longitude
//! grid: a query visits only the cells its circle can touch (every longitude near a pole,
//! wrapping around at ±180°), measures great-circle distances (by chord length on the unit
//! sphere), and answers the places within the radius, nearest first, in Google's legacy
//! Nearby Search shape.

use std::io::Read;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use flate2::read::ZlibDecoder;
use herd_core::{LookupError, PlacesLookup, PlacesQuery};
use serde_json::{Map, Value};

use crate::legacy::legacy_answer;
use crate::PlacesError;

/// The embedded gazetteer, as `data/convert.py` wrote it.
pub static EMBEDDED_GAZETTEER: &[u8] = include_bytes!("../data/cities500.bin.gz");

/// Mean Earth radius in kilometres (IUGG), for great-circle distances.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

const MAGIC: &[u8; 4] = b"HGAZ";
const VERSION: u32 = 1;
/// Grid cell size in degrees (about 56 km of latitude): a query visits a few cells. A
/// finer grid (0.25°) measured no faster per query and slower to build.
const CELL_DEG: f64 = 0.5;
const ROWS: usize = 360;
const COLS: usize = 720;
/// Most places a payload may declare, so a corrupt count cannot ask for huge allocations.
const MAX_PLACES: usize = 10_000_000;
/// Coordinates are stored in 1e-5 degrees.
const COORD_SCALE: f64 = 1e5;

/// One indexed place, in grid-cell order.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Unit vector of the place on the sphere: chord lengths need no trigonometry.
    xyz: [f64; 3],
    lat: f64,
    lon: f64,
    place: u32,
}

/// A place within the radius of a query.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    /// GeoNames id.
    pub id: u32,
    /// Place name.
    pub name: String,
    /// First-level administrative area (when known) and country.
    pub vicinity: String,
    /// Latitude in degrees.
    pub lat: f64,
    /// Longitude in degrees.
    pub lon: f64,
    /// Population as GeoNames records it.
    pub population: u32,
    /// Great-circle distance from the query point, in kilometres.
    pub distance_km: f64,
}

/// The gazetteer, decoded and indexed; a [`PlacesLookup`] that needs no network.
pub struct OfflinePlaces {
    ids: Vec<u32>,
    population: Vec<u32>,
    vicinity: Vec<u16>,
    vicinities: Vec<String>,
    names: String,
    name_ends: Vec<u32>,
    /// `cell_start[c]..cell_start[c + 1]` indexes `entries` of cell `c` (row-major).
    cell_start: Vec<u32>,
    entries: Vec<Entry>,
}

impl std::fmt::Debug for OfflinePlaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfflinePlaces")
            .field("places", &self.ids.len())
            .finish_non_exhaustive()
    }
}

impl OfflinePlaces {
    /// Decodes and indexes the embedded gazetteer.
    ///
    /// # Errors
    /// [`PlacesError::Data`] if the embedded file is corrupt (a build problem).
    pub fn load() -> Result<Self, PlacesError> {
        Self::from_compressed(EMBEDDED_GAZETTEER)
    }

    /// The process-wide instance, decoded on first use and shared afterwards.
    ///
    /// # Errors
    /// [`PlacesError::Data`] if the embedded file is corrupt.
    pub fn shared() -> Result<Arc<Self>, PlacesError> {
        static SHARED: OnceLock<Arc<OfflinePlaces>> = OnceLock::new();
        if let Some(places) = SHARED.get() {
            return Ok(Arc::clone(places));
        }
        let loaded = Arc::new(Self::load()?);
        Ok(Arc::clone(SHARED.get_or_init(|| loaded)))
    }

    /// Decodes and indexes a gazetteer in the format of `data/convert.py`.
    ///
    /// # Errors
    /// [`PlacesError::Data`] when the bytes are not such a gazetteer.
    pub fn from_compressed(bytes: &[u8]) -> Result<Self, PlacesError> {
        let mut raw = Vec::with_capacity(bytes.len().saturating_mul(2));
        ZlibDecoder::new(bytes)
            .read_to_end(&mut raw)
            .map_err(|e| PlacesError::Data(format!("inflate: {e}")))?;
        Self::from_raw(&raw)
    }

    fn from_raw(raw: &[u8]) -> Result<Self, PlacesError> {
        let mut r = Reader { buf: raw, pos: 0 };
        if r.take(4)? != MAGIC || r.u32()? != VERSION {
            return Err(PlacesError::Data(
                "not a herd gazetteer (magic or version)".into(),
            ));
        }
        let n = r.count()?;
        let vicinity_count = r.count()?;
        let mut vicinities = Vec::with_capacity(vicinity_count.min(1 << 16));
        for _ in 0..vicinity_count {
            let len = usize::from(r.u16()?);
            vicinities.push(utf8(r.take(len)?)?.to_owned());
        }
        let ids = r.column(n, 4, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))?;
        let lats = r.column(n, 4, |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))?;
        let lons = r.column(n, 4, |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))?;
        let population = r.column(n, 4, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))?;
        let vicinity = r.column(n, 2, |b| u16::from_le_bytes([b[0], b[1]]))?;
        let name_lens = r.column(n, 2, |b| u16::from_le_bytes([b[0], b[1]]))?;
        if vicinity.iter().any(|&v| usize::from(v) >= vicinities.len()) {
            return Err(PlacesError::Data("vicinity index out of range".into()));
        }
        let (names, name_ends) = names(&mut r, &name_lens)?;
        if r.pos != raw.len() {
            return Err(PlacesError::Data("trailing bytes after the names".into()));
        }
        let (cell_start, entries) = index(&lats, &lons)?;
        Ok(Self {
            ids,
            population,
            vicinity,
            vicinities,
            names,
            name_ends,
            cell_start,
            entries,
        })
    }

    /// How many places the gazetteer holds.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the gazetteer is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The places thinned to at most one per `cell_deg` × `cell_deg` cell of latitude and
    /// longitude, as `[lat, lon]`: enough points to trace the continents on a small world
    /// map (the admin status page draws them). A `cell_deg` that is not a positive number
    /// counts as 1.
    pub fn outline(&self, cell_deg: f64) -> Vec<[f32; 2]> {
        let cell = if cell_deg.is_finite() && cell_deg > 0.0 {
            cell_deg
        } else {
            1.0
        };
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for e in &self.entries {
            let key = (
                ((e.lat + 90.0) / cell).floor() as i64,
                ((e.lon + 180.0) / cell).floor() as i64,
            );
            if seen.insert(key) {
                out.push([e.lat as f32, e.lon as f32]);
            }
        }
        out
    }

    /// The places within `radius_km` of (`lat`, `lon`), nearest first (ties by id), at most
    /// `max` of them. Non-finite coordinates find nothing.
    pub fn search(&self, lat: f64, lon: f64, radius_km: f64, max: usize) -> Vec<Hit> {
        if !(lat.is_finite() && lon.is_finite() && radius_km.is_finite()) || radius_km < 0.0 {
            return Vec::new();
        }
        let lat = lat.clamp(-90.0, 90.0);
        let probe = Probe::new(lat, lon, radius_km);
        // (distance, index into `entries`)
        let mut found: Vec<(f64, usize)> = Vec::new();
        for cell in cells(lat, lon, radius_km) {
            let (start, end) = (
                self.cell_start[cell] as usize,
                self.cell_start[cell + 1] as usize,
            );
            for (i, e) in self.entries[start..end].iter().enumerate() {
                if let Some(d) = probe.distance_within(e) {
                    found.push((d, start + i));
                }
            }
        }
        self.finish(found, max)
    }

    /// The same answer as [`OfflinePlaces::search`] by scanning every place, without the
    /// grid: the reference the index is tested against.
    pub fn search_exhaustive(&self, lat: f64, lon: f64, radius_km: f64, max: usize) -> Vec<Hit> {
        if !(lat.is_finite() && lon.is_finite() && radius_km.is_finite()) || radius_km < 0.0 {
            return Vec::new();
        }
        let probe = Probe::new(lat.clamp(-90.0, 90.0), lon, radius_km);
        let found = (self.entries.iter().enumerate())
            .filter_map(|(i, e)| probe.distance_within(e).map(|d| (d, i)))
            .collect();
        self.finish(found, max)
    }

    /// Sorts candidates nearest first (ties by id) and keeps `max` of them.
    fn finish(&self, mut found: Vec<(f64, usize)>, max: usize) -> Vec<Hit> {
        let id_of = |i: usize| self.ids[self.entries[i].place as usize];
        found.sort_unstable_by(|a, b| {
            a.0.total_cmp(&b.0)
                .then_with(|| id_of(a.1).cmp(&id_of(b.1)))
        });
        found.truncate(max);
        found
            .into_iter()
            .map(|(d, i)| self.hit(&self.entries[i], d))
            .collect()
    }

    /// The legacy-shape answer to `q`.
    pub fn answer(&self, q: &PlacesQuery) -> Value {
        let hits = self.search(q.lat, q.lon, q.radius.km(), q.max_items.get());
        legacy_answer(hits.iter().map(hit_json).collect())
    }

    fn name(&self, p: usize) -> &str {
        let start = if p == 0 {
            0
        } else {
            self.name_ends[p - 1] as usize
        };
        &self.names[start..self.name_ends[p] as usize]
    }

    fn hit(&self, e: &Entry, distance_km: f64) -> Hit {
        let p = e.place as usize;
        Hit {
            id: self.ids[p],
            name: self.name(p).to_owned(),
            vicinity: self.vicinities[usize::from(self.vicinity[p])].clone(),
            lat: e.lat,
            lon: e.lon,
            population: self.population[p],
            distance_km,
        }
    }
}

#[async_trait]
impl PlacesLookup for OfflinePlaces {
    async fn nearby(&self, q: &PlacesQuery) -> Result<Value, LookupError> {
        Ok(self.answer(q))
    }
}

fn hit_json(h: &Hit) -> Value {
    let mut location = Map::new();
    location.insert("lat".into(), Value::from(h.lat));
    location.insert("lng".into(), Value::from(h.lon));
    let mut geometry = Map::new();
    geometry.insert("location".into(), Value::Object(location));
    let mut out = Map::new();
    out.insert("geometry".into(), Value::Object(geometry));
    out.insert("name".into(), Value::from(h.name.as_str()));
    out.insert("place_id".into(), Value::from(h.id.to_string()));
    out.insert("population".into(), Value::from(h.population));
    out.insert("types".into(), serde_json::json!(["locality", "political"]));
    out.insert("vicinity".into(), Value::from(h.vicinity.as_str()));
    Value::Object(out)
}

fn unit_vector(lat: f64, lon: f64) -> [f64; 3] {
    let (phi, lambda) = (lat.to_radians(), lon.to_radians());
    [
        phi.cos() * lambda.cos(),
        phi.cos() * lambda.sin(),
        phi.sin(),
    ]
}

/// A query point and radius, ready to test places by chord length.
struct Probe {
    xyz: [f64; 3],
    radius_km: f64,
    /// Squared chord of the radius's angle; a place further away by chord is out.
    max_chord2: f64,
}

impl Probe {
    fn new(lat: f64, lon: f64, radius_km: f64) -> Self {
        let half_angle = (radius_km / EARTH_RADIUS_KM / 2.0).min(std::f64::consts::FRAC_PI_2);
        let chord = 2.0 * half_angle.sin();
        // A hair of slack so that rounding never drops a place exactly on the circle; the
        // exact distance check below decides.
        Self {
            xyz: unit_vector(lat, lon),
            radius_km,
            max_chord2: chord * chord * (1.0 + 1e-9) + 1e-15,
        }
    }

    /// The great-circle distance to `e` in km, if within the radius.
    fn distance_within(&self, e: &Entry) -> Option<f64> {
        let [dx, dy, dz] = [
            e.xyz[0] - self.xyz[0],
            e.xyz[1] - self.xyz[1],
            e.xyz[2] - self.xyz[2],
        ];
        let chord2 = dx * dx + dy * dy + dz * dz;
        if chord2 > self.max_chord2 {
            return None;
        }
        let d = 2.0 * EARTH_RADIUS_KM * (chord2.sqrt() / 2.0).min(1.0).asin();
        (d <= self.radius_km).then_some(d)
    }
}

fn row_of(lat: f64) -> usize {
    let r = ((lat + 90.0) / CELL_DEG).floor();
    // In range by the clamp; the cast of a small non-negative float is exact.
    r.clamp(0.0, (ROWS - 1) as f64) as usize
}

fn col_of(lon: f64) -> usize {
    let c = ((lon + 180.0) / CELL_DEG).floor() as i64;
    c.rem_euclid(COLS as i64) as usize
}

/// The grid cells a circle of `radius_km` around (`lat`, `lon`) can touch.
fn cells(lat: f64, lon: f64, radius_km: f64) -> impl Iterator<Item = usize> {
    let angle = radius_km / EARTH_RADIUS_KM; // radians
    let dlat = angle.to_degrees();
    let (south, north) = (lat - dlat, lat + dlat);
    let ratio = angle.sin() / lat.to_radians().cos();
    // A pole inside the circle, or a circle wider than its parallel, spans every longitude.
    let all_lons = north >= 90.0
        || south <= -90.0
        || ratio.is_nan()
        || ratio >= 1.0
        || angle >= std::f64::consts::FRAC_PI_2;
    let (first, span) = if all_lons {
        (0i64, COLS as i64)
    } else {
        let dlon = ratio.asin().to_degrees();
        let c0 = ((lon - dlon + 180.0) / CELL_DEG).floor() as i64;
        let c1 = ((lon + dlon + 180.0) / CELL_DEG).floor() as i64;
        (c0, (c1 - c0 + 1).min(COLS as i64))
    };
    let rows = row_of(south.max(-90.0))..=row_of(north.min(90.0));
    rows.flat_map(move |row| {
        (first..first + span).map(move |c| row * COLS + c.rem_euclid(COLS as i64) as usize)
    })
}

/// Sorts the places into grid cells (a counting sort) and returns the cell offsets.
fn index(lats: &[i32], lons: &[i32]) -> Result<(Vec<u32>, Vec<Entry>), PlacesError> {
    let mut coords = Vec::with_capacity(lats.len());
    for (&la, &lo) in lats.iter().zip(lons) {
        let (lat, lon) = (f64::from(la) / COORD_SCALE, f64::from(lo) / COORD_SCALE);
        if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
            return Err(PlacesError::Data(format!(
                "coordinate out of range: {lat}, {lon}"
            )));
        }
        coords.push((lat, lon, row_of(lat) * COLS + col_of(lon)));
    }
    let mut cell_start = vec![0u32; ROWS * COLS + 1];
    for &(_, _, cell) in &coords {
        cell_start[cell + 1] += 1;
    }
    for c in 0..ROWS * COLS {
        cell_start[c + 1] += cell_start[c];
    }
    let mut next: Vec<u32> = cell_start[..ROWS * COLS].to_vec();
    let blank = Entry {
        xyz: [0.0; 3],
        lat: 0.0,
        lon: 0.0,
        place: 0,
    };
    let mut entries = vec![blank; coords.len()];
    for (place, &(lat, lon, cell)) in coords.iter().enumerate() {
        let slot = &mut next[cell];
        let place =
            u32::try_from(place).map_err(|_| PlacesError::Data("too many places".into()))?;
        entries[*slot as usize] = Entry {
            lat,
            lon,
            xyz: unit_vector(lat, lon),
            place,
        };
        *slot += 1;
    }
    Ok((cell_start, entries))
}

fn names(r: &mut Reader<'_>, lens: &[u16]) -> Result<(String, Vec<u32>), PlacesError> {
    let total: usize = lens.iter().map(|&l| usize::from(l)).sum();
    let blob = utf8(r.take(total)?)?;
    let mut ends = Vec::with_capacity(lens.len());
    let mut end = 0usize;
    for &len in lens {
        end += usize::from(len);
        if !blob.is_char_boundary(end) {
            return Err(PlacesError::Data("name splits a UTF-8 character".into()));
        }
        ends.push(u32::try_from(end).map_err(|_| PlacesError::Data("names too long".into()))?);
    }
    Ok((blob.to_owned(), ends))
}

fn utf8(b: &[u8]) -> Result<&str, PlacesError> {
    std::str::from_utf8(b).map_err(|_| PlacesError::Data("text is not UTF-8".into()))
}

/// A bounds-checked little-endian reader over the inflated payload.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PlacesError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| PlacesError::Data("payload ends early".into()))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, PlacesError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, PlacesError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn count(&mut self) -> Result<usize, PlacesError> {
        let n = usize::try_from(self.u32()?)
            .map_err(|_| PlacesError::Data("count too large".into()))?;
        if n > MAX_PLACES {
            return Err(PlacesError::Data(format!("count {n} above {MAX_PLACES}")));
        }
        Ok(n)
    }

    fn column<T>(
        &mut self,
        n: usize,
        width: usize,
        f: impl Fn(&[u8]) -> T,
    ) -> Result<Vec<T>, PlacesError> {
        let bytes = self.take(n * width)?;
        Ok(bytes.chunks_exact(width).map(f).collect())
    }
}
