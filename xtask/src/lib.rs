//! Developer and operator tooling shared by `cargo xtask` and the end-to-end tests:
//! the network-namespace lab and the demo that runs in it.

// Tooling for tests and the demo: return values are results to inspect, so pedantic's
// must_use suggestions on every accessor would add noise, not safety.
#![allow(clippy::must_use_candidate, reason = "test tooling accessors")]

pub mod demo;
pub mod lab;
pub mod objects;
pub mod soak;
