//! `detector_common::packet::Packet` over the XDP frame, with the checks the verifier wants.

use core::arch::asm;

use aya_ebpf::{bindings::xdp_md, helpers::generated::bpf_xdp_get_buff_len, programs::XdpContext};
use detector_common::{
    packet::Packet,
    parse::{ETH_HEADER_LEN, MAX_L4_OFFSET, MAX_VLAN_TAGS, VLAN_TAG_LEN},
};

/// The deepest IP header a SYN is answered (or an ACK checked) for: behind two VLAN tags.
pub const MAX_L3: usize = ETH_HEADER_LEN + MAX_VLAN_TAGS * VLAN_TAG_LEN;
/// The deepest TCP header a SYN is answered for: an IPv6 header without extension headers.
pub const MAX_L4: usize = MAX_L3 + 40;

/// The bytes `data..data_end` of the frame being processed.
pub struct XdpPacket {
    start: usize,
    end: usize,
    ctx: *mut xdp_md,
}

impl XdpPacket {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Self { start: ctx.data(), end: ctx.data_end(), ctx: ctx.ctx }
    }
}

/// `holds` compares lengths up to this against the linear part by pointer; the verifier
/// accepts a packet pointer plus a scalar only below 64 KiB.
const MAX_LINEAR_LEN: usize = 0x3fff;

/// Swaps the destination and source MAC addresses of the frame at `data`.
///
/// # Safety
/// `data .. data + 12` must be inside the frame (checked by the caller for the verifier).
#[inline(always)]
pub unsafe fn swap_macs(data: usize) {
    // SAFETY: upheld by the caller.
    unsafe {
        let macs = load::<12>(data);
        let mut swapped = [0u8; 12];
        swapped[..6].copy_from_slice(&macs[6..]);
        swapped[6..].copy_from_slice(&macs[..6]);
        store(data, &swapped);
    }
}

/// Reads never start past this: the parser's deepest header plus the TCP header.
const MAX_READ_OFFSET: usize = MAX_L4_OFFSET + 64;

impl Packet for XdpPacket {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        // The verifier only accepts a variable packet offset it can bound from above.
        if offset > MAX_READ_OFFSET {
            return None;
        }
        // Opaque: LLVM would otherwise hoist `end - start` out of the parser and compare
        // offsets against it, and arithmetic on the packet-end pointer is refused.
        let at = opaque(self.start + offset);
        if at + N > self.end {
            return None;
        }
        // SAFETY: `at..at + N` is inside the frame, checked just above.
        Some(unsafe { load::<N>(at) })
    }

    /// The length from the helper (kernel >= 5.18): `data_end - data` is arithmetic on the
    /// packet-end pointer, which the verifier refuses, and the helper also counts the
    /// fragments of a multi-buffer frame, as the IP layer does.
    #[inline(always)]
    fn frame_len(&self) -> usize {
        // SAFETY: a helper call on our own context.
        #[allow(clippy::cast_possible_truncation, reason = "a frame is far below 4 GiB")]
        let len = unsafe { bpf_xdp_get_buff_len(self.ctx) } as usize;
        len
    }

    /// The linear part first, by pointer comparison: nearly every frame is linear and
    /// long enough, and a helper call costs more than the rest of an ACK's parsing on a
    /// machine with return-thunk mitigations (docs/hotpaths.md). Only a
    /// frame whose IP datagram reaches past `data_end` (fragments of a multi-buffer frame,
    /// or a short frame) asks the helper.
    #[inline(always)]
    fn holds(&self, len: usize) -> bool {
        // Opaque: LLVM would otherwise turn this into `len <= end - start`, arithmetic on
        // the packet-end pointer.
        if len <= MAX_LINEAR_LEN && opaque(self.start + len) <= self.end {
            return true;
        }
        len <= self.frame_len()
    }
}

/// Hides how `value` was computed from LLVM, as `core::hint::black_box` does, but in its
/// register: black_box goes through a stack slot, a store and a dependent load on each of
/// the parser's dozen reads.
#[inline(always)]
pub fn opaque(mut value: usize) -> usize {
    // SAFETY: a register move onto itself; the asm only claims to change the register.
    unsafe { asm!("{0} = {0}", inout(reg) value, options(pure, nomem, nostack, preserves_flags)) };
    value
}

/// The same value, through a pointer LLVM cannot trace to `value`: it then loads the
/// fields again where they are used instead of keeping values it loaded earlier, which it
/// would spill to the stack across the lookups and helper calls in between (the cookie
/// answer's frame is near the verifier's limit).
#[inline(always)]
pub fn reread<T>(value: &T) -> &T {
    let at = opaque(core::ptr::from_ref(value) as usize);
    // `opaque` also hides the alignment, and without it the fields were read a byte at a
    // time (the BPF backend splits loads it cannot prove aligned): say it again.
    // SAFETY: `at` is the address of a `T`.
    unsafe { core::hint::assert_unchecked(at % core::mem::align_of::<T>() == 0) };
    // SAFETY: `at` is still the address of `value`, borrowed for as long as `value`.
    unsafe { &*(at as *const T) }
}

/// The `N` bytes at `at`, read 8, 4, 2 and 1 bytes at a time.
///
/// Why asm: a header field has no alignment LLVM can rely on, and the BPF backend splits
/// every load it cannot prove aligned into single bytes, each shifted into place (the
/// parser was mostly that). The verifier accepts misaligned packet loads wherever the
/// kernel has efficient unaligned access (`CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS`: x86-64,
/// arm64, among others; docs/hotpaths.md); elsewhere the program fails to load with a
/// "misaligned packet access" message rather than misbehave. Stack and map accesses stay
/// plain Rust (the verifier requires those aligned everywhere).
///
/// # Safety
/// `at .. at + N` must be inside the frame, checked so that the verifier sees it.
#[inline(always)]
pub unsafe fn load<const N: usize>(at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    let mut i = 0;
    // N is a constant: these loops unroll into straight-line loads.
    while i + 8 <= N {
        // SAFETY: inside the frame (the caller's check).
        out[i..i + 8].copy_from_slice(&unsafe { load_u64(at + i) }.to_ne_bytes());
        i += 8;
    }
    if i + 4 <= N {
        // SAFETY: as above.
        out[i..i + 4].copy_from_slice(&unsafe { load_u32(at + i) }.to_ne_bytes());
        i += 4;
    }
    if i + 2 <= N {
        // SAFETY: as above.
        out[i..i + 2].copy_from_slice(&unsafe { load_u16(at + i) }.to_ne_bytes());
        i += 2;
    }
    if i < N {
        // SAFETY: as above; a single byte has no alignment to speak of.
        out[i] = unsafe { *((at + i) as *const u8) };
    }
    out
}

// Not `pure`: LLVM must not move a load above the bounds check that makes it valid.
macro_rules! packet_load {
    ($name:ident, $ty:ty, $insn:literal) => {
        /// # Safety
        /// The bytes read must be inside the frame (see `load`).
        #[inline(always)]
        unsafe fn $name(at: usize) -> $ty {
            let value: u64;
            // SAFETY: upheld by the caller.
            unsafe { asm!($insn, lateout(reg) value, in(reg) at, options(readonly, nostack, preserves_flags)) };
            #[allow(clippy::cast_possible_truncation, reason = "the load zero-extends a narrower value")]
            let value = value as $ty;
            value
        }
    };
}

packet_load!(load_u64, u64, "{0} = *(u64 *)({1} + 0)");
packet_load!(load_u32, u32, "{0} = *(u32 *)({1} + 0)");
packet_load!(load_u16, u16, "{0} = *(u16 *)({1} + 0)");

/// Writes `bytes` at `at`, 8, 4, 2 and 1 bytes at a time: the stores' counterpart of
/// `load` (same reason: LLVM splits a store it cannot prove aligned into single bytes,
/// 118 of them for a SYN-ACK; docs/hotpaths.md).
///
/// # Safety
/// `at .. at + N` must be inside the frame, checked so that the verifier sees it.
#[inline(always)]
pub unsafe fn store<const N: usize>(at: usize, bytes: &[u8; N]) {
    let mut i = 0;
    // N is a constant: these loops unroll into straight-line stores.
    while i + 8 <= N {
        let word = u64::from_ne_bytes([
            bytes[i],
            bytes[i + 1],
            bytes[i + 2],
            bytes[i + 3],
            bytes[i + 4],
            bytes[i + 5],
            bytes[i + 6],
            bytes[i + 7],
        ]);
        // SAFETY: inside the frame (the caller's check).
        unsafe { store_u64(at + i, word) };
        i += 8;
    }
    if i + 4 <= N {
        // SAFETY: as above.
        unsafe {
            store_u32(at + i, u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]))
        };
        i += 4;
    }
    if i + 2 <= N {
        // SAFETY: as above.
        unsafe { store_u16(at + i, u16::from_ne_bytes([bytes[i], bytes[i + 1]])) };
        i += 2;
    }
    if i < N {
        // SAFETY: as above; a single byte has no alignment to speak of.
        unsafe { *((at + i) as *mut u8) = bytes[i] };
    }
}

/// Writes big-endian words (`detector_common::synack`'s headers) at `at`, 4 bytes per
/// store, straight from registers: no byte array on the stack to assemble first.
///
/// # Safety
/// `at .. at + 4 * N` must be inside the frame, checked so that the verifier sees it.
#[inline(always)]
pub unsafe fn store_words<const N: usize>(at: usize, words: &[u32; N]) {
    let mut i = 0;
    while i < N {
        // SAFETY: inside the frame (the caller's check).
        unsafe { store_u32(at + 4 * i, words[i].to_be()) };
        i += 1;
    }
}

/// Writes one big-endian word (see `store_words`) at `at`.
///
/// # Safety
/// `at .. at + 4` must be inside the frame, checked so that the verifier sees it.
#[inline(always)]
pub unsafe fn store_word(at: usize, word: u32) {
    // SAFETY: upheld by the caller.
    unsafe { store_u32(at, word.to_be()) };
}

// Not `nomem`: LLVM must neither drop these stores nor move them across the bounds check.
macro_rules! packet_store {
    ($name:ident, $ty:ty, $insn:literal) => {
        /// # Safety
        /// The bytes written must be inside the frame (see `store`).
        #[inline(always)]
        unsafe fn $name(at: usize, value: $ty) {
            // SAFETY: upheld by the caller.
            unsafe { asm!($insn, in(reg) at, in(reg) u64::from(value), options(nostack, preserves_flags)) };
        }
    };
}

packet_store!(store_u64, u64, "*(u64 *)({0} + 0) = {1}");
packet_store!(store_u32, u32, "*(u32 *)({0} + 0) = {1}");
packet_store!(store_u16, u16, "*(u16 *)({0} + 0) = {1}");
