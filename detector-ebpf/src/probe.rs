//! A test probe, never attached by the agent: asks the kernel whether the ACK in the
//! frame carries a valid cookie for a local listener (`bpf_tcp_check_syncookie`), so the
//! BPF_PROG_TEST_RUN tests can prove a SYN-ACK's cookie is one the kernel accepts.
//! Verdicts: XDP_TX = valid, XDP_DROP = invalid, XDP_PASS = no listener or unparsable.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{tcphdr, xdp_action, BPF_F_CURRENT_NETNS},
    helpers::generated::{bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_check_syncookie},
    macros::xdp,
    programs::XdpContext,
};
use detector_common::parse::{parse_tcp, IpVersion};

use crate::packet::XdpPacket;

#[xdp]
pub fn probe_check_cookie(ctx: XdpContext) -> u32 {
    let Ok(seg) = parse_tcp(&XdpPacket::new(&ctx)) else {
        return xdp_action::XDP_PASS;
    };
    let (l3, l4) = (usize::from(seg.l3_offset), usize::from(seg.l4_offset));
    let ip_len: usize = match seg.version {
        IpVersion::V4 => 20,
        IpVersion::V6 => 40,
    };
    if l3 > 22 || l4 != l3 + ip_len {
        return xdp_action::XDP_PASS;
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    let iph = core::hint::black_box(data + l3);
    let th = core::hint::black_box(data + l3 + ip_len);
    // The probe only checks plain 20-byte TCP headers: what a cookie ACK is in tests.
    if iph + 40 > end || th + 20 > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: plain old data; the socket is released on every path.
    unsafe {
        let mut tuple: aya_ebpf::bindings::bpf_sock_tuple = core::mem::zeroed();
        let size = match seg.version {
            IpVersion::V4 => {
                let t = &mut tuple.__bindgen_anon_1.ipv4;
                t.saddr = u32::from_ne_bytes([seg.src[12], seg.src[13], seg.src[14], seg.src[15]]);
                t.daddr = u32::from_ne_bytes([seg.dst[12], seg.dst[13], seg.dst[14], seg.dst[15]]);
                t.sport = seg.src_port.to_be();
                t.dport = seg.dst_port.to_be();
                12
            }
            IpVersion::V6 => {
                let t = &mut tuple.__bindgen_anon_1.ipv6;
                for i in 0..4 {
                    t.saddr[i] = u32::from_ne_bytes([
                        seg.src[4 * i],
                        seg.src[4 * i + 1],
                        seg.src[4 * i + 2],
                        seg.src[4 * i + 3],
                    ]);
                    t.daddr[i] = u32::from_ne_bytes([
                        seg.dst[4 * i],
                        seg.dst[4 * i + 1],
                        seg.dst[4 * i + 2],
                        seg.dst[4 * i + 3],
                    ]);
                }
                t.sport = seg.src_port.to_be();
                t.dport = seg.dst_port.to_be();
                36
            }
        };
        #[allow(clippy::cast_sign_loss, reason = "helper ABI: -1 is the current netns")]
        let sk =
            bpf_skc_lookup_tcp(ctx.ctx.cast::<c_void>(), &raw mut tuple, size, BPF_F_CURRENT_NETNS as u64, 0);
        if sk.is_null() {
            return xdp_action::XDP_PASS;
        }
        #[allow(clippy::cast_possible_truncation, reason = "20 or 40")]
        let ret =
            bpf_tcp_check_syncookie(sk.cast(), iph as *mut c_void, ip_len as u32, th as *mut tcphdr, 20);
        bpf_sk_release(sk.cast());
        if ret == 0 {
            xdp_action::XDP_TX
        } else {
            xdp_action::XDP_DROP
        }
    }
}
