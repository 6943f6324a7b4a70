//! `detector_common::packet::Packet` over the XDP frame, with the checks the verifier wants.

use aya_ebpf::{helpers::generated::bpf_xdp_get_buff_len, programs::XdpContext};
use detector_common::{packet::Packet, parse::MAX_L4_OFFSET};

/// The bytes `data..data_end` of the frame being processed.
pub struct XdpPacket {
    start: usize,
    end: usize,
    /// The whole frame's length, fragments of a multi-buffer frame included.
    len: usize,
}

impl XdpPacket {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        // The length from the helper (kernel >= 5.18), read once here: `data_end - data`
        // is arithmetic on the packet-end pointer, which the verifier refuses, and the
        // helper also counts the fragments of a multi-buffer frame, as the IP layer does.
        // SAFETY: a helper call on our own context.
        #[allow(clippy::cast_possible_truncation, reason = "a frame is far below 4 GiB")]
        let len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as usize;
        Self { start: ctx.data(), end: ctx.data_end(), len }
    }
}

/// Swaps the destination and source MAC addresses of the frame at `data`.
///
/// # Safety
/// `data .. data + 12` must be inside the frame (checked by the caller for the verifier).
#[inline(always)]
pub unsafe fn swap_macs(data: usize) {
    // SAFETY: upheld by the caller.
    unsafe {
        let macs = core::ptr::read_unaligned(data as *const [u8; 12]);
        let mut swapped = [0u8; 12];
        swapped[..6].copy_from_slice(&macs[6..]);
        swapped[6..].copy_from_slice(&macs[..6]);
        core::ptr::write_unaligned(data as *mut [u8; 12], swapped);
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
        // black_box: LLVM would otherwise hoist `end - start` out of the parser and compare
        // offsets against it, and arithmetic on the packet-end pointer is refused.
        let at = core::hint::black_box(self.start + offset);
        if at + N > self.end {
            return None;
        }
        // SAFETY: `at..at + N` is inside the frame, checked just above.
        Some(unsafe { core::ptr::read_unaligned(at as *const [u8; N]) })
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.len
    }
}
