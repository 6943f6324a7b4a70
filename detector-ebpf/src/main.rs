//! The XDP entry point: parse, fetch config, keep SYNs for other machines out, hand SYNs
//! and ACKs to `track` (and SYNs to `policy` and `cookie`, ACKs to `ackshield` in cookie
//! mode), count, verdict.
#![no_std]
#![no_main]
// For `atomic_xadd` (see `cookie::atomic_add`): the bpf target has no compare-and-swap, so
// core offers no `fetch_add`. The crate is built with a nightly or RUSTC_BOOTSTRAP rustc.
#![feature(core_intrinsics)]
#![allow(internal_features, reason = "core_intrinsics, for the BPF atomic add")]

mod ackshield;
mod baseline;
mod cookie;
mod events;
mod fastpath;
mod packet;
mod policy;
mod probe;
mod stats;
mod syncookie;
mod track;

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_ktime_get_ns, macros::map, macros::xdp, maps::Array,
    programs::XdpContext,
};
use detector_common::{
    config::{Config, FLAG_COOKIES, FLAG_ENFORCE},
    counters::{Counter, Verdict},
    parse::{parse_tcp, NotTcp, TcpSegment},
};

use crate::{packet::XdpPacket, stats::count};

#[map(name = "CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[xdp]
pub fn syndetector(ctx: XdpContext) -> u32 {
    let counter = decide(&ctx);
    count(counter);
    // Every path ends in a verdict slot; an event slot here would be a bug, and passing
    // is the fail-open answer. XDP_ABORTED is never returned.
    match counter.verdict() {
        Some(Verdict::Drop) => xdp_action::XDP_DROP,
        Some(Verdict::Tx) => xdp_action::XDP_TX,
        Some(Verdict::Pass) | None => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn decide(ctx: &XdpContext) -> Counter {
    let seg = match parse(ctx) {
        Ok(seg) => seg,
        Err(reason) => return reason.into(),
    };
    let Some(cfg) = CONFIG.get(0) else {
        return Counter::PassNoConfig;
    };
    if !cfg.is_usable() {
        return Counter::PassNoConfig;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if seg.is_syn() {
        // In every mode: a SYN for another machine (routed, forwarded) is neither tracked
        // nor answered; its handshake is not ours to judge.
        if !policy::is_local(&seg) {
            return Counter::PassNotLocal;
        }
        let counter = if cfg.has(FLAG_COOKIES) {
            // Blocked sources first (they are dropped whatever their destination), then
            // what policy leaves to the kernel, and only then the budget and the helper.
            track::screen_for_cookie(ctx, &seg, cfg, now)
                .or_else(|| policy::leave_to_kernel(ctx, &seg, cfg))
                .unwrap_or_else(|| cookie::answer_syn(ctx, &seg, cfg, now))
        } else {
            track::on_syn(ctx, &seg, cfg, now)
        };
        return if cfg.has(FLAG_ENFORCE) { counter } else { counter.monitored() };
    }
    fastpath::on_segment(&seg, now);
    if seg.may_complete_handshake() {
        track::on_ack(&seg, cfg, now);
    }
    // While cookies are on: forged cookie ACKs stop here, not in the kernel's check.
    if detector_common::ackshield::screens(cfg, seg.flags) {
        if let Some(drop) = ackshield::screen_ack(ctx, &seg, cfg) {
            return drop;
        }
    }
    Counter::PassTcp
}

/// The parser as a BPF-to-BPF call: its temporaries live in its own stack frame, which
/// the SYN paths (also calls) then reuse. Inlined, they would all share the entry point's
/// frame and the deepest call chain would pass the verifier's 512-byte stack limit.
#[inline(never)]
fn parse(ctx: &XdpContext) -> Result<TcpSegment, NotTcp> {
    // black_box: otherwise LLVM passes data/data_end to this call as 32-bit values and
    // widens them here with shifts, and the verifier refuses shifts of packet pointers.
    parse_tcp(&XdpPacket::new(core::hint::black_box(ctx)))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program (no panicking paths survive the verifier).
    loop {}
}
