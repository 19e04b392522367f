//! A running node's neighbours and limits change: neighbours added and removed, limits set.

use std::sync::Arc;
use std::time::Duration;

use herd_core::testing::{RecordingPeerSink, SeededIds};
use herd_core::{
    ClientAction, Node, NodeConfig, NodeEvent, PeerId, PeerMsg, QueryOutcome, Record, ServerName,
    Timestamp,
};

fn name(s: &str) -> ServerName {
    ServerName::new(s).unwrap()
}

fn secs(n: u64) -> Timestamp {
    Timestamp(n * 1_000_000_000)
}

fn node(neighbours: &[&str]) -> Node<RecordingPeerSink> {
    let cfg = NodeConfig::new(name("A"), neighbours.iter().map(|n| name(n)).collect());
    Node::new(cfg, RecordingPeerSink::default(), &mut SeededIds::new(3))
}

/// Brings `peer`'s link up and through an empty reconciliation (the peer has seen nothing).
fn link(a: &mut Node<RecordingPeerSink>, now: Timestamp, peer: PeerId) {
    a.handle_link_up(now, peer);
    let digest = PeerMsg::Digest {
        epoch: 100 + peer.0 as u64,
        your_epoch: 0,
        seen: 0,
    };
    a.handle_peer_msg(now, peer, digest).unwrap();
    a.handle_peer_msg(now, peer, PeerMsg::Synced { seq: 0 })
        .unwrap();
    assert!(a.is_linked(peer));
}

fn iamat(a: &mut Node<RecordingPeerSink>, now: Timestamp, line: &str) {
    let mut out = Vec::new();
    assert_eq!(
        a.handle_client_line(now, line.as_bytes(), &mut out),
        ClientAction::Replied
    );
}

fn updates_to(sent: &[(PeerId, PeerMsg)], peer: PeerId) -> usize {
    sent.iter()
        .filter(|(p, m)| *p == peer && matches!(m, PeerMsg::Update { .. }))
        .count()
}

#[test]
fn an_added_neighbour_gets_the_next_id_and_the_whole_store_when_it_links() {
    let mut a = node(&["B"]);
    iamat(&mut a, secs(1), "IAMAT kiwi +1+1 1");
    iamat(&mut a, secs(1), "IAMAT lime +1+1 1");
    let c = a.add_neighbour(name("C"));
    assert_eq!(c, PeerId(1));
    assert_eq!(a.add_neighbour(name("C")), c, "a present name keeps its id");
    assert_eq!(a.neighbours(), [name("B"), name("C")]);
    assert!(!a.is_linked(c));
    link(&mut a, secs(2), c);
    let sent = a.sink_mut().take();
    assert_eq!(updates_to(&sent, c), 2, "the delta carries the store");
    iamat(&mut a, secs(3), "IAMAT kiwi +2+2 3");
    assert_eq!(
        updates_to(&a.sink_mut().take(), c),
        1,
        "and floods reach it"
    );
}

#[test]
fn a_removed_neighbour_is_never_offered_updates_queries_or_a_session_again() {
    let mut a = node(&["B", "C"]);
    let (b, c) = (PeerId(0), PeerId(1));
    link(&mut a, secs(1), b);
    link(&mut a, secs(1), c);
    a.sink_mut().take();
    a.remove_neighbour(secs(2), c);
    assert!(a.is_removed(c) && !a.is_removed(b));
    assert!(!a.is_linked(c));
    assert_eq!(a.neighbours().len(), 2, "ids keep their meaning");
    let active: Vec<_> = a.active_neighbours().map(|(p, n)| (p, n.clone())).collect();
    assert_eq!(active, [(b, name("B"))]);

    iamat(&mut a, secs(3), "IAMAT kiwi +1+1 3");
    let mut out = Vec::new();
    let action = a.handle_client_line(secs(3), b"WHATSAT nobody 10 5", &mut out);
    assert!(matches!(action, ClientAction::Pending { .. }), "{action:?}");
    let sent = a.sink_mut().take();
    assert!(sent.iter().all(|(p, _)| *p == b), "nothing to C: {sent:?}");
    assert_eq!(updates_to(&sent, b), 1);

    // A session for it is ignored, and so are its messages.
    a.handle_link_up(secs(4), c);
    assert!(!a.is_linked(c));
    assert!(
        a.sink_mut().take().is_empty(),
        "no digest to a removed peer"
    );
    let errors = a.stats().peer_errors;
    let record = Arc::new(Record::parse(b"AT C +0.000000000 lime +1+1 4").unwrap());
    a.handle_peer_msg(secs(4), c, PeerMsg::Update { seq: 1, record })
        .unwrap();
    assert!(a.store().get(b"lime").is_none());
    assert_eq!(a.stats().peer_errors, errors + 1);

    // Removing again, or an unknown id, changes nothing; a new C gets a new id.
    a.remove_neighbour(secs(5), c);
    a.remove_neighbour(secs(5), PeerId(9));
    let c2 = a.add_neighbour(name("C"));
    assert_eq!(c2, PeerId(2), "ids are never reused");
    link(&mut a, secs(6), c2);
    assert_eq!(updates_to(&a.sink_mut().take(), c2), 1, "kiwi in its delta");
}

#[test]
fn a_query_waiting_on_a_removed_neighbour_still_finishes_early() {
    let mut a = node(&["B", "C"]);
    let (b, c) = (PeerId(0), PeerId(1));
    link(&mut a, secs(1), b);
    link(&mut a, secs(1), c);
    a.sink_mut().take();
    let mut out = Vec::new();
    let ClientAction::Pending { ticket } =
        a.handle_client_line(secs(2), b"WHATSAT nobody 10 5", &mut out)
    else {
        panic!("the herd is asked")
    };
    let sent = a.sink_mut().take();
    let Some(PeerMsg::Query { origin, qid, .. }) =
        sent.iter().find(|(p, _)| *p == b).map(|(_, m)| m.clone())
    else {
        panic!("no query to B: {sent:?}")
    };
    a.handle_peer_msg(
        secs(2),
        b,
        PeerMsg::Answer {
            origin,
            qid,
            record: None,
        },
    )
    .unwrap();
    assert_eq!(a.poll_event(), None, "C's answer is still awaited");
    a.remove_neighbour(secs(2), c);
    let Some(NodeEvent::QueryDone {
        ticket: t,
        outcome: QueryOutcome::Reply(reply),
    }) = a.poll_event()
    else {
        panic!("the query ends when C is removed")
    };
    assert_eq!((t, &reply[..]), (ticket, &b"? WHATSAT nobody 10 5\n"[..]));
}

#[test]
fn a_query_from_a_removed_neighbour_is_not_answered_to_it() {
    let mut a = node(&["B", "C"]);
    let (b, c) = (PeerId(0), PeerId(1));
    link(&mut a, secs(1), b);
    link(&mut a, secs(1), c);
    a.sink_mut().take();
    let query = PeerMsg::Query {
        origin: name("C"),
        qid: 7,
        client: b"nobody"[..].into(),
    };
    a.handle_peer_msg(secs(2), c, query).unwrap();
    a.sink_mut().take();
    a.remove_neighbour(secs(2), c);
    let qid = 7;
    a.handle_peer_msg(
        secs(2),
        b,
        PeerMsg::Answer {
            origin: name("C"),
            qid,
            record: None,
        },
    )
    .unwrap();
    let sent = a.sink_mut().take();
    assert!(sent.is_empty(), "the answer owed to C is dropped: {sent:?}");
    assert_eq!(a.stats().send_failures, 0);
}

#[test]
fn limits_change_live_and_a_new_lifetime_applies_to_held_records_at_once() {
    let mut a = node(&[]);
    iamat(&mut a, secs(100), "IAMAT old +1+1 10");
    iamat(&mut a, secs(100), "IAMAT new +1+1 95");
    assert_eq!(a.store().len(), 2);
    assert_eq!(a.poll_timeout(), None, "no lifetime: nothing to expire");

    let mut limits = a.limits();
    limits.record_ttl = Some(Duration::from_secs(60));
    a.set_limits(secs(100), limits);
    assert_eq!(a.limits(), limits);
    assert!(a.store().get(b"old").is_none(), "old expired at 70 s");
    assert_eq!(a.stats().expired, 1);
    assert_eq!(a.poll_timeout(), Some(secs(155)));
    a.handle_timeout(secs(155));
    assert!(a.store().is_empty());

    // A lower client id bound and a store bound apply to what comes next.
    limits.record_ttl = None;
    limits.max_client_id_bytes = 4;
    limits.max_records = Some(1);
    a.set_limits(secs(200), limits);
    let mut out = Vec::new();
    let _ = a.handle_client_line(secs(200), b"IAMAT toolong +1+1 200", &mut out);
    assert_eq!(out, b"? IAMAT toolong +1+1 200\n");
    iamat(&mut a, secs(200), "IAMAT kiwi +1+1 200");
    iamat(&mut a, secs(200), "IAMAT lime +1+1 200");
    assert_eq!(a.store().len(), 1);
    assert_eq!(a.stats().records_refused, 1);
    limits.max_records = None;
    a.set_limits(secs(201), limits);
    iamat(&mut a, secs(201), "IAMAT lime +1+1 201");
    assert_eq!(a.store().len(), 2);
    // Skew bound.
    limits.max_future_skew = Some(Duration::from_secs(1));
    a.set_limits(secs(202), limits);
    iamat(&mut a, secs(202), "IAMAT figs +1+1 300");
    assert_eq!(a.stats().future_refused, 1);
}

#[test]
fn a_new_query_timeout_applies_to_queries_started_after_it() {
    let mut a = node(&["B"]);
    link(&mut a, secs(1), PeerId(0));
    let mut limits = a.limits();
    limits.query_timeout = Duration::from_secs(5);
    a.set_limits(secs(1), limits);
    let mut out = Vec::new();
    let _ = a.handle_client_line(secs(1), b"WHATSAT nobody 10 5", &mut out);
    assert_eq!(a.poll_timeout(), Some(secs(6)));
}
