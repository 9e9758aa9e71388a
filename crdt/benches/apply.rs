//! Criterion benchmarks of remote-op apply (filled in next).
fn main() {}
