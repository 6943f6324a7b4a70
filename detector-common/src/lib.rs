//! Types shared by the XDP program and the agent, and the pure logic both rely on.
//!
//! Everything here is `no_std` and free of kernel helpers, so it is unit-tested on the
//! host and then proven in the kernel through `BPF_PROG_TEST_RUN` fixtures.
#![no_std]
// The XDP program needs these functions inlined into its own: calls cost stack frames
// and verifier work there, so `#[inline(always)]` is deliberate throughout.
#![allow(clippy::inline_always, reason = "the BPF side must inline the shared logic")]
// Kernel-shared structs name their explicit padding `_pad` (house style) and must keep
// every field public for the agent's `Pod` reads.
#![allow(clippy::pub_underscore_fields, reason = "explicit padding fields")]

pub mod ackshield;
pub mod block_filter;
pub mod blocked;
pub mod blocked_table;
pub mod checksum;
pub mod closed_filter;
pub mod config;
pub mod counters;
pub mod expiry;
pub mod fastpath;
pub mod filter;
pub mod lists;
pub mod local_table;
pub mod names;
pub mod packet;
pub mod parse;
pub mod policy;
pub mod ports;
#[cfg(feature = "user")]
pub mod procnet;
pub mod reply_frame;
pub mod sample;
pub mod sketch;
pub mod state;
pub mod synack;
pub mod synopts;
pub mod tick_clock;
pub mod track;
pub mod words;

#[cfg(any(test, feature = "user"))]
extern crate std;
