//! Property tests: format → parse round trips for every message, and total parsing.

use std::sync::Arc;

use herd_core::peer::{is_handshake, Handshake, PeerMsg};
use herd_core::protocol::{write_iamat, write_invalid, write_whatsat, ClientLine, IAmAt};
use herd_core::testing::{RecordingPeerSink, SeededIds};
use herd_core::{
    parse_client_line, MaxItems, Node, NodeConfig, PeerId, Record, ServerName, TimeDiff, TimeValue,
    Timestamp,
};
use proptest::prelude::*;

fn client_id() -> impl Strategy<Value = Vec<u8>> {
    // Any bytes but the protocol's white space.
    proptest::collection::vec(any::<u8>(), 1..40).prop_map(|v| {
        v.into_iter()
            .map(|b| {
                if herd_core::types::is_space(b) {
                    b'_'
                } else {
                    b
                }
            })
            .collect()
    })
}

fn coord(limit: u32) -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        0..=limit,
        proptest::option::of(proptest::collection::vec(0u8..10, 1..12)),
    )
        .prop_map(move |(neg, int, frac)| {
            let sign = if neg { '-' } else { '+' };
            match frac {
                Some(digits) if int < limit => {
                    let f: String = digits.iter().map(|d| char::from(b'0' + d)).collect();
                    format!("{sign}{int}.{f}")
                }
                _ => format!("{sign}{int}"),
            }
        })
}

fn location() -> impl Strategy<Value = String> {
    (coord(90), coord(180)).prop_map(|(a, b)| format!("{a}{b}"))
}

fn client_time() -> impl Strategy<Value = String> {
    ("[0-9]{1,20}", proptest::option::of("[0-9]{1,15}")).prop_map(|(i, f)| match f {
        Some(f) => format!("{i}.{f}"),
        None => i,
    })
}

fn server_name() -> impl Strategy<Value = ServerName> {
    "[A-Za-z][A-Za-z0-9_.-]{0,20}".prop_map(|s| ServerName::new(&s).unwrap())
}

fn record() -> impl Strategy<Value = Arc<Record>> {
    (
        server_name(),
        client_id(),
        location(),
        client_time(),
        any::<u64>(),
    )
        .prop_map(|(s, c, l, t, now)| {
            let line = [
                b"IAMAT ".as_slice(),
                &c,
                b" ",
                l.as_bytes(),
                b" ",
                t.as_bytes(),
            ]
            .concat();
            let ClientLine::IAmAt(req) = parse_client_line(&line) else {
                panic!(
                    "generated IAMAT did not parse: {:?}",
                    String::from_utf8_lossy(&line)
                )
            };
            Arc::new(Record::from_iamat(&s, Timestamp(now), &req))
        })
}

fn handshake() -> impl Strategy<Value = Handshake> {
    prop_oneof![
        (
            server_name(),
            server_name(),
            any::<u64>(),
            any::<u128>(),
            proptest::option::of(any::<[u8; 32]>())
        )
            .prop_map(|(from, to, epoch, nonce, proof)| Handshake::Hello {
                from,
                to,
                epoch,
                nonce,
                proof
            }),
        proptest::option::of(any::<[u8; 32]>()).prop_map(|proof| Handshake::Auth { proof }),
    ]
}

fn peer_msg() -> impl Strategy<Value = PeerMsg> {
    prop_oneof![
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(epoch, your_epoch, seen)| {
            PeerMsg::Digest {
                epoch,
                your_epoch,
                seen,
            }
        }),
        (any::<u64>(), record()).prop_map(|(seq, record)| PeerMsg::Update { seq, record }),
        any::<u64>().prop_map(|seq| PeerMsg::Synced { seq }),
        (server_name(), any::<u64>(), client_id()).prop_map(|(origin, qid, c)| PeerMsg::Query {
            origin,
            qid,
            client: c.into()
        }),
        (server_name(), any::<u64>(), proptest::option::of(record())).prop_map(
            |(origin, qid, record)| PeerMsg::Answer {
                origin,
                qid,
                record
            }
        ),
        Just(PeerMsg::Ping),
        proptest::collection::vec((any::<u64>(), record()), 1..4).prop_map(|v| {
            PeerMsg::Announce {
                entries: v
                    .iter()
                    .map(|(seq, r)| herd_core::peer::Announcement::of(*seq, r))
                    .collect(),
            }
        }),
        client_id().prop_map(|c| PeerMsg::Graft { client: c.into() }),
        server_name().prop_map(|n| PeerMsg::Prune {
            origin: n.as_str().as_bytes().into()
        }),
    ]
}

proptest! {
    #[test]
    fn iamat_round_trips(c in client_id(), l in location(), t in client_time()) {
        let mut line = Vec::new();
        write_iamat(&c, l.as_bytes(), t.as_bytes(), &mut line);
        let ClientLine::IAmAt(IAmAt { client, location, time, time_value, .. }) =
            parse_client_line(line.strip_suffix(b"\n").unwrap()) else {
            return Err(TestCaseError::fail("not an IAMAT"));
        };
        prop_assert_eq!(client, &c[..]);
        prop_assert_eq!(location, l.as_bytes());
        prop_assert_eq!(time, t.as_bytes());
        prop_assert_eq!(time_value, TimeValue::parse(t.as_bytes()).unwrap());
    }

    #[test]
    fn whatsat_round_trips(c in client_id(), r in 1u32..=50_000, m in 1u8..=20) {
        let radius = format!("{}.{:03}", r / 1000, r % 1000);
        let mut line = Vec::new();
        write_whatsat(&c, &radius, MaxItems::new(m).unwrap(), &mut line);
        let ClientLine::WhatsAt(w) = parse_client_line(line.strip_suffix(b"\n").unwrap()) else {
            return Err(TestCaseError::fail("not a WHATSAT"));
        };
        prop_assert_eq!(w.client, &c[..]);
        prop_assert_eq!(w.max_items.get(), usize::from(m));
        prop_assert!((w.radius.km() * 1000.0 - f64::from(r)).abs() < 1e-6);
    }

    #[test]
    fn at_lines_round_trip(r in record()) {
        let back = Record::parse(r.at_line()).unwrap();
        prop_assert_eq!(&back, &*r);
    }

    #[test]
    fn time_diffs_round_trip(ns in any::<i64>()) {
        let d = TimeDiff(i128::from(ns));
        let mut s = Vec::new();
        d.write_to(&mut s);
        prop_assert_eq!(TimeDiff::parse(&s).unwrap(), d);
    }

    #[test]
    fn peer_messages_round_trip(m in peer_msg()) {
        let line = m.to_line();
        prop_assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let back = PeerMsg::parse(line.strip_suffix(b"\n").unwrap()).unwrap();
        prop_assert_eq!(back, m);
    }

    #[test]
    fn handshake_messages_round_trip(m in handshake()) {
        let line = m.to_line();
        prop_assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let line = line.strip_suffix(b"\n").unwrap();
        prop_assert!(is_handshake(line));
        let back = Handshake::parse(line).unwrap();
        prop_assert_eq!(back, m);
        // After the handshake, a handshake line is a protocol error.
        prop_assert!(PeerMsg::parse(line).is_err());
    }

    #[test]
    fn invalid_reply_is_the_line_verbatim(line in proptest::collection::vec(any::<u8>(), 0..200)) {
        let line: Vec<u8> = line.into_iter().filter(|&b| b != b'\n').collect();
        let mut out = Vec::new();
        write_invalid(&line, &mut out);
        prop_assert_eq!(&out[..2], b"? ");
        prop_assert_eq!(&out[2..out.len() - 1], &line[..]);
    }

    #[test]
    fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_client_line(&bytes);
        let _ = PeerMsg::parse(&bytes);
        let _ = Handshake::parse(&bytes);
        let _ = Record::parse(&bytes);
        let cfg = NodeConfig::new(ServerName::new("A").unwrap(), vec![ServerName::new("B").unwrap()]);
        let mut node = Node::new(cfg, RecordingPeerSink::default(), &mut SeededIds::new(3));
        node.handle_link_up(Timestamp(0), PeerId(0));
        let mut out = Vec::new();
        let _ = node.handle_client_line(Timestamp(0), &bytes, &mut out);
        let _ = node.handle_peer_line(Timestamp(0), PeerId(0), &bytes);
    }

    #[test]
    fn mutated_valid_lines_never_panic(r in record(), cut in 0usize..120, b in any::<u8>()) {
        let mut line = [b"U 7 ".as_slice(), r.at_line()].concat();
        let i = cut.min(line.len() - 1);
        line[i] = b;
        let _ = PeerMsg::parse(&line);
        let mut client = [b"IAMAT ".as_slice(), r.client(), b" +1+1 1"].concat();
        let j = cut.min(client.len() - 1);
        client[j] = b;
        let _ = parse_client_line(&client);
    }
}
