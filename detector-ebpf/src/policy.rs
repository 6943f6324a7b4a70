//! Which SYNs this host may answer: the policy maps the agent fills, looked up for
//! `detector_common::policy`, which decides.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie},
    programs::XdpContext,
};
use detector_common::{
    config::Config,
    counters::Counter,
    local_table::{self, LocalBucket, Probe, LOCAL_TABLE_BUCKETS},
    names::{KERNEL_DESTS_CAPACITY, LOCAL_ADDRS_CAPACITY},
    parse::TcpSegment,
    policy::{self, IfacePolicy},
};

/// Interfaces one program can be attached to on a host, with room to spare.
const IFACES_CAPACITY: u32 = 256;
/// Every TCP port has a slot.
const PORT_SLOTS: u32 = 1 << 16;

/// The host's own addresses (IPv4-mapped, network order); see `names::MAP_LOCAL_ADDRS`.
#[map(name = "LOCAL_ADDRS")]
static LOCAL_ADDRS: HashMap<[u8; 16], u32> = HashMap::with_max_entries(LOCAL_ADDRS_CAPACITY, 0);

/// The same addresses in buckets the verifier inlines; see `names::MAP_LOCAL_TABLE`.
#[map(name = "LOCAL_TABLE")]
static LOCAL_TABLE: Array<LocalBucket> = Array::with_max_entries(LOCAL_TABLE_BUCKETS, 0);

/// A `policy::PORT_*` value per destination port (host order index); zeroed = default.
#[map(name = "PORT_POLICY")]
static PORT_POLICY: Array<u32> = Array::with_max_entries(PORT_SLOTS, 0);

/// Destination prefixes always left to the kernel (IPv4-mapped: an IPv4 /n is /96+n).
#[map(name = "KERNEL_DESTS")]
static KERNEL_DESTS: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(KERNEL_DESTS_CAPACITY, 0);

/// What the agent learnt about each interface, by ifindex.
#[map(name = "IFACES")]
static IFACES: HashMap<u32, IfacePolicy> = HashMap::with_max_entries(IFACES_CAPACITY, 0);

/// Whether the SYN is for one of the host's own addresses. Not found means not local:
/// a SYN the host forwards matches a wildcard listener too, but its handshake belongs to
/// another machine. (Before the agent has filled the map, nothing is local: every SYN
/// passes untouched, which is failing open.)
///
/// `LOCAL_TABLE` first: an array read the verifier turns into a few instructions and a
/// handful of compares, where the hash map costs a helper call and a jhash (~25 ns,
/// docs/hotpaths.md). `LOCAL_ADDRS` only for a bucket that says it overflowed.
#[inline(always)]
pub fn is_local(seg: &TcpSegment) -> bool {
    let w = local_table::words(&seg.dst);
    // The bucket index is masked to the table's size, so a miss cannot happen; if it
    // did, ask the map.
    match LOCAL_TABLE.get(local_table::bucket_of(w)).map_or(Probe::AskMap, |b| local_table::probe(b, w)) {
        Probe::Local => true,
        Probe::NotLocal => false,
        Probe::AskMap => LOCAL_ADDRS.get_ptr(&seg.dst).is_some(),
    }
}

/// Cookie mode: `Some(reason)` when the SYN must be left to the kernel (port or
/// destination policy, or a NIC that strips VLAN tags), `None` to answer it.
// Inlined into `cookie_syn`: a BPF-to-BPF call costs 4-12 ns (docs/hotpaths.md), and its
// trie key takes only 20 bytes of that frame.
#[inline(always)]
pub fn leave_to_kernel(ctx: &XdpContext, seg: &TcpSegment, cfg: &Config) -> Option<Counter> {
    // Every port has a slot, so a miss cannot happen; if it did, fail open.
    let Some(port_slot) = PORT_POLICY.get(u32::from(seg.dst_port)) else {
        return Some(Counter::PassMapError);
    };
    policy::cookie_policy(
        cfg,
        *port_slot,
        seg.vlan_tags,
        || KERNEL_DESTS.get(Key::new(128, seg.dst)).is_some(),
        || {
            #[allow(clippy::cast_possible_truncation, reason = "ifindex is a u32 in xdp_md")]
            let ifindex = ctx.ingress_ifindex() as u32;
            // SAFETY: a copy of the value is taken at once.
            unsafe { IFACES.get(&ifindex) }.map_or(0, |iface| iface.flags)
        },
    )
}
