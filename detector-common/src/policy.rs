//! Which SYNs the cookie responder may answer: values of the policy maps the agent fills
//! (`names::MAP_PORT_POLICY`, `MAP_KERNEL_DESTS`, `MAP_IFACES`, `MAP_LOCAL_ADDRS`).
//!
//! The rule behind all of them: answer a SYN from XDP only when the local kernel would
//! have accepted that SYN itself, on this host, without netfilter rewriting it first.

use crate::{
    config::{Config, FLAG_LISTED_PORTS_ONLY, FLAG_NO_IFACE_POLICY, FLAG_NO_KERNEL_DESTS},
    counters::Counter,
};

/// `PORT_POLICY` slot value: no explicit policy; answered when a local listener exists.
pub const PORT_DEFAULT: u32 = 0;
/// `PORT_POLICY` slot value: always left to the kernel (DNAT/redirect, or the operator).
pub const PORT_KERNEL: u32 = 1;
/// `PORT_POLICY` slot value: listed by the operator as a port to answer for (matters only
/// with `config::FLAG_LISTED_PORTS_ONLY`).
pub const PORT_ANSWER: u32 = 2;
/// The low bits of a `PORT_POLICY` slot: one of the `PORT_*` values above.
pub const PORT_ACTION_MASK: u32 = 0xff;
/// `PORT_POLICY` bit, besides the value: the agent saw no TCP listener on this port, so a
/// SYN to it passes without a socket lookup (the kernel answers it with a RST). Set only
/// while the agent knows the host's listeners; without it the lookup decides, as before.
pub const PORT_NO_LISTENER: u32 = 1 << 8;

/// The NIC strips VLAN tags before XDP (rx VLAN offload) and VLAN devices sit on top of
/// the interface: an untagged SYN may have lost its tag, and an XDP_TX reply would leave
/// untagged. Such SYNs are left to the kernel.
pub const IFACE_VLAN_STRIPPED: u32 = 1 << 0;

/// Value of `MAP_IFACES`, per ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfacePolicy {
    /// `IFACE_*` bits. A u32 of bits so any value is valid for the program.
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<IfacePolicy>() == 4);

#[cfg(feature = "user")]
// SAFETY: repr(C), one u32, no padding.
unsafe impl aya::Pod for IfacePolicy {}

/// Whether a SYN to a local address, in cookie mode, must be left to the kernel rather
/// than answered from XDP: `Some(reason)` to pass it, `None` to go on to the responder.
/// Decided before any socket lookup, and before the SYN-ACK budget is spent.
///
/// `port_slot` is the destination port's `PORT_POLICY` value, `vlan_tags` the tags the
/// parser found. The other two lookups are closures so that the program makes only those
/// the decision reaches (`KERNEL_DESTS` is an LPM trie walk): `in_kernel_dests` says
/// whether the destination matches a `KERNEL_DESTS` prefix, `iface_flags` gives the
/// ingress interface's `IfacePolicy::flags` (0 without an entry). Neither is made when
/// the config says its map holds nothing that could matter (`FLAG_NO_KERNEL_DESTS`,
/// `FLAG_NO_IFACE_POLICY`): on a host without such policy, an answered SYN pays for
/// neither a trie walk nor a hash lookup.
///
/// Order: the port's policy, then its listener bit, then the destination (both say "the kernel's, whatever the packet"),
/// then the interface (only untagged SYNs can have lost a tag).
#[inline(always)]
pub fn cookie_policy(
    cfg: &Config,
    port_slot: u32,
    vlan_tags: u8,
    in_kernel_dests: impl FnOnce() -> bool,
    iface_flags: impl FnOnce() -> u32,
) -> Option<Counter> {
    let action = port_slot & PORT_ACTION_MASK;
    if action == PORT_KERNEL || (cfg.has(FLAG_LISTED_PORTS_ONLY) && action != PORT_ANSWER) {
        return Some(Counter::PassCookieKernelPolicy);
    }
    if port_slot & PORT_NO_LISTENER != 0 {
        return Some(Counter::PassCookieNoListener);
    }
    if !cfg.has(FLAG_NO_KERNEL_DESTS) && in_kernel_dests() {
        return Some(Counter::PassCookieKernelPolicy);
    }
    // A tagged SYN kept its tag, so the reply keeps it too: only untagged SYNs are in
    // doubt on an interface whose NIC strips tags.
    if vlan_tags == 0 && !cfg.has(FLAG_NO_IFACE_POLICY) && iface_flags() & IFACE_VLAN_STRIPPED != 0 {
        return Some(Counter::PassCookieVlanOffload);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FLAG_COOKIES, FLAG_ENFORCE};

    fn cfg(listed_only: bool) -> Config {
        let mut c = Config::new(0, 0, 1, 3);
        c.flags = FLAG_ENFORCE | FLAG_COOKIES | if listed_only { FLAG_LISTED_PORTS_ONLY } else { 0 };
        c
    }

    fn decide(listed_only: bool, port_slot: u32, vlan_tags: u8, dest: bool, iface: u32) -> Option<Counter> {
        cookie_policy(&cfg(listed_only), port_slot, vlan_tags, || dest, || iface)
    }

    #[test]
    fn default_ports_are_answered() {
        assert_eq!(decide(false, PORT_DEFAULT, 0, false, 0), None);
        assert_eq!(decide(false, PORT_ANSWER, 0, false, 0), None);
        // An unknown slot value is no policy at all.
        assert_eq!(decide(false, 7, 0, false, 0), None);
    }

    #[test]
    fn kernel_ports_are_left_to_the_kernel() {
        assert_eq!(decide(false, PORT_KERNEL, 0, false, 0), Some(Counter::PassCookieKernelPolicy));
        assert_eq!(decide(true, PORT_KERNEL, 0, false, 0), Some(Counter::PassCookieKernelPolicy));
    }

    #[test]
    fn listed_ports_only_answers_listed_ports() {
        assert_eq!(decide(true, PORT_ANSWER, 0, false, 0), None);
        assert_eq!(decide(true, PORT_DEFAULT, 0, false, 0), Some(Counter::PassCookieKernelPolicy));
        assert_eq!(decide(true, 7, 0, false, 0), Some(Counter::PassCookieKernelPolicy));
    }

    #[test]
    fn kernel_destinations_are_left_to_the_kernel_even_on_answered_ports() {
        assert_eq!(decide(false, PORT_DEFAULT, 0, true, 0), Some(Counter::PassCookieKernelPolicy));
        assert_eq!(decide(true, PORT_ANSWER, 1, true, 0), Some(Counter::PassCookieKernelPolicy));
    }

    #[test]
    fn untagged_syns_on_a_tag_stripping_nic_are_left_to_the_kernel() {
        let stripped = IFACE_VLAN_STRIPPED;
        assert_eq!(decide(false, PORT_DEFAULT, 0, false, stripped), Some(Counter::PassCookieVlanOffload));
        assert_eq!(decide(false, PORT_DEFAULT, 1, false, stripped), None, "tagged: the tag is kept");
        assert_eq!(decide(false, PORT_DEFAULT, 2, false, stripped), None, "QinQ likewise");
        assert_eq!(decide(false, PORT_DEFAULT, 0, false, !IFACE_VLAN_STRIPPED), None, "other bits");
        // Kernel policy wins over the interface: one reason per packet.
        assert_eq!(decide(false, PORT_KERNEL, 0, true, stripped), Some(Counter::PassCookieKernelPolicy));
    }

    #[test]
    fn ports_without_a_listener_pass_before_any_lookup() {
        let never_dest = || -> bool { panic!("KERNEL_DESTS looked up") };
        let never_iface = || -> u32 { panic!("IFACES looked up") };
        assert_eq!(
            cookie_policy(&cfg(false), PORT_DEFAULT | PORT_NO_LISTENER, 0, never_dest, never_iface),
            Some(Counter::PassCookieNoListener)
        );
        // The port's policy still says why first; the bit does not hide an answered port.
        assert_eq!(
            decide(false, PORT_KERNEL | PORT_NO_LISTENER, 0, false, 0),
            Some(Counter::PassCookieKernelPolicy)
        );
        assert_eq!(decide(true, PORT_ANSWER, 0, false, 0), None);
        assert_eq!(
            decide(true, PORT_ANSWER | PORT_NO_LISTENER, 0, false, 0),
            Some(Counter::PassCookieNoListener)
        );
    }

    #[test]
    fn lookups_are_made_only_when_the_decision_reaches_them() {
        let never_dest = || -> bool { panic!("KERNEL_DESTS looked up") };
        let never_iface = || -> u32 { panic!("IFACES looked up") };
        assert_eq!(
            cookie_policy(&cfg(false), PORT_KERNEL, 0, never_dest, never_iface),
            Some(Counter::PassCookieKernelPolicy)
        );
        assert_eq!(
            cookie_policy(&cfg(false), PORT_DEFAULT, 0, || true, never_iface),
            Some(Counter::PassCookieKernelPolicy)
        );
        assert_eq!(cookie_policy(&cfg(false), PORT_DEFAULT, 1, || false, never_iface), None);
    }

    #[test]
    fn maps_the_agent_knows_hold_nothing_are_not_looked_up() {
        let never_dest = || -> bool { panic!("KERNEL_DESTS looked up") };
        let never_iface = || -> u32 { panic!("IFACES looked up") };
        let mut c = cfg(false);
        c.flags |= FLAG_NO_KERNEL_DESTS | FLAG_NO_IFACE_POLICY;
        assert_eq!(cookie_policy(&c, PORT_DEFAULT, 0, never_dest, never_iface), None);
        // Each bit skips its own lookup only.
        c.flags &= !FLAG_NO_IFACE_POLICY;
        assert_eq!(
            cookie_policy(&c, PORT_DEFAULT, 0, never_dest, || IFACE_VLAN_STRIPPED),
            Some(Counter::PassCookieVlanOffload)
        );
        c.flags = (c.flags & !FLAG_NO_KERNEL_DESTS) | FLAG_NO_IFACE_POLICY;
        assert_eq!(
            cookie_policy(&c, PORT_DEFAULT, 0, || true, never_iface),
            Some(Counter::PassCookieKernelPolicy)
        );
        assert_eq!(cookie_policy(&c, PORT_DEFAULT, 0, || false, never_iface), None);
    }
}
