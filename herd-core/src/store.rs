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

use crate::record::Record;

/// Most clients [`LocationStore::warm`] takes at once.
pub const WARM_MAX: usize = 32;

/// A stored record and the local log number of the change that stored it.
#[derive(Clone, Debug)]
struct Slot {
    record: Arc<Record>,
    seq: u64,
}

/// A caller's source tag as the store keeps it: tags beyond 32 bits are kept as 0 (unknown),
/// which only means such a record may be sent back where it came from, never that one is
/// left out.
fn compact_source(source: u64) -> u32 {
    u32::try_from(source).unwrap_or(0)
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
    /// Indexes into `slots`, hashed by client id (4 bytes a bucket instead of a whole slot).
    table: HashTable<u32>,
    /// One slot per client; clients are never removed.
    slots: Vec<Slot>,
    /// Who gave the store each slot's record (the caller's tag, see
    /// [`LocationStore::offer_from`]), by slot index; apart to keep a slot 16 bytes.
    sources: Vec<u32>,
    hasher: FixedState,
    seq: u64,
}

impl std::fmt::Debug for LocationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocationStore")
            .field("clients", &self.slots.len())
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
            slots: Vec::new(),
            sources: Vec::new(),
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
        let slots = &mut self.slots;
        let entry = self.table.entry(
            hash,
            |&i| slots[i as usize].record.client() == record.client(),
            |&i| hasher.hash_one(slots[i as usize].record.client()),
        );
        match entry {
            Entry::Occupied(o) => {
                let index = *o.get() as usize;
                let slot = &mut slots[index];
                if record.precedence(&slot.record) != Ordering::Greater {
                    return Offer::Stale;
                }
                self.seq += 1;
                *slot = Slot {
                    record,
                    seq: self.seq,
                };
                self.sources[index] = compact_source(source);
            }
            Entry::Vacant(v) => {
                let Ok(index) = u32::try_from(slots.len()) else {
                    // Four billion clients do not fit in memory long before this.
                    return Offer::Stale;
                };
                self.seq += 1;
                slots.push(Slot {
                    record,
                    seq: self.seq,
                });
                self.sources.push(compact_source(source));
                v.insert(index);
            }
        }
        Offer::Stored(self.seq)
    }

    /// Loads the table entries, slots and records of up to [`WARM_MAX`] clients into the
    /// cache, so that offering or looking them up right after finds them there.
    ///
    /// A lookup is three dependent memory loads (table entry, slot, record); in a large store
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
        let mut records: [Option<&Record>; WARM_MAX] = [None; WARM_MAX];
        for (r, &i) in records.iter_mut().zip(&index[..n]) {
            *r = self.slots.get(i as usize).map(|s| &*s.record);
        }
        // Stage 3: the records (their time and the start of the client id).
        let mut sum = 0u64;
        for r in records[..n].iter().flatten() {
            let first = r.client().first().copied().unwrap_or(0);
            sum = sum.wrapping_add(r.compact_secs() ^ u64::from(first));
        }
        std::hint::black_box(sum)
    }

    /// The client's current record.
    pub fn get(&self, client: &[u8]) -> Option<&Arc<Record>> {
        let hash = self.hash(client);
        let slots = &self.slots;
        self.table
            .find(hash, |&i| slots[i as usize].record.client() == client)
            .map(|&i| &slots[i as usize].record)
    }

    /// Number of clients held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no client is held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
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
            .slots
            .iter()
            .zip(&self.sources)
            .filter(|(s, &from)| s.seq > seq && (source == 0 || u64::from(from) != source))
            .map(|(s, _)| (s.seq, s.record.clone()))
            .collect();
        out.sort_unstable_by_key(|(seq, _)| *seq);
        out
    }

    /// Every record held, in no particular order.
    pub fn records(&self) -> impl Iterator<Item = &Arc<Record>> + '_ {
        self.slots.iter().map(|s| &s.record)
    }

    /// An order-independent digest of the held AT lines: two stores with the same records
    /// have the same digest (for convergence checks).
    pub fn digest(&self) -> u64 {
        let h = FixedState::with_seed(0x6865_7264);
        self.slots.iter().fold(0u64, |acc, s| {
            acc.wrapping_add(h.hash_one(s.record.at_line()))
        })
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
        let seqs = |v: Vec<(u64, Arc<Record>)>| v.iter().map(|(q, _)| *q).collect::<Vec<_>>();
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
        let seqs = |v: Vec<(u64, Arc<Record>)>| v.iter().map(|(q, _)| *q).collect::<Vec<_>>();
        assert_eq!(seqs(s.changed_since_except(0, 6)), vec![3]);
        assert_eq!(seqs(s.changed_since_except(0, 5)), vec![2, 3, 4]);
        assert_eq!(seqs(s.changed_since_except(0, 0)), vec![2, 3, 4]);
    }
}
