//! The configurable limits of one server, with their documented defaults.

use std::time::Duration;

/// Default maximum client line length: 64 KiB.
pub const DEFAULT_MAX_LINE_BYTES: usize = crate::codec::DEFAULT_MAX_LINE;
/// Default maximum number of simultaneous client connections.
pub const DEFAULT_MAX_CLIENTS: usize = 10_000;
/// Default idle time after which a silent client connection is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default time a client line may take to arrive in full, counted from its first byte: 10 s.
///
/// A byte does not restart it (unlike [`DEFAULT_IDLE_TIMEOUT`]), so a client dripping a line
/// a byte at a time (slowloris) holds its connection at most this long per line. A phone on a
/// poor link sends a ~100-byte line in one segment; 10 s covers several retransmissions.
pub const DEFAULT_LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default maximum number of simultaneous client connections from one source address: 256.
///
/// One address (IPv6: one /64 network) can then hold at most 1/40 of the default
/// [`DEFAULT_MAX_CLIENTS`]: filling the server takes 40 addresses, not one. It stays far
/// above what honest clients need even behind a carrier-grade NAT that puts thousands of
/// phones behind one address: a classic client holds its connection for one request, a few
/// milliseconds, so hundreds of them are rarely open at the same moment.
pub const DEFAULT_MAX_CLIENTS_PER_IP: usize = 256;
/// Default longest logged client line or reply: 512 bytes of its escaped form, then
/// `…(N bytes)` with its full length. A line of 64 KiB then costs half a KiB of log, not 64.
pub const DEFAULT_LOG_LINE_BYTES: usize = 512;
/// Default bound on bytes queued for one peer before its link is dropped: 64 MiB (about
/// half a second of the fastest flood measured, 125k updates/s of ~100 bytes, to every link).
///
/// A reconciliation delta does not count against it: it is queued a window at a time.
pub const DEFAULT_PEER_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// Default lag (bytes sent to a neighbour and not yet written) past which a link stops
/// taking live updates and is caught up from the store: 4 MiB (some forty thousand updates;
/// above the reconciliation window, so a paced delta alone never sets it off).
pub const DEFAULT_PEER_CATCH_UP_BYTES: usize = herd_core::node::DEFAULT_CATCH_UP_BYTES;
/// Default reconciliation window: a delta is queued for a neighbour while less than 1 MiB is
/// waiting for it; the rest follows as the link's writer takes the queue.
pub const DEFAULT_RESYNC_WINDOW_BYTES: usize = herd_core::node::DEFAULT_RESYNC_WINDOW;
/// Default size (lines) below which a journal is never compacted.
pub const DEFAULT_JOURNAL_COMPACT_LINES: u64 = crate::journal::COMPACT_FLOOR;
/// Default time a Places lookup may take before the WHATSAT gets the `UNKNOWN_ERROR` JSON.
pub const DEFAULT_PLACES_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time shutdown waits for replies in flight before giving up.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Default quiet time after which a peer link sends a ping (`P`, docs/peer-protocol.md).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(250);
/// Default silence after which a peer link is dropped and redialled; also its sockets'
/// `TCP_USER_TIMEOUT` and a dial's connect timeout.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_millis(1000);
/// Longest peer line accepted: a peer line carries an AT line built from a client line.
pub const PEER_LINE_SLACK: usize = 1024;
/// Default longest client id: 256 bytes ([`herd_core::node::DEFAULT_MAX_CLIENT_ID_BYTES`]).
pub const DEFAULT_MAX_CLIENT_ID_BYTES: usize = herd_core::node::DEFAULT_MAX_CLIENT_ID_BYTES;
/// Bytes of memory one stored record is assumed to cost when [`default_max_records`] sizes
/// the store: 400, about 4.5 times the 85–90 bytes per client measured at a million clients
/// (bench/README.md, T7: the store, its index and the allocator's slack; it was ~190 before
/// the store packed its lines), to leave room for long client ids and locations, lines that do
/// not pack, the journal's buffers, peer queues and a reconciliation's snapshot.
pub const BYTES_PER_RECORD: u64 = 400;
/// The share of the machine's memory [`default_max_records`] lets the store use: one half.
pub const MEMORY_SHARE_DIVISOR: u64 = 2;
/// The store bound used when the machine's memory cannot be read: 5 million records (2 GB at
/// [`BYTES_PER_RECORD`]).
pub const FALLBACK_MAX_RECORDS: usize = 5_000_000;
/// Default record lifetime: none (`None`), records live until replaced.
pub const DEFAULT_RECORD_TTL: Option<Duration> = None;
/// Default bound on how far ahead of the server's clock a client's time may be: none (`None`).
pub const DEFAULT_MAX_FUTURE_SKEW: Option<Duration> = None;
/// Default most fences one client connection holds: 100.
pub const DEFAULT_MAX_FENCES_PER_CONNECTION: usize =
    herd_core::node::DEFAULT_MAX_FENCES_PER_SUBSCRIBER;
/// Default most fences one server holds: 100,000.
pub const DEFAULT_MAX_FENCES: usize = herd_core::node::DEFAULT_MAX_FENCES;
/// Default most fence events waiting for one connection: 10,000 lines (about a megabyte).
/// A connection that lets more pile up (it does not read) is closed, and its fences end.
pub const DEFAULT_FENCE_QUEUE_LINES: usize = 10_000;

/// The default store bound: half the memory this process may use at [`BYTES_PER_RECORD`]
/// bytes a record, computed once per process.
///
/// The memory is the smaller of `MemTotal` in `/proc/meminfo` and the cgroup v2 limit
/// (`/sys/fs/cgroup/memory.max`, or v1's `memory.limit_in_bytes`) when one is set; when
/// neither can be read it is [`FALLBACK_MAX_RECORDS`]. A 16 GiB machine thus holds about
/// 21 million clients; a container limited to 512 MiB about 670 thousand.
pub fn default_max_records() -> usize {
    static CELL: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CELL.get_or_init(|| records_for_memory(memory_limit_bytes()))
}

/// The store bound for `memory` bytes (`None`: unknown): see [`default_max_records`].
pub fn records_for_memory(memory: Option<u64>) -> usize {
    match memory {
        None => FALLBACK_MAX_RECORDS,
        Some(bytes) => {
            let n = bytes / MEMORY_SHARE_DIVISOR / BYTES_PER_RECORD;
            usize::try_from(n).unwrap_or(usize::MAX).max(1)
        }
    }
}

/// The memory this process may use: the smaller of the machine's and its cgroup's limit.
fn memory_limit_bytes() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_meminfo_total(&t));
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .and_then(|t| parse_cgroup_limit(&t));
    match (total, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `MemTotal` of a `/proc/meminfo` text, in bytes.
fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut fields = line["MemTotal:".len()..].split_whitespace();
    let n: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") | None => n.checked_mul(1024),
        Some(_) => None,
    }
}

/// A cgroup memory limit file's value in bytes; `None` for `max` (no limit) or v1's
/// "unlimited" (a huge number).
fn parse_cgroup_limit(text: &str) -> Option<u64> {
    let n: u64 = text.trim().parse().ok()?;
    (n < 1 << 60).then_some(n)
}

/// Limits of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest client line (terminator excluded); a longer line closes the connection.
    pub max_line_bytes: usize,
    /// Most client connections at once; a connection over it is closed at once.
    pub max_clients: usize,
    /// A client connection with no input and no reply pending for this long is closed.
    pub idle_timeout: Duration,
    /// A client line must be complete this long after its first byte arrived, or the
    /// connection is closed; later bytes do not restart it.
    pub line_timeout: Duration,
    /// Most client connections at once from one source address (IPv6: one /64); a
    /// connection over it is closed at once. Peers stop counting once identified.
    pub max_clients_per_ip: usize,
    /// Longest logged client line or reply (bytes of its escaped form); a longer one is cut
    /// and its full length noted.
    pub log_line_bytes: usize,
    /// Most bytes queued for one peer; on overflow the link is dropped and later reconciled.
    pub peer_queue_bytes: usize,
    /// A reconciliation delta is queued for a peer only while less than this is waiting for
    /// it (in effect at most a quarter of `peer_queue_bytes`; see [`Limits::resync_window`]).
    pub resync_window_bytes: usize,
    /// When more than this many bytes sent to a neighbour are not written yet (queued, or
    /// taken by the link's writer), the link stops taking live updates: what the store takes
    /// meanwhile goes as a paced delta from its log, as in a reconciliation, so a client
    /// updated many times while the link is behind is sent once ([`herd_core::NodeConfig::catch_up_bytes`]).
    /// 0: never.
    pub peer_catch_up_bytes: usize,
    /// A journal is compacted when it holds more than twice the store's records and at
    /// least this many lines.
    pub journal_compact_lines: u64,
    /// Longest wait for a Places answer.
    pub places_timeout: Duration,
    /// Longest wait, at shutdown, for replies in flight and links to flush.
    pub shutdown_grace: Duration,
    /// A peer link that has sent nothing for this long sends a ping (at most half of
    /// `peer_timeout` is used).
    pub heartbeat: Duration,
    /// A peer link that has received nothing for this long is dropped and redialled.
    pub peer_timeout: Duration,
    /// Longest client id (bytes); a client line with a longer one is answered `? <line>`, a
    /// peer's record with one is not stored.
    pub max_client_id_bytes: usize,
    /// Most clients in the store (default [`default_max_records`]); a record for a new
    /// client beyond it is answered (an IAMAT) but not stored, and logged at `warn`.
    pub max_records: usize,
    /// How long after its client time a record expires and leaves the store (`None`: never).
    pub record_ttl: Option<Duration>,
    /// How far ahead of the server's clock an IAMAT's client time may be and still be stored
    /// (`None`: any).
    pub max_future_skew: Option<Duration>,
    /// Whether the store keeps its nearby index for `NEARBY` (default `true`; without it
    /// `NEARBY` scans the store). Read at start.
    pub nearby_index: bool,
    /// Most fences one client connection holds; a FENCE beyond it is answered `? <line>`.
    pub max_fences_per_connection: usize,
    /// Most fences the server holds; a FENCE beyond it is answered `? <line>`.
    pub max_fences: usize,
    /// Most fence events waiting for one connection; when its queue is full the connection
    /// is closed (counted and logged) rather than slowing the server.
    pub fence_queue_lines: usize,
    /// How stored records reach the other servers (default the broadcast tree; see
    /// [`herd_core::Dissemination`]). Read at start.
    pub dissemination: herd_core::Dissemination,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            max_clients: DEFAULT_MAX_CLIENTS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            line_timeout: DEFAULT_LINE_TIMEOUT,
            max_clients_per_ip: DEFAULT_MAX_CLIENTS_PER_IP,
            log_line_bytes: DEFAULT_LOG_LINE_BYTES,
            peer_queue_bytes: DEFAULT_PEER_QUEUE_BYTES,
            resync_window_bytes: DEFAULT_RESYNC_WINDOW_BYTES,
            peer_catch_up_bytes: DEFAULT_PEER_CATCH_UP_BYTES,
            journal_compact_lines: DEFAULT_JOURNAL_COMPACT_LINES,
            places_timeout: DEFAULT_PLACES_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            heartbeat: DEFAULT_HEARTBEAT,
            peer_timeout: DEFAULT_PEER_TIMEOUT,
            max_client_id_bytes: DEFAULT_MAX_CLIENT_ID_BYTES,
            max_records: default_max_records(),
            record_ttl: DEFAULT_RECORD_TTL,
            max_future_skew: DEFAULT_MAX_FUTURE_SKEW,
            nearby_index: true,
            max_fences_per_connection: DEFAULT_MAX_FENCES_PER_CONNECTION,
            max_fences: DEFAULT_MAX_FENCES,
            fence_queue_lines: DEFAULT_FENCE_QUEUE_LINES,
            dissemination: herd_core::Dissemination::Tree,
        }
    }
}

impl Limits {
    /// The longest peer line accepted under these limits.
    pub fn max_peer_line(&self) -> usize {
        self.max_line_bytes.saturating_add(PEER_LINE_SLACK)
    }

    /// The reconciliation window in effect: `resync_window_bytes`, but at most a quarter of
    /// `peer_queue_bytes`, so that a delta always leaves room in the queue for live updates.
    pub fn resync_window(&self) -> usize {
        self.resync_window_bytes.min(self.peer_queue_bytes / 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_bound_is_half_the_memory_at_400_bytes_a_record() {
        assert_eq!(records_for_memory(Some(16 << 30)), 21_474_836);
        assert_eq!(records_for_memory(Some(512 << 20)), 671_088);
        assert_eq!(records_for_memory(Some(10)), 1, "never 0");
        assert_eq!(records_for_memory(None), FALLBACK_MAX_RECORDS);
        assert!(default_max_records() > 0);
        assert_eq!(Limits::default().max_records, default_max_records());
    }

    #[test]
    fn memory_files_are_read_in_bytes_and_no_limit_is_none() {
        let meminfo = "MemTotal:        8048576 kB\nMemFree:  1 kB\n";
        assert_eq!(parse_meminfo_total(meminfo), Some(8_048_576 * 1024));
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_cgroup_limit("536870912\n"), Some(512 << 20));
        assert_eq!(parse_cgroup_limit("max\n"), None);
        assert_eq!(
            parse_cgroup_limit("9223372036854771712\n"),
            None,
            "v1 unlimited"
        );
    }
}
