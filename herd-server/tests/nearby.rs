//! `NEARBY` over real sockets: an update at one server is near-searchable at the farthest
//! one, and classic replies on the same connection keep their bytes.

mod common;

use std::time::Duration;

use common::{all_linked, config_json, eventually, exchange, start, HERD, LINKS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_at_one_server_is_nearby_at_the_farthest() {
    let herd = start(&config_json(&HERD, &LINKS, "")).await;
    all_linked(&herd, &LINKS).await;
    let goloman = herd.server("Goloman").unwrap().local_addr();
    let welsh = herd.server("Welsh").unwrap();
    exchange(
        goloman,
        b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997\n\
          IAMAT boelter +34.069072-118.442781 1520023930.0\n",
    )
    .await;
    assert!(
        eventually(Duration::from_secs(5), || welsh.stats().records == 2).await,
        "the updates reach Welsh"
    );
    let reply = exchange(
        welsh.local_addr(),
        b"NEARBY kiwi.cs.ucla.edu 1 5\nNEARBY POINT +34.069-118.4428 0.1 5\nNEARBY nobody 1 5\nIAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997\n",
    )
    .await;
    let text = String::from_utf8(reply).unwrap();
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(
        lines[0].starts_with("AT Goloman ")
            && lines[0].ends_with(" kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997"),
        "{text}"
    );
    let doc: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(doc["count"], 1);
    assert_eq!(doc["results"][0]["client"], "boelter");
    assert_eq!(doc["results"][0]["distance_m"], 216.7);
    assert_eq!(lines[2], "");
    let point: serde_json::Value = serde_json::from_str(lines[3]).unwrap();
    assert_eq!(point["results"][0]["client"], "boelter");
    assert_eq!(lines[4], "");
    assert_eq!(lines[5], "? NEARBY nobody 1 5");
    assert!(
        lines[6].starts_with("AT Welsh ")
            && lines[6].ends_with(" kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997")
    );
    herd.shutdown().await;
}
