//! Which SYNs the cookie responder may answer: values of the policy maps the agent fills
//! (`names::MAP_PORT_POLICY`, `MAP_KERNEL_DESTS`, `MAP_IFACES`, `MAP_LOCAL_ADDRS`).
//!
//! The rule behind all of them: answer a SYN from XDP only when the local kernel would
//! have accepted that SYN itself, on this host, without netfilter rewriting it first.

/// `PORT_POLICY` slot value: no explicit policy; answered when a local listener exists.
pub const PORT_DEFAULT: u32 = 0;
/// `PORT_POLICY` slot value: always left to the kernel (DNAT/redirect, or the operator).
pub const PORT_KERNEL: u32 = 1;
/// `PORT_POLICY` slot value: listed by the operator as a port to answer for (matters only
/// with `config::FLAG_LISTED_PORTS_ONLY`).
pub const PORT_ANSWER: u32 = 2;

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
