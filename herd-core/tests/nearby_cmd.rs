//! `NEARBY` (a herd extension) on a node: the reply layouts byte for byte, the invalid
//! forms, expiry, and the classic commands untouched.

use std::time::Duration;

use herd_core::testing::{RecordingPeerSink, SeededIds};
use herd_core::{ClientAction, Node, NodeConfig, ServerName, Timestamp};

fn node(index: bool, ttl: Option<Duration>) -> Node<RecordingPeerSink> {
    let mut cfg = NodeConfig::new(ServerName::new("Goloman").unwrap(), vec![]);
    cfg.nearby_index = index;
    cfg.record_ttl = ttl;
    Node::new(cfg, RecordingPeerSink::default(), &mut SeededIds::new(1))
}

/// Server time 1520023940 s.
const NOW: Timestamp = Timestamp(1_520_023_940_000_000_000);

fn ask(n: &mut Node<RecordingPeerSink>, line: &str) -> String {
    let mut out = Vec::new();
    let action = n.handle_client_line(NOW, line.as_bytes(), &mut out);
    assert_eq!(action, ClientAction::Replied, "{line}");
    String::from_utf8(out).unwrap()
}

fn seed(n: &mut Node<RecordingPeerSink>) {
    for line in [
        "IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997",
        "IAMAT boelter +34.069072-118.442781 1520023930.0",
        "IAMAT royce +34.072840-118.441934 1520023920.5",
        "IAMAT santa-monica +34.019454-118.491191 1520023900.0",
    ] {
        ask(n, line);
    }
}

#[test]
fn nearby_a_client_gives_its_at_line_then_one_json_line_then_an_empty_line() {
    for index in [true, false] {
        let mut n = node(index, None);
        seed(&mut n);
        let reply = ask(&mut n, "NEARBY kiwi.cs.ucla.edu 1 50");
        let want = "AT Goloman +5.081036003 kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997\n\
{\"center\":{\"lat\":34.06893,\"lng\":-118.445127},\"radius_km\":1.0,\"count\":2,\"results\":[\
{\"client\":\"boelter\",\"at\":\"AT Goloman +10.000000000 boelter +34.069072-118.442781 1520023930.0\",\"distance_m\":216.7,\"age_s\":10.0},\
{\"client\":\"royce\",\"at\":\"AT Goloman +19.500000000 royce +34.072840-118.441934 1520023920.5\",\"distance_m\":524.9,\"age_s\":19.5}]}\n\n";
        assert_eq!(reply, want, "index {index}");
        // Five kilometres reach Santa Monica? No: it is about 6.9 km away. Fifty do.
        assert!(!ask(&mut n, "NEARBY kiwi.cs.ucla.edu 5 50").contains("santa-monica"));
        let far = ask(&mut n, "NEARBY kiwi.cs.ucla.edu 50 2");
        assert!(
            far.contains("\"count\":2") && !far.contains("santa-monica"),
            "cut to the 2 nearest"
        );
    }
}

#[test]
fn nearby_a_point_gives_the_json_line_then_an_empty_line() {
    let mut n = node(true, None);
    seed(&mut n);
    let reply = ask(&mut n, "NEARBY POINT +34.0690-118.4428 0.05 10");
    assert_eq!(
        reply,
        "{\"center\":{\"lat\":34.069,\"lng\":-118.4428},\"radius_km\":0.05,\"count\":1,\"results\":[\
{\"client\":\"boelter\",\"at\":\"AT Goloman +10.000000000 boelter +34.069072-118.442781 1520023930.0\",\"distance_m\":8.2,\"age_s\":10.0}]}\n\n"
    );
    assert_eq!(
        ask(&mut n, "NEARBY POINT +0+0 1 1"),
        "{\"center\":{\"lat\":0.0,\"lng\":0.0},\"radius_km\":1.0,\"count\":0,\"results\":[]}\n\n"
    );
    // A client called POINT still works in the client form (four fields).
    ask(&mut n, "IAMAT POINT +34.068930-118.445127 1520023934.0");
    assert!(ask(&mut n, "NEARBY POINT 1 5").contains("\"client\":\"kiwi.cs.ucla.edu\""));
}

#[test]
fn invalid_nearby_lines_are_answered_with_the_line() {
    let mut n = node(true, None);
    seed(&mut n);
    for bad in [
        "NEARBY",
        "NEARBY kiwi.cs.ucla.edu",
        "NEARBY kiwi.cs.ucla.edu 1",
        "NEARBY kiwi.cs.ucla.edu 0 5",
        "NEARBY kiwi.cs.ucla.edu 51 5",
        "NEARBY kiwi.cs.ucla.edu -1 5",
        "NEARBY kiwi.cs.ucla.edu 1 0",
        "NEARBY kiwi.cs.ucla.edu 1 1001",
        "NEARBY kiwi.cs.ucla.edu 1 5x",
        "NEARBY kiwi.cs.ucla.edu 1 5 6",
        "NEARBY nobody 1 5",
        "NEARBY POINT +91+0 1 5",
        "NEARBY POINT 34.0-118.4 1 5",
        "NEARBY PLACE +34-118 1 5",
        "NEARBY POINT +34-118 1 5 6",
        "nearby kiwi.cs.ucla.edu 1 5",
    ] {
        assert_eq!(ask(&mut n, bad), format!("? {bad}\n"), "{bad}");
    }
    assert_eq!(n.stats().invalid, 16);
    assert!(ask(&mut n, "NEARBY kiwi.cs.ucla.edu 1 0001").contains("\"count\":1"));
    assert!(ask(&mut n, "NEARBY kiwi.cs.ucla.edu 1 1000").contains("\"count\":2"));
    assert!(ask(&mut n, "NEARBY\tkiwi.cs.ucla.edu  0.5 1000").contains("\"count\":1"));
    assert_eq!(n.stats().nearbys, 3);
}

#[test]
fn expired_records_leave_nearby_results() {
    let mut n = node(true, Some(Duration::from_secs(15)));
    seed(&mut n);
    // At NOW, records with client time before 1520023925 have expired: royce (…920.5) and
    // santa-monica.
    let reply = ask(&mut n, "NEARBY POINT +34.07-118.44 50 50");
    assert!(reply.contains("\"count\":2"), "{reply}");
    assert!(!reply.contains("royce") && !reply.contains("santa-monica"));
}

#[test]
fn the_classic_replies_are_unchanged_by_the_index() {
    let (mut with, mut without) = (node(true, None), node(false, None));
    for line in [
        "IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997",
        "IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997",
        "WHATSAT nobody 10 5",
        "IAMAT bad",
    ] {
        assert_eq!(ask(&mut with, line), ask(&mut without, line));
    }
}
