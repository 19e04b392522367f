//! The broadcast tree at one node: prune, graft, announce, and the log numbers that keep
//! reconciliation exact. The herd-wide behaviour is in `sim.rs`.

use std::sync::Arc;
use std::time::Duration;

use herd_core::peer::{record_hash, Announcement};
use herd_core::testing::{RecordingPeerSink, SeededIds};
use herd_core::{
    ClientAction, Dissemination, Node, NodeConfig, PeerId, PeerMsg, Record, ServerName, Timestamp,
};
use proptest::prelude::*;

const MS: u64 = 1_000_000;
const T0: Timestamp = Timestamp(1_700_000_000 * 1_000_000_000);

fn at(ms: u64) -> Timestamp {
    Timestamp(T0.0 + ms * MS)
}

fn name(s: &str) -> ServerName {
    ServerName::new(s).unwrap()
}

const B: PeerId = PeerId(0);
const C: PeerId = PeerId(1);

/// Node A with neighbours B and C, both links up and reconciled both ways (nothing to send).
fn node(dissemination: Dissemination) -> Node<RecordingPeerSink> {
    let mut cfg = NodeConfig::new(name("A"), vec![name("B"), name("C")]);
    cfg.dissemination = dissemination;
    cfg.announce_delay = Duration::from_millis(5);
    cfg.graft_timeout = Duration::from_millis(20);
    let mut a = Node::new(cfg, RecordingPeerSink::default(), &mut SeededIds::new(3));
    for (p, epoch) in [(B, 11), (C, 12)] {
        a.handle_link_up(T0, p);
        let digest = PeerMsg::Digest {
            epoch,
            your_epoch: 0,
            seen: 0,
        };
        a.handle_peer_msg(T0, p, digest).unwrap();
        a.handle_peer_msg(T0, p, PeerMsg::Synced { seq: 0 })
            .unwrap();
        assert!(a.is_linked(p));
    }
    a.sink_mut().take();
    a
}

fn record(origin: &str, client: &str, time: &str) -> Arc<Record> {
    let line = format!("AT {origin} +0.000000001 {client} +1.5-2.5 {time}");
    Arc::new(Record::parse(line.as_bytes()).unwrap())
}

fn update(seq: u64, r: &Arc<Record>) -> PeerMsg {
    PeerMsg::Update {
        seq,
        record: r.clone(),
    }
}

fn iamat(a: &mut Node<RecordingPeerSink>, now: Timestamp, client: &str, time: u64) {
    let mut out = Vec::new();
    let line = format!("IAMAT {client} +1+1 {time}");
    let action = a.handle_client_line(now, line.as_bytes(), &mut out);
    assert_eq!(action, ClientAction::Replied);
}

fn kinds(sent: &[(PeerId, PeerMsg)]) -> Vec<(PeerId, char)> {
    sent.iter()
        .map(|(p, m)| (*p, m.to_line()[0] as char))
        .collect()
}

#[test]
fn a_stale_update_over_an_eager_link_prunes_it_for_that_origin_only() {
    let mut a = node(Dissemination::Tree);
    let r = record("D", "kiwi", "1700000001");
    a.handle_peer_msg(at(1), B, update(1, &r)).unwrap();
    // Stored: pushed to C (eager), not back to B.
    assert_eq!(kinds(&a.sink_mut().take()), [(C, 'U')]);
    // The same record again from C: stale over an eager link, so C is told to prune.
    a.handle_peer_msg(at(2), C, update(1, &r)).unwrap();
    let sent = a.sink_mut().take();
    assert_eq!(
        sent,
        [(
            C,
            PeerMsg::Prune {
                origin: b"D"[..].into()
            }
        )]
    );
    assert_eq!(a.stats().prunes_sent, 1);
    assert!(!a.is_pushed_by(C, b"D") && a.is_pushed_by(C, b"E") && a.is_pushed_by(B, b"D"));
    // The prune is for C's pushes to A; A's own pushes to C are C's to prune.
    assert!(a.is_eager(C, b"D"));
    // Once more (C still pushes, its prune not yet taken): pruned again, idempotently.
    a.handle_peer_msg(at(3), C, update(1, &r)).unwrap();
    assert_eq!(kinds(&a.sink_mut().take()), [(C, 'X')]);
    assert!(!a.is_pushed_by(C, b"D"));
    // C prunes A for D too: D's next record goes to C as an announcement; another origin's
    // is still pushed.
    a.handle_peer_msg(
        at(3),
        C,
        PeerMsg::Prune {
            origin: b"D"[..].into(),
        },
    )
    .unwrap();
    assert!(!a.is_eager(C, b"D") && a.is_eager(C, b"E"));
    let r2 = record("D", "kiwi", "1700000002");
    a.handle_peer_msg(at(4), B, update(2, &r2)).unwrap();
    assert!(a.sink_mut().take().is_empty(), "the announcement waits");
    let e = record("E", "wren", "1700000002");
    a.handle_peer_msg(at(5), B, update(3, &e)).unwrap();
    let sent = a.sink_mut().take();
    assert_eq!(kinds(&sent), [(C, 'U')]);
    // That update carries the log number before the waiting announcement's, so C's `seen`
    // never covers a change still in A's batch.
    let PeerMsg::Update { seq, .. } = &sent[0].1 else {
        unreachable!()
    };
    assert_eq!(*seq, 1);
    assert_eq!(a.poll_timeout(), Some(at(9)), "the batch goes at 4 + 5 ms");
    a.handle_timeout(at(9));
    let sent = a.sink_mut().take();
    assert_eq!(
        sent,
        [(
            C,
            PeerMsg::Announce {
                entries: vec![Announcement::of(2, &r2)]
            }
        )]
    );
    assert_eq!(a.stats().announcements_sent, 1);
    assert_eq!(
        a.stats().announce_bytes_sent,
        sent[0].1.to_line().len() as u64
    );
    assert_eq!(a.poll_timeout(), None);
}

#[test]
fn pushes_that_were_on_their_way_before_a_prune_repeat_it_at_doubling_intervals_only() {
    let mut a = node(Dissemination::Tree);
    let r = record("D", "kiwi", "1700000001");
    a.handle_peer_msg(at(1), B, update(1, &r)).unwrap();
    a.handle_peer_msg(at(2), C, update(1, &r)).unwrap();
    assert_eq!(a.stats().prunes_sent, 1);
    a.sink_mut().take();
    // C's queue held 3,000 more of D's records when the prune reached it (each new here, so
    // stored, and each a push over the pruned direction). The prune goes again at the 1st,
    // 2nd, 4th ... 512th push, then at the 1,024th and 2,048th: 12 prunes in all, not 3,001.
    let mut at_push = Vec::new();
    for i in 1..=3000u64 {
        let r = record("D", &format!("c{i}"), "1700000001");
        a.handle_peer_msg(at(3), C, update(1 + i, &r)).unwrap();
        let sent = a.sink_mut().take();
        if sent
            .iter()
            .any(|(p, m)| *p == C && matches!(m, PeerMsg::Prune { .. }))
        {
            at_push.push(i);
        }
    }
    assert_eq!(at_push, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]);
    assert_eq!(a.stats().prunes_sent, 13);
    assert!(!a.is_pushed_by(C, b"D") && a.is_pushed_by(B, b"D"));
    assert_eq!(
        a.store().len(),
        3001,
        "every pushed record is stored all the same"
    );
}

#[test]
fn prunes_from_both_neighbours_never_cut_a_server_off_and_it_keeps_its_last_pushing_link() {
    let mut a = node(Dissemination::Tree);
    let r1 = record("D", "kiwi", "1700000001");
    a.handle_peer_msg(at(1), B, update(1, &r1)).unwrap();
    a.sink_mut().take();
    // B and C each got a record of D from A that they already held, and prune A: A announces
    // D's records to both from now on.
    for p in [B, C] {
        let prune = PeerMsg::Prune {
            origin: b"D"[..].into(),
        };
        a.handle_peer_msg(at(2), p, prune).unwrap();
    }
    assert!(!a.is_eager(B, b"D") && !a.is_eager(C, b"D"));
    // Both still push D's records to A: their prunes were about A's pushes, not theirs.
    assert!(a.is_pushed_by(B, b"D") && a.is_pushed_by(C, b"D"));
    let r2 = record("D", "kiwi", "1700000002");
    a.handle_peer_msg(at(3), C, update(2, &r2)).unwrap();
    assert!(
        a.sink_mut().take().is_empty(),
        "stored, nothing to send yet"
    );
    assert_eq!(a.store().get(b"kiwi").unwrap().at_line(), r2.at_line());
    // B's copy is a duplicate: B is pruned, C stays.
    a.handle_peer_msg(at(4), B, update(2, &r2)).unwrap();
    assert_eq!(kinds(&a.sink_mut().take()), [(B, 'X')]);
    assert!(!a.is_pushed_by(B, b"D") && a.is_pushed_by(C, b"D"));
    // A duplicate over C, the last link pushing D's records to A, does not prune it (under
    // load the copies of a record arrive in any order).
    let r3 = record("D", "kiwi", "1700000003");
    a.handle_peer_msg(at(5), B, update(3, &r3)).unwrap();
    assert_eq!(
        kinds(&a.sink_mut().take()),
        [(B, 'X')],
        "B still pushes: again"
    );
    a.handle_peer_msg(at(6), C, update(3, &r3)).unwrap();
    assert!(
        a.sink_mut().take().is_empty(),
        "no prune of the last pushing link"
    );
    assert!(a.is_pushed_by(C, b"D"));
    assert_eq!(a.stats().prunes_sent, 2);
}

#[test]
fn a_prune_received_makes_that_origin_announced_on_that_link_and_announcements_are_batched() {
    let mut a = node(Dissemination::Tree);
    a.handle_peer_msg(
        at(0),
        B,
        PeerMsg::Prune {
            origin: b"A"[..].into(),
        },
    )
    .unwrap();
    assert!(!a.is_eager(B, b"A"));
    for k in 0..3 {
        iamat(&mut a, at(1 + k), &format!("c{k}"), 1_700_000_000 + k);
    }
    // Pushed to C each time; B waits for the batch.
    assert_eq!(kinds(&a.sink_mut().take()), [(C, 'U'), (C, 'U'), (C, 'U')]);
    a.handle_timeout(at(5));
    assert!(a.sink_mut().take().is_empty(), "not due before 1 + 5 ms");
    a.handle_timeout(at(6));
    let sent = a.sink_mut().take();
    let [(to, PeerMsg::Announce { entries })] = &sent[..] else {
        panic!("one I line: {sent:?}")
    };
    assert_eq!(*to, B);
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    for e in entries {
        let held = a.store().get(&e.client).unwrap();
        assert!(e.is_covered_by(&held));
        assert_eq!(e.hash, record_hash(&held));
    }
    assert_eq!(a.stats().announce_messages_sent, 1);
    assert_eq!(a.stats().announcements_sent, 3);
    assert_eq!(a.stats().payload_sent, 3);
}

#[test]
fn an_announced_record_still_missing_at_the_graft_timeout_is_grafted_and_the_answer_makes_the_link_eager(
) {
    let mut a = node(Dissemination::Tree);
    // A prunes C for origin D first (C announces D's records to A from then on).
    let old = record("D", "kiwi", "1700000001");
    a.handle_peer_msg(at(0), B, update(1, &old)).unwrap();
    a.handle_peer_msg(at(0), C, update(1, &old)).unwrap();
    a.sink_mut().take();
    assert!(!a.is_pushed_by(C, b"D"));
    // C announces a newer record of kiwi that A lacks.
    let new = record("D", "kiwi", "1700000009");
    let ann = PeerMsg::Announce {
        entries: vec![Announcement::of(5, &new)],
    };
    a.handle_peer_msg(at(1), C, ann).unwrap();
    assert_eq!(a.announced_missing(), 1);
    assert_eq!(a.poll_timeout(), Some(at(21)));
    a.handle_timeout(at(20));
    assert!(
        a.sink_mut().take().is_empty(),
        "no graft before the timeout"
    );
    a.handle_timeout(at(21));
    assert_eq!(
        a.sink_mut().take(),
        [(
            C,
            PeerMsg::Graft {
                client: b"kiwi"[..].into()
            }
        )]
    );
    assert_eq!(a.stats().grafts_sent, 1);
    // C answers with its record: stored, passed on to B, and C pushes D's records to A again.
    a.handle_peer_msg(at(22), C, update(6, &new)).unwrap();
    assert_eq!(a.store().get(b"kiwi").unwrap().at_line(), new.at_line());
    assert_eq!(kinds(&a.sink_mut().take()), [(B, 'U')]);
    assert!(a.is_pushed_by(C, b"D"));
    assert_eq!(a.announced_missing(), 0);
    assert_eq!(a.poll_timeout(), None, "no graft left to send");
}

#[test]
fn a_graft_answer_that_brings_nothing_new_prunes_again_at_once() {
    let mut a = node(Dissemination::Tree);
    let old = record("D", "kiwi", "1700000001");
    a.handle_peer_msg(at(0), B, update(1, &old)).unwrap();
    a.handle_peer_msg(at(0), C, update(1, &old)).unwrap();
    // Pushes C sent before the prune reached it: the prune is repeated at the 1st and 2nd.
    for i in 0..3u64 {
        let r = record("D", &format!("c{i}"), "1700000001");
        a.handle_peer_msg(at(0), C, update(2 + i, &r)).unwrap();
    }
    assert_eq!(a.stats().prunes_sent, 3);
    a.sink_mut().take();
    let new = record("D", "kiwi", "1700000009");
    let ann = PeerMsg::Announce {
        entries: vec![Announcement::of(9, &new)],
    };
    a.handle_peer_msg(at(1), C, ann).unwrap();
    a.handle_timeout(at(21));
    assert_eq!(kinds(&a.sink_mut().take()), [(C, 'G')]);
    // The record comes over B first; C's answer (C pushes D's records again) is stale here,
    // so C is pruned at once, though its count of pushes since the last prune is at 3.
    a.handle_peer_msg(at(22), B, update(2, &new)).unwrap();
    a.sink_mut().take();
    a.handle_peer_msg(at(23), C, update(10, &new)).unwrap();
    assert_eq!(kinds(&a.sink_mut().take()), [(C, 'X')]);
    assert!(!a.is_pushed_by(C, b"D"));
    // And the count starts again: the next push repeats it.
    let r = record("D", "c9", "1700000001");
    a.handle_peer_msg(at(24), C, update(11, &r)).unwrap();
    assert_eq!(kinds(&a.sink_mut().take()), [(B, 'U'), (C, 'X')]);
}

#[test]
fn a_record_that_arrives_over_the_tree_before_the_timeout_is_not_grafted() {
    let mut a = node(Dissemination::Tree);
    let r = record("D", "kiwi", "1700000003");
    // C announces it (C is lazy for D at its end), then B pushes it.
    let ann = PeerMsg::Announce {
        entries: vec![Announcement::of(1, &r)],
    };
    a.handle_peer_msg(at(0), C, ann).unwrap();
    assert_eq!(a.announced_missing(), 1);
    a.handle_peer_msg(at(3), B, update(1, &r)).unwrap();
    assert_eq!(a.announced_missing(), 0);
    assert_eq!(a.poll_timeout(), None);
    a.handle_timeout(at(50));
    let sent = a.sink_mut().take();
    assert!(
        !sent.iter().any(|(_, m)| matches!(m, PeerMsg::Graft { .. })),
        "{sent:?}"
    );
    assert_eq!(a.stats().grafts_sent, 0);
    // An announcement of what the store already holds (or older) is not missing at all.
    let older = record("D", "kiwi", "1700000001");
    for r in [&r, &older] {
        let ann = PeerMsg::Announce {
            entries: vec![Announcement::of(2, r)],
        };
        a.handle_peer_msg(at(60), C, ann).unwrap();
    }
    assert_eq!(a.announced_missing(), 0);
}

#[test]
fn when_the_first_announcer_does_not_answer_the_next_one_is_grafted() {
    let mut a = node(Dissemination::Tree);
    let r = record("D", "kiwi", "1700000003");
    for p in [B, C] {
        let ann = PeerMsg::Announce {
            entries: vec![Announcement::of(1, &r)],
        };
        a.handle_peer_msg(at(0), p, ann).unwrap();
    }
    a.handle_timeout(at(20));
    let graft = |client: &str| PeerMsg::Graft {
        client: client.as_bytes().into(),
    };
    assert_eq!(a.sink_mut().take(), [(B, graft("kiwi"))]);
    a.handle_timeout(at(40));
    assert_eq!(a.sink_mut().take(), [(C, graft("kiwi"))]);
    // Everyone asked: no timer until something changes.
    a.handle_timeout(at(60));
    assert!(a.sink_mut().take().is_empty());
    assert_eq!(a.poll_timeout(), None);
    assert_eq!(a.announced_missing(), 1);
    a.handle_peer_msg(at(61), C, update(1, &r)).unwrap();
    assert_eq!(a.announced_missing(), 0);
}

#[test]
fn a_graft_is_answered_with_the_record_and_makes_the_link_eager_for_its_origin() {
    let mut a = node(Dissemination::Tree);
    a.handle_peer_msg(
        at(0),
        C,
        PeerMsg::Prune {
            origin: b"A"[..].into(),
        },
    )
    .unwrap();
    iamat(&mut a, at(1), "kiwi", 1_700_000_001);
    a.sink_mut().take();
    let graft = PeerMsg::Graft {
        client: b"kiwi"[..].into(),
    };
    a.handle_peer_msg(at(2), C, graft).unwrap();
    let sent = a.sink_mut().take();
    let [(to, PeerMsg::Update { seq, record })] = &sent[..] else {
        panic!("the record is sent: {sent:?}")
    };
    assert_eq!(*to, C);
    assert_eq!(record.at_line(), a.store().get(b"kiwi").unwrap().at_line());
    // The announcement of the same change still waits in C's batch: the answer says only
    // "every change before it".
    assert_eq!(*seq, 0);
    assert!(a.is_eager(C, b"A"));
    // A graft for a client the store does not hold is not answered.
    let graft = PeerMsg::Graft {
        client: b"nobody"[..].into(),
    };
    a.handle_peer_msg(at(3), C, graft).unwrap();
    assert!(a.sink_mut().take().is_empty());
}

#[test]
fn the_digest_after_a_link_returns_names_the_change_before_the_first_announcement_still_missing() {
    let mut a = node(Dissemination::Tree);
    let held = record("C", "wren", "1700000001");
    a.handle_peer_msg(at(0), C, update(3, &held)).unwrap();
    let missing = record("C", "kiwi", "1700000002");
    let ann = PeerMsg::Announce {
        entries: vec![
            Announcement::of(7, &missing),
            Announcement::of(9, &held), // held: not missing
        ],
    };
    a.handle_peer_msg(at(1), C, ann).unwrap();
    a.handle_peer_msg(at(2), C, update(10, &record("C", "owl", "1")))
        .unwrap();
    a.handle_link_down(at(3), C);
    a.sink_mut().take();
    a.handle_link_up(at(4), C);
    let sent = a.sink_mut().take();
    let [(_, PeerMsg::Digest { seen, .. })] = &sent[..] else {
        panic!("a digest: {sent:?}")
    };
    assert_eq!(
        *seen, 6,
        "C's delta starts at the change announced and missing"
    );
    assert_eq!(a.announced_missing(), 0, "the delta carries it");
    assert!(
        a.is_eager(C, b"C") && a.is_eager(C, b"D"),
        "all eager at link up"
    );
}

#[test]
fn a_flooding_node_ignores_prunes_and_announces_nothing() {
    let mut a = node(Dissemination::Flood);
    a.handle_peer_msg(
        at(0),
        B,
        PeerMsg::Prune {
            origin: b"A"[..].into(),
        },
    )
    .unwrap();
    iamat(&mut a, at(1), "kiwi", 1_700_000_001);
    assert_eq!(kinds(&a.sink_mut().take()), [(B, 'U'), (C, 'U')]);
    // A stale update is not answered with a prune.
    let r = record("D", "wren", "1700000001");
    a.handle_peer_msg(at(2), B, update(1, &r)).unwrap();
    a.handle_peer_msg(at(2), C, update(1, &r)).unwrap();
    assert_eq!(kinds(&a.sink_mut().take()), [(C, 'U')]);
    a.handle_timeout(at(100));
    assert!(a.sink_mut().take().is_empty());
    assert_eq!(a.stats().announcements_sent + a.stats().prunes_sent, 0);
}

#[test]
fn the_tree_messages_are_the_documented_lines() {
    let r = record("Goloman", "kiwi.cs.ucla.edu", "1520023934.918963997");
    let h = record_hash(&r);
    let ann = PeerMsg::Announce {
        entries: vec![Announcement::of(4183, &r), Announcement::of(4184, &r)],
    };
    let want = format!(
        "I 4183 kiwi.cs.ucla.edu 1520023934.918963997 {h:016x} 4184 kiwi.cs.ucla.edu 1520023934.918963997 {h:016x}\n"
    );
    assert_eq!(String::from_utf8(ann.to_line()).unwrap(), want);
    let graft = PeerMsg::Graft {
        client: b"kiwi.cs.ucla.edu"[..].into(),
    };
    assert_eq!(graft.to_line(), b"G kiwi.cs.ucla.edu\n");
    let prune = PeerMsg::Prune {
        origin: b"Goloman"[..].into(),
    };
    assert_eq!(prune.to_line(), b"X Goloman\n");
    for m in [ann, graft, prune] {
        let line = m.to_line();
        assert_eq!(PeerMsg::parse(&line[..line.len() - 1]).unwrap(), m);
    }
    // The example of docs/peer-protocol.md, byte for byte.
    let kiwi = Record::parse(
        b"AT Goloman +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997",
    )
    .unwrap();
    let c7 = Record::parse(b"AT Hands +0.001234000 c7.example +34.1-118.2 1520023940").unwrap();
    let doc = PeerMsg::Announce {
        entries: vec![Announcement::of(4183, &kiwi), Announcement::of(4184, &c7)],
    };
    assert_eq!(
        String::from_utf8(doc.to_line()).unwrap(),
        "I 4183 kiwi.cs.ucla.edu 1520023934.918963997 58cadcbb6bd7a39d 4184 c7.example 1520023940.000000000 f29d39533d3dc44b\n"
    );
    // Short times are written with nine digits.
    let short = record("Hands", "c", "7");
    let line = PeerMsg::Announce {
        entries: vec![Announcement::of(1, &short)],
    }
    .to_line();
    assert!(line.starts_with(b"I 1 c 7.000000000 "), "{line:?}");
    for bad in [
        &b"I"[..],
        b"I ",
        b"I 1 c 7.000000000",
        b"I 1 c 7 0123456789abcdef",
        b"I 1 c 7.00000000 0123456789abcdef",
        b"I 1 c 7.000000000 0123456789ABCDEF",
        b"I 1 c 7.000000000 0123456789abcde",
        b"I x c 7.000000000 0123456789abcdef",
        b"I 1  7.000000000 0123456789abcdef",
        b"G",
        b"G ",
        b"G a b",
        b"X",
        b"X a b",
        b"Gx",
    ] {
        assert!(
            PeerMsg::parse(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

proptest! {
    /// Whatever order the herd's records of one client are told in, an announcement is
    /// "covered" by a held record exactly when the held record is it or newer.
    #[test]
    fn an_announcement_is_covered_exactly_by_the_same_record_or_a_newer_one(
        t1 in 0u64..5, f1 in 0u32..3, s1 in 0usize..3,
        t2 in 0u64..5, f2 in 0u32..3, s2 in 0usize..3,
    ) {
        let servers = ["Goloman", "Hands", "Wilkes"];
        let a = record(servers[s1], "kiwi", &format!("{}.{f1}", 1_700_000_000 + t1));
        let b = record(servers[s2], "kiwi", &format!("{}.{f2}", 1_700_000_000 + t2));
        let covered = Announcement::of(1, &a).is_covered_by(&b);
        let newer_or_same = b.precedence(&a) != std::cmp::Ordering::Less;
        if covered {
            prop_assert!(newer_or_same);
        } else {
            // Not covered: older, or the same time and another line (only the line orders
            // those, and a graft then asks).
            prop_assert!(!newer_or_same || (a.time() == b.time() && a != b));
        }
        let line = PeerMsg::Announce { entries: vec![Announcement::of(3, &a)] }.to_line();
        prop_assert_eq!(
            PeerMsg::parse(&line[..line.len() - 1]).unwrap(),
            PeerMsg::Announce { entries: vec![Announcement::of(3, &a)] }
        );
    }
}

#[test]
fn an_announcement_of_a_record_the_store_would_refuse_is_not_grafted() {
    let mut cfg = NodeConfig::new(name("A"), vec![name("B"), name("C")]);
    cfg.max_records = Some(1);
    cfg.graft_timeout = Duration::from_millis(20);
    let mut a = Node::new(cfg, RecordingPeerSink::default(), &mut SeededIds::new(4));
    for (p, epoch) in [(B, 11), (C, 12)] {
        a.handle_link_up(T0, p);
        let digest = PeerMsg::Digest {
            epoch,
            your_epoch: 0,
            seen: 0,
        };
        a.handle_peer_msg(T0, p, digest).unwrap();
        a.handle_peer_msg(T0, p, PeerMsg::Synced { seq: 0 })
            .unwrap();
    }
    let held = record("D", "kiwi", "1700000001");
    a.handle_peer_msg(at(0), B, update(1, &held)).unwrap();
    // Full: a record of another client would be refused, so it is not missed.
    let other = record("D", "wren", "1700000002");
    let newer = record("D", "kiwi", "1700000003");
    let ann = PeerMsg::Announce {
        entries: vec![Announcement::of(2, &other), Announcement::of(3, &newer)],
    };
    a.handle_peer_msg(at(1), C, ann).unwrap();
    assert_eq!(
        a.announced_missing(),
        1,
        "only kiwi's newer record is missed"
    );
    a.sink_mut().take();
    a.handle_timeout(at(21));
    assert_eq!(
        a.sink_mut().take(),
        [(
            C,
            PeerMsg::Graft {
                client: b"kiwi"[..].into()
            }
        )]
    );
}

#[derive(Debug, Clone)]
enum Op {
    /// A new IAMAT of client `k` (each is a new change).
    Iamat(u8),
    /// The neighbour prunes origin A.
    Prune(bool),
    /// The neighbour grafts client `k`.
    Graft(bool, u8),
    /// Time passes (ms).
    Wait(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6).prop_map(Op::Iamat),
        1 => any::<bool>().prop_map(Op::Prune),
        1 => (any::<bool>(), 0u8..6).prop_map(|(c, k)| Op::Graft(c, k)),
        2 => (0u8..12).prop_map(Op::Wait),
    ]
}

proptest! {
    /// Whatever mix of pushes, prunes, grafts and batching: on each link every change of the
    /// node's log goes out exactly once as an update or an announcement, announcements in
    /// log order, and no update names a log number whose change has not gone out on that
    /// link yet (so the neighbour's `seen` never covers a change still in the batch).
    #[test]
    fn every_change_goes_out_once_per_link_and_no_update_covers_a_change_not_yet_sent(
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let mut a = node(Dissemination::Tree);
        let mut now = 1u64;
        let mut changes = 0u64;
        // Per change: its record's line.
        let mut lines: Vec<Vec<u8>> = Vec::new();
        // What was sent, and whether it answers a graft.
        let mut sent: Vec<(PeerId, PeerMsg, bool)> = Vec::new();
        for o in &ops {
            match *o {
                Op::Iamat(k) => {
                    iamat(&mut a, at(now), &format!("c{k}"), 1_700_000_000 + changes);
                    changes += 1;
                    let rec = a.store().get(format!("c{k}").as_bytes()).unwrap();
                    lines.push(rec.at_line().to_vec());
                }
                Op::Prune(c) => {
                    let p = if c { C } else { B };
                    a.handle_peer_msg(at(now), p, PeerMsg::Prune { origin: b"A"[..].into() }).unwrap();
                }
                Op::Graft(c, k) => {
                    let p = if c { C } else { B };
                    let client = format!("c{k}").into_bytes().into();
                    a.handle_peer_msg(at(now), p, PeerMsg::Graft { client }).unwrap();
                }
                Op::Wait(ms) => {
                    now += u64::from(ms);
                    a.handle_timeout(at(now));
                }
            }
            let graft = matches!(o, Op::Graft(..));
            sent.extend(a.sink_mut().take().into_iter().map(|(p, m)| (p, m, graft)));
        }
        a.handle_timeout(at(now + 1_000));
        prop_assert_eq!(a.poll_timeout(), None);
        sent.extend(a.sink_mut().take().into_iter().map(|(p, m)| (p, m, false)));
        for p in [B, C] {
            // Which changes (1-based log numbers) have gone out on this link so far.
            let mut out = vec![false; changes as usize + 1];
            let mut last_announced = 0;
            for (_, m, graft) in sent.iter().filter(|(to, _, _)| *to == p) {
                match m {
                    PeerMsg::Update { seq, record } => {
                        // A live push is the change whose line it carries; a graft's answer
                        // repeats a record, and is not a change going out.
                        if !graft {
                            let n = lines.iter().position(|l| l == record.at_line()).unwrap() + 1;
                            prop_assert!(!out[n], "change {} twice", n);
                            out[n] = true;
                        }
                        prop_assert!(
                            (1..=*seq as usize).all(|n| out[n]),
                            "U {seq} covers a change not sent: {out:?}"
                        );
                    }
                    PeerMsg::Announce { entries } => {
                        for e in entries {
                            prop_assert!(e.seq > last_announced, "announcements in log order");
                            last_announced = e.seq;
                            prop_assert!(!out[e.seq as usize], "change {} twice", e.seq);
                            out[e.seq as usize] = true;
                        }
                    }
                    other => prop_assert!(false, "unexpected {other:?}"),
                }
            }
            prop_assert!(out[1..].iter().all(|&x| x), "a change never went out: {out:?}");
        }
    }
}

#[test]
fn a_record_fetched_by_a_query_is_announced_and_its_push_arriving_after_does_not_prune() {
    let mut a = node(Dissemination::Tree);
    let mut out = Vec::new();
    let _waiting = a.handle_client_line(at(1), b"WHATSAT kiwi 10 5", &mut out);
    let sent = a.sink_mut().take();
    let Some((asked, PeerMsg::Query { origin, qid, .. })) = sent
        .iter()
        .find(|(_, m)| matches!(m, PeerMsg::Query { .. }))
        .cloned()
    else {
        panic!("no query sent: {sent:?}")
    };
    let other = if asked == B { C } else { B };
    let r = record("D", "kiwi", "1700000001");
    let answer = PeerMsg::Answer {
        origin,
        qid,
        record: Some(r.clone()),
    };
    a.handle_peer_msg(at(2), asked, answer).unwrap();
    // Stored off the tree: announced to the other neighbour, not pushed.
    assert!(!kinds(&a.sink_mut().take()).contains(&(other, 'U')));
    a.handle_timeout(at(10));
    assert!(kinds(&a.sink_mut().take()).contains(&(other, 'I')));
    // The tree's push of the same record arrives after: stale, but no prune.
    a.handle_peer_msg(at(11), asked, update(1, &r)).unwrap();
    assert!(!kinds(&a.sink_mut().take()).contains(&(asked, 'X')));
    assert!(a.is_eager(asked, b"D"));
    assert_eq!(a.stats().prunes_sent, 0);
    // A second copy is a redundant path again: pruned.
    a.handle_peer_msg(at(12), other, update(1, &r)).unwrap();
    assert_eq!(kinds(&a.sink_mut().take()), [(other, 'X')]);
    assert_eq!(a.stats().prunes_sent, 1);
}

fn grafts(sent: &[(PeerId, PeerMsg)]) -> usize {
    sent.iter()
        .filter(|(_, m)| matches!(m, PeerMsg::Graft { .. }))
        .count()
}

#[test]
fn a_graft_timer_that_runs_late_puts_the_graft_off_once_and_late_pushes_lengthen_the_wait() {
    let mut a = node(Dissemination::Tree);
    let r = record("D", "kiwi", "1700000003");
    let ann = |r: &Arc<Record>| PeerMsg::Announce {
        entries: vec![Announcement::of(1, r)],
    };
    a.handle_peer_msg(at(0), C, ann(&r)).unwrap();
    // Due at 20 ms, run at 30 ms: the server was stalled, the push may be unread; put off
    // by 10 ms, then grafted.
    a.handle_timeout(at(30));
    assert_eq!(grafts(&a.sink_mut().take()), 0);
    assert_eq!(a.poll_timeout(), Some(at(40)));
    a.handle_timeout(at(40));
    assert_eq!(grafts(&a.sink_mut().take()), 1);
    // The push comes over the tree 45 ms after the announcement (not from the grafted C).
    a.handle_peer_msg(at(45), B, update(1, &r)).unwrap();
    assert_eq!(a.announced_missing(), 0);
    // The next missing record waits twice that before its graft.
    let r2 = record("D", "lime", "1700000004");
    a.handle_peer_msg(at(100), C, ann(&r2)).unwrap();
    assert_eq!(a.poll_timeout(), Some(at(190)));
    // Lateness is forgotten after a second: the configured timeout again.
    a.handle_peer_msg(at(150), B, update(2, &r2)).unwrap();
    let r3 = record("D", "fig", "1700000005");
    a.handle_peer_msg(at(1500), C, ann(&r3)).unwrap();
    assert_eq!(a.poll_timeout(), Some(at(1520)));
}
