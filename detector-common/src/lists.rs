//! The operator's first word on a packet: the kill switch, then the allow and deny lists
//! (`names::MAP_ALLOW`, `MAP_DENY`), decided before any tracking or answering.
//!
//! - Kill switch (`config::FLAG_OFF`): every packet passes, before it is even parsed.
//! - Allow wins over deny: a source matching both is passed. Allow entries exist for
//!   health checkers and load balancers that must never be cut off, and a broad deny (or
//!   a `block`) must not lock them out by accident.
//! - Deny applies to every IP packet of the source, not only TCP: an operator who denies a
//!   source expects none of its traffic to reach the host. Monitor mode only counts it.
//! - The lookups happen only when the agent says the list has entries
//!   (`FLAG_ALLOW_LIST`, `FLAG_DENY_LIST`), so empty lists cost nothing per packet.

use crate::{
    config::{FLAG_ALLOW_LIST, FLAG_DENY_LIST, FLAG_ENFORCE, FLAG_OFF},
    counters::Counter,
    packet::Packet,
    parse::{ipv4_mapped, parse_ethernet, NotTcp, ETH_P_IPV4, ETH_P_IPV6},
};

/// `Some(PassOff)` when the kill switch is on. `flags` is `Config::flags`, or 0 when the
/// agent has written no config (nothing written: nothing to switch off either).
#[inline(always)]
#[must_use]
pub fn kill_switch(flags: u32) -> Option<Counter> {
    (flags & FLAG_OFF != 0).then_some(Counter::PassOff)
}

/// Whether a packet's source lookups are needed at all.
#[inline(always)]
#[must_use]
pub const fn lists_active(flags: u32) -> bool {
    flags & (FLAG_ALLOW_LIST | FLAG_DENY_LIST) != 0
}

/// The lists' verdict on a packet from a source: `Some(counter)` ends the packet's
/// processing, `None` goes on to tracking. `allowed` and `denied` are the trie lookups,
/// closures so that only those the decision reaches are made.
#[inline(always)]
pub fn screen(flags: u32, allowed: impl FnOnce() -> bool, denied: impl FnOnce() -> bool) -> Option<Counter> {
    if flags & FLAG_ALLOW_LIST != 0 && allowed() {
        return Some(Counter::PassAllowed);
    }
    if flags & FLAG_DENY_LIST != 0 && denied() {
        return Some(if flags & FLAG_ENFORCE != 0 {
            Counter::DropDenied
        } else {
            Counter::PassMonitorDenied
        });
    }
    None
}

/// The parser gave up on a packet for `reason`: whether its source may still be read for
/// the lists. IP packets that are not TCP (UDP, ICMP, ...), fragments, and IPv6 packets
/// with more extension headers than the parser walks (a denied source must not get
/// through by adding headers); not what is not IP, nor what the kernel's IP layer drops
/// anyway (truncated, malformed, bad lengths).
#[inline(always)]
#[must_use]
pub const fn screens_non_tcp(reason: NotTcp) -> bool {
    matches!(reason, NotTcp::OtherProtocol | NotTcp::Fragment | NotTcp::TooDeep)
}

/// The source address (IPv4-mapped, network order) of an IPv4 or IPv6 packet after up to
/// two VLAN tags, whatever its transport; `None` when it is not IP or is cut short.
#[inline(always)]
pub fn ip_source<P: Packet + ?Sized>(pkt: &P) -> Option<[u8; 16]> {
    let (ethertype, l3, _) = parse_ethernet(pkt).ok()?;
    match ethertype {
        ETH_P_IPV4 => pkt.read::<4>(l3 + 12).map(ipv4_mapped),
        ETH_P_IPV6 => pkt.read::<16>(l3 + 8),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: u32 = FLAG_ALLOW_LIST | FLAG_DENY_LIST;

    #[test]
    fn kill_switch_only_with_its_flag() {
        assert_eq!(kill_switch(FLAG_OFF | FLAG_ENFORCE), Some(Counter::PassOff));
        assert_eq!(kill_switch(FLAG_ENFORCE | BOTH), None);
        assert_eq!(kill_switch(0), None);
    }

    #[test]
    fn allow_wins_over_deny() {
        let r = screen(BOTH | FLAG_ENFORCE, || true, || panic!("deny looked up for an allowed source"));
        assert_eq!(r, Some(Counter::PassAllowed));
    }

    #[test]
    fn denied_is_dropped_when_enforcing_and_counted_in_monitor() {
        assert_eq!(screen(BOTH | FLAG_ENFORCE, || false, || true), Some(Counter::DropDenied));
        assert_eq!(screen(BOTH, || false, || true), Some(Counter::PassMonitorDenied));
        assert_eq!(Counter::DropDenied.monitored(), Counter::PassMonitorDenied);
        assert_eq!(screen(BOTH | FLAG_ENFORCE, || false, || false), None);
    }

    #[test]
    fn empty_lists_are_not_looked_up() {
        let never = || -> bool { panic!("looked up an empty list") };
        assert_eq!(screen(FLAG_ENFORCE, never, never), None);
        assert_eq!(screen(FLAG_DENY_LIST | FLAG_ENFORCE, never, || true), Some(Counter::DropDenied));
        assert_eq!(screen(FLAG_ALLOW_LIST, || false, never), None);
        assert!(!lists_active(FLAG_ENFORCE | FLAG_COOKIE_BITS));
        assert!(lists_active(FLAG_DENY_LIST));
    }

    const FLAG_COOKIE_BITS: u32 = crate::config::FLAG_COOKIES;

    fn udp4(vlan: bool) -> [u8; 46] {
        let mut f = [0u8; 46];
        let mut at = 12;
        if vlan {
            f[at..at + 2].copy_from_slice(&0x8100u16.to_be_bytes());
            at += 4;
        }
        f[at..at + 2].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
        let l3 = at + 2;
        f[l3] = 0x45;
        f[l3 + 9] = 17;
        f[l3 + 12..l3 + 16].copy_from_slice(&[198, 18, 0, 7]);
        f
    }

    #[test]
    fn source_of_non_tcp_packets() {
        let want = ipv4_mapped([198, 18, 0, 7]);
        assert_eq!(ip_source(&udp4(false)[..]), Some(want));
        assert_eq!(ip_source(&udp4(true)[..]), Some(want));
        let mut v6 = [0u8; 14 + 40];
        v6[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        v6[14] = 0x60;
        v6[22..24].copy_from_slice(&[0x20, 0x01]);
        assert_eq!(ip_source(&v6[..]).map(|a| a[..2].to_vec()), Some([0x20, 0x01].to_vec()));
        // ARP is not IP; a frame cut before the source has none.
        let mut arp = udp4(false);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(ip_source(&arp[..]), None);
        assert_eq!(ip_source(&udp4(false)[..28]), None);
        assert!(screens_non_tcp(NotTcp::OtherProtocol) && screens_non_tcp(NotTcp::Fragment));
        assert!(screens_non_tcp(NotTcp::TooDeep) && !screens_non_tcp(NotTcp::BadLength));
        assert!(!screens_non_tcp(NotTcp::NotIp) && !screens_non_tcp(NotTcp::Truncated));
    }
}
