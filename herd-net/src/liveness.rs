//! Liveness of peer links: when to ping, when a silent link is dead, and the socket options
//! that make the kernel agree.
//!
//! A packet loss without a reset (a cable pulled, a firewall dropping, a partition) leaves a
//! TCP connection open on both sides for as long as TCP keeps retransmitting. So every link
//! checks its peer itself (docs/peer-protocol.md, "Liveness"):
//! - a session's writer sends a ping ([`herd_core::PeerMsg::Ping`], the line `P`) whenever it
//!   has written nothing for [`heartbeat`]; pings need no reply, both sides send them;
//! - a session's reader drops the link when it has received no byte for
//!   [`Limits::peer_timeout`] ([`Silence`]); the dialler then redials;
//! - the sockets get `TCP_USER_TIMEOUT` = `peer_timeout` (unacknowledged data kills the
//!   connection in the kernel too) and TCP keepalive as a backstop ([`tune`]);
//! - a dial's connect is bounded by `peer_timeout`, so a dial into a black hole gives up as
//!   fast as a silent session.

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::limits::Limits;

/// Shortest heartbeat and timeout used, whatever the limits say (a zero would spin).
const FLOOR: Duration = Duration::from_millis(1);

/// The silence after which a link is dropped.
pub fn peer_timeout(limits: &Limits) -> Duration {
    limits.peer_timeout.max(FLOOR)
}

/// The quiet time after which a link sends a ping: `limits.heartbeat`, but at most half the
/// peer timeout, so that a healthy idle link always has a ping in flight before its peer
/// gives up on it.
pub fn heartbeat(limits: &Limits) -> Duration {
    limits.heartbeat.min(peer_timeout(limits) / 2).max(FLOOR)
}

/// Sets a peer socket's `TCP_USER_TIMEOUT` to the peer timeout and turns TCP keepalive on
/// (first probe after the peer timeout, rounded up to whole seconds as the kernel counts
/// them, then every second).
///
/// # Errors
/// The `setsockopt` error.
pub fn tune(stream: &TcpStream, limits: &Limits) -> std::io::Result<()> {
    let sock = SockRef::from(stream);
    let timeout = peer_timeout(limits);
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    sock.set_tcp_user_timeout(Some(timeout))?;
    let idle = Duration::from_secs(timeout.as_millis().div_ceil(1000).max(1) as u64);
    let keepalive = TcpKeepalive::new()
        .with_time(idle)
        .with_interval(Duration::from_secs(1));
    #[cfg(not(any(target_os = "openbsd", target_os = "redox", target_os = "solaris")))]
    let keepalive = keepalive.with_retries(3);
    sock.set_tcp_keepalive(&keepalive)
}

/// The receive side's clock: when the link last heard anything, and when it is due to be
/// declared dead. Reads only note the time; the deadline timer is re-armed when it fires
/// early, so a busy link costs one clock read per read, not one timer reset.
#[derive(Debug, Clone, Copy)]
pub struct Silence {
    heard: Instant,
    timeout: Duration,
}

impl Silence {
    /// A link that heard from its peer just now.
    pub fn new(timeout: Duration) -> Self {
        Self {
            heard: Instant::now(),
            timeout,
        }
    }

    /// Something was received at `now`.
    pub fn heard(&mut self, now: Instant) {
        self.heard = now;
    }

    /// When the link is dead if nothing more is heard.
    pub fn deadline(&self) -> Instant {
        self.heard + self.timeout
    }

    /// Whether the link has heard nothing for the whole timeout at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        now >= self.deadline()
    }

    /// The timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heartbeat_is_at_most_half_the_timeout_and_never_zero() {
        let mut l = Limits::default();
        assert_eq!(heartbeat(&l), Duration::from_millis(250));
        assert_eq!(peer_timeout(&l), Duration::from_millis(1000));
        l.heartbeat = Duration::from_secs(5);
        assert_eq!(heartbeat(&l), Duration::from_millis(500));
        l.heartbeat = Duration::ZERO;
        l.peer_timeout = Duration::ZERO;
        assert_eq!(heartbeat(&l), FLOOR);
        assert_eq!(peer_timeout(&l), FLOOR);
    }

    #[test]
    fn silence_expires_a_timeout_after_the_last_thing_heard() {
        let mut s = Silence::new(Duration::from_millis(100));
        let t0 = Instant::now();
        s.heard(t0);
        assert!(!s.expired(t0 + Duration::from_millis(99)));
        assert!(s.expired(t0 + Duration::from_millis(100)));
        s.heard(t0 + Duration::from_millis(60));
        assert_eq!(s.deadline(), t0 + Duration::from_millis(160));
        assert!(!s.expired(t0 + Duration::from_millis(100)));
    }

    #[tokio::test]
    async fn tune_sets_the_user_timeout_and_keepalive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        tune(&stream, &Limits::default()).unwrap();
        let sock = SockRef::from(&stream);
        assert!(sock.keepalive().unwrap());
        #[cfg(target_os = "linux")]
        {
            assert_eq!(
                sock.tcp_user_timeout().unwrap(),
                Some(Duration::from_millis(1000))
            );
            assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(1));
        }
    }
}
