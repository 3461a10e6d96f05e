//! Load generation for tailrace's benchmarks and tests: seeded log lines
//! that carry sequence numbers. The harness (`tailrace-bench`), the load
//! generator (`loadgen`) and the criterion benches build on it.

pub mod lines;
pub mod shapes;
