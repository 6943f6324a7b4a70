//! The XDP entry point: parse, fetch config, hand SYNs and ACKs to `track`, count, verdict.
#![no_std]
#![no_main]

mod events;
mod packet;
mod stats;
mod track;

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_ktime_get_ns, macros::map, macros::xdp, maps::Array,
    programs::XdpContext,
};
use detector_common::{
    config::Config,
    counters::{Counter, Verdict},
    parse::parse_tcp,
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
    let seg = match parse_tcp(&XdpPacket::new(ctx)) {
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
        return track::on_syn(ctx, &seg, cfg, now);
    }
    if seg.may_complete_handshake() {
        track::on_ack(&seg, cfg, now);
    }
    Counter::PassTcp
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program (no panicking paths survive the verifier).
    loop {}
}
