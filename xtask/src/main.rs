//! Developer tasks: `cargo xtask setup|demo|test|...`.
fn main() {}
