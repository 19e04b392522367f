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

/// The client ids and lines of the updates among `sent`.
fn update_lines(sent: &[(PeerId, PeerMsg)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    sent.iter()
        .filter_map(|(_, m)| match m {
            PeerMsg::Update { record, .. } => {
                Some((record.client().to_vec(), record.at_line().to_vec()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_link_that_falls_behind_is_caught_up_from_the_store_with_each_client_once() {
    let mut a = node_with_records(0, 1_000);
    let mut cfg_limits = a.limits();
    cfg_limits.catch_up_bytes = 2_000;
    a.set_limits(Timestamp(1), cfg_limits);
    a.handle_link_up(Timestamp(2), PeerId(0));
    a.handle_peer_msg(Timestamp(2), PeerId(0), first_digest())
        .expect("the peer message is handled");
    assert!(a.is_linked(PeerId(0)), "an empty store syncs at once");
    a.sink_mut().take();
    a.sink_mut().drain(PeerId(0));
    let mut out = Vec::new();
    let mut iamat = |a: &mut Node<RecordingPeerSink>, client: usize, t: usize| {
        let line = format!("IAMAT c{client} +1+1 {t}");
        let action = a.handle_client_line(Timestamp(3), line.as_bytes(), &mut out);
        assert_eq!(action, ClientAction::Replied);
    };
    // Live updates until the link is 2,000 bytes behind: then `C`, and nothing more.
    for c in 0..100 {
        iamat(&mut a, c, 1);
    }
    let live = a.sink_mut().take();
    let c_at = live
        .iter()
        .position(|(_, m)| *m == PeerMsg::CatchUp)
        .expect("a link 2,000 bytes behind is caught up");
    assert!(
        encoded_len(&live[..c_at]) > 2_000 && encoded_len(&live[..c_at]) < 2_100,
        "caught up once past the mark: {}",
        encoded_len(&live[..c_at])
    );
    assert_eq!(
        live.len(),
        c_at + 1,
        "nothing follows the C until the drain"
    );
    assert!(!a.is_linked(PeerId(0)));
    let sent_live = update_lines(&live).len();
    // Meanwhile some clients move again and again: only their latest records will go.
    for t in 2..10 {
        for c in 0..10 {
            iamat(&mut a, c, t);
        }
    }
    assert!(a.sink().sent.is_empty());
    let mut delta = Vec::new();
    let mut rounds = 0;
    loop {
        assert!(
            a.sink_mut().drain(PeerId(0)),
            "the node waits for the drain"
        );
        a.handle_link_drained(Timestamp(4), PeerId(0));
        let batch = a.sink_mut().take();
        assert!(encoded_len(&batch) < 1_100, "paced by the window");
        let done = batch
            .iter()
            .any(|(_, m)| matches!(m, PeerMsg::Synced { .. }));
        delta.extend(batch);
        if done {
            break;
        }
        rounds += 1;
        assert!(rounds < 100, "the catch-up never ends");
    }
    assert!(a.is_linked(PeerId(0)), "live again after the S");
    assert_eq!(
        delta.last().map(|(_, m)| m.clone()),
        Some(PeerMsg::Synced {
            seq: a.store().seq()
        })
    );
    let lines = update_lines(&delta);
    let mut clients: Vec<_> = lines.iter().map(|(c, _)| c.clone()).collect();
    clients.sort();
    clients.dedup();
    assert_eq!(clients.len(), lines.len(), "each client once");
    // Every client not sent live, and every client that moved, with its latest record.
    assert_eq!(lines.len(), (100 - sent_live) + 10.min(sent_live));
    for (client, line) in &lines {
        let held = a.store().get(client).expect("held");
        assert_eq!(&held.at_line().to_vec(), line, "the latest record");
    }
    let stats = a.stats();
    assert_eq!(
        (stats.catch_ups, stats.catch_up_records),
        (1, lines.len() as u64)
    );
    // Live again: the next update goes out at once.
    iamat(&mut a, 500, 1);
    assert_eq!(update_lines(&a.sink_mut().take()).len(), 1);
}

#[test]
fn updates_after_a_catch_up_line_are_a_delta_and_prune_nothing() {
    // C's tree: B and D are both eager for A's records; a stale copy over an eager link
    // prunes it, but not while the sender says it is catching C up.
    let cfg = NodeConfig::new(name("C"), vec![name("B"), name("D")]);
    let mut c = Node::new(cfg, RecordingPeerSink::default(), &mut SeededIds::new(3));
    for p in [PeerId(0), PeerId(1)] {
        c.handle_link_up(Timestamp(1), p);
        c.handle_peer_msg(Timestamp(1), p, first_digest()).unwrap();
        c.handle_peer_msg(Timestamp(1), p, PeerMsg::Synced { seq: 0 })
            .unwrap();
    }
    let record = |t: u32| {
        let line = format!("AT A +0.000000000 kiwi +1+1 {t}");
        std::sync::Arc::new(herd_core::Record::parse(line.as_bytes()).unwrap())
    };
    let update = |seq, t| PeerMsg::Update {
        seq,
        record: record(t),
    };
    c.sink_mut().take();
    c.handle_peer_msg(Timestamp(2), PeerId(1), update(1, 1))
        .unwrap();
    c.handle_peer_msg(Timestamp(2), PeerId(0), PeerMsg::CatchUp)
        .unwrap();
    c.handle_peer_msg(Timestamp(2), PeerId(0), update(1, 1))
        .unwrap();
    let prunes = |sent: &[(PeerId, PeerMsg)]| {
        sent.iter()
            .filter(|(_, m)| matches!(m, PeerMsg::Prune { .. }))
            .count()
    };
    assert_eq!(
        prunes(&c.sink_mut().take()),
        0,
        "a delta's duplicate is expected"
    );
    c.handle_peer_msg(Timestamp(2), PeerId(0), PeerMsg::Synced { seq: 1 })
        .unwrap();
    c.handle_peer_msg(Timestamp(3), PeerId(1), update(2, 2))
        .unwrap();
    c.handle_peer_msg(Timestamp(3), PeerId(0), update(2, 2))
        .unwrap();
    assert_eq!(
        prunes(&c.sink_mut().take()),
        1,
        "live again: a duplicate over an eager link prunes it"
    );
}
