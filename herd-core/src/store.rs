//! The location store: per client, only the newest record.
//!
//! Records are ordered by client time, then by the bytes of their AT line, a total order
//! that every server computes alike, so the herd settles on one record per client whatever
//! order updates arrive in. Every change gets the next number of this store's local log;
//! reconciliation sends a neighbour the records changed since the number it last saw.

use std::cmp::Ordering;
use std::hash::BuildHasher;
use std::sync::Arc;

use foldhash::fast::FixedState;
use hashbrown::hash_table::{Entry, HashTable};

use crate::protocol::IAmAt;
use crate::types::{is_space, FieldError, Location, ServerName, TimeDiff, TimeValue, Timestamp};

/// One client's location report as the herd keeps it: the origin's whole AT line.
#[derive(Clone, PartialEq)]
pub struct Record {
    line: Box<[u8]>,
    client: (u32, u32),
    time: TimeValue,
    lat: f64,
    lon: f64,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Record({:?})", String::from_utf8_lossy(&self.line))
    }
}

fn span(line: &[u8], field: &[u8]) -> (u32, u32) {
    // `field` is a sub-slice of `line`; lines are bounded far below 4 GiB by the codecs.
    let start = field.as_ptr() as usize - line.as_ptr() as usize;
    let start = u32::try_from(start).unwrap_or(u32::MAX);
    let len = u32::try_from(field.len()).unwrap_or(0);
    (start, start.saturating_add(len))
}

impl Record {
    /// The record an IAMAT received by `server` at `now` makes: builds its AT line.
    pub fn from_iamat(server: &ServerName, now: Timestamp, req: &IAmAt<'_>) -> Self {
        let diff = TimeDiff::between(now, req.time_value);
        let mut line = Vec::with_capacity(
            server.as_str().len() + req.client.len() + req.location.len() + req.time.len() + 32,
        );
        line.extend_from_slice(b"AT ");
        line.extend_from_slice(server.as_str().as_bytes());
        line.push(b' ');
        diff.write_to(&mut line);
        line.push(b' ');
        let start = line.len();
        line.extend_from_slice(req.client);
        let client = (
            u32::try_from(start).unwrap_or(u32::MAX),
            u32::try_from(line.len()).unwrap_or(u32::MAX),
        );
        line.push(b' ');
        line.extend_from_slice(req.location);
        line.push(b' ');
        line.extend_from_slice(req.time);
        Self {
            line: line.into_boxed_slice(),
            client,
            time: req.time_value,
            lat: req.lat,
            lon: req.lon,
        }
    }

    /// Parses a stored AT line (`AT server diff client location time`, single spaces).
    ///
    /// # Errors
    /// The first field that does not validate.
    pub fn parse(line: &[u8]) -> Result<Self, FieldError> {
        let mut parts = line.split(|&b| b == b' ');
        let mut next = || parts.next().ok_or(FieldError::ClientId);
        let (at, server, diff, client) = (next()?, next()?, next()?, next()?);
        let (location, time) = (next()?, next()?);
        if at != b"AT" || parts.next().is_some() {
            return Err(FieldError::ClientId);
        }
        ServerName::from_bytes(server)?;
        TimeDiff::parse(diff)?;
        if client.is_empty() || client.iter().any(|&b| is_space(b)) {
            return Err(FieldError::ClientId);
        }
        let loc = Location::parse(location)?;
        let time_value = TimeValue::parse(time)?;
        Ok(Self {
            client: span(line, client),
            line: line.into(),
            time: time_value,
            lat: loc.lat(),
            lon: loc.lon(),
        })
    }

    /// The whole AT line, without a newline.
    pub fn at_line(&self) -> &[u8] {
        &self.line
    }

    /// The client id.
    pub fn client(&self) -> &[u8] {
        &self.line[self.client.0 as usize..self.client.1 as usize]
    }

    /// The client time.
    pub fn time(&self) -> TimeValue {
        self.time
    }

    /// Latitude in degrees.
    pub fn lat(&self) -> f64 {
        self.lat
    }

    /// Longitude in degrees.
    pub fn lon(&self) -> f64 {
        self.lon
    }

    /// The name of the server that received the IAMAT (the AT line's second field).
    pub fn origin(&self) -> &[u8] {
        self.line.split(|&b| b == b' ').nth(1).unwrap_or_default()
    }

    /// The herd's total order on records of one client: client time, then AT line bytes.
    pub fn precedence(&self, other: &Record) -> Ordering {
        self.time
            .cmp(&other.time)
            .then_with(|| self.line.cmp(&other.line))
    }
}

/// A stored record and the local log number of the change that stored it.
#[derive(Clone, Debug)]
struct Slot {
    record: Arc<Record>,
    seq: u64,
    /// Who gave the store this record (the caller's tag, see [`LocationStore::offer_from`]).
    source: u64,
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

/// Per client, the newest record; plus a local change log for reconciliation.
#[derive(Clone)]
pub struct LocationStore {
    table: HashTable<Slot>,
    hasher: FixedState,
    seq: u64,
}

impl std::fmt::Debug for LocationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocationStore")
            .field("clients", &self.table.len())
            .field("seq", &self.seq)
            .finish()
    }
}

impl LocationStore {
    /// An empty store whose hash function is keyed by `seed` (take it from an `IdSource`, so
    /// that clients cannot choose ids that collide).
    pub fn new(seed: u64) -> Self {
        Self {
            table: HashTable::new(),
            hasher: FixedState::with_seed(seed),
            seq: 0,
        }
    }

    fn hash(&self, client: &[u8]) -> u64 {
        self.hasher.hash_one(client)
    }

    /// Stores `record` if it is newer than the client's current record.
    pub fn offer(&mut self, record: Arc<Record>) -> Offer {
        self.offer_from(record, 0)
    }

    /// Stores `record` if it is newer than the client's current record, noting `source` (an
    /// opaque non-zero tag, or 0 for none) as where it came from, so that
    /// [`LocationStore::changed_since_except`] need not send it back there.
    pub fn offer_from(&mut self, record: Arc<Record>, source: u64) -> Offer {
        let hash = self.hash(record.client());
        let hasher = self.hasher;
        let entry = self.table.entry(
            hash,
            |s| s.record.client() == record.client(),
            |s| hasher.hash_one(s.record.client()),
        );
        match entry {
            Entry::Occupied(mut o) => {
                if record.precedence(&o.get().record) != Ordering::Greater {
                    return Offer::Stale;
                }
                self.seq += 1;
                *o.get_mut() = Slot {
                    record,
                    seq: self.seq,
                    source,
                };
            }
            Entry::Vacant(v) => {
                self.seq += 1;
                v.insert(Slot {
                    record,
                    seq: self.seq,
                    source,
                });
            }
        }
        Offer::Stored(self.seq)
    }

    /// Whether offering `record` would store it.
    pub fn is_new(&self, record: &Record) -> bool {
        self.get(record.client())
            .is_none_or(|held| record.precedence(held) == Ordering::Greater)
    }

    /// The client's current record.
    pub fn get(&self, client: &[u8]) -> Option<&Arc<Record>> {
        let hash = self.hash(client);
        self.table
            .find(hash, |s| s.record.client() == client)
            .map(|s| &s.record)
    }

    /// Number of clients held.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no client is held.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The local log number of the latest change (0 when nothing was ever stored).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Records whose latest change is numbered above `seq`, in log order.
    pub fn changed_since(&self, seq: u64) -> Vec<(u64, Arc<Record>)> {
        self.changed_since_except(seq, 0)
    }

    /// Records whose latest change is numbered above `seq`, in log order, leaving out those
    /// that came from `source` (when non-zero): that source holds them, or newer ones.
    pub fn changed_since_except(&self, seq: u64, source: u64) -> Vec<(u64, Arc<Record>)> {
        let mut out: Vec<(u64, Arc<Record>)> = self
            .table
            .iter()
            .filter(|s| s.seq > seq && (source == 0 || s.source != source))
            .map(|s| (s.seq, s.record.clone()))
            .collect();
        out.sort_unstable_by_key(|(seq, _)| *seq);
        out
    }

    /// Every record held, in no particular order.
    pub fn records(&self) -> impl Iterator<Item = &Arc<Record>> + '_ {
        self.table.iter().map(|s| &s.record)
    }

    /// An order-independent digest of the held AT lines: two stores with the same records
    /// have the same digest (for convergence checks).
    pub fn digest(&self) -> u64 {
        let h = FixedState::with_seed(0x6865_7264);
        self.table.iter().fold(0u64, |acc, s| {
            acc.wrapping_add(h.hash_one(s.record.at_line()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{parse_client_line, ClientLine};

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
    fn at_lines_parse_back_to_the_same_record() {
        let r = rec(
            "Goloman",
            "IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997",
            1_520_023_935_182_837_383,
        );
        assert_eq!(
            r.at_line(),
            b"AT Goloman +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997"
        );
        let back = Record::parse(r.at_line()).unwrap();
        assert_eq!(&back, &*r);
        assert_eq!(back.client(), b"kiwi.cs.ucla.edu");
        for bad in [
            "AT A +0.000000000 c +1+1",
            "AT A 0.0 c +1+1 1",
            "XX A +0.000000000 c +1+1 1",
            "AT A +0.000000000 c +1+1 1 extra",
            "AT A  +0.000000000 c +1+1 1",
        ] {
            assert!(Record::parse(bad.as_bytes()).is_err(), "{bad}");
        }
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
    fn changed_since_except_leaves_out_what_came_from_that_source() {
        let mut s = LocationStore::new(7);
        s.offer_from(rec("A", "IAMAT a +1+1 1", 0), 5);
        s.offer_from(rec("A", "IAMAT b +1+1 1", 0), 6);
        s.offer(rec("A", "IAMAT c +1+1 1", 0));
        // A newer record from elsewhere replaces the one from source 5: it must be sent again.
        s.offer_from(rec("A", "IAMAT a +1+1 2", 0), 6);
        let seqs = |v: Vec<(u64, Arc<Record>)>| v.iter().map(|(q, _)| *q).collect::<Vec<_>>();
        assert_eq!(seqs(s.changed_since_except(0, 6)), vec![3]);
        assert_eq!(seqs(s.changed_since_except(0, 5)), vec![2, 3, 4]);
        assert_eq!(seqs(s.changed_since_except(0, 0)), vec![2, 3, 4]);
    }
}
