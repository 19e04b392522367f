//! Accepting without the runtime's help: a performance trick, in a module of its own.
//!
//! The listener is watched through an `AsyncFd` and each connection is taken with one
//! `accept4` that makes it non-blocking and close-on-exec at once, so that a classic client
//! (connect, one request, half-close) can be answered with plain non-blocking system calls
//! before its socket is ever registered with the runtime's poller (see `client::serve`): five
//! system calls instead of ten per connection. Measured when it went in (bench/README.md,
//! "Classic connections in five system calls"): server CPU per classic connection fell about
//! 10 %. To turn it off, build the listener with [`Listener::tokio`]: connections are then
//! accepted through tokio and served the same way (registered at once).
//!
//! This is the one module of herd-net that uses `unsafe`: registering a raw descriptor with
//! tokio's reactor is an `unsafe` call, because the reactor cannot check that the descriptor
//! stays the same open file for as long as it is registered.
#![deny(unsafe_code)]

use std::net::SocketAddr;

use socket2::SockRef;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpListener;
use tracing::warn;

/// Where connections come from: the listener watched directly, or through tokio.
#[derive(Debug)]
pub(crate) enum Listener {
    /// Watched through an `AsyncFd`, each connection taken with one `accept4`.
    Direct(AsyncFd<std::net::TcpListener>),
    /// Through tokio's own `accept`.
    Tokio(TcpListener),
}

impl Listener {
    /// Watches `listener` directly, or through tokio when the descriptor cannot be registered.
    pub(crate) fn new(listener: TcpListener) -> std::io::Result<Self> {
        let std_listener = listener.into_std()?;
        // SAFETY: `AsyncFd::register_with_interest` requires that the descriptor returned by
        // `as_raw_fd` is open, refers to the same file description and is the same number for
        // as long as the `AsyncFd` owns it. A `std::net::TcpListener` owns exactly one
        // descriptor from its creation until it is dropped, never replaces it, and the
        // `AsyncFd` owns the listener (nothing else can close it), so all three hold.
        #[allow(unsafe_code)]
        let registered =
            unsafe { AsyncFd::register_with_interest(std_listener, Interest::READABLE) };
        match registered {
            Ok(fd) => Ok(Self::Direct(fd)),
            Err(e) => {
                let (std_listener, e) = e.into_parts();
                warn!(error = %e, "cannot watch the listener directly; accepting through tokio");
                Self::tokio(std_listener)
            }
        }
    }

    /// Accepts through tokio only.
    pub(crate) fn tokio(listener: std::net::TcpListener) -> std::io::Result<Self> {
        TcpListener::from_std(listener).map(Self::Tokio)
    }

    /// The next connection: a non-blocking socket not yet registered with the runtime.
    pub(crate) async fn accept(&self) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
        match self {
            Self::Direct(fd) => accept_one(fd).await,
            Self::Tokio(l) => {
                let (stream, addr) = l.accept().await?;
                Ok((stream.into_std()?, addr))
            }
        }
    }
}

/// Accepts one connection: a non-blocking, close-on-exec socket from one system call. The
/// listener stays readable until `accept4` would block, so a burst is accepted without
/// waiting again.
async fn accept_one(
    listener: &AsyncFd<std::net::TcpListener>,
) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
    loop {
        let mut ready = listener.readable().await?;
        let accepted = ready.try_io(|l| {
            let (socket, addr) =
                SockRef::from(l.get_ref()).accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)?;
            let addr = addr
                .as_socket()
                .ok_or_else(|| std::io::Error::other("accepted a non-IP connection"))?;
            Ok((std::net::TcpStream::from(socket), addr))
        });
        if let Ok(result) = accepted {
            return result;
        }
    }
}
