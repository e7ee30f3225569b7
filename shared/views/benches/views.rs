//! Placeholder replaced by the window-assignment + aggregate-update benchmarks.
fn main() {}
