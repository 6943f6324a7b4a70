//! The XDP entry point: the kill switch, parse, the allow/deny lists, keep SYNs for other
//! machines out, hand SYNs and ACKs to `track` (and SYNs to `policy` and `cookie`, ACKs to
//! `ackshield` in cookie
//! mode), count, verdict.
#![no_std]
#![no_main]
// For `atomic_xadd` (see `cookie::atomic_add`): the bpf target has no compare-and-swap, so
// core offers no `fetch_add`. The crate is built with a nightly or RUSTC_BOOTSTRAP rustc.
#![feature(core_intrinsics)]
#![allow(internal_features, reason = "core_intrinsics, for the BPF atomic add")]
// For the packet loads in `packet.rs`: BPF inline asm is still an experimental target.
#![feature(asm_experimental_arch)]

mod ackshield;
mod block_cache;
mod clock;
// Test-only programs: compiled into the test object, never into the one that ships.
#[cfg(feature = "test-programs")]
mod baseline;
mod cookie;
mod events;
mod fastpath;
mod lists;
mod packet;
mod policy;
mod ports;
#[cfg(feature = "test-programs")]
mod probe;
mod sample;
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
    parse::{parse_from_l3, parse_tcp, untagged_ip, NotTcp, TcpSegment, ETH_HEADER_LEN},
};

use crate::{cookie::CookieStep, packet::XdpPacket, stats::count};

#[map(name = "CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[xdp]
pub fn syndetector(ctx: XdpContext) -> u32 {
    // Looked up once here: sampling off then costs one compare on each side of `decide`.
    // An array's slot 0 always exists; a zeroed one fails `is_usable` in `decide`.
    let Some(cfg) = CONFIG.get(0) else {
        count(Counter::PassNoConfig);
        return xdp_action::XDP_PASS;
    };
    if sample::one_in(cfg) != 0 {
        sample::capture(&ctx, sample::one_in(cfg));
    }
    let counter = decide(&ctx, cfg);
    count(counter);
    // Every path ends in a verdict slot; an event slot here would be a bug, and passing
    // is the fail-open answer. XDP_ABORTED is never returned.
    let action = match counter.verdict() {
        Some(Verdict::Drop) => xdp_action::XDP_DROP,
        Some(Verdict::Tx) => xdp_action::XDP_TX,
        Some(Verdict::Pass) | None => xdp_action::XDP_PASS,
    };
    // Only drops and answers are sampled (passed packets reach the kernel's own taps).
    // Decided here, from the one `verdict()` above: a second use of it inside `emit` made
    // LLVM move it out of line, a call on every packet (measured: 6-13 ns).
    if action != xdp_action::XDP_PASS && sample::one_in(cfg) != 0 {
        sample::emit(counter);
    }
    action
}

#[inline(always)]
fn decide(ctx: &XdpContext, cfg: &Config) -> Counter {
    // The kill switch first, before parsing: `mode off` must pass everything whatever the
    // packet. A zeroed slot has no flags (and passes below anyway).
    if let Some(off) = detector_common::lists::kill_switch(cfg.flags) {
        return off;
    }
    let seg = match parse(ctx) {
        Ok(seg) => seg,
        // Denied sources' other IP traffic is dropped too (only with a usable config).
        Err(reason) => return lists::screen_not_tcp(ctx, reason, cfg),
    };
    if !cfg.is_usable() {
        return Counter::PassNoConfig;
    }
    if detector_common::lists::lists_active(cfg.flags) {
        if let Some(verdict) = lists::screen(&seg.src, cfg.flags) {
            return verdict;
        }
    }
    if seg.is_syn() {
        return on_syn(ctx, &seg, cfg);
    }
    on_segment(ctx, &seg, cfg)
}

/// Any other segment: the fast path's FIN filter, handshake completion, the ACK shield.
/// A call of its own, like `on_syn`, to keep the entry point's frame small. The clock is
/// read only where a FIN or a possible handshake completion needs it: it costs about as
/// much as the rest of an established ACK's path (docs/hotpaths.md).
#[inline(never)]
fn on_segment(ctx: &XdpContext, seg: &TcpSegment, cfg: &Config) -> Counter {
    fastpath::on_segment(seg, cfg);
    if seg.may_complete_handshake() {
        track::on_ack(seg, cfg);
    }
    // While cookies are on: forged cookie ACKs stop here, not in the kernel's check.
    if detector_common::ackshield::screens(cfg, seg.flags) {
        if let Some(drop) = ackshield::screen_ack(ctx, seg, cfg) {
            return drop;
        }
    }
    Counter::PassTcp
}

/// A connection request. Inlined into the entry point: a BPF-to-BPF call here cost 8-10 ns
/// on every SYN (the blocked drop 118 → 108 ns per run, `repeat` 1M). So is cookie mode's
/// answer (`cookie_syn`), which takes the entry point's frame to 280 bytes; every call made
/// from it must fit in the 232 left of the verifier's 512: `track::on_syn` 200 (its events
/// logged from here, `track::logged`), `syncookie::gen_cookie` 120 (docs/verifier.md).
#[inline(always)]
fn on_syn(ctx: &XdpContext, seg: &TcpSegment, cfg: &Config) -> Counter {
    // In every mode: a SYN for another machine (routed, forwarded) is neither tracked
    // nor answered; its handshake is not ours to judge.
    if !policy::is_local(seg) {
        return Counter::PassNotLocal;
    }
    // Per-port limits and protected ports.
    let limits = match ports::limits_for(seg, cfg) {
        Ok(limits) => limits,
        Err(not_judged) => return not_judged,
    };
    // Both modes drop blocked sources on the coarse clock; cookie mode runs on it
    // altogether (docs/hotpaths.md): it keeps no handshake state, and every time it reads
    // (the budget's second, the renewal's second, the closed filter's minute, sketch
    // epochs, block ends) tolerates a tick's lag.
    let now = clock::coarse_now();
    let counter = if cfg.has(FLAG_COOKIES) {
        // A spoofed flood's sources have no state: look one up only when its filter bucket
        // holds a running block, in the block cache first, then in `SOURCES` (which caches
        // it). Blocked sources first, then what policy leaves to the kernel, and only then
        // the budget and the helper.
        let blocked = if track::may_be_blocked(seg, now) {
            block_cache::drop_from_table(seg, cfg, now).or_else(|| {
                track::state_of(seg).and_then(|state| block_cache::drop_if_blocked_now(seg, state, cfg, now))
            })
        } else {
            None
        };
        // Blocking a heavy source is a call from here: rare, its map update and event out
        // of the entry point's frame.
        blocked.unwrap_or_else(|| match cookie_syn(ctx, seg, cfg, limits.syn_rate_limit, now) {
            CookieStep::Done(counter) => counter,
            CookieStep::BlockSource => track::block_heavy_source(ctx, seg, cfg, now),
        })
    } else {
        // The port's limits in a copy of the config (in map memory), which tracking judges by.
        let cfg = match ports::config_with(cfg, limits) {
            Ok(cfg) => cfg,
            Err(no_slot) => return no_slot,
        };
        // Blocked sources first (they are dropped whatever their destination): a flood's
        // SYNs mostly end here, on the coarse clock and without another call; from the
        // block cache without the `SOURCES` lookup, or from `SOURCES`, which caches them.
        block_cache::drop_cached_block(seg, cfg, now).unwrap_or_else(|| {
            let mut found = track::state_of(seg);
            let blocked =
                found.as_deref_mut().and_then(|state| block_cache::drop_if_blocked(seg, state, cfg, now));
            blocked.unwrap_or_else(|| {
                // SAFETY: a helper without arguments.
                let now = unsafe { bpf_ktime_get_ns() };
                track::logged(ctx, seg, track::on_syn(seg, cfg, now, found), now)
            })
        })
    };
    if cfg.has(FLAG_ENFORCE) {
        counter
    } else {
        counter.monitored()
    }
}

/// A SYN cookie mode may answer, its source not blocked: the sketch (a flooder found
/// there is blocked), then what policy leaves to the kernel, and only then the budget, the
/// helper and the reply. Inlined: an answer from the raw helper makes no BPF-to-BPF call
/// at all. Each call's return costs 5-10 ns on a machine with return-thunk mitigations;
/// as a call of its own this cost 3-7 % of an answered SYN (docs/hotpaths.md). The rare
/// steps are calls: blocking a heavy source (`CookieStep`) and the socket-bound helper's
/// lookup (`syncookie::gen_cookie`).
#[inline(always)]
fn cookie_syn(ctx: &XdpContext, seg: &TcpSegment, cfg: &Config, syn_rate_limit: u32, now: u64) -> CookieStep {
    track::screen_for_cookie(seg, cfg, syn_rate_limit, now)
        .or_else(|| policy::leave_to_kernel(ctx, seg, cfg).map(CookieStep::Done))
        .unwrap_or_else(|| CookieStep::Done(cookie::answer_syn(ctx, seg, cfg, now)))
}

/// The parser. A frame without VLAN tags that carries IPv4 or IPv6 (nearly every frame
/// on most hosts) is parsed inline; anything else (tags, not IP, cut short) in a
/// BPF-to-BPF call, `parse_any`. The call's return costs 5-10 ns on a machine with
/// return-thunk mitigations: inline, the answered SYN is 2-3 % cheaper, the blocked drop
/// 7 % and the calm ACK 15 % (docs/hotpaths.md). Inlining the whole parser as well took
/// the verifier to 540k instructions; this split to about 270k (docs/verifier.md).
#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<TcpSegment, NotTcp> {
    let pkt = XdpPacket::new(core::hint::black_box(ctx));
    // Not through `black_box`: it made the segment go through memory so that the verifier
    // could prune the states after the parser (224k instructions processed with it, 238k
    // without), at 2 % of an answered SYN and 3 % of a calm ACK (docs/hotpaths.md).
    match untagged_ip(&pkt) {
        Some(ethertype) => parse_from_l3(&pkt, ethertype, ETH_HEADER_LEN, 0),
        None => parse_any(ctx),
    }
}

/// Any frame, tags and all, as a BPF-to-BPF call: its temporaries live in its own stack
/// frame, which the SYN paths (also calls) then reuse, and the verifier walks the tag
/// loop once, not once per path after it.
#[inline(never)]
fn parse_any(ctx: &XdpContext) -> Result<TcpSegment, NotTcp> {
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
