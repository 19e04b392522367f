//! The process's open-file limit, fitted to the client limit at start.
//!
//! Every client connection is a file descriptor. The soft `RLIMIT_NOFILE` is often 1024 while
//! the hard one is far higher, so at start the soft limit is raised to the hard one
//! ([`raise`], once per process). When even that leaves too few descriptors for
//! `max_clients` connections per server plus what the rest needs ([`reserved`]: listeners,
//! journal, log files, links, Places connections), [`fit`] says how many client connections
//! do fit: the caller lowers the effective `max_clients` to that and says so in one line,
//! rather than letting `accept` fail with `EMFILE` under load.

use std::sync::OnceLock;

/// Descriptors a process needs besides its servers': standard streams, the runtime's poller
/// and wakers, the blocking pool's files, a few spare.
pub const FDS_PER_PROCESS: u64 = 64;
/// Descriptors one server needs besides its client connections and links: its listener and
/// stats listener, its journal (file, lock, compaction's new file), its log file, spare.
pub const FDS_PER_SERVER: u64 = 16;
/// Descriptors per neighbour: a dialled and an accepted connection may be open at once.
pub const FDS_PER_NEIGHBOUR: u64 = 2;

/// The open-file limit as found at start and as raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit found.
    pub before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard one, the first time it is called in the
/// process; returns what it found and made (the same on every later call). When the limit
/// cannot be read or raised, what it is now is returned (unknown: `u64::MAX`, no limit).
pub fn raise() -> OpenFiles {
    static DONE: OnceLock<OpenFiles> = OnceLock::new();
    *DONE.get_or_init(|| {
        let Ok((soft, hard)) = rlimit::Resource::NOFILE.get() else {
            return OpenFiles {
                before: u64::MAX,
                soft: u64::MAX,
                hard: u64::MAX,
            };
        };
        let raised = soft < hard && rlimit::Resource::NOFILE.set(hard, hard).is_ok();
        OpenFiles {
            before: soft,
            soft: if raised { hard } else { soft },
            hard,
        }
    })
}

/// Descriptors needed besides client connections by a process running servers with these
/// neighbour counts, plus `extra` (the Places backend's connections, say).
pub fn reserved(neighbours: &[usize], extra: u64) -> u64 {
    neighbours
        .iter()
        .map(|&n| FDS_PER_SERVER + FDS_PER_NEIGHBOUR * n as u64)
        .fold(FDS_PER_PROCESS.saturating_add(extra), u64::saturating_add)
}

/// The most client connections per server, at most `max_clients`, that `servers` servers can
/// hold at once within `soft` descriptors of which `reserved` are needed otherwise; at
/// least 1.
pub fn fit(soft: u64, reserved: u64, servers: usize, max_clients: usize) -> usize {
    let servers = servers.max(1) as u64;
    let each = soft.saturating_sub(reserved) / servers;
    usize::try_from(each)
        .unwrap_or(usize::MAX)
        .clamp(1, max_clients.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_fit_in_what_the_rest_leaves_shared_by_the_servers() {
        assert_eq!(reserved(&[], 0), FDS_PER_PROCESS);
        assert_eq!(reserved(&[3, 1], 10), 64 + 10 + 16 * 2 + 2 * 4);
        assert_eq!(fit(20_000, 200, 1, 10_000), 10_000, "fits");
        assert_eq!(fit(1024, 124, 1, 10_000), 900);
        assert_eq!(fit(1024, 124, 2, 10_000), 450);
        assert_eq!(fit(100, 124, 1, 10_000), 1, "never 0");
        assert_eq!(fit(u64::MAX, 124, 1, 10_000), 10_000, "no limit");
    }

    #[test]
    fn raising_is_done_once_and_never_lowers_the_limit() {
        let first = raise();
        assert!(first.soft >= first.before);
        assert!(first.soft <= first.hard);
        assert_eq!(raise(), first);
        if let Ok((soft, _)) = rlimit::Resource::NOFILE.get() {
            assert_eq!(soft, first.soft);
        }
    }
}
