//! herd-net (work in progress).
