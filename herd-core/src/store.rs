//! The location store: per client, only the newest record.
//!
//! Records are ordered by client time, then by the bytes of their AT line, a total order
//! that every server computes alike, so the herd settles on one record per client whatever
//! order updates arrive in. Every change gets the next number of this store's local log;
//! reconciliation sends a neighbour the records changed since the number it last saw.
//!
//! The store keeps its [`LocationStore::digest`] up to date on every change, so reading it is
//! O(1). With a record lifetime ([`LocationStore::with_ttl`]) it also keeps its records
//! ordered by expiry time, so that [`LocationStore::expire`] and
//! [`LocationStore::next_expiry`] cost only what expires.
//!
//! A million clients are a normal load, so a client costs as little as it can: its AT line
//! packed into about half its bytes in a pool of equal-length cells (`lines`: no allocation
//! per record), a 24-byte slot (log number, cell, client time, source), a 4-byte index in
//! the hash table and 8 bytes in the nearby index. The store does not hold [`Record`]s: it gives back
//! records built from the packed line ([`LocationStore::get`], [`LocationStore::records`],
//! [`LocationStore::change`]), and takes the fields it needs from an offered record, which
//! parsed them once.

mod lines;

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use foldhash::fast::FixedState;
use hashbrown::hash_table::{Entry, HashTable};

use self::lines::{pack, Cell, Lines, Origins};
use crate::near::{NearIndex, MAX_SLOTS};
use crate::record::Record;
use crate::types::{Location, TimeValue, Timestamp};

/// Most clients [`LocationStore::warm`] takes at once.
pub const WARM_MAX: usize = 32;

/// Log numbers a slot holds: 2^56 changes (over 2,000 years at a million a second).
const SEQ_MAX: u64 = (1 << 56) - 1;

/// Bits of a [`time_word`] below its whole seconds (nanoseconds are below 2^30).
const NANO_BITS: u32 = 30;

/// A [`time_word`] for a time that does not fit one: read it from the packed line.
const TIME_IN_LINE: u64 = u64::MAX;

/// A client time as one word that orders as the time does: whole seconds above
/// [`NANO_BITS`], nanoseconds below, for every time before 2^34 s (the year 2514);
/// [`TIME_IN_LINE`] for a later one.
fn time_word(time: TimeValue) -> u64 {
    match u64::try_from(time.secs) {
        Ok(secs) if secs < 1 << (64 - NANO_BITS) => (secs << NANO_BITS) | u64::from(time.nanos),
        _ => TIME_IN_LINE,
    }
}

/// One client's place in the store: the local log number of the change that stored its
/// record, where its packed line is, its record's client time, and who gave the store the
/// record.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// The log number (above 8 bits) and the cell's pool (the low 8); 0 for a free slot.
    word: u64,
    /// The record's client time ([`time_word`]): compared on every offer without reading
    /// the time back out of the packed line.
    time: u64,
    /// The cell in its pool.
    index: u32,
    /// The caller's source tag ([`compact_source`]).
    source: u32,
}

impl Slot {
    const FREE: Slot = Slot {
        word: 0,
        time: 0,
        index: 0,
        source: 0,
    };

    fn new(seq: u64, cell: Cell, time: TimeValue, source: u32) -> Self {
        Slot {
            word: (seq.min(SEQ_MAX) << 8) | u64::from(cell.class),
            time: time_word(time),
            index: cell.index,
            source,
        }
    }

    /// The record's client time, from the slot, or from its line (`lines`) when it is one
    /// no word holds.
    #[inline]
    fn time(self, lines: &Lines) -> TimeValue {
        if self.time == TIME_IN_LINE {
            return lines.get(self.cell()).time();
        }
        TimeValue {
            secs: u128::from(self.time >> NANO_BITS),
            nanos: (self.time & ((1 << NANO_BITS) - 1)) as u32,
        }
    }

    #[inline]
    fn seq(self) -> u64 {
        self.word >> 8
    }

    #[inline]
    fn cell(self) -> Cell {
        Cell {
            class: (self.word & 0xff) as u8,
            index: self.index,
        }
    }

    #[inline]
    fn is_free(self) -> bool {
        self.word == 0
    }
}

/// Slots a chunk of [`Slots`] holds.
const SLOT_CHUNK: usize = 4096;

/// The slots by index, in chunks of [`SLOT_CHUNK`]: the store grows by whole chunks instead
/// of moving every slot to a vector twice the size (see `lines` for why that matters).
#[derive(Clone, Default)]
struct Slots {
    chunks: Vec<Vec<Slot>>,
    len: usize,
}

impl Slots {
    #[inline]
    fn get(&self, i: u32) -> Option<Slot> {
        let i = i as usize;
        self.chunks
            .get(i / SLOT_CHUNK)?
            .get(i % SLOT_CHUNK)
            .copied()
    }

    /// The slot at `i`, which is below [`Slots::len`].
    #[inline]
    fn at(&self, i: u32) -> Slot {
        let i = i as usize;
        self.chunks[i / SLOT_CHUNK][i % SLOT_CHUNK]
    }

    fn set(&mut self, i: u32, slot: Slot) {
        let i = i as usize;
        if let Some(s) = self
            .chunks
            .get_mut(i / SLOT_CHUNK)
            .and_then(|c| c.get_mut(i % SLOT_CHUNK))
        {
            *s = slot;
        }
    }

    fn push(&mut self, slot: Slot) {
        if self.len.is_multiple_of(SLOT_CHUNK) {
            let cap = if self.chunks.is_empty() {
                0
            } else {
                SLOT_CHUNK
            };
            self.chunks.push(Vec::with_capacity(cap));
        }
        if let Some(c) = self.chunks.last_mut() {
            c.push(slot);
        }
        self.len += 1;
    }

    fn len(&self) -> usize {
        self.len
    }

    fn iter(&self) -> impl Iterator<Item = Slot> + '_ {
        self.chunks.iter().flatten().copied()
    }
}

/// A caller's source tag as the store keeps it: tags beyond 32 bits are kept as 0 (unknown),
/// which only means such a record may be sent back where it came from, never that one is
/// left out.
fn compact_source(source: u64) -> u32 {
    u32::try_from(source).unwrap_or(0)
}

/// The digest's hash of one AT line: a fixed function of the line's bytes, the same on every
/// server (never keyed by a per-server seed), so that equal stores have equal digests.
fn line_hash(line: &[u8]) -> u64 {
    FixedState::with_seed(0x6865_7264).hash_one(line)
}

/// The order-independent digest of a set of records computed from scratch: the wrapping sum
/// of [`line_hash`] over their AT lines. [`LocationStore::digest`] is always equal to this
/// over [`LocationStore::records`].
pub fn digest_of<R: Borrow<Record>>(records: impl IntoIterator<Item = R>) -> u64 {
    records.into_iter().fold(0u64, |acc, r| {
        acc.wrapping_add(line_hash(r.borrow().at_line()))
    })
}

/// When a record of client time `time` and lifetime `ttl` expires, in nanoseconds since the
/// epoch (exact, saturating).
fn expiry_at(time: TimeValue, ttl: Duration) -> u128 {
    let time = u128::try_from(time.as_nanos()).unwrap_or(0);
    time.saturating_add(ttl.as_nanos())
}

/// When a record with lifetime `ttl` expires: its client time plus `ttl`, in nanoseconds
/// since the epoch (exact, saturating; client times have up to 20 digits of seconds).
pub fn expiry_nanos(record: &Record, ttl: Duration) -> u128 {
    expiry_at(record.time(), ttl)
}

/// Whether a record with lifetime `ttl` has expired at `now` (its expiry time is not after
/// `now`). Every server decides it alike from the record's client time, not its arrival.
pub fn is_expired(record: &Record, ttl: Duration, now: Timestamp) -> bool {
    expiry_nanos(record, ttl) <= u128::from(now.as_nanos())
}

/// What offering a record to the store did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// The record is newer than what was held (or the client was unknown): stored with this
    /// local log number.
    Stored(u64),
    /// The store already holds this record or a newer one: nothing changed.
    Stale,
}

/// A change of the log, as [`LocationStore::changes_since_except`] lists them: its number
/// and where the record was. [`LocationStore::change`] gives the record while the change
/// is the client's latest (a later one has a higher number and is listed again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The local log number.
    pub seq: u64,
    slot: u32,
}

/// The records a store held when [`LocationStore::snapshot`] was taken.
#[derive(Clone)]
pub struct Snapshot {
    lines: Lines,
    origins: Origins,
    cells: Vec<Cell>,
}

impl Snapshot {
    /// Records in the snapshot.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether the snapshot holds no record.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// The records, in no particular order (each built from its packed line).
    pub fn records(&self) -> impl Iterator<Item = Record> + '_ {
        self.cells.iter().map(|&c| {
            let mut line = Vec::with_capacity(128);
            self.lines.get(c).unpack(&self.origins, &mut line);
            Record::from_stored(&line)
        })
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("records", &self.len())
            .finish()
    }
}

/// Per client, the newest record; plus a local change log for reconciliation.
#[derive(Clone)]
pub struct LocationStore {
    /// Indexes into `slots`, hashed by client id (4 bytes a bucket instead of a whole slot).
    table: HashTable<u32>,
    /// One slot per client; a removed client's slot is free (in `free`) until reused, so a
    /// slot's index stays the client's while it is held.
    slots: Slots,
    /// The free slots.
    free: Vec<u32>,
    /// The packed AT lines.
    lines: Lines,
    /// The origin names the packed lines refer to.
    origins: Origins,
    hasher: FixedState,
    seq: u64,
    /// [`digest_of`] the held records, kept up to date on every change.
    digest: u64,
    /// The records' lifetime, when they expire.
    ttl: Option<Duration>,
    /// With a lifetime: every held record's slot by (expiry time, local log number).
    expiry: BTreeMap<(u128, u64), u32>,
    /// Bytes of the AT lines held ([`LocationStore::line_bytes`]).
    line_bytes: u64,
    /// Every held record's position by slot, when kept ([`LocationStore::nearby`]).
    near: Option<NearIndex>,
    /// Scratch for packing an offered line and unpacking a held one (no allocation each).
    packed: Vec<u8>,
    unpacked: Vec<u8>,
    /// The latest changes, in log order with no gaps (at most [`RECENT_CHANGES`]): what
    /// [`LocationStore::changes_since_except`] reads when they reach back far enough.
    recent: VecDeque<Change>,
}

/// How many of its latest changes a store lists in log order, so that
/// [`LocationStore::changes_since_except`] reads those instead of scanning every slot: 16
/// bytes each, 2 MiB when full. A catch-up (a link some MiB behind: tens of thousands of
/// changes) or a reconciliation after a short drop asks for fewer; one after a longer absence
/// scans the store as before. Each pass of a delta asks again for what changed meanwhile,
/// under the node's lock, and at a million clients a scan takes milliseconds.
const RECENT_CHANGES: usize = 1 << 17;

/// Whether the record in `slot` did not come from `source` (a tag of 0 matches nothing).
fn not_from(slot: Slot, source: u64) -> bool {
    source == 0 || u64::from(slot.source) != source
}

/// A record found by [`LocationStore::nearby`] and its distance in metres.
#[derive(Debug, Clone, PartialEq)]
pub struct Nearby {
    /// The record.
    pub record: Arc<Record>,
    /// Its great-circle distance from the query point, in metres.
    pub distance_m: f64,
}

/// What a [`LocationStore::nearby`] query asks.
#[derive(Debug, Clone, Copy)]
pub struct NearbyQuery<'a> {
    /// Latitude of the centre, degrees.
    pub lat: f64,
    /// Longitude of the centre, degrees.
    pub lon: f64,
    /// Radius in metres.
    pub radius_m: f64,
    /// Most records to return.
    pub max: usize,
    /// A client to leave out (the subject of a client-centred query).
    pub exclude: Option<&'a [u8]>,
}

/// Orders found records by distance, then client id, and keeps the first `max`.
fn finish_nearby(mut found: Vec<Nearby>, max: usize) -> Vec<Nearby> {
    found.sort_by(|a, b| {
        a.distance_m
            .total_cmp(&b.distance_m)
            .then_with(|| a.record.client().cmp(b.record.client()))
    });
    found.truncate(max);
    found
}

impl std::fmt::Debug for LocationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocationStore")
            .field("clients", &self.len())
            .field("seq", &self.seq)
            .finish()
    }
}

/// The client id of the record in `slot`.
#[inline]
fn client_of(lines: &Lines, slot: Slot) -> &[u8] {
    lines.get(slot.cell()).client()
}

/// The location field of an AT line (its 5th field).
fn location_field(line: &[u8]) -> &[u8] {
    line.split(|&b| b == b' ').nth(4).unwrap_or_default()
}

impl LocationStore {
    /// An empty store whose hash function is keyed by `seed` (take it from an `IdSource`, so
    /// that clients cannot choose ids that collide).
    pub fn new(seed: u64) -> Self {
        Self {
            table: HashTable::new(),
            slots: Slots::default(),
            free: Vec::new(),
            lines: Lines::default(),
            origins: Origins::default(),
            hasher: FixedState::with_seed(seed),
            seq: 0,
            digest: 0,
            ttl: None,
            expiry: BTreeMap::new(),
            line_bytes: 0,
            near: None,
            packed: Vec::new(),
            unpacked: Vec::new(),
            recent: VecDeque::new(),
        }
    }

    /// An empty store as [`LocationStore::new`] whose records expire `ttl` after their client
    /// time when `ttl` is set ([`LocationStore::expire`] removes them).
    pub fn with_ttl(seed: u64, ttl: Option<Duration>) -> Self {
        Self {
            ttl,
            ..Self::new(seed)
        }
    }

    /// The held slots and their indexes.
    fn live(&self) -> impl Iterator<Item = (u32, Slot)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_free())
            .map(|(i, s)| (u32::try_from(i).unwrap_or(u32::MAX), s))
    }

    /// The record in `slot`, built from its packed line.
    fn record_of(&self, slot: Slot) -> Record {
        let packed = self.lines.get(slot.cell());
        let mut line = Vec::with_capacity(128);
        match packed.unpack(&self.origins, &mut line) {
            // Where its fields are is known: only the time and the position are parsed.
            Some(at) => {
                let (a, b) = at.location;
                let position = Location::degrees(&line[a..b]).unwrap_or((0.0, 0.0));
                Record::from_stored_parts(&line, at.client, slot.time(&self.lines), position)
            }
            None => Record::from_stored(&line),
        }
    }

    /// The position of the record in `slot`.
    fn position_of(&self, slot: Slot) -> (f64, f64) {
        self.lines.get(slot.cell()).position()
    }

    /// Keeps (or stops keeping) the nearby index: [`LocationStore::nearby`] then searches it
    /// instead of scanning every record. Turning it on indexes what is held.
    pub fn set_nearby_index(&mut self, on: bool) {
        if !on {
            self.near = None;
            return;
        }
        if self.near.is_none() {
            let points = self.live().map(|(i, s)| {
                let (lat, lon) = self.position_of(s);
                (i, lat, lon)
            });
            self.near = Some(NearIndex::from_points(points));
        }
    }

    /// Whether the nearby index is kept.
    pub fn has_nearby_index(&self) -> bool {
        self.near.is_some()
    }

    /// The held records within `q.radius_m` of (`q.lat`, `q.lon`), nearest first (ties by
    /// client id), at most `q.max`, without `q.exclude`. Uses the nearby index when it is
    /// kept, else scans every record ([`LocationStore::nearby_scan`]); both give the same
    /// answer.
    pub fn nearby(&self, q: &NearbyQuery<'_>) -> Vec<Nearby> {
        let Some(near) = &self.near else {
            return self.nearby_scan(q);
        };
        let slot = |s: u32| self.slots.at(s);
        let found = near.nearest(
            q.lat,
            q.lon,
            q.radius_m,
            q.max,
            |s| self.position_of(slot(s)),
            |s| {
                q.exclude
                    .is_some_and(|c| client_of(&self.lines, slot(s)) == c)
            },
        );
        let found = found
            .into_iter()
            .map(|f| Nearby {
                record: Arc::new(self.record_of(slot(f.slot))),
                distance_m: f.distance_m,
            })
            .collect();
        finish_nearby(found, q.max)
    }

    /// [`LocationStore::nearby`] by scanning every record: the reference the index is
    /// tested against.
    pub fn nearby_scan(&self, q: &NearbyQuery<'_>) -> Vec<Nearby> {
        let found = self
            .live()
            .filter(|&(_, s)| q.exclude != Some(client_of(&self.lines, s)))
            .filter_map(|(_, s)| {
                let (lat, lon) = self.position_of(s);
                let d = crate::near::sphere::distance_m(q.lat, q.lon, lat, lon);
                (d <= q.radius_m).then(|| Nearby {
                    record: Arc::new(self.record_of(s)),
                    distance_m: d,
                })
            })
            .collect();
        finish_nearby(found, q.max)
    }

    /// Bytes of the AT lines of the records held: the size of the data, not of the memory
    /// that holds it (the lines are kept packed; the table, the slots and the indexes come
    /// on top).
    pub fn line_bytes(&self) -> u64 {
        self.line_bytes
    }

    /// The records' lifetime, if they expire.
    pub fn ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// Changes the records' lifetime (`None`: they no longer expire). The expiry index is
    /// rebuilt from the held records under the new lifetime (one pass over the store), so
    /// [`LocationStore::expire`] and [`LocationStore::next_expiry`] follow it at once;
    /// nothing is removed here (records the new lifetime has already expired leave at the
    /// next [`LocationStore::expire`]).
    pub fn set_ttl(&mut self, ttl: Option<Duration>) {
        if ttl == self.ttl {
            return;
        }
        self.ttl = ttl;
        self.expiry = match ttl {
            None => BTreeMap::new(),
            Some(ttl) => self
                .live()
                .map(|(i, s)| {
                    let time = s.time(&self.lines);
                    ((expiry_at(time, ttl), s.seq()), i)
                })
                .collect(),
        };
    }

    /// Notes a line of client time `time` newly held in slot `index` under log number `seq`
    /// (digest and expiry index).
    fn account_in(&mut self, line: &[u8], time: TimeValue, seq: u64, index: u32) {
        if self.recent.len() == RECENT_CHANGES {
            self.recent.pop_front();
        }
        self.recent.push_back(Change { seq, slot: index });
        self.digest = self.digest.wrapping_add(line_hash(line));
        self.line_bytes += line.len() as u64;
        if let Some(ttl) = self.ttl {
            self.expiry.insert((expiry_at(time, ttl), seq), index);
        }
    }

    /// Notes a line, held under log number `seq`, no longer held.
    fn account_out(&mut self, line: &[u8], time: TimeValue, seq: u64) {
        self.digest = self.digest.wrapping_sub(line_hash(line));
        self.line_bytes -= line.len() as u64;
        if let Some(ttl) = self.ttl {
            self.expiry.remove(&(expiry_at(time, ttl), seq));
        }
    }

    fn hash(&self, client: &[u8]) -> u64 {
        self.hasher.hash_one(client)
    }

    /// The slot index of `client`'s record.
    fn find(&self, client: &[u8]) -> Option<u32> {
        let (slots, lines) = (&self.slots, &self.lines);
        self.table
            .find(self.hash(client), |&i| {
                client_of(lines, slots.at(i)) == client
            })
            .copied()
    }

    /// Stores `record` if it is newer than the client's current record.
    pub fn offer(&mut self, record: impl AsRef<Record>) -> Offer {
        self.offer_from(record, 0)
    }

    /// Stores `record` if it is newer than the client's current record, noting `source` (an
    /// opaque non-zero tag, or 0 for none) as where it came from, so that
    /// [`LocationStore::changed_since_except`] need not send it back there.
    ///
    /// The record's time, client id and position are the ones it parsed once; the held
    /// record's time is read from its packed line, and its line is unpacked only when the
    /// times tie or the record is replaced.
    pub fn offer_from(&mut self, record: impl AsRef<Record>, source: u64) -> Offer {
        let record = record.as_ref();
        let client = record.client();
        let time = record.time();
        let hash = self.hash(client);
        let (slots, lines, hasher) = (&self.slots, &self.lines, self.hasher);
        let entry = self.table.entry(
            hash,
            |&i| client_of(lines, slots.at(i)) == client,
            |&i| hasher.hash_one(client_of(lines, slots.at(i))),
        );
        let index = match entry {
            Entry::Occupied(o) => {
                let index = *o.get();
                let slot = self.slots.at(index);
                let held = self.lines.get(slot.cell());
                let held_time = slot.time(&self.lines);
                let mut old = std::mem::take(&mut self.unpacked);
                old.clear();
                let newer = match time.cmp(&held_time) {
                    Ordering::Less => false,
                    Ordering::Greater => {
                        held.unpack(&self.origins, &mut old);
                        true
                    }
                    Ordering::Equal => {
                        held.unpack(&self.origins, &mut old);
                        record.at_line() > &old[..]
                    }
                };
                if !newer {
                    self.unpacked = old;
                    return Offer::Stale;
                }
                self.seq += 1;
                self.account_out(&old, held_time, slot.seq());
                if let Some(near) = &mut self.near {
                    // A client that has not moved (the same location text) keeps its key.
                    let old_location = location_field(&old);
                    if old_location != record.location_text() {
                        let from = Location::degrees(old_location).unwrap_or((0.0, 0.0));
                        near.relocate(index, from, record.position());
                    }
                }
                self.unpacked = old;
                let span = record.client_span();
                pack(record.at_line(), span, &mut self.origins, &mut self.packed);
                let cell = self.lines.replace(slot.cell(), &self.packed);
                self.slots.set(
                    index,
                    Slot::new(self.seq, cell, time, compact_source(source)),
                );
                index
            }
            Entry::Vacant(v) => {
                let index = match self.free.last() {
                    Some(&i) => i,
                    None => match u32::try_from(self.slots.len()) {
                        Ok(i) if i < u32::MAX => i,
                        // Four billion clients do not fit in memory long before this.
                        _ => return Offer::Stale,
                    },
                };
                if index >= MAX_SLOTS && self.near.is_some() {
                    // The nearby index holds 2^28 clients (268 million, some 25 GB of
                    // records): a store that keeps it stops there.
                    return Offer::Stale;
                }
                v.insert(index);
                self.seq += 1;
                let span = record.client_span();
                pack(record.at_line(), span, &mut self.origins, &mut self.packed);
                let cell = self.lines.alloc(&self.packed);
                let slot = Slot::new(self.seq, cell, time, compact_source(source));
                if self.free.pop().is_some() {
                    self.slots.set(index, slot);
                } else {
                    self.slots.push(slot);
                }
                if let Some(near) = &mut self.near {
                    let (lat, lon) = record.position();
                    near.insert(index, lat, lon);
                }
                index
            }
        };
        self.account_in(record.at_line(), time, self.seq, index);
        Offer::Stored(self.seq)
    }

    /// Removes the client's record; returns it, or `None` when the client is not held.
    /// Nothing is logged: a removed record is simply no longer sent by reconciliation.
    pub fn remove(&mut self, client: &[u8]) -> Option<Record> {
        let hash = self.hash(client);
        let (slots, lines) = (&self.slots, &self.lines);
        let entry = self
            .table
            .find_entry(hash, |&i| client_of(lines, slots.at(i)) == client)
            .ok()?;
        let (index, _) = entry.remove();
        Some(self.free_slot(index))
    }

    /// Empties slot `index` (already out of the table) and returns its record.
    fn free_slot(&mut self, index: u32) -> Record {
        let slot = self.slots.at(index);
        let record = self.record_of(slot);
        self.account_out(record.at_line(), record.time(), slot.seq());
        if let Some(near) = &mut self.near {
            let (lat, lon) = record.position();
            near.remove(index, lat, lon);
        }
        self.lines.free(slot.cell());
        self.slots.set(index, Slot::FREE);
        self.free.push(index);
        record
    }

    /// With a lifetime, removes every record expired at `now` ([`is_expired`]); returns how
    /// many. Costs only what expires (plus one look at the earliest expiry).
    pub fn expire(&mut self, now: Timestamp) -> usize {
        self.expire_with(now, |_| {})
    }

    /// As [`LocationStore::expire`], handing each removed record to `removed` (in expiry
    /// order).
    pub fn expire_with(&mut self, now: Timestamp, mut removed: impl FnMut(Record)) -> usize {
        let now = u128::from(now.as_nanos());
        let mut n = 0;
        while let Some(entry) = self.expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let seq = entry.key().1;
            let index = entry.remove();
            let Some(slot) = self.slots.get(index) else {
                continue;
            };
            if slot.is_free() || slot.seq() != seq {
                continue;
            }
            // The index holds exactly the held records: this removes it and its entry.
            let hash = self.hash(client_of(&self.lines, slot));
            if let Ok(e) = self.table.find_entry(hash, |&i| i == index) {
                e.remove();
            }
            removed(self.free_slot(index));
            n += 1;
        }
        n
    }

    /// With a lifetime, when the earliest held record expires; `None` without a lifetime,
    /// when the store is empty, or when that time is beyond what a [`Timestamp`] holds
    /// (then no `now` ever reaches it).
    pub fn next_expiry(&self) -> Option<Timestamp> {
        let (&(at, _), _) = self.expiry.first_key_value()?;
        u64::try_from(at).ok().map(Timestamp)
    }

    /// Loads the table entries, slots and packed lines of up to [`WARM_MAX`] clients into
    /// the cache, so that offering or looking them up right after finds them there.
    ///
    /// A lookup is three dependent memory loads (table entry, slot, line); in a large store
    /// each is a cache miss, and one lookup's misses cannot start before the previous one's
    /// compare is done. Here each stage runs for all the clients before the next, so the
    /// misses of different clients overlap instead of queueing: call it with the client ids
    /// of a batch of lines before handling them one by one. It changes nothing; the return
    /// value only keeps the loads from being optimised away.
    pub fn warm(&self, clients: &[&[u8]]) -> u64 {
        let n = clients.len().min(WARM_MAX);
        let mut hashes = [0u64; WARM_MAX];
        for (h, c) in hashes.iter_mut().zip(&clients[..n]) {
            *h = self.hash(c);
        }
        // Stage 1: the control bytes and the entry of the first candidate (almost always the
        // client's own entry; a wrong one only warms the wrong slot).
        let mut index = [u32::MAX; WARM_MAX];
        for (i, &h) in index.iter_mut().zip(&hashes[..n]) {
            if let Some(&found) = self.table.find(h, |_| true) {
                *i = found;
            }
        }
        // Stage 2: the slots.
        let mut cells: [Option<Cell>; WARM_MAX] = [None; WARM_MAX];
        for (c, &i) in cells.iter_mut().zip(&index[..n]) {
            *c = self.slots.get(i).map(|s| s.cell());
        }
        // Stage 3: the packed lines (their first bytes: origin and client id).
        let mut sum = 0u64;
        for &c in cells[..n].iter().flatten() {
            let packed = self.lines.get(c).0;
            let first = packed.get(2).copied().unwrap_or(0);
            sum = sum.wrapping_add(u64::from(first));
        }
        std::hint::black_box(sum)
    }

    /// The client's current record (built from the packed line: an AT line of everyday
    /// length needs no allocation).
    pub fn get(&self, client: &[u8]) -> Option<Record> {
        self.find(client).map(|i| self.record_of(self.slots.at(i)))
    }

    /// `f` of the client's AT line, if held: the line is unpacked into the store's scratch
    /// buffer, and no record is built (cheaper than [`LocationStore::get`]).
    pub fn with_line<R>(&mut self, client: &[u8], f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let slot = self.slots.at(self.find(client)?);
        let mut line = std::mem::take(&mut self.unpacked);
        line.clear();
        self.lines.get(slot.cell()).unpack(&self.origins, &mut line);
        let out = f(&line);
        self.unpacked = line;
        Some(out)
    }

    /// The client time of the client's record, if held (cheaper than [`LocationStore::get`]:
    /// kept in its slot, no record is built).
    pub fn time_of(&self, client: &[u8]) -> Option<TimeValue> {
        self.find(client)
            .map(|i| self.slots.at(i).time(&self.lines))
    }

    /// The position of the client's record, if held (cheaper than [`LocationStore::get`]: no
    /// record is built).
    pub fn position(&self, client: &[u8]) -> Option<(f64, f64)> {
        self.find(client)
            .map(|i| self.position_of(self.slots.at(i)))
    }

    /// Whether the client is held (cheaper than [`LocationStore::get`]).
    pub fn contains(&self, client: &[u8]) -> bool {
        self.find(client).is_some()
    }

    /// Number of clients held.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether no client is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The local log number of the latest change (0 when nothing was ever stored).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Records whose latest change is numbered above `seq`, in log order.
    pub fn changed_since(&self, seq: u64) -> Vec<(u64, Record)> {
        self.changed_since_except(seq, 0)
    }

    /// Records whose latest change is numbered above `seq`, in log order, leaving out those
    /// that came from `source` (when non-zero): that source holds them, or newer ones. Each
    /// record is built here; [`LocationStore::changes_since_except`] lists the changes
    /// without building their records.
    pub fn changed_since_except(&self, seq: u64, source: u64) -> Vec<(u64, Record)> {
        self.changes_since_except(seq, source)
            .into_iter()
            .filter_map(|c| self.change(c).map(|r| (c.seq, r)))
            .collect()
    }

    /// The changes numbered above `seq`, in log order, leaving out those whose record came
    /// from `source` (when non-zero): 16 bytes a change, the records read with
    /// [`LocationStore::change`] when they are sent.
    pub fn changes_since_except(&self, seq: u64, source: u64) -> Vec<Change> {
        if seq >= self.seq {
            return Vec::new();
        }
        // Every change is listed in `recent` as it is made, so when its first entry is at
        // most `seq + 1`, it holds every change above `seq`: those still their client's
        // latest are the answer, already in log order.
        if self
            .recent
            .front()
            .is_some_and(|c| c.seq <= seq.saturating_add(1))
        {
            let from = self.recent.partition_point(|c| c.seq <= seq);
            return self
                .recent
                .range(from..)
                .filter(|c| {
                    self.slots
                        .get(c.slot)
                        .is_some_and(|s| !s.is_free() && s.seq() == c.seq && not_from(s, source))
                })
                .copied()
                .collect();
        }
        self.scan_changes_since_except(seq, source)
    }

    /// [`LocationStore::changes_since_except`] by a scan of every slot.
    fn scan_changes_since_except(&self, seq: u64, source: u64) -> Vec<Change> {
        let mut out: Vec<Change> = self
            .live()
            .filter(|(_, s)| s.seq() > seq && not_from(*s, source))
            .map(|(slot, s)| Change { seq: s.seq(), slot })
            .collect();
        out.sort_unstable_by_key(|c| c.seq);
        out
    }

    /// The record of change `change`, if it is still its client's latest (`None` once the
    /// client has a newer record, listed under a higher number, or is gone).
    pub fn change(&self, change: Change) -> Option<Record> {
        let slot = self.slots.get(change.slot)?;
        (!slot.is_free() && slot.seq() == change.seq).then(|| self.record_of(slot))
    }

    /// Every record held, in no particular order (each built from its packed line).
    pub fn records(&self) -> impl Iterator<Item = Record> + '_ {
        self.live().map(|(_, s)| self.record_of(s))
    }

    /// A copy of the records held, to read elsewhere (a journal rewritten on its own
    /// thread): the packed lines as they are, about half the bytes of the AT lines, copied
    /// in a few large moves instead of a record built for each.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            lines: self.lines.clone(),
            origins: self.origins.clone(),
            cells: self.live().map(|(_, s)| s.cell()).collect(),
        }
    }

    /// An order-independent digest of the held AT lines: two stores with the same records
    /// have the same digest, on any server (for convergence checks). Kept up to date on every
    /// change, so this is O(1); always equal to [`digest_of`] over [`LocationStore::records`].
    pub fn digest(&self) -> u64 {
        self.digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{parse_client_line, ClientLine};
    use crate::types::{ServerName, Timestamp};

    fn rec(server: &str, line: &str, now: u64) -> Arc<Record> {
        let ClientLine::IAmAt(req) = parse_client_line(line.as_bytes()) else {
            panic!("bad test line")
        };
        Arc::new(Record::from_iamat(
            &ServerName::new(server).unwrap(),
            Timestamp(now),
            &req,
        ))
    }

    #[test]
    fn the_changes_since_a_number_are_the_same_from_the_recent_list_as_from_a_scan() {
        let mut s = LocationStore::new(7);
        let mut x: u64 = 1;
        let mut next = || {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            x >> 33
        };
        let check = |s: &LocationStore, seqs: &[u64]| {
            for &seq in seqs {
                for source in 0..3 {
                    assert_eq!(
                        s.changes_since_except(seq, source),
                        s.scan_changes_since_except(seq, source),
                        "since {seq}, source {source}"
                    );
                }
            }
        };
        // Replacements, removals (a freed slot reused by another client) and three sources.
        for t in 1..=3000u64 {
            let client = format!("c{}", next() % 300);
            if next() % 10 == 0 {
                s.remove(client.as_bytes());
                continue;
            }
            let r = rec("A", &format!("IAMAT {client} +1+1 {t}"), 0);
            s.offer_from(r, next() % 3);
            if t % 250 == 0 {
                let top = s.seq();
                check(
                    &s,
                    &[0, top / 2, top.saturating_sub(1), top, next() % (top + 1)],
                );
            }
        }
        assert!(s.recent.front().is_some_and(|c| c.seq == 1));
        // Past the list's length its first entry moves on: older numbers are answered by the
        // scan, recent ones by the list, alike.
        for t in 0..(RECENT_CHANGES as u64 + 1000) {
            let r = rec("A", &format!("IAMAT c{} +1+1 {}", t % 300, 10_000 + t), 0);
            s.offer_from(r, t % 3);
        }
        let top = s.seq();
        let first = s.recent.front().unwrap().seq;
        assert_eq!(top - first + 1, RECENT_CHANGES as u64);
        check(&s, &[0, first - 2, first - 1, first, top - 500, top]);
        assert_eq!(s.changes_since_except(top - 300, 0).len(), 300);
    }

    #[test]
    fn newest_client_time_wins_and_ties_break_on_the_line() {
        let mut s = LocationStore::new(1);
        assert_eq!(s.offer(rec("A", "IAMAT c +1+1 10", 0)), Offer::Stored(1));
        assert_eq!(s.offer(rec("A", "IAMAT c +1+1 9", 0)), Offer::Stale);
        assert_eq!(s.offer(rec("A", "IAMAT c +1+1 10", 0)), Offer::Stale);
        assert_eq!(s.offer(rec("B", "IAMAT c +1+1 10", 0)), Offer::Stored(2));
        assert_eq!(s.offer(rec("A", "IAMAT c +1+1 10", 0)), Offer::Stale);
        assert_eq!(s.get(b"c").unwrap().origin(), b"B");
        assert_eq!(s.offer(rec("A", "IAMAT c +2+2 10.5", 0)), Offer::Stored(3));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn with_line_sees_the_held_line_packed_or_whole() {
        let mut s = LocationStore::new(2);
        assert_eq!(s.with_line(b"c", |l| l.to_vec()), None);
        // Everyday lines (packed), and past the 255 origin names a table keeps, lines kept
        // whole.
        for n in 0..260 {
            let r = rec(&format!("S{n}"), &format!("IAMAT c{n} +1.5-2.25 10.5"), 3);
            s.offer(r.clone());
            let client = r.client().to_vec();
            assert_eq!(
                s.with_line(&client, |l| l.to_vec()),
                Some(r.at_line().to_vec())
            );
            assert_eq!(s.get(&client).unwrap().at_line(), r.at_line());
        }
    }

    #[test]
    fn times_a_slot_holds_and_times_beyond_it_order_alike() {
        // The slot's word holds whole seconds below 2^34; at and past it the time is read
        // from the line. Offers cross the boundary both ways, with fractions and ties.
        let edge = 1u64 << 34;
        let times = [
            "0".to_string(),
            "1.5".to_string(),
            format!("{}.999999999", edge - 1),
            format!("{edge}"),
            format!("{edge}.000000001"),
            "99999999999999999999.5".to_string(),
        ];
        for (i, t) in times.iter().enumerate() {
            let mut s = LocationStore::new(5);
            assert!(matches!(
                s.offer(rec("A", &format!("IAMAT c +1+1 {t}"), 0)),
                Offer::Stored(_)
            ));
            assert_eq!(s.time_of(b"c"), TimeValue::parse(t.as_bytes()).ok());
            assert_eq!(
                s.get(b"c").unwrap().time(),
                TimeValue::parse(t.as_bytes()).unwrap()
            );
            for (j, u) in times.iter().enumerate() {
                let mut s = s.clone();
                let got = s.offer(rec("A", &format!("IAMAT c +2+2 {u}"), 0));
                // An equal time breaks on the line: "+2+2" sorts after "+1+1".
                assert_eq!(
                    matches!(got, Offer::Stored(_)),
                    j >= i,
                    "{u} offered over {t}"
                );
                // A tie breaks on the line: the same time from a later origin wins.
                let tie = s.offer(rec("B", &format!("IAMAT c +3+3 {}", times[i.max(j)]), 0));
                assert!(
                    matches!(tie, Offer::Stored(_)),
                    "tie at {}",
                    times[i.max(j)]
                );
            }
        }
    }

    #[test]
    fn line_bytes_follow_replacements_removals_and_expiry() {
        let mut s = LocationStore::with_ttl(3, Some(std::time::Duration::from_secs(10)));
        let a = rec("A", "IAMAT a +1+1 1", 0);
        let b = rec("A", "IAMAT b +1+1 2", 0);
        let a2 = rec("A", "IAMAT a +10+10 3", 0);
        let len = |r: &Arc<Record>| r.at_line().len() as u64;
        s.offer(a.clone());
        s.offer(b.clone());
        assert_eq!(s.line_bytes(), len(&a) + len(&b));
        s.offer(a2.clone());
        assert_eq!(s.line_bytes(), len(&a2) + len(&b));
        s.remove(b"b");
        assert_eq!(s.line_bytes(), len(&a2));
        s.expire(Timestamp::from_parts(100, 0));
        assert_eq!((s.len(), s.line_bytes()), (0, 0));
    }

    #[test]
    fn a_snapshot_holds_the_records_as_they_were() {
        let mut s = LocationStore::new(4);
        s.offer(rec("A", "IAMAT a +1+1 1", 0));
        s.offer(rec("B", "IAMAT b +2+2 1", 0));
        let snap = s.snapshot();
        s.offer(rec("A", "IAMAT a +3+3 2", 0));
        s.remove(b"b");
        assert_eq!(snap.len(), 2);
        let mut lines: Vec<Vec<u8>> = snap.records().map(|r| r.at_line().to_vec()).collect();
        lines.sort();
        assert_eq!(
            lines,
            vec![
                rec("A", "IAMAT a +1+1 1", 0).at_line().to_vec(),
                rec("B", "IAMAT b +2+2 1", 0).at_line().to_vec()
            ]
        );
    }

    #[test]
    fn changed_since_lists_only_later_changes_in_order() {
        let mut s = LocationStore::new(7);
        for i in 0..10 {
            s.offer(rec("A", &format!("IAMAT c{i} +1+1 {i}"), 0));
        }
        s.offer(rec("A", "IAMAT c2 +1+1 100", 0));
        let since: Vec<u64> = s.changed_since(8).iter().map(|(q, _)| *q).collect();
        assert_eq!(since, vec![9, 10, 11]);
    }

    #[test]
    fn source_tags_beyond_32_bits_never_leave_a_record_out() {
        let mut s = LocationStore::new(7);
        let big = u64::from(u32::MAX) + 5;
        s.offer_from(rec("A", "IAMAT a +1+1 1", 0), big);
        s.offer_from(rec("A", "IAMAT b +1+1 1", 0), 5);
        let seqs = |v: Vec<(u64, Record)>| v.iter().map(|(q, _)| *q).collect::<Vec<_>>();
        assert_eq!(seqs(s.changed_since_except(0, big)), vec![1, 2]);
        assert_eq!(seqs(s.changed_since_except(0, 5)), vec![1]);
        assert_eq!(seqs(s.changed_since_except(0, 5 + (1 << 32))), vec![1, 2]);
    }

    #[test]
    fn changed_since_except_leaves_out_what_came_from_that_source() {
        let mut s = LocationStore::new(7);
        s.offer_from(rec("A", "IAMAT a +1+1 1", 0), 5);
        s.offer_from(rec("A", "IAMAT b +1+1 1", 0), 6);
        s.offer(rec("A", "IAMAT c +1+1 1", 0));
        // A newer record from elsewhere replaces the one from source 5: it must be sent again.
        s.offer_from(rec("A", "IAMAT a +1+1 2", 0), 6);
        let seqs = |v: Vec<(u64, Record)>| v.iter().map(|(q, _)| *q).collect::<Vec<_>>();
        assert_eq!(seqs(s.changed_since_except(0, 6)), vec![3]);
        assert_eq!(seqs(s.changed_since_except(0, 5)), vec![2, 3, 4]);
        assert_eq!(seqs(s.changed_since_except(0, 0)), vec![2, 3, 4]);
    }

    #[test]
    fn digest_is_kept_up_to_date_and_ignores_order_and_seeds() {
        let mut a = LocationStore::new(1);
        let mut b = LocationStore::new(99);
        assert_eq!(a.digest(), 0);
        a.offer(rec("A", "IAMAT x +1+1 1", 0));
        a.offer(rec("A", "IAMAT y +1+1 1", 0));
        a.offer(rec("A", "IAMAT x +1+1 2", 0));
        b.offer(rec("A", "IAMAT x +1+1 2", 0));
        b.offer(rec("A", "IAMAT y +1+1 1", 0));
        assert_eq!(
            a.digest(),
            b.digest(),
            "same records, other seeds and order"
        );
        assert_eq!(a.digest(), digest_of(a.records()));
        assert_eq!(a.remove(b"x").unwrap().client(), b"x");
        assert_eq!(a.remove(b"x"), None);
        assert_eq!(a.len(), 1);
        assert_eq!(a.get(b"y").unwrap().client(), b"y");
        assert_eq!(a.digest(), digest_of(a.records()));
        assert_ne!(a.digest(), b.digest());
        b.remove(b"x");
        assert_eq!(a.digest(), b.digest());
    }

    #[test]
    fn records_expire_by_client_time_in_order() {
        let s_ = |n: u64| Timestamp(n * 1_000_000_000);
        let mut s = LocationStore::with_ttl(3, Some(Duration::from_secs(10)));
        s.offer(rec("A", "IAMAT a +1+1 100", 0));
        s.offer(rec("A", "IAMAT b +1+1 105.5", 0));
        s.offer(rec("A", "IAMAT c +1+1 99999999999999999999", 0));
        assert_eq!(s.next_expiry(), Some(s_(110)));
        assert_eq!(s.expire(s_(109)), 0);
        assert_eq!(s.expire(s_(110)), 1);
        assert!(s.get(b"a").is_none());
        assert_eq!(s.next_expiry(), Some(Timestamp(115_500_000_000)));
        // A newer record moves the client's expiry.
        s.offer(rec("A", "IAMAT b +1+1 200", 0));
        assert_eq!(s.next_expiry(), Some(s_(210)));
        assert_eq!(s.expire(s_(209)), 0);
        assert_eq!(s.expire(s_(210)), 1);
        assert_eq!(s.next_expiry(), None, "c's expiry is past any timestamp");
        assert_eq!(s.expire(Timestamp(u64::MAX)), 0);
        assert_eq!(s.len(), 1);
        assert_eq!(s.digest(), digest_of(s.records()));
        assert!(is_expired(
            &rec("A", "IAMAT d +1+1 5", 0),
            Duration::from_secs(5),
            s_(10)
        ));
        assert!(!is_expired(
            &rec("A", "IAMAT d +1+1 5.1", 0),
            Duration::from_secs(5),
            s_(10)
        ));
        // Without a lifetime nothing expires.
        let mut plain = LocationStore::new(3);
        plain.offer(rec("A", "IAMAT a +1+1 1", 0));
        assert_eq!(
            (plain.next_expiry(), plain.expire(Timestamp(u64::MAX))),
            (None, 0)
        );
    }

    #[test]
    fn a_lifetime_set_later_rebuilds_the_expiry_index_and_none_clears_it() {
        let s_ = |n: u64| Timestamp(n * 1_000_000_000);
        let mut s = LocationStore::new(3);
        s.offer(rec("A", "IAMAT a +1+1 100", 0));
        s.offer(rec("A", "IAMAT b +1+1 150", 0));
        assert_eq!(s.next_expiry(), None);
        s.set_ttl(Some(Duration::from_secs(10)));
        assert_eq!(s.ttl(), Some(Duration::from_secs(10)));
        assert_eq!(s.next_expiry(), Some(s_(110)));
        // A longer lifetime moves every expiry; a replaced record's old entry is gone.
        s.offer(rec("A", "IAMAT a +1+1 120", 0));
        s.set_ttl(Some(Duration::from_secs(100)));
        assert_eq!(s.next_expiry(), Some(s_(220)));
        assert_eq!(s.expire(s_(219)), 0);
        assert_eq!(s.expire(s_(220)), 1);
        assert_eq!(s.next_expiry(), Some(s_(250)));
        s.set_ttl(None);
        assert_eq!((s.next_expiry(), s.expire(Timestamp(u64::MAX))), (None, 0));
        assert_eq!(s.len(), 1);
        assert_eq!(s.digest(), digest_of(s.records()));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Offer { client: u8, time: u64, server: u8 },
        Remove(u8),
        Expire(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0u8..12, 0u64..60, 0u8..3)
                .prop_map(|(client, time, server)| Op::Offer { client, time, server }),
            2 => (0u8..14).prop_map(Op::Remove),
            1 => (0u64..80).prop_map(Op::Expire),
        ]
    }

    proptest::proptest! {
        /// Against a brute-force model: after every insert, replace, remove and expiry the
        /// kept digest equals one computed from scratch, and the store holds exactly the
        /// model's records.
        #[test]
        fn the_kept_digest_equals_a_recomputation_after_any_operations(
            ops in proptest::collection::vec(op(), 0..120),
            seed in proptest::prelude::any::<u64>(),
            ttl in proptest::option::of(0u64..30),
        ) {
            use std::collections::BTreeMap;
            let ttl = ttl.map(Duration::from_secs);
            let mut s = LocationStore::with_ttl(seed, ttl);
            let mut model: BTreeMap<Vec<u8>, Arc<Record>> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Offer { client, time, server } => {
                        let r = rec(&format!("S{server}"), &format!("IAMAT c{client} +1+1 {time}"), 0);
                        let newer = model
                            .get(r.client())
                            .is_none_or(|m| r.precedence(m) == Ordering::Greater);
                        let stored = matches!(s.offer(r.clone()), Offer::Stored(_));
                        proptest::prop_assert_eq!(stored, newer);
                        if newer {
                            model.insert(r.client().to_vec(), r);
                        }
                    }
                    Op::Remove(client) => {
                        let id = format!("c{client}").into_bytes();
                        let got = s.remove(&id).map(|r| r.at_line().to_vec());
                        let want = model.remove(&id).map(|r| r.at_line().to_vec());
                        proptest::prop_assert_eq!(got, want);
                    }
                    Op::Expire(at) => {
                        let now = Timestamp(at * 1_000_000_000);
                        let before = model.len();
                        if let Some(ttl) = ttl {
                            model.retain(|_, r| !is_expired(r, ttl, now));
                        }
                        proptest::prop_assert_eq!(s.expire(now), before - model.len());
                    }
                }
                proptest::prop_assert_eq!(s.digest(), digest_of(model.values().map(|r| &**r)));
                proptest::prop_assert_eq!(s.digest(), digest_of(s.records()));
                proptest::prop_assert_eq!(s.len(), model.len());
                for (client, r) in &model {
                    proptest::prop_assert_eq!(s.get(client).map(|g| g.at_line().to_vec()), Some(r.at_line().to_vec()));
                }
                let next = ttl.and_then(|ttl| {
                    model.values().map(|r| expiry_nanos(r, ttl)).min()
                });
                proptest::prop_assert_eq!(s.next_expiry().map(|t| u128::from(t.0)), next);
            }
        }
    }
}
