//! herd-cli (work in progress).
fn main() {}
