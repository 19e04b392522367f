//! The node under hostile load: one reconciliation per session, and the limits on client ids,
//! records, record lifetimes and client clocks.

use std::sync::Arc;
use std::time::Duration;

use herd_core::node::DEFAULT_MAX_CLIENT_ID_BYTES;
use herd_core::testing::{RecordingPeerSink, SeededIds};
use herd_core::{
    ClientAction, Node, NodeConfig, NodeEvent, PeerError, PeerId, PeerMsg, QueryOutcome, Record,
    ServerName, Timestamp,
};

fn name(s: &str) -> ServerName {
    ServerName::new(s).unwrap()
}

fn node(cfg: NodeConfig) -> Node<RecordingPeerSink> {
    Node::new(cfg, RecordingPeerSink::default(), &mut SeededIds::new(5))
}

fn linked_node() -> Node<RecordingPeerSink> {
    node(NodeConfig::new(name("A"), vec![name("B")]))
}

#[test]
fn a_second_digest_in_one_session_is_a_protocol_error_and_is_not_answered() {
    let mut a = linked_node();
    let mut out = Vec::new();
    for i in 0..3 {
        let line = format!("IAMAT c{i} +1+1 {i}");
        let _ = a.handle_client_line(Timestamp(1), line.as_bytes(), &mut out);
    }
    a.handle_link_up(Timestamp(2), PeerId(0));
    let d = b"D 9 0 0";
    assert_eq!(a.handle_peer_line(Timestamp(3), PeerId(0), d), Ok(()));
    let answer = a.sink_mut().take();
    // The digest, three updates and Synced.
    assert_eq!(answer.len(), 5, "{answer:?}");
    assert!(a.is_linked(PeerId(0)));
    for _ in 0..3 {
        assert_eq!(
            a.handle_peer_line(Timestamp(4), PeerId(0), d),
            Err(PeerError::RepeatedDigest)
        );
    }
    assert!(a.sink_mut().take().is_empty(), "no delta is rebuilt");
    assert_eq!(a.stats().peer_errors, 3);
    assert_eq!(
        PeerError::RepeatedDigest.to_string(),
        "second digest in one session"
    );
    // A new session honours one digest again.
    a.handle_link_up(Timestamp(5), PeerId(0));
    let msg = PeerMsg::Digest {
        epoch: 9,
        your_epoch: a.epoch(),
        seen: 3,
    };
    assert_eq!(
        a.handle_peer_msg(Timestamp(6), PeerId(0), msg.clone()),
        Ok(())
    );
    assert_eq!(
        a.handle_peer_msg(Timestamp(6), PeerId(0), msg),
        Err(PeerError::RepeatedDigest)
    );
    // A malformed line is a parse error.
    assert!(matches!(
        a.handle_peer_line(Timestamp(7), PeerId(0), b"D 1"),
        Err(PeerError::Parse(_))
    ));
    assert_eq!(a.stats().peer_errors, 5);
}

const SEC: u64 = 1_000_000_000;

fn secs(n: u64) -> Timestamp {
    Timestamp(n * SEC)
}

/// Sends a client line; returns the reply bytes.
fn client(a: &mut Node<RecordingPeerSink>, now: Timestamp, line: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let action = a.handle_client_line(now, line.as_bytes(), &mut out);
    assert!(
        matches!(action, ClientAction::Replied),
        "{line}: {action:?}"
    );
    out
}

/// The AT line an IAMAT received at `now` gets.
fn at_line(now: Timestamp, line: &str) -> Vec<u8> {
    let mut a = node(NodeConfig::new(name("A"), vec![]));
    client(&mut a, now, line)
}

/// A node of `cfg` (one neighbour, B) whose link is up and synchronised.
fn synced(cfg: NodeConfig) -> Node<RecordingPeerSink> {
    let mut a = node(cfg);
    a.handle_link_up(Timestamp(0), PeerId(0));
    a.handle_peer_line(Timestamp(0), PeerId(0), b"D 9 0 0")
        .expect("the first digest is handled");
    a.sink_mut().take();
    assert!(a.is_linked(PeerId(0)));
    a
}

fn updates_sent(a: &mut Node<RecordingPeerSink>) -> usize {
    a.sink_mut()
        .take()
        .iter()
        .filter(|(_, m)| matches!(m, PeerMsg::Update { .. }))
        .count()
}

fn record(line: &str) -> Arc<Record> {
    Arc::new(Record::parse(line.as_bytes()).expect("a valid AT line"))
}

#[test]
fn client_ids_over_the_limit_are_invalid_lines_and_peer_records_with_them_are_dropped() {
    assert_eq!(
        NodeConfig::new(name("A"), vec![]).max_client_id_bytes,
        DEFAULT_MAX_CLIENT_ID_BYTES
    );
    assert_eq!(DEFAULT_MAX_CLIENT_ID_BYTES, 256);
    // The default: 256 bytes pass, 257 do not.
    let mut d = node(NodeConfig::new(name("A"), vec![]));
    let ok = format!("IAMAT {} +1+1 1", "c".repeat(256));
    assert!(client(&mut d, secs(1), &ok).starts_with(b"AT A "));
    let long = format!("IAMAT {} +1+1 1", "c".repeat(257));
    assert_eq!(
        client(&mut d, secs(1), &long),
        format!("? {long}\n").into_bytes()
    );
    assert_eq!(
        (d.stats().iamats, d.stats().invalid, d.store().len()),
        (1, 1, 1)
    );

    let mut cfg = NodeConfig::new(name("A"), vec![name("B")]);
    cfg.max_client_id_bytes = 8;
    let mut a = synced(cfg);
    assert!(client(&mut a, secs(1), "IAMAT 12345678 +1+1 1").starts_with(b"AT A "));
    for line in ["IAMAT 123456789 +1+1 1", "WHATSAT 123456789 10 5"] {
        assert_eq!(
            client(&mut a, secs(1), line),
            format!("? {line}\n").into_bytes()
        );
    }
    assert_eq!((a.stats().iamats, a.stats().whatsats), (1, 0));
    assert_eq!(a.stats().invalid, 2);
    assert_eq!(
        a.stats().queries_started,
        0,
        "no herd query for a refused id"
    );
    a.sink_mut().take();
    // From a peer: not stored, counted, the link stays.
    let u = b"U 1 AT B +0.000000000 123456789 +1+1 1";
    assert_eq!(a.handle_peer_line(secs(2), PeerId(0), u), Ok(()));
    assert!(a.store().get(b"123456789").is_none());
    assert_eq!(a.stats().long_ids_refused, 1);
    assert_eq!(updates_sent(&mut a), 0);
    assert!(!a.restore(secs(2), record("AT B +0.000000000 123456789 +1+1 1")));
    assert_eq!(a.stats().long_ids_refused, 2);
    assert_eq!(a.store().len(), 1);
}

#[test]
fn a_full_store_answers_new_clients_without_keeping_them_and_still_updates_known_ones() {
    let mut cfg = NodeConfig::new(name("A"), vec![name("B")]);
    cfg.max_records = Some(2);
    let mut a = synced(cfg);
    for c in ["a", "b"] {
        client(&mut a, secs(1), &format!("IAMAT {c} +1+1 1"));
    }
    assert_eq!(updates_sent(&mut a), 2);
    let line = "IAMAT c +1+1 1";
    assert_eq!(client(&mut a, secs(1), line), at_line(secs(1), line));
    assert!(a.store().get(b"c").is_none());
    assert_eq!(updates_sent(&mut a), 0, "a refused record is not flooded");
    assert_eq!(
        (a.stats().records_refused, a.stats().stored, a.stats().stale),
        (1, 2, 0)
    );
    // A known client's newer record still replaces its old one, and is flooded.
    client(&mut a, secs(2), "IAMAT a +2+2 2");
    assert_eq!(a.store().get(b"a").unwrap().time().secs, 2);
    assert_eq!(updates_sent(&mut a), 1);
    // A peer's record for a new client is dropped and counted; for a known one, taken.
    let new = b"U 1 AT B +0.000000000 d +1+1 1";
    assert_eq!(a.handle_peer_line(secs(3), PeerId(0), new), Ok(()));
    let known = b"U 2 AT B +0.000000000 b +1+1 5";
    assert_eq!(a.handle_peer_line(secs(3), PeerId(0), known), Ok(()));
    assert!(a.store().get(b"d").is_none());
    assert_eq!(a.store().get(b"b").unwrap().time().secs, 5);
    assert_eq!(a.stats().records_refused, 2);
    assert!(!a.restore(secs(3), record("AT B +0.000000000 e +1+1 1")));
    assert_eq!((a.stats().records_refused, a.store().len()), (3, 2));
    // The herd still answers a WHATSAT about a client the full store cannot keep.
    let mut out = Vec::new();
    let ClientAction::Pending { ticket } =
        a.handle_client_line(secs(4), b"WHATSAT f 10 5", &mut out)
    else {
        panic!("the herd is asked")
    };
    let qid = a
        .sink_mut()
        .take()
        .iter()
        .find_map(|(_, m)| match m {
            PeerMsg::Query { qid, .. } => Some(*qid),
            _ => None,
        })
        .expect("a query was sent");
    let answer = format!("R A {qid} + AT B +0.000000000 f +3+3 1");
    assert_eq!(
        a.handle_peer_line(secs(4), PeerId(0), answer.as_bytes()),
        Ok(())
    );
    let Some(NodeEvent::QueryDone {
        ticket: t,
        outcome: QueryOutcome::Places { record, .. },
    }) = a.poll_event()
    else {
        panic!("the query is answered with the herd's record")
    };
    assert_eq!((t, record.client()), (ticket, &b"f"[..]));
    assert!(a.store().get(b"f").is_none());
}

#[test]
fn records_expire_by_their_client_time_and_leave_store_digest_queries_and_deltas() {
    let mut cfg = NodeConfig::new(name("A"), vec![name("B")]);
    cfg.record_ttl = Some(Duration::from_secs(10));
    let mut a = node(cfg);
    // Received at 100 s with client time 95 s: it expires at 105 s, whatever its arrival.
    client(&mut a, secs(100), "IAMAT early +1+1 95");
    client(&mut a, secs(100), "IAMAT late +1+1 99.5");
    client(&mut a, secs(100), "IAMAT far +1+1 99999999999999999999.9");
    assert_eq!(a.store().len(), 3);
    assert_eq!(a.poll_timeout(), Some(secs(105)));
    let before = a.store().digest();
    a.handle_timeout(secs(104));
    assert_eq!(a.store().len(), 3);
    a.handle_timeout(secs(105));
    assert!(a.store().get(b"early").is_none());
    assert_eq!(a.stats().expired, 1);
    assert_ne!(a.store().digest(), before);
    assert_eq!(
        a.store().digest(),
        herd_core::store::digest_of(a.store().records())
    );
    assert_eq!(a.poll_timeout(), Some(Timestamp(109_500_000_000)));
    // A WHATSAT after the expiry, even before the timer ran, is as for an unknown client
    // (no link is up: answered unknown at once).
    assert_eq!(
        client(&mut a, secs(110), "WHATSAT late 10 5"),
        b"? WHATSAT late 10 5\n".to_vec()
    );
    assert_eq!(a.stats().expired, 2);
    // A record that arrives expired is answered (from a client) but not stored.
    let line = "IAMAT old +1+1 100";
    assert_eq!(client(&mut a, secs(110), line), at_line(secs(110), line));
    assert!(a.store().get(b"old").is_none());
    assert_eq!(a.stats().expired_on_arrival, 1);
    assert!(!a.restore(secs(110), record("AT B +0.000000000 old2 +1+1 99")));
    assert_eq!(a.stats().expired_on_arrival, 2);
    // The huge time never expires and never asks for a timer.
    assert_eq!(a.poll_timeout(), None);
    a.handle_timeout(Timestamp(u64::MAX));
    assert_eq!(a.store().len(), 1);

    // Reconciliation leaves expired records out, and a peer's expired record is dropped.
    let mut cfg = NodeConfig::new(name("A"), vec![name("B")]);
    cfg.record_ttl = Some(Duration::from_secs(10));
    let mut a = node(cfg);
    client(&mut a, secs(100), "IAMAT x +1+1 95");
    client(&mut a, secs(100), "IAMAT y +1+1 100");
    a.handle_link_up(secs(106), PeerId(0));
    a.handle_peer_line(secs(106), PeerId(0), b"D 9 0 0")
        .unwrap();
    let sent: Vec<Vec<u8>> = a
        .sink_mut()
        .take()
        .iter()
        .filter_map(|(_, m)| match m {
            PeerMsg::Update { record, .. } => Some(record.client().to_vec()),
            _ => None,
        })
        .collect();
    assert_eq!(sent, vec![b"y".to_vec()]);
    let u = b"U 1 AT B +0.000000000 z +1+1 50";
    assert_eq!(a.handle_peer_line(secs(106), PeerId(0), u), Ok(()));
    assert!(a.store().get(b"z").is_none());
    assert_eq!(a.stats().expired_on_arrival, 1);
}

#[test]
fn an_iamat_too_far_in_the_future_is_answered_but_not_kept() {
    let mut cfg = NodeConfig::new(name("A"), vec![name("B")]);
    cfg.max_future_skew = Some(Duration::from_secs(5));
    let mut a = synced(cfg);
    let line = "IAMAT ahead +1+1 105.000000001";
    assert_eq!(client(&mut a, secs(100), line), at_line(secs(100), line));
    let huge = "IAMAT huge +1+1 99999999999999999999";
    assert_eq!(client(&mut a, secs(100), huge), at_line(secs(100), huge));
    assert_eq!(a.store().len(), 0);
    assert_eq!(updates_sent(&mut a), 0);
    assert_eq!(a.stats().future_refused, 2);
    client(&mut a, secs(100), "IAMAT ok +1+1 105");
    assert!(a.store().get(b"ok").is_some());
    assert_eq!(updates_sent(&mut a), 1);
    // Only clients' times are checked: a peer's record was its origin's to judge.
    let u = b"U 1 AT B +0.000000000 peer +1+1 999";
    assert_eq!(a.handle_peer_line(secs(100), PeerId(0), u), Ok(()));
    assert!(a.store().get(b"peer").is_some());
    assert_eq!(a.stats().future_refused, 2);
}
