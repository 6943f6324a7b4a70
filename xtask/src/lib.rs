//! Developer and operator tooling shared by `cargo xtask` and the end-to-end tests:
//! the network-namespace lab and the demo that runs in it.

pub mod demo;
pub mod lab;
