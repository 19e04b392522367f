//! The herd query: a WHATSAT for a client this node does not know floods a
//! [`PeerMsg::Query`] that collects answers back along its spanning tree (an echo wave) and is
//! answered by a deadline, with one [`NodeEvent::QueryDone`] for the local asker.

use std::sync::Arc;

use super::{places_query, LinkState, Node, NodeEvent, QueryOutcome};
use crate::peer::PeerMsg;
use crate::ports::{PeerId, PeerSink};
use crate::protocol::write_invalid;
use crate::record::Record;
use crate::types::{MaxItems, RadiusKm, ServerName, Timestamp};

pub(super) type QueryKey = (ServerName, u64);

/// What a WHATSAT that waits on the herd needs to be answered.
#[derive(Debug, Clone)]
pub(super) struct Asker {
    /// The client's line, for the `? ` reply.
    pub(super) line: Box<[u8]>,
    pub(super) radius: RadiusKm,
    pub(super) max_items: MaxItems,
}

/// Where a query's answer goes.
#[derive(Debug, Clone)]
pub(super) enum Parent {
    /// The neighbour the query came from.
    Peer(PeerId),
    /// This node's own client.
    Local(Asker),
}

#[derive(Debug, Clone)]
pub(super) struct QueryState {
    /// Where answers go.
    parent: Parent,
    client: Box<[u8]>,
    pub(super) waiting: Vec<PeerId>,
    done: bool,
    deadline: Timestamp,
}

impl<S: PeerSink> Node<S> {
    /// Links a query may travel: every link that is up, synchronised or not. A query on a
    /// link still reconciling is answered after the peer's delta (the link is FIFO), so a
    /// server that has just restarted can already find its clients through the herd.
    fn up_links_except(&self, except: Option<PeerId>) -> Vec<PeerId> {
        (0..self.links.len())
            .map(PeerId)
            .filter(|&p| Some(p) != except && self.links[p.0].state != LinkState::Down)
            .collect()
    }

    /// Starts a query for a local client; `None` when it can be answered "unknown" at once.
    pub(super) fn start_query(
        &mut self,
        now: Timestamp,
        client: &[u8],
        asker: Asker,
    ) -> Option<u64> {
        let targets = self.up_links_except(None);
        if targets.is_empty() || self.queries.len() >= self.cfg.max_queries {
            return None;
        }
        self.stats.queries_started += 1;
        self.next_qid = self.next_qid.wrapping_add(1);
        let key = (self.cfg.name.clone(), self.next_qid);
        self.forward_query(now, Parent::Local(asker), key, client.into(), targets);
        Some(self.next_qid)
    }

    fn forward_query(
        &mut self,
        now: Timestamp,
        parent: Parent,
        key: QueryKey,
        client: Box<[u8]>,
        targets: Vec<PeerId>,
    ) {
        let msg = PeerMsg::Query {
            origin: key.0.clone(),
            qid: key.1,
            client: client.clone(),
        };
        for &t in &targets {
            self.send(t, &msg);
        }
        let deadline = now.plus(self.cfg.query_timeout);
        let done = targets.is_empty();
        self.query_order.push_back((deadline, key.clone()));
        self.queries.insert(
            key,
            QueryState {
                parent,
                client,
                waiting: targets,
                done,
                deadline,
            },
        );
    }

    pub(super) fn on_query(
        &mut self,
        now: Timestamp,
        from: PeerId,
        key: QueryKey,
        client: Box<[u8]>,
    ) {
        let (origin, qid) = (key.0.clone(), key.1);
        let answer = |record| PeerMsg::Answer {
            origin: origin.clone(),
            qid,
            record,
        };
        if self.queries.contains_key(&key)
            || key.0 == self.cfg.name
            || self.queries.len() >= self.cfg.max_queries
        {
            // Already part of this wave (or no room): answer "no" so the sender need not wait.
            self.send(from, &answer(None));
            return;
        }
        if let Some(record) = self.store.get(&client).map(Arc::new) {
            self.send(from, &answer(Some(record)));
            self.forward_query(now, Parent::Peer(from), key, client, Vec::new());
            return;
        }
        let targets = self.up_links_except(Some(from));
        if targets.is_empty() {
            self.send(from, &answer(None));
        }
        self.forward_query(now, Parent::Peer(from), key, client, targets);
    }

    pub(super) fn on_answer(
        &mut self,
        _now: Timestamp,
        from: PeerId,
        key: QueryKey,
        record: Option<Arc<Record>>,
    ) {
        let Some(q) = self.queries.get_mut(&key) else {
            return;
        };
        let Some(pos) = q.waiting.iter().position(|&p| p == from) else {
            return;
        };
        q.waiting.swap_remove(pos);
        if q.done || (record.is_none() && !q.waiting.is_empty()) {
            return;
        }
        q.done = true;
        let (parent, client) = (q.parent.clone(), q.client.clone());
        self.finish_query(parent, key, &client, record);
    }

    /// Reports a query's result: to the parent neighbour, or as an event for a local client.
    /// The store's record, else `answer` (one the store could not take for want of room).
    fn finish_query(
        &mut self,
        parent: Parent,
        key: QueryKey,
        client: &[u8],
        answer: Option<Arc<Record>>,
    ) {
        let record = self.store.get(client).map(Arc::new).or(answer);
        match parent {
            Parent::Peer(p) => {
                let msg = PeerMsg::Answer {
                    origin: key.0,
                    qid: key.1,
                    record,
                };
                self.send(p, &msg);
            }
            Parent::Local(asker) => {
                let outcome = match record {
                    Some(record) => {
                        self.stats.queries_found += 1;
                        QueryOutcome::Places {
                            query: places_query(&record, asker.radius, asker.max_items),
                            record,
                        }
                    }
                    None => {
                        self.stats.whatsats_unknown += 1;
                        let mut reply = Vec::new();
                        write_invalid(&asker.line, &mut reply);
                        QueryOutcome::Reply(reply)
                    }
                };
                self.events.push_back(NodeEvent::QueryDone {
                    ticket: key.1,
                    outcome,
                });
            }
        }
    }

    // === timers ===

    /// When [`Node::handle_timeout`] should next be called, if ever: the earliest query
    /// deadline, record expiry ([`super::NodeConfig::record_ttl`]), announcement batch or
    /// graft timer (the broadcast tree's).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let query = self.query_order.front().map(|(t, _)| *t);
        [query, self.store.next_expiry(), self.tree.next_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Removes the records expired at `now`, sends the announcement batches and grafts due,
    /// and expires queries whose deadline has passed;
    /// a local one still unanswered is answered from the store (which an update may have
    /// filled meanwhile), else "unknown".
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.expire(now);
        self.tree_timeout(now);
        while let Some((deadline, _)) = self.query_order.front() {
            if *deadline > now {
                break;
            }
            let Some((deadline, key)) = self.query_order.pop_front() else {
                break;
            };
            let Some(q) = self.queries.get(&key) else {
                continue;
            };
            if q.deadline != deadline {
                continue;
            }
            let Some(q) = self.queries.remove(&key) else {
                continue;
            };
            if !q.done && matches!(q.parent, Parent::Local(_)) {
                self.finish_query(q.parent, key, &q.client, None);
            }
        }
    }

    /// Number of herd queries tracked now.
    pub fn queries_in_flight(&self) -> usize {
        self.queries.len()
    }
}
