//! The store's cheap reads (`time_of`, `position`, `contains`) agree with the record `get`
//! builds, for lines that pack and lines that do not.

use herd_core::protocol::ClientLine;
use herd_core::{parse_client_line, LocationStore, Record, ServerName, Timestamp};
use proptest::prelude::*;

fn record(client: &str, loc: &str, time: &str) -> Record {
    let line = format!("IAMAT {client} {loc} {time}");
    let ClientLine::IAmAt(req) = parse_client_line(line.as_bytes()) else {
        panic!("valid line: {line}")
    };
    Record::from_iamat(
        &ServerName::new("Goloman").unwrap(),
        Timestamp(1_520_023_940_000_000_000),
        &req,
    )
}

proptest! {
    #[test]
    fn cheap_reads_agree_with_the_built_record(
        entries in prop::collection::vec(
            (
                "[a-z0-9.é-]{1,12}",
                -90.0..90.0f64,
                -180.0..180.0f64,
                prop_oneof![
                    (0u64..4_000_000_000).prop_map(|s| s.to_string()),
                    (0u64..4_000_000_000, 0u32..1_000_000_000).prop_map(|(s, n)| format!("{s}.{n:09}")),
                    (0u64..9, "[0-9]{1,20}").prop_map(|(s, f)| format!("{s}.{f}")),
                    "[0-9]{15,20}(\\.[0-9]{1,12})?",
                ],
            ),
            1..40,
        )
    ) {
        let mut store = LocationStore::new(1);
        for (client, lat, lon, time) in &entries {
            let _ = store.offer(std::sync::Arc::new(record(client, &format!("{lat:+.6}{lon:+.6}"), time)));
        }
        for (client, ..) in &entries {
            let held = store.get(client.as_bytes()).expect("held");
            prop_assert_eq!(store.time_of(client.as_bytes()), Some(held.time()));
            prop_assert_eq!(store.position(client.as_bytes()), Some(held.position()));
            prop_assert!(store.contains(client.as_bytes()));
        }
        prop_assert_eq!(store.time_of(b"nobody-here"), None);
        prop_assert_eq!(store.position(b"nobody-here"), None);
    }
}
