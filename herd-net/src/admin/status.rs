//! The status page's data: `/status` (this server), `/herd` (every server, each asked at its
//! own admin listener) and `/map` (the world outline).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{AUTHORIZATION, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;

use super::{Admin, MAX_SHOWN_CLIENTS};

/// The largest `/status` answer `/herd` reads from another server.
const MAX_STATUS_BYTES: usize = 4 << 20;

/// This server's view: build, readiness, links, counters and up to [`MAX_SHOWN_CLIENTS`]
/// clients.
pub(super) fn status(admin: &Admin) -> Value {
    let stats = admin.driver.stats();
    let (records, total) = admin.driver.sample_records(MAX_SHOWN_CLIENTS);
    let shown: Vec<Value> = records
        .iter()
        .map(|r| {
            let id = String::from_utf8_lossy(r.client());
            let time = r.time().as_nanos() as f64 / 1e9;
            json!([id, r.lat(), r.lon(), time])
        })
        .collect();
    let mut stats_json = stats.to_json();
    let links = stats_json
        .as_object_mut()
        .and_then(|o| o.remove("links"))
        .unwrap_or(Value::Array(Vec::new()));
    json!({
        "server": stats.server.as_str(),
        "version": admin.spec.build.version,
        "commit": admin.spec.build.commit,
        "uptime_s": admin.started.elapsed().as_secs_f64(),
        "ready": admin.driver.ready(),
        "links": links,
        "stats": stats_json,
        "clients": {"total": total, "shown": shown},
    })
}

/// Every configured server with its `/status` (asked at its admin listener; this server's
/// own is made here), and the configured links.
pub(super) async fn herd(admin: &Admin) -> Value {
    let config = admin.config();
    let me = admin.driver.name().clone();
    let wait = admin.spec.limits.peer_status_timeout;
    let mut asks = tokio::task::JoinSet::new();
    for (i, m) in config.servers.iter().enumerate() {
        if m.name == me {
            continue;
        }
        if let Some(addr) = m.admin.clone() {
            let token = config.token.clone();
            asks.spawn(async move { (i, fetch_status(&addr, token.as_deref(), wait).await) });
        }
    }
    let mut statuses: Vec<Option<Value>> = vec![None; config.servers.len()];
    while let Some(done) = asks.join_next().await {
        if let Ok((i, v)) = done {
            statuses[i] = v;
        }
    }
    let servers: Vec<Value> = config
        .servers
        .iter()
        .zip(statuses)
        .map(|(m, fetched)| {
            let status = if m.name == me {
                Some(status(admin))
            } else {
                fetched
            };
            json!({
                "name": m.name.as_str(),
                "addr": m.addr,
                "admin": m.admin,
                "reachable": status.is_some(),
                "status": status,
            })
        })
        .collect();
    let links: Vec<Value> = config
        .links
        .iter()
        .map(|(a, b)| json!([a.as_str(), b.as_str()]))
        .collect();
    json!({"self": me.as_str(), "servers": servers, "links": links})
}

/// `GET /status` of the admin listener at `addr`, within `wait`; `None` on any failure.
async fn fetch_status(addr: &str, token: Option<&str>, wait: Duration) -> Option<Value> {
    let ask = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        let conn = tokio::spawn(conn);
        let mut req = Request::get("/status").header(HOST, addr);
        if let Some(t) = token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = sender
            .send_request(req.body(Empty::<Bytes>::new()).ok()?)
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body = Limited::new(resp.into_body(), MAX_STATUS_BYTES)
            .collect()
            .await
            .ok()?
            .to_bytes();
        drop(sender);
        conn.abort();
        serde_json::from_slice(&body).ok()
    };
    tokio::time::timeout(wait, ask).await.ok().flatten()
}

/// `/map`'s body: `{"places": [[lat, lon], ...]}`, coordinates to 0.1°.
pub(super) fn map_json(points: &[[f32; 2]]) -> String {
    let mut s = String::with_capacity(points.len() * 14 + 16);
    s.push_str("{\"places\":[");
    for (i, [lat, lon]) in points.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!("[{lat:.1},{lon:.1}]"));
    }
    s.push_str("]}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_is_json_with_rounded_points() {
        let v: Value =
            serde_json::from_str(&map_json(&[[51.51, -0.12], [-33.87, 151.21]])).unwrap();
        assert_eq!(v, json!({"places": [[51.5, -0.1], [-33.9, 151.2]]}));
        let empty: Value = serde_json::from_str(&map_json(&[])).unwrap();
        assert_eq!(empty, json!({"places": []}));
    }
}
