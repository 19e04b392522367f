//! The one error type of the binary: a message for stderr and the exit code it maps to.

use std::fmt;

/// Exit code: the server answered `? `.
pub(crate) const EXIT_INVALID: u8 = 1;
/// Exit code: connection, timeout or malformed-reply error.
pub(crate) const EXIT_NET: u8 = 2;
/// Exit code: bad usage or bad config (as sysexits' `EX_USAGE`).
pub(crate) const EXIT_USAGE: u8 = 64;

/// Why a command failed: a one-line message and the process exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// Process exit code.
    pub(crate) code: u8,
    /// One line for stderr.
    pub(crate) message: String,
}

impl Failure {
    /// A connection, timeout or protocol failure (exit 2).
    pub(crate) fn net(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_NET,
            message: message.into(),
        }
    }

    /// Bad usage or config (exit 64).
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}
