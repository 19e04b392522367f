//! Feeds arbitrary bytes to every parser and to a node, as client and as peer lines.
#![no_main]

use herd_core::testing::{RecordingPeerSink, SeededIds};
use herd_core::{
    parse_client_line, Handshake, Node, NodeConfig, PeerId, PeerMsg, Record, ServerName, Timestamp,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_client_line(data);
    let _ = PeerMsg::parse(data);
    let _ = Handshake::parse(data);
    let _ = Record::parse(data);
    let name = ServerName::new("A").expect("valid name");
    let peer = ServerName::new("B").expect("valid name");
    let mut node = Node::new(NodeConfig::new(name, vec![peer]), RecordingPeerSink::default(), &mut SeededIds::new(1));
    node.handle_link_up(Timestamp(0), PeerId(0));
    let mut out = Vec::new();
    for line in data.split(|&b| b == b'\n') {
        let _ = node.handle_client_line(Timestamp(1), line, &mut out);
        let _ = node.handle_peer_line(Timestamp(2), PeerId(0), line);
    }
    node.handle_timeout(Timestamp(u64::MAX));
});
