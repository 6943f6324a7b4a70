//! The allow and deny tries the agent fills, looked up for `detector_common::lists`,
//! which decides.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, LpmTrie},
    programs::XdpContext,
};
use detector_common::{
    config::Config,
    counters::Counter,
    lists::{self, ip_source},
    names::LIST_CAPACITY,
    parse::NotTcp,
};

use crate::packet::XdpPacket;

/// Sources always passed (IPv4-mapped: an IPv4 /n is /96+n); see `names::MAP_ALLOW`.
#[map(name = "ALLOW")]
static ALLOW: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(LIST_CAPACITY, 0);

/// Sources whose every IP packet is dropped; see `names::MAP_DENY`.
#[map(name = "DENY")]
static DENY: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(LIST_CAPACITY, 0);

/// The lists' verdict on a TCP packet from `src`, or `None` to go on.
// A BPF-to-BPF call: the trie key lives in its own stack frame, and the verifier walks
// this function once per call site rather than once per path into it.
#[inline(never)]
pub fn screen(src: &[u8; 16], flags: u32) -> Option<Counter> {
    let key = Key::new(128, *src);
    lists::screen(flags, || ALLOW.get(&key).is_some(), || DENY.get(&key).is_some())
}

/// A packet the TCP parser gave up on (`reason`): denied sources' other IP traffic
/// (UDP, ICMP, fragments) is screened too; everything else keeps its parse verdict.
// It takes the config, not the flags: the caller then keeps nothing of its own alive
// across the parser's call (one stack slot more in the entry point's frame, plus the
// parser's, passed the verifier's 512-byte limit).
#[inline(never)]
pub fn screen_not_tcp(ctx: &XdpContext, reason: NotTcp, cfg: &Config) -> Counter {
    let flags = if cfg.is_usable() { cfg.flags } else { 0 };
    if !lists::lists_active(flags) || !lists::screens_non_tcp(reason) {
        return reason.into();
    }
    // black_box: see `parse` in main.rs (pointers passed as 32-bit values otherwise).
    let Some(src) = ip_source(&XdpPacket::new(core::hint::black_box(ctx))) else {
        return reason.into();
    };
    let key = Key::new(128, src);
    lists::screen(flags, || ALLOW.get(&key).is_some(), || DENY.get(&key).is_some()).unwrap_or(reason.into())
}
