//! Bounds-checked reads from a packet: the one primitive the parser needs.
//!
//! The host implements it over a byte slice; the XDP program implements it over
//! `ctx.data()..ctx.data_end()` so that every access carries the check the verifier wants.

/// Read-only access to the bytes of a frame, starting at the Ethernet header.
pub trait Packet {
    /// The `N` bytes at `offset`, or `None` when they are not all inside the packet.
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;

    /// The frame's total length in bytes, from the Ethernet header to its last byte
    /// (including any fragments of a multi-buffer frame). The IP length fields are checked
    /// against it.
    fn frame_len(&self) -> usize;

    /// Whether the frame is at least `len` bytes long. An implementation may answer
    /// without `frame_len` when the bytes it has at hand already cover `len` (the XDP one
    /// then skips a helper call).
    #[inline(always)]
    fn holds(&self, len: usize) -> bool {
        len <= self.frame_len()
    }

    #[inline(always)]
    fn u8_at(&self, offset: usize) -> Option<u8> {
        self.read::<1>(offset).map(|b| b[0])
    }

    /// A big-endian (network order) `u16`, returned in host order.
    #[inline(always)]
    fn be16_at(&self, offset: usize) -> Option<u16> {
        self.read::<2>(offset).map(u16::from_be_bytes)
    }

    /// A big-endian (network order) `u32`, returned in host order.
    #[inline(always)]
    fn be32_at(&self, offset: usize) -> Option<u32> {
        self.read::<4>(offset).map(u32::from_be_bytes)
    }
}

impl Packet for [u8] {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        self.get(offset..end)?.try_into().ok()
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.len()
    }
}

#[cfg(test)]
mod tests {
    use super::Packet;

    #[test]
    fn a_frame_holds_its_own_length_and_no_more() {
        let frame = [0u8; 60];
        assert!(frame[..].holds(0));
        assert!(frame[..].holds(60));
        assert!(!frame[..].holds(61));
    }
}
