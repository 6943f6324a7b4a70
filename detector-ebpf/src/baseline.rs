//! Baseline programs for `cargo xtask bench`, which reports our paths as ratios to these:
//! a trivial XDP_PASS (the cost of a test run itself), a trivial XDP_TX that swaps MACs,
//! the "helper floor": listener lookup plus cookie helper and nothing else, the least
//! any socket-bound cookie responder must spend, and the "raw floor": the raw cookie
//! helper alone, the least the fast path must spend. The agent never attaches them.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{iphdr, tcphdr, xdp_action, BPF_F_CURRENT_NETNS},
    helpers::generated::{
        bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_gen_syncookie, bpf_tcp_raw_gen_syncookie_ipv4,
    },
    macros::xdp,
    programs::XdpContext,
};

#[xdp]
pub fn baseline_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn baseline_tx(ctx: XdpContext) -> u32 {
    let data = ctx.data();
    if data + 12 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: 12 bytes checked just above.
    unsafe { crate::packet::swap_macs(data) };
    xdp_action::XDP_TX
}

/// The floors' frames: untagged IPv4 without options, a TCP header of 20..=60 bytes, the
/// frame at least 14 + 20 + 60 bytes long (the bench pads it). The IP and TCP header
/// addresses and the TCP header length; `None` for any other frame.
#[inline(always)]
fn floor_headers(ctx: &XdpContext) -> Option<(usize, usize, u32)> {
    let iph = ctx.data() + 14;
    let th = iph + 20;
    if th + 60 > ctx.data_end() {
        return None;
    }
    // SAFETY: byte 12 of the TCP header is inside the range checked above.
    let doff = core::hint::black_box(unsafe { *((th + 12) as *const u8) } >> 4);
    let th_len = u32::from(doff & 0x0f) * 4;
    (20..=60).contains(&th_len).then_some((iph, th, th_len))
}

/// XDP_TX when a helper made a cookie (`ret` not negative), XDP_PASS otherwise, so the
/// bench can check which path ran.
#[inline(always)]
fn floor_verdict(ret: i64) -> u32 {
    if ret < 0 {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_TX
    }
}

/// The "helper floor": listener lookup plus socket-bound cookie helper, no parsing beyond
/// what the helper needs.
#[xdp]
pub fn baseline_helper_floor(ctx: XdpContext) -> u32 {
    let Some((iph, th, th_len)) = floor_headers(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: reads inside the range `floor_headers` checked; helper calls with the socket
    // released.
    unsafe {
        let ip = core::ptr::read_unaligned(iph as *const [u8; 20]);
        let tcp = core::ptr::read_unaligned(th as *const [u8; 20]);
        let mut tuple: aya_ebpf::bindings::bpf_sock_tuple = core::mem::zeroed();
        tuple.__bindgen_anon_1.ipv4.saddr = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
        tuple.__bindgen_anon_1.ipv4.daddr = u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]);
        tuple.__bindgen_anon_1.ipv4.sport = u16::from_ne_bytes([tcp[0], tcp[1]]);
        tuple.__bindgen_anon_1.ipv4.dport = u16::from_ne_bytes([tcp[2], tcp[3]]);
        #[allow(clippy::cast_sign_loss, reason = "helper ABI: -1 is the current netns")]
        let sk =
            bpf_skc_lookup_tcp(ctx.ctx.cast::<c_void>(), &raw mut tuple, 12, BPF_F_CURRENT_NETNS as u64, 0);
        if sk.is_null() {
            return xdp_action::XDP_PASS;
        }
        let ret = bpf_tcp_gen_syncookie(sk.cast(), iph as *mut c_void, 20, th as *mut tcphdr, th_len);
        bpf_sk_release(sk.cast());
        floor_verdict(ret)
    }
}

/// The "raw floor": the raw helper (`bpf_tcp_raw_gen_syncookie_ipv4`, no socket lookup)
/// and nothing else, on the same frames. What the fast path cannot go below, whatever it
/// does around the helper.
#[xdp]
pub fn baseline_raw_floor(ctx: XdpContext) -> u32 {
    let Some((iph, th, th_len)) = floor_headers(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: the helper reads the IP header and th_len (at most 60) bytes of TCP header,
    // inside the range `floor_headers` checked; it checks th_len against the header's doff.
    floor_verdict(unsafe { bpf_tcp_raw_gen_syncookie_ipv4(iph as *mut iphdr, th as *mut tcphdr, th_len) })
}

/// The floor of any drop path: the bench compares the blocked-source drop with it.
#[xdp]
pub fn baseline_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}
