//! Per-source and per-flow map entries shared by the program and the agent.

use crate::config::PENDING_SLOTS;

/// Key of the per-source map: the source address, IPv4 mapped into IPv6, network order.
/// Aligned to 8 (its size stays 16, so the map's layout does not change): the XDP program
/// builds one on its stack from the parser's aligned address and hashes its words, which
/// LLVM does a word at a time only where it can see the alignment (see `TcpSegment`).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub addr: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<SourceKey>() == 16);

/// What the program knows about one source address.
///
/// Half-open handshakes are counted in `PENDING_SLOTS` time slots of
/// `Config::pending_slot_ns`: `pending[k % PENDING_SLOTS]` counts the SYNs of slot `k`
/// not yet completed, for `k` in `newest_slot - 3 ..= newest_slot`. When time moves past a
/// slot, its remainder becomes failed handshakes. This keeps the estimate exact to one
/// slot without visiting every pending flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceState {
    pub last_seen_ns: u64,
    /// Start of the current SYN-rate window.
    pub window_start_ns: u64,
    /// SYNs from this source are dropped until this time; 0 = never blocked.
    pub blocked_until_ns: u64,
    /// Every SYN seen from this source, dropped ones included.
    pub syns_total: u64,
    pub syns_in_window: u32,
    pub completed: u32,
    pub failed: u32,
    /// Times this source has been blocked.
    pub blocks: u32,
    pub newest_slot: u32,
    /// Explicit padding so that `pending` starts at a documented offset.
    pub _pad: u32,
    pub pending: [u32; PENDING_SLOTS],
}

const _: () = assert!(core::mem::size_of::<SourceState>() == 72);

/// Key of the pending-handshake map: one TCP flow as the client sent it. Aligned to 4
/// (its size stays 36) for the same reason as `SourceKey`.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Client (source) and server (destination) address, IPv4-mapped, network order.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Ports in host order.
    pub src_port: u16,
    pub dst_port: u16,
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 36);

/// A SYN that has not been answered by the client's ACK yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingFlow {
    pub syn_ns: u64,
    /// The client's initial sequence number: the completing ACK carries `isn + 1`.
    pub isn: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<PendingFlow>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all four): repr(C), only integers and byte arrays, no implicit padding
    // (sizes asserted above).
    unsafe impl aya::Pod for super::SourceKey {}
    unsafe impl aya::Pod for super::SourceState {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::PendingFlow {}
}
