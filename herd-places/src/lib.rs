//! herd-places (work in progress).
