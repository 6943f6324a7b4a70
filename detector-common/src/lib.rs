//! Types shared by the XDP program and the agent, and the pure logic both rely on.
//!
//! Everything here is `no_std` and free of kernel helpers, so it is unit-tested on the
//! host and then proven in the kernel through BPF_PROG_TEST_RUN fixtures.
#![no_std]

pub mod checksum;
pub mod config;
pub mod counters;
pub mod filter;
pub mod names;
pub mod packet;
pub mod parse;
pub mod sketch;
pub mod state;
pub mod synack;
pub mod track;

#[cfg(test)]
extern crate std;
