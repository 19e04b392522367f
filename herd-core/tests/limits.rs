//! The node under hostile load: one reconciliation per session, and the limits on client ids,
//! records, record lifetimes and client clocks.

use herd_core::testing::{RecordingPeerSink, SeededIds};
use herd_core::{Node, NodeConfig, PeerError, PeerId, PeerMsg, ServerName, Timestamp};

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
