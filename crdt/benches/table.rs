//! The README benchmark table (filled in next).
fn main() {}
