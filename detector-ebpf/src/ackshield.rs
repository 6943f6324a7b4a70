//! The ACK shield (`detector_common::ackshield`): while cookies are on, an ACK to an
//! answered local port that only the listener would take has its cookie checked here
//! (`bpf_tcp_raw_check_syncookie_ipv4/6`, kernel >= 6.0) and is dropped when invalid.

use aya_ebpf::{
    bindings::{iphdr, ipv6hdr, tcphdr, BPF_TCP_LISTEN},
    helpers::generated::{
        bpf_sk_release, bpf_tcp_raw_check_syncookie_ipv4, bpf_tcp_raw_check_syncookie_ipv6,
    },
    programs::XdpContext,
};
use detector_common::{
    ackshield::{verdict, Owner},
    config::Config,
    counters::Counter,
    parse::{IpVersion, TcpSegment},
};

use crate::{
    packet::MAX_L3,
    policy,
    syncookie::{header_pointers, lookup_socket},
};

/// `Some(DropAckShield)` for a forged cookie ACK, `None` to pass. The caller has checked
/// `ackshield::screens`. A BPF-to-BPF call: the tuple sits in its own stack frame.
#[inline(never)]
pub fn screen_ack(ctx: &XdpContext, seg: &TcpSegment, cfg: &Config) -> Option<Counter> {
    // Only where SYNs are answered from XDP: not other machines' traffic, not ports or
    // destinations left to the kernel (DNAT'd ACKs go to a backend), not ports without a
    // listener. Those pass unchecked, as before.
    if !policy::is_local(seg) || policy::leave_to_kernel(ctx, seg, cfg).is_some() {
        return None;
    }
    let (l3, ip_len) =
        (usize::from(seg.l3_offset), if matches!(seg.version, IpVersion::V6) { 40 } else { 20 });
    let l4 = usize::from(seg.l4_offset);
    // IP options or IPv6 extension headers: the kernel decides (as for SYNs).
    if l4 != l3 + ip_len || l3 > MAX_L3 {
        return None;
    }
    let (iph, th, _end) = header_pointers(ctx, seg)?;
    // SAFETY: helper calls; the socket is released on every path.
    let owner = unsafe {
        let sk = lookup_socket(ctx, seg);
        if sk.is_null() {
            Owner::Nobody
        } else {
            let listening = (*sk).state == BPF_TCP_LISTEN;
            bpf_sk_release(sk.cast());
            if listening {
                Owner::Listener
            } else {
                Owner::Connection
            }
        }
    };
    verdict(owner, || {
        // SAFETY: iph + 40 and th + 20 are inside the frame (the helpers read a fixed-size
        // IP header and a 20-byte TCP header).
        let ret = unsafe {
            match seg.version {
                IpVersion::V4 => bpf_tcp_raw_check_syncookie_ipv4(iph as *mut iphdr, th as *mut tcphdr),
                IpVersion::V6 => bpf_tcp_raw_check_syncookie_ipv6(iph as *mut ipv6hdr, th as *mut tcphdr),
            }
        };
        ret == 0
    })
}
