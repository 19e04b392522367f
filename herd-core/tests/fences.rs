//! Geofences (`FENCE`, `UNFENCE`, `ENTER`/`EXIT`; a herd extension) on a node: the reply
//! layouts byte for byte, the invalid forms and limits, and the events against a brute-force
//! model that recomputes who is inside every fence before and after every step.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use herd_core::near::sphere::distance_m;
use herd_core::testing::{RecordingPeerSink, SeededIds};
use herd_core::{ClientAction, Node, NodeConfig, NodeEvent, ServerName, Subscriber, Timestamp};
use proptest::prelude::*;

type TestNode = Node<RecordingPeerSink>;

fn node(ttl: Option<Duration>) -> TestNode {
    let mut cfg = NodeConfig::new(ServerName::new("Goloman").unwrap(), vec![]);
    cfg.record_ttl = ttl;
    Node::new(cfg, RecordingPeerSink::default(), &mut SeededIds::new(7))
}

/// Server time 1520023940 s.
const NOW: Timestamp = Timestamp(1_520_023_940_000_000_000);

fn ask(n: &mut TestNode, sub: Option<Subscriber>, now: Timestamp, line: &str) -> String {
    let mut out = Vec::new();
    let action = n.handle_client_line_from(now, sub, line.as_bytes(), &mut out);
    assert_eq!(action, ClientAction::Replied, "{line}");
    String::from_utf8(out).unwrap()
}

fn events(n: &mut TestNode) -> Vec<(Subscriber, String)> {
    let mut v = Vec::new();
    while let Some(e) = n.poll_event() {
        if let NodeEvent::Fence { subscriber, line } = e {
            v.push((subscriber, String::from_utf8(line).unwrap()));
        }
    }
    v
}

#[test]
fn fence_is_acknowledged_and_crossings_come_as_enter_and_exit_lines() {
    let mut n = node(None);
    assert_eq!(
        ask(&mut n, Some(1), NOW, "FENCE ucla +34.068930-118.445127 1"),
        "FENCED ucla +34.068930-118.445127 1\n"
    );
    // A first record inside: ENTER with its AT line.
    let at = ask(
        &mut n,
        None,
        NOW,
        "IAMAT kiwi +34.069072-118.442781 1520023930.0",
    );
    assert_eq!(
        events(&mut n),
        vec![(1, format!("ENTER ucla {at}"))],
        "the event carries the AT line"
    );
    // Moving within the fence: nothing.
    ask(
        &mut n,
        None,
        NOW,
        "IAMAT kiwi +34.068000-118.445000 1520023931.0",
    );
    assert_eq!(events(&mut n), vec![]);
    // Santa Monica is about 6.9 km away: EXIT with the new record.
    let out = ask(
        &mut n,
        None,
        NOW,
        "IAMAT kiwi +34.019454-118.491191 1520023932.0",
    );
    assert_eq!(events(&mut n), vec![(1, format!("EXIT ucla {out}"))]);
    // A stale record changes nothing.
    ask(
        &mut n,
        None,
        NOW,
        "IAMAT kiwi +34.068930-118.445127 1520023900.0",
    );
    assert_eq!(events(&mut n), vec![]);
    assert_eq!(ask(&mut n, Some(1), NOW, "UNFENCE ucla"), "UNFENCED ucla\n");
    ask(
        &mut n,
        None,
        NOW,
        "IAMAT kiwi +34.068930-118.445127 1520023933.0",
    );
    assert_eq!(events(&mut n), vec![]);
    assert_eq!(n.fence_count(), 0);
}

#[test]
fn clients_inside_when_a_fence_is_made_give_nothing_until_they_cross() {
    let mut n = node(None);
    ask(
        &mut n,
        None,
        NOW,
        "IAMAT kiwi +34.068930-118.445127 1520023930.0",
    );
    ask(&mut n, Some(1), NOW, "FENCE f +34.068930-118.445127 2");
    assert_eq!(events(&mut n), vec![]);
    let out = ask(&mut n, None, NOW, "IAMAT kiwi +35-118 1520023931.0");
    assert_eq!(events(&mut n), vec![(1, format!("EXIT f {out}"))]);
}

#[test]
fn an_expired_record_inside_gives_exit_with_the_expired_line() {
    let mut n = node(Some(Duration::from_secs(10)));
    ask(&mut n, Some(4), NOW, "FENCE f +34.068930-118.445127 2");
    let at = ask(
        &mut n,
        None,
        NOW,
        "IAMAT kiwi +34.068930-118.445127 1520023935.0",
    );
    assert_eq!(events(&mut n), vec![(4, format!("ENTER f {at}"))]);
    n.handle_timeout(Timestamp(NOW.0 + 4_999_999_999));
    assert_eq!(events(&mut n), vec![]);
    n.handle_timeout(Timestamp(NOW.0 + 5_000_000_000));
    assert_eq!(events(&mut n), vec![(4, format!("EXIT f {at}"))]);
}

#[test]
fn moving_from_one_fence_to_another_exits_first_and_each_subscriber_gets_its_own() {
    let mut n = node(None);
    ask(&mut n, Some(1), NOW, "FENCE a +10+10 1");
    ask(&mut n, Some(2), NOW, "FENCE b +20+20 1");
    ask(&mut n, Some(2), NOW, "FENCE a2 +10+10 1");
    let first = ask(&mut n, None, NOW, "IAMAT c +10+10 1520023930");
    assert_eq!(
        events(&mut n),
        vec![
            (1, format!("ENTER a {first}")),
            (2, format!("ENTER a2 {first}"))
        ]
    );
    let second = ask(&mut n, None, NOW, "IAMAT c +20+20 1520023931");
    assert_eq!(
        events(&mut n),
        vec![
            (1, format!("EXIT a {second}")),
            (2, format!("EXIT a2 {second}")),
            (2, format!("ENTER b {second}"))
        ]
    );
    // Dropping a subscriber ends all of its fences.
    assert_eq!(n.drop_subscriber(2), 2);
    assert_eq!(n.fence_count(), 1);
    ask(&mut n, None, NOW, "IAMAT c +10+10 1520023932");
    assert_eq!(events(&mut n).len(), 1);
}

#[test]
fn a_fence_of_the_same_id_replaces_the_old_one() {
    let mut n = node(None);
    ask(&mut n, Some(1), NOW, "FENCE a +10+10 1");
    assert_eq!(
        ask(&mut n, Some(1), NOW, "FENCE a +20+20 1"),
        "FENCED a +20+20 1\n"
    );
    assert_eq!(n.fence_count(), 1);
    ask(&mut n, None, NOW, "IAMAT c +10+10 1520023930");
    assert_eq!(events(&mut n), vec![]);
    let at = ask(&mut n, None, NOW, "IAMAT d +20+20 1520023930");
    assert_eq!(events(&mut n), vec![(1, format!("ENTER a {at}"))]);
}

#[test]
fn invalid_fence_lines_and_fences_over_the_limits_are_answered_with_the_line() {
    let mut cfg = NodeConfig::new(ServerName::new("Goloman").unwrap(), vec![]);
    cfg.max_fences_per_subscriber = 2;
    cfg.max_fences = 3;
    let mut n = Node::new(cfg, RecordingPeerSink::default(), &mut SeededIds::new(7));
    let long = "x".repeat(65);
    for bad in [
        "FENCE",
        "FENCE a",
        "FENCE a +10+10",
        "FENCE a +10+10 1 2",
        "FENCE a +10+10 0",
        "FENCE a +10+10 51",
        "FENCE a +10+10 -1",
        "FENCE a +91+10 1",
        "FENCE a 10+10 1",
        "FENCE a +10+10 1.",
        &format!("FENCE {long} +10+10 1"),
        "UNFENCE",
        "UNFENCE a b",
        "UNFENCE nosuch",
        &format!("UNFENCE {long}"),
        "fence a +10+10 1",
    ] {
        assert_eq!(
            ask(&mut n, Some(1), NOW, bad),
            format!("? {bad}\n"),
            "{bad}"
        );
    }
    // 64 bytes is the longest id.
    let id = "y".repeat(64);
    let ok = format!("FENCE {id} +10+10 1");
    assert_eq!(
        ask(&mut n, Some(1), NOW, &ok),
        format!("FENCED {id} +10+10 1\n")
    );
    // Without a subscriber (a connection that cannot take pushes) a FENCE is invalid.
    assert_eq!(
        ask(&mut n, None, NOW, "FENCE a +10+10 1"),
        "? FENCE a +10+10 1\n"
    );
    // Per subscriber: two; a replacement does not count as a new one.
    assert!(ask(&mut n, Some(1), NOW, "FENCE b +10+10 1").starts_with("FENCED"));
    assert!(ask(&mut n, Some(1), NOW, "FENCE b +10+10 2").starts_with("FENCED"));
    assert!(ask(&mut n, Some(1), NOW, "FENCE c +10+10 1").starts_with("? "));
    // Per node: three.
    assert!(ask(&mut n, Some(2), NOW, "FENCE a +10+10 1").starts_with("FENCED"));
    assert!(ask(&mut n, Some(3), NOW, "FENCE a +10+10 1").starts_with("? "));
    assert_eq!(n.stats().fences_refused, 2);
    // Another subscriber's fence of the same id is its own.
    assert!(ask(&mut n, Some(2), NOW, "UNFENCE b").starts_with("? "));
}

#[test]
fn the_classic_commands_are_untouched_by_fences() {
    let mut a = node(None);
    let mut b = node(None);
    ask(&mut b, Some(9), NOW, "FENCE f +34.068930-118.445127 50");
    for line in [
        "IAMAT kiwi +34.068930-118.445127 1520023934.918963997",
        "IAMAT kiwi +34.068930-118.445127 1520023934.918963997",
        "IAMAT bad",
    ] {
        assert_eq!(ask(&mut a, None, NOW, line), ask(&mut b, None, NOW, line));
    }
}

// === the model ===

#[derive(Debug, Clone)]
enum Op {
    Fence {
        sub: u64,
        id: u8,
        lat: f64,
        lon: f64,
        km: u8,
    },
    Unfence {
        sub: u64,
        id: u8,
    },
    Drop {
        sub: u64,
    },
    IAmAt {
        client: u8,
        lat: f64,
        lon: f64,
        /// Client time, seconds after NOW - 20 s (may go back: stale records).
        t: u8,
    },
    /// Time passes (records may expire).
    Wait {
        secs: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let lat = 34.0..34.1f64;
    let lon = -118.5..-118.4f64;
    prop_oneof![
        2 => (0..3u64, 0..4u8, lat.clone(), lon.clone(), 1..6u8)
            .prop_map(|(sub, id, lat, lon, km)| Op::Fence { sub, id, lat, lon, km }),
        1 => (0..3u64, 0..4u8).prop_map(|(sub, id)| Op::Unfence { sub, id }),
        1 => (0..3u64).prop_map(|sub| Op::Drop { sub }),
        8 => (0..6u8, lat, lon, 0..40u8).prop_map(|(client, lat, lon, t)| Op::IAmAt { client, lat, lon, t }),
        1 => (1..8u8).prop_map(|secs| Op::Wait { secs }),
    ]
}

/// Who is inside each fence: fence → client → its AT line.
type Inside = BTreeMap<(u64, String), BTreeMap<Vec<u8>, String>>;

fn inside(n: &TestNode, fences: &BTreeMap<(u64, String), (f64, f64, f64)>) -> Inside {
    let mut out = Inside::new();
    for (key, &(lat, lon, r)) in fences {
        let held = n
            .store()
            .records()
            .filter(|rec| distance_m(lat, lon, rec.lat(), rec.lon()) <= r)
            .map(|rec| {
                let line = String::from_utf8(rec.at_line().to_vec()).unwrap();
                (rec.client().to_vec(), line)
            })
            .collect();
        out.insert(key.clone(), held);
    }
    out
}

/// The events a step should give: for each fence, clients that left (with their new line, or
/// the old one when they are gone) and clients that came in.
fn expected(before: &Inside, after: &Inside, n: &TestNode) -> BTreeSet<(u64, String)> {
    let mut want = BTreeSet::new();
    for (key, was) in before {
        let is = &after[key];
        for (client, line) in was {
            if !is.contains_key(client) {
                let now_line = n.store().get(client).map_or(line.clone(), |r| {
                    String::from_utf8(r.at_line().to_vec()).unwrap()
                });
                want.insert((key.0, format!("EXIT {} {now_line}\n", key.1)));
            }
        }
        for (client, line) in is {
            if !was.contains_key(client) {
                want.insert((key.0, format!("ENTER {} {line}\n", key.1)));
            }
        }
    }
    want
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn fences_see_exactly_the_crossings_a_brute_force_model_sees(
        ops in prop::collection::vec(op(), 1..80),
        ttl in prop_oneof![Just(None), Just(Some(Duration::from_secs(15)))],
    ) {
        let mut n = node(ttl);
        let mut fences: BTreeMap<(u64, String), (f64, f64, f64)> = BTreeMap::new();
        let mut now = NOW;
        for op in ops {
            let before = inside(&n, &fences);
            match op {
                Op::Fence { sub, id, lat, lon, km } => {
                    let line = format!("FENCE f{id} {lat:+.6}{lon:+.6} {km}");
                    let reply = ask(&mut n, Some(sub), now, &line);
                    prop_assert!(reply.starts_with("FENCED "), "{}", reply);
                    // The node parses the text; the model uses the same rounded values.
                    let (lat, lon) = (format!("{lat:.6}").parse().unwrap(), format!("{lon:.6}").parse().unwrap());
                    fences.insert((sub, format!("f{id}")), (lat, lon, f64::from(km) * 1000.0));
                    // Making a fence is no crossing (expiry is handled below as its own step).
                }
                Op::Unfence { sub, id } => {
                    let key = (sub, format!("f{id}"));
                    let reply = ask(&mut n, Some(sub), now, &format!("UNFENCE {}", key.1));
                    prop_assert_eq!(reply.starts_with("UNFENCED"), fences.remove(&key).is_some());
                }
                Op::Drop { sub } => {
                    let had = fences.keys().filter(|k| k.0 == sub).count();
                    prop_assert_eq!(n.drop_subscriber(sub), had);
                    fences.retain(|k, _| k.0 != sub);
                }
                Op::IAmAt { .. } | Op::Wait { .. } => {}
            }
            // Expiry first, as its own step (a call expires before it handles its line).
            if let Op::Wait { secs } = op {
                now = Timestamp(now.0 + u64::from(secs) * 1_000_000_000);
            }
            let before = if matches!(op, Op::Fence { .. } | Op::Unfence { .. } | Op::Drop { .. }) {
                // Fence changes at `now` expired what was due before the model's snapshot:
                // take it again.
                prop_assert!(events(&mut n).iter().all(|e| e.1.starts_with("EXIT")));
                inside(&n, &fences)
            } else {
                before
            };
            n.handle_timeout(now);
            let mid = inside(&n, &fences);
            let got: Vec<_> = events(&mut n);
            let want = expected(&before, &mid, &n);
            prop_assert_eq!(got.iter().cloned().collect::<BTreeSet<_>>(), want);
            prop_assert!(got.iter().all(|e| e.1.starts_with("EXIT")));
            if let Op::IAmAt { client, lat, lon, t } = op {
                let time = 1_520_023_920 + u64::from(t);
                let line = format!("IAMAT c{client} {lat:+.6}{lon:+.6} {time}");
                ask(&mut n, None, now, &line);
                let after = inside(&n, &fences);
                let got = events(&mut n);
                let want = expected(&mid, &after, &n);
                prop_assert_eq!(got.len(), want.len(), "{:?}", got);
                prop_assert_eq!(got.iter().cloned().collect::<BTreeSet<_>>(), want);
                // Exits come before enters.
                let first_enter = got.iter().position(|e| e.1.starts_with("ENTER")).unwrap_or(got.len());
                prop_assert!(got[first_enter..].iter().all(|e| e.1.starts_with("ENTER")));
            }
        }
    }
}
