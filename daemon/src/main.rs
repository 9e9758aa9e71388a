//! The `shoal` binary: parses the command line and dispatches to the library.
fn main() {}
