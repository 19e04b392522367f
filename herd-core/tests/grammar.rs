//! Golden tests of the client protocol through the public API: every example and invalid case
//! of PROTOCOL.md, byte for byte.

use herd_core::protocol::{write_whatsat_reply, ClientLine};
use herd_core::testing::{
    block_on_ready, FailingPlaces, RecordingPeerSink, SeededIds, StaticPlaces,
};
use herd_core::{
    parse_client_line, ClientAction, LookupError, MaxItems, Node, NodeConfig, PlacesLookup,
    ServerName, Timestamp,
};

/// The receive time that gives the protocol's example diff of +0.263873386.
const EXAMPLE_NOW: Timestamp = Timestamp(1_520_023_935_182_837_383);

fn node(name: &str) -> Node<RecordingPeerSink> {
    let cfg = NodeConfig::new(ServerName::new(name).unwrap(), Vec::new());
    Node::new(cfg, RecordingPeerSink::default(), &mut SeededIds::new(1))
}

/// Feeds one line and returns exactly the bytes a client would read (for direct replies).
fn reply(n: &mut Node<RecordingPeerSink>, now: Timestamp, line: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let action = n.handle_client_line(now, line, &mut out);
    assert!(
        matches!(action, ClientAction::Replied | ClientAction::Silent),
        "unexpected {action:?}"
    );
    out
}

fn text(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap()
}

#[test]
fn iamat_example_from_the_protocol_is_answered_byte_for_byte() {
    let mut n = node("Goloman");
    let out = reply(
        &mut n,
        EXAMPLE_NOW,
        b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997",
    );
    assert_eq!(
        text(out),
        "AT Goloman +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997\n"
    );
}

#[test]
fn invalid_example_from_the_protocol_echoes_the_line() {
    let mut n = node("Goloman");
    assert_eq!(
        text(reply(&mut n, EXAMPLE_NOW, b"IAMAT Clark +12-118")),
        "? IAMAT Clark +12-118\n"
    );
}

#[test]
fn documented_locations_are_accepted_or_rejected_as_the_protocol_says() {
    let mut n = node("A");
    for ok in ["+34.068930-118.445127", "+34.06893-118.445127", "+34-118"] {
        let line = format!("IAMAT c {ok} 1520023934");
        let out = text(reply(&mut n, EXAMPLE_NOW, line.as_bytes()));
        assert!(out.starts_with("AT A +"), "{ok}: {out}");
        assert!(
            out.ends_with(&format!(" c {ok} 1520023934\n")),
            "{ok}: {out}"
        );
    }
    for bad in [
        "34.0-118.0",
        "+.5-118",
        "+34.-118",
        "+91-118",
        "+34-181",
        "+34",
        "-118",
    ] {
        let line = format!("IAMAT c {bad} 1520023934");
        assert_eq!(
            text(reply(&mut n, EXAMPLE_NOW, line.as_bytes())),
            format!("? {line}\n")
        );
    }
}

#[test]
fn documented_client_times_give_exact_diffs() {
    let mut n = node("A");
    let cases = [
        ("1520023934.918963997", EXAMPLE_NOW.0, "+0.263873386"),
        (
            "1589876543.1234567",
            1_589_876_543_123_456_700,
            "+0.000000000",
        ),
        ("1589876543", 1_589_876_541_500_000_000, "-1.500000000"),
        // Digits beyond the ninth are truncated, not rounded.
        ("1.9999999999", 2_000_000_000, "+0.000000001"),
        // A far-future time of twenty digits.
        ("99999999999999999999", 0, "-99999999999999999999.000000000"),
    ];
    for (time, now, diff) in cases {
        let line = format!("IAMAT c +0+0 {time}");
        let out = text(reply(&mut n, Timestamp(now), line.as_bytes()));
        assert_eq!(out, format!("AT A {diff} c +0+0 {time}\n"));
    }
    for bad in [
        "-1",
        "+1",
        "1e9",
        "1.",
        ".5",
        "123456789012345678901",
        "0x10",
    ] {
        let line = format!("IAMAT c +0+0 {bad}");
        assert_eq!(
            text(reply(&mut n, EXAMPLE_NOW, line.as_bytes())),
            format!("? {line}\n")
        );
    }
}

#[test]
fn any_protocol_white_space_separates_fields_and_the_echo_keeps_it() {
    let mut n = node("A");
    // Tabs, carriage returns, vertical tabs, form feeds and trailing spaces between fields.
    let line = b"\t IAMAT\x0bc\r+1+2\x0c1 \t ";
    assert_eq!(
        text(reply(&mut n, Timestamp(1_000_000_000), line)),
        "AT A +0.000000000 c +1+2 1\n"
    );
    let bad = b"  IAMAT\tc  +1+2 \r";
    assert_eq!(
        reply(&mut n, Timestamp(0), bad),
        b"?   IAMAT\tc  +1+2 \r\n".to_vec()
    );
}

#[test]
fn blank_and_white_space_only_lines_get_no_reply() {
    let mut n = node("A");
    for line in [&b""[..], b" ", b"\t\t", b"\r", b" \x0b\x0c "] {
        let mut out = Vec::new();
        assert_eq!(
            n.handle_client_line(EXAMPLE_NOW, line, &mut out),
            ClientAction::Silent
        );
        assert!(out.is_empty());
    }
}

#[test]
fn wrong_commands_and_field_counts_are_invalid() {
    let mut n = node("A");
    for line in [
        "iamat c +1+1 1",
        "IAMAT c +1+1",
        "IAMAT c +1+1 1 extra",
        "WHATSAT c 10",
        "WHATSAT c 10 5 6",
        "HELLO",
        "AT A +0.000000000 c +1+1 1",
        "U 1 AT A +0.000000000 c +1+1 1",
    ] {
        assert_eq!(
            text(reply(&mut n, EXAMPLE_NOW, line.as_bytes())),
            format!("? {line}\n")
        );
    }
}

#[test]
fn arbitrary_bytes_in_a_client_id_are_kept_verbatim() {
    let mut n = node("A");
    let line = b"IAMAT \xff\xfe\x00caf\xc3\xa9 +1+1 5";
    assert_eq!(
        reply(&mut n, Timestamp(5_000_000_000), line),
        b"AT A +0.000000000 \xff\xfe\x00caf\xc3\xa9 +1+1 5\n".to_vec()
    );
}

#[test]
fn whatsat_limits_follow_the_protocol() {
    let mut n = node("A");
    reply(
        &mut n,
        EXAMPLE_NOW,
        b"IAMAT c +34.068930-118.445127 1520023934.918963997",
    );
    for ok in [
        "WHATSAT c 50 20",
        "WHATSAT c 0.001 1",
        "WHATSAT c 10 5",
        "WHATSAT c 50.000 01",
    ] {
        let mut out = Vec::new();
        let action = n.handle_client_line(EXAMPLE_NOW, ok.as_bytes(), &mut out);
        assert!(
            matches!(action, ClientAction::Places { .. }),
            "{ok}: {action:?}"
        );
        assert!(out.is_empty());
    }
    for bad in [
        "WHATSAT c 0 5",
        "WHATSAT c 50.01 5",
        "WHATSAT c 51 5",
        "WHATSAT c 10 0",
        "WHATSAT c 10 21",
        "WHATSAT c -1 5",
        "WHATSAT c 10 1.5",
        "WHATSAT c .5 5",
    ] {
        assert_eq!(
            text(reply(&mut n, EXAMPLE_NOW, bad.as_bytes())),
            format!("? {bad}\n")
        );
    }
}

#[test]
fn whatsat_for_an_unknown_client_without_neighbours_is_invalid_at_once() {
    let mut n = node("A");
    assert_eq!(
        text(reply(&mut n, EXAMPLE_NOW, b"WHATSAT nobody 10 5")),
        "? WHATSAT nobody 10 5\n"
    );
}

#[test]
fn whatsat_reply_is_the_stored_at_line_then_the_json_then_an_empty_line() {
    let mut n = node("Goloman");
    reply(
        &mut n,
        EXAMPLE_NOW,
        b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997",
    );
    let mut out = Vec::new();
    let ClientAction::Places { record, query } =
        n.handle_client_line(EXAMPLE_NOW, b"WHATSAT kiwi.cs.ucla.edu 10 2", &mut out)
    else {
        panic!("expected a places lookup")
    };
    assert_eq!(
        (
            query.lat,
            query.lon,
            query.radius.metres(),
            query.max_items.get()
        ),
        (34.06893, -118.445127, 10_000.0, 2)
    );
    let places = StaticPlaces::new(serde_json::json!({
        "html_attributions": [],
        "results": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
        "status": "OK",
    }));
    let answer = block_on_ready(places.nearby(&query));
    write_whatsat_reply(record.at_line(), answer, query.max_items, &mut out);
    let want = "AT Goloman +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997\n\
{\n   \"html_attributions\" : [],\n   \"results\" : [\n      {\n         \"name\" : \"a\"\n      },\n      {\n         \"name\" : \"b\"\n      }\n   ],\n   \"status\" : \"OK\"\n}\n\n";
    assert_eq!(text(out), want);
}

#[test]
fn a_failed_lookup_gives_the_unknown_error_json() {
    let failing = FailingPlaces(LookupError::Timeout);
    let q = herd_core::PlacesQuery {
        lat: 0.0,
        lon: 0.0,
        radius: herd_core::RadiusKm::from_km(1.0).unwrap(),
        max_items: MaxItems::new(3).unwrap(),
    };
    let mut out = Vec::new();
    write_whatsat_reply(
        b"AT A +0.000000000 c +0+0 1",
        block_on_ready(failing.nearby(&q)),
        q.max_items,
        &mut out,
    );
    let want = "AT A +0.000000000 c +0+0 1\n{\n   \"html_attributions\" : [],\n   \"results\" : [],\n   \"status\" : \"UNKNOWN_ERROR\",\n   \"error_message\" : \"places service timed out\"\n}\n\n";
    assert_eq!(text(out), want);
}

#[test]
fn an_older_iamat_is_answered_but_not_stored() {
    let mut n = node("A");
    reply(&mut n, Timestamp(10_000_000_000), b"IAMAT c +1+1 10");
    let out = text(reply(&mut n, Timestamp(10_000_000_000), b"IAMAT c +2+2 9"));
    assert_eq!(out, "AT A +1.000000000 c +2+2 9\n");
    assert_eq!(
        n.store().get(b"c").unwrap().at_line(),
        b"AT A +0.000000000 c +1+1 10"
    );
}

#[test]
fn parse_gives_typed_fields() {
    let ClientLine::WhatsAt(w) = parse_client_line(b"WHATSAT kiwi 1.5 07") else {
        panic!("not a WHATSAT")
    };
    assert_eq!(
        (w.client, w.radius.km(), w.max_items.get()),
        (&b"kiwi"[..], 1.5, 7)
    );
}

#[test]
fn the_client_id_of_client_and_peer_lines() {
    use herd_core::peer::update_client_of;
    use herd_core::protocol::client_of;
    assert_eq!(client_of(b"IAMAT  kiwi\t+1+1 5"), Some(&b"kiwi"[..]));
    assert_eq!(client_of(b"WHATSAT k 1 1"), Some(&b"k"[..]));
    assert_eq!(client_of(b"HELLO k"), None);
    assert_eq!(client_of(b"IAMAT"), None);
    assert_eq!(
        update_client_of(b"U 7 AT Goloman +0.1 kiwi +1+1 5"),
        Some(&b"kiwi"[..])
    );
    assert_eq!(update_client_of(b"S 7"), None);
    assert_eq!(update_client_of(b"U 7 AT"), None);
}
