//! herd-server (work in progress).
fn main() {}
