//! Node behaviour at the edges of a link's life.

use herd_core::testing::{RecordingPeerSink, SeededIds};
use herd_core::{
    ClientAction, Node, NodeConfig, NodeEvent, PeerId, PeerMsg, ServerName, Timestamp,
};

fn name(s: &str) -> ServerName {
    ServerName::new(s).unwrap()
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
    a.handle_peer_msg(
        Timestamp(2),
        PeerId(0),
        PeerMsg::Digest {
            epoch: 9,
            your_epoch: 0,
            seen: 0,
        },
    );
    a.handle_peer_msg(
        Timestamp(2),
        PeerId(0),
        PeerMsg::Update {
            seq: 1,
            record: record.clone(),
        },
    );
    a.handle_peer_msg(Timestamp(2), PeerId(0), PeerMsg::Synced { seq: 1 });
    a.handle_peer_msg(
        Timestamp(3),
        PeerId(0),
        PeerMsg::Answer {
            origin,
            qid,
            record: Some(record.clone()),
        },
    );
    assert_eq!(
        a.poll_event(),
        Some(NodeEvent::QueryDone {
            ticket,
            record: Some(record)
        })
    );
    assert!(out.is_empty());
}
