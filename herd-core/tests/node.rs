//! Node behaviour at the edges of a link's life.

use herd_core::testing::{RecordingPeerSink, SeededIds};
use herd_core::{
    ClientAction, MaxItems, Node, NodeConfig, NodeEvent, PeerId, PeerMsg, PlacesQuery,
    QueryOutcome, RadiusKm, ServerName, Timestamp,
};

fn name(s: &str) -> ServerName {
    ServerName::new(s).unwrap()
}

/// The digest of a neighbour (epoch 9) that has never seen this node.
fn first_digest() -> PeerMsg {
    PeerMsg::Digest {
        epoch: 9,
        your_epoch: 0,
        seen: 0,
    }
}

#[test]
fn a_restarted_server_asks_the_herd_over_links_still_reconciling() {
    let cfg = NodeConfig::new(name("A"), vec![name("B")]);
    let mut a = Node::new(cfg, RecordingPeerSink::default(), &mut SeededIds::new(5));
    a.handle_link_up(Timestamp(0), PeerId(0));
    assert!(!a.is_linked(PeerId(0)), "the digest is not answered yet");
    let mut out = Vec::new();
    let action = a.handle_client_line(Timestamp(1), b"WHATSAT kiwi 10 5", &mut out);
    let ClientAction::Pending { ticket, .. } = action else {
        panic!("expected the herd to be asked, got {action:?}")
    };
    let sent = a.sink_mut().take();
    let Some((
        _,
        PeerMsg::Query {
            origin,
            qid,
            client,
        },
    )) = sent
        .iter()
        .find(|(_, m)| matches!(m, PeerMsg::Query { .. }))
        .cloned()
    else {
        panic!("no query sent: {sent:?}")
    };
    assert_eq!((origin.as_str(), &*client), ("A", &b"kiwi"[..]));
    // B answers with its delta first (FIFO), then the query's answer.
    let line = b"AT B +0.000000000 kiwi +1+1 1";
    let record = std::sync::Arc::new(herd_core::Record::parse(line).unwrap());
    a.handle_peer_msg(Timestamp(2), PeerId(0), first_digest())
        .expect("the peer message is handled");
    a.handle_peer_msg(
        Timestamp(2),
        PeerId(0),
        PeerMsg::Update {
            seq: 1,
            record: record.clone(),
        },
    )
    .expect("the peer message is handled");
    a.handle_peer_msg(Timestamp(2), PeerId(0), PeerMsg::Synced { seq: 1 })
        .expect("the peer message is handled");
    a.handle_peer_msg(
        Timestamp(3),
        PeerId(0),
        PeerMsg::Answer {
            origin,
            qid,
            record: Some(record.clone()),
        },
    )
    .expect("the peer message is handled");
    assert_eq!(
        a.poll_event(),
        Some(NodeEvent::QueryDone {
            ticket,
            outcome: QueryOutcome::Places {
                query: PlacesQuery {
                    lat: 1.0,
                    lon: 1.0,
                    radius: RadiusKm::from_km(10.0).unwrap(),
                    max_items: MaxItems::new(5).unwrap(),
                },
                record,
            }
        })
    );
    assert!(out.is_empty());
}

/// A node holding `n` records of its own clients, with one neighbour `B` (down).
fn node_with_records(n: usize, window: usize) -> Node<RecordingPeerSink> {
    let mut cfg = NodeConfig::new(name("A"), vec![name("B")]);
    cfg.resync_window = window;
    let sink = RecordingPeerSink {
        track_backlog: true,
        ..RecordingPeerSink::default()
    };
    let mut a = Node::new(cfg, sink, &mut SeededIds::new(7));
    let mut out = Vec::new();
    for i in 0..n {
        let line = format!("IAMAT c{i} +1+1 {i}");
        let action = a.handle_client_line(Timestamp(1), line.as_bytes(), &mut out);
        assert_eq!(action, ClientAction::Replied);
    }
    a
}

fn update_seqs(sent: &[(PeerId, PeerMsg)]) -> Vec<u64> {
    sent.iter()
        .filter_map(|(_, m)| match m {
            PeerMsg::Update { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

fn encoded_len(msgs: &[(PeerId, PeerMsg)]) -> usize {
    let mut buf = Vec::new();
    for (_, m) in msgs {
        m.encode(&mut buf);
    }
    buf.len()
}

#[test]
fn a_large_delta_is_paced_by_the_backlog_and_live_updates_join_it_in_order() {
    let window = 2_000;
    let mut a = node_with_records(1_000, window);
    a.handle_link_up(Timestamp(2), PeerId(0));
    a.handle_peer_msg(Timestamp(2), PeerId(0), first_digest())
        .expect("the peer message is handled");
    let mut all = Vec::new();
    let mut rounds = 0;
    let mut live = 1_000;
    loop {
        let batch = a.sink_mut().take();
        // Never more than the window plus the one message that crossed it.
        assert!(encoded_len(&batch) < window + 100, "batch too large");
        all.extend(batch.iter().cloned());
        if batch
            .iter()
            .any(|(_, m)| matches!(m, PeerMsg::Synced { .. }))
        {
            break;
        }
        assert!(!a.is_linked(PeerId(0)), "still reconciling");
        // A client update during the delta is not sent on its own: the delta carries it.
        let mut out = Vec::new();
        let line = format!("IAMAT c{live} +1+1 {live}");
        let action = a.handle_client_line(Timestamp(3), line.as_bytes(), &mut out);
        assert_eq!(action, ClientAction::Replied);
        live += 1;
        assert!(a.sink().sent.is_empty(), "live update overtook the delta");
        assert!(
            a.sink_mut().drain(PeerId(0)),
            "the node asked to hear of the drain"
        );
        a.handle_link_drained(Timestamp(3), PeerId(0));
        rounds += 1;
        assert!(rounds < 1_000, "the delta never ends");
    }
    assert!(
        rounds >= 20,
        "a 1000-record delta took only {rounds} windows"
    );
    let seqs = update_seqs(&all);
    let expected: Vec<u64> = (1..=u64::try_from(live).unwrap()).collect();
    assert_eq!(seqs, expected, "every record once, in log order");
    assert_eq!(
        all.last().map(|(_, m)| m.clone()),
        Some(PeerMsg::Synced {
            seq: a.store().seq()
        })
    );
    assert!(a.is_linked(PeerId(0)));
    // Now up: a live update goes out at once.
    let mut out = Vec::new();
    let action = a.handle_client_line(Timestamp(4), b"IAMAT late +1+1 1", &mut out);
    assert_eq!(action, ClientAction::Replied);
    assert_eq!(update_seqs(&a.sink_mut().take()), vec![a.store().seq()]);
}

#[test]
fn a_delta_cut_by_a_link_drop_resumes_from_what_the_peer_saw() {
    let mut a = node_with_records(300, 1_500);
    a.handle_link_up(Timestamp(2), PeerId(0));
    let epoch = a.epoch();
    a.handle_peer_msg(Timestamp(2), PeerId(0), first_digest())
        .expect("the peer message is handled");
    let first = update_seqs(&a.sink_mut().take());
    assert!(!first.is_empty() && first.len() < 300, "{}", first.len());
    let seen = *first.last().unwrap();
    // The link drops before the drain: the request dies with the session.
    a.handle_link_down(Timestamp(3), PeerId(0));
    a.handle_link_drained(Timestamp(3), PeerId(0));
    assert!(
        a.sink_mut().take().is_empty(),
        "nothing sent on a dead link"
    );
    a.sink_mut().drain(PeerId(0));
    // A new session: the peer saw up to `seen` of this incarnation's log.
    a.handle_link_up(Timestamp(4), PeerId(0));
    a.sink_mut().take();
    a.handle_peer_msg(
        Timestamp(4),
        PeerId(0),
        PeerMsg::Digest {
            epoch: 9,
            your_epoch: epoch,
            seen,
        },
    )
    .expect("the peer message is handled");
    let mut rest = Vec::new();
    loop {
        let batch = a.sink_mut().take();
        rest.extend(update_seqs(&batch));
        if batch
            .iter()
            .any(|(_, m)| matches!(m, PeerMsg::Synced { .. }))
        {
            break;
        }
        a.sink_mut().drain(PeerId(0));
        a.handle_link_drained(Timestamp(5), PeerId(0));
    }
    assert_eq!(rest, (seen + 1..=300).collect::<Vec<_>>());
}

#[test]
fn the_journal_holds_every_stored_record_once_and_restore_refills_a_fresh_node() {
    let mut cfg = NodeConfig::new(name("A"), vec![name("B")]);
    cfg.journal = true;
    let mut a = Node::new(
        cfg.clone(),
        RecordingPeerSink::default(),
        &mut SeededIds::new(3),
    );
    let mut out = Vec::new();
    let action = a.handle_client_line(Timestamp(1), b"IAMAT kiwi +1+1 5", &mut out);
    assert_eq!(action, ClientAction::Replied);
    // Older: answered, not stored.
    let action = a.handle_client_line(Timestamp(1), b"IAMAT kiwi +1+1 4", &mut out);
    assert_eq!(action, ClientAction::Replied);
    let action = a.handle_client_line(Timestamp(1), b"WHATSAT kiwi 10 5", &mut out);
    assert!(matches!(action, ClientAction::Places { .. }), "{action:?}");
    a.handle_link_up(Timestamp(2), PeerId(0));
    let from_peer = herd_core::Record::parse(b"AT B +0.000000000 pear +2+2 7").unwrap();
    a.handle_peer_msg(
        Timestamp(2),
        PeerId(0),
        PeerMsg::Update {
            seq: 1,
            record: std::sync::Arc::new(from_peer),
        },
    )
    .expect("the peer message is handled");
    let lines: Vec<Vec<u8>> = a.drain_journal().map(|r| r.at_line().to_vec()).collect();
    assert_eq!(lines.len(), 2, "one per stored record");
    assert!(lines[0].ends_with(b"kiwi +1+1 5"));
    assert_eq!(lines[1], b"AT B +0.000000000 pear +2+2 7");
    assert_eq!(a.drain_journal().count(), 0, "drained");

    // A fresh incarnation restores them: no flood, no journal entry, and a neighbour's digest
    // gets them.
    let mut b = Node::new(cfg, RecordingPeerSink::default(), &mut SeededIds::new(4));
    for l in &lines {
        let r = std::sync::Arc::new(herd_core::Record::parse(l).unwrap());
        assert!(b.restore(Timestamp(3), r.clone()));
        assert!(
            !b.restore(Timestamp(3), r),
            "the same record again is not new"
        );
    }
    assert_eq!(b.store().len(), 2);
    assert_eq!(b.drain_journal().count(), 0);
    assert!(b.sink().sent.is_empty());
    b.handle_link_up(Timestamp(3), PeerId(0));
    b.handle_peer_msg(Timestamp(3), PeerId(0), first_digest())
        .expect("the peer message is handled");
    assert_eq!(update_seqs(&b.sink_mut().take()), vec![1, 2]);
}

#[test]
fn a_handshake_line_after_the_handshake_is_a_protocol_error() {
    let cfg = NodeConfig::new(name("A"), vec![name("B")]);
    let mut a = Node::new(cfg, RecordingPeerSink::default(), &mut SeededIds::new(5));
    a.handle_link_up(Timestamp(0), PeerId(0));
    for line in [
        &b"HERD/2 HELLO B A 1 0000000000000000000000000000000a -"[..],
        b"HERD/2 AUTH -",
    ] {
        assert!(herd_core::Handshake::parse(line).is_ok());
        assert!(a.handle_peer_line(Timestamp(1), PeerId(0), line).is_err());
    }
    assert_eq!(a.stats().peer_errors, 2);
}

#[test]
fn a_whatsat_left_unanswered_by_the_herd_ends_with_its_question_mark_reply() {
    let cfg = NodeConfig::new(name("A"), vec![name("B")]);
    let mut a = Node::new(cfg, RecordingPeerSink::default(), &mut SeededIds::new(5));
    a.handle_link_up(Timestamp(0), PeerId(0));
    let mut out = Vec::new();
    let line = b"WHATSAT nobody 10 5";
    let ClientAction::Pending { ticket } = a.handle_client_line(Timestamp(1), line, &mut out)
    else {
        panic!("expected the herd to be asked")
    };
    assert!(out.is_empty());
    assert_eq!(a.poll_event(), None);
    // The only neighbour goes away: its "no" ends the wave.
    a.handle_link_down(Timestamp(2), PeerId(0));
    assert_eq!(
        a.poll_event(),
        Some(NodeEvent::QueryDone {
            ticket,
            outcome: QueryOutcome::Reply(b"? WHATSAT nobody 10 5\n".to_vec()),
        })
    );
    // The deadline drops the query without a second event.
    a.handle_timeout(Timestamp(u64::MAX));
    assert_eq!(a.poll_event(), None);
    assert_eq!(a.queries_in_flight(), 0);
}
