//! Packet samples: the record the XDP program hands the agent through the `SAMPLES` ring
//! buffer, and the choice of which packets are sampled (see docs/samples.md).

use crate::counters::Counter;

/// Bytes of each sampled frame that are kept: every header the parser reads (Ethernet, two
/// VLAN tags, IPv6 with extension headers, TCP with options) fits; payload is cut.
pub const SNAP_LEN: usize = SNAP_LEN_U32 as usize;
/// `SNAP_LEN` as the program's lengths are typed.
pub const SNAP_LEN_U32: u32 = 256;

/// Size of the `SAMPLES` ring buffer in bytes (a power of two, a multiple of the page
/// size): about 900 records, enough for the agent to drain between wake-ups.
pub const RING_BYTES: u32 = 1 << 18;

/// One sampled frame as it was received, before the verdict rewrote it (a cookie answer
/// turns the SYN into the SYN-ACK in place).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleRecord {
    /// `bpf_ktime_get_ns` (`CLOCK_MONOTONIC`) when the frame was captured.
    pub ts_ns: u64,
    /// The whole frame's length on the wire (fragments of a multi-buffer frame included).
    pub frame_len: u32,
    /// Bytes of `data` that hold the frame (at most `SNAP_LEN`); 0 = the slot is empty.
    pub cap_len: u32,
    /// The `counters::Counter` slot the verdict was counted in (its verdict and reason).
    pub counter: u32,
    pub _pad: u32,
    pub data: [u8; SNAP_LEN],
}

const _: () = assert!(core::mem::size_of::<SampleRecord>() == 24 + SNAP_LEN);

impl SampleRecord {
    /// The captured bytes, or `None` when the lengths are inconsistent (never from our
    /// program; a record from anything else is refused rather than trusted).
    #[must_use]
    pub fn bytes(&self) -> Option<&[u8]> {
        let len = self.cap_len as usize;
        (len != 0 && len <= SNAP_LEN && self.cap_len <= self.frame_len).then(|| &self.data[..len])
    }

    /// The verdict counter the record names, if it is one.
    #[must_use]
    pub fn counter(&self) -> Option<Counter> {
        Counter::ALL.get(self.counter as usize).copied().filter(|c| c.verdict().is_some())
    }
}

/// Whether a packet with random draw `random` is sampled at a rate of 1 in `one_in`
/// (0 = sampling off).
#[inline(always)]
#[must_use]
pub const fn chosen(one_in: u32, random: u32) -> bool {
    one_in != 0 && random.is_multiple_of(one_in)
}

/// How many bytes of a `frame_len`-byte frame a sample keeps.
#[inline(always)]
#[must_use]
pub const fn capture_len(frame_len: u32) -> u32 {
    if frame_len < SNAP_LEN_U32 {
        frame_len
    } else {
        SNAP_LEN_U32
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), only integers and a byte array, no implicit padding (size asserted).
unsafe impl aya::Pod for SampleRecord {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_in_zero_never_samples_and_one_always() {
        for r in [0, 1, 7, u32::MAX] {
            assert!(!chosen(0, r));
            assert!(chosen(1, r));
        }
    }

    #[test]
    fn one_in_n_takes_every_nth_draw() {
        let hits = (0..10_000u32).filter(|r| chosen(100, *r)).count();
        assert_eq!(hits, 100);
    }

    #[test]
    fn capture_keeps_short_frames_whole_and_cuts_long_ones() {
        assert_eq!(capture_len(0), 0);
        assert_eq!(capture_len(60), 60);
        assert_eq!(capture_len(SNAP_LEN_U32), SNAP_LEN_U32);
        assert_eq!(capture_len(1514), SNAP_LEN_U32);
    }

    #[test]
    fn record_bytes_refuse_inconsistent_lengths() {
        let mut r =
            SampleRecord { ts_ns: 1, frame_len: 60, cap_len: 60, counter: 10, _pad: 0, data: [7; SNAP_LEN] };
        assert_eq!(r.bytes().map(<[u8]>::len), Some(60));
        assert_eq!(r.counter(), Some(Counter::DropBlocked));
        r.cap_len = 0;
        assert!(r.bytes().is_none());
        r.cap_len = 61;
        assert!(r.bytes().is_none(), "longer than the frame");
        r.frame_len = 2000;
        r.cap_len = SNAP_LEN_U32 + 1;
        assert!(r.bytes().is_none(), "longer than the buffer");
        r.counter = Counter::HandshakeCompleted as u32;
        assert_eq!(r.counter(), None, "an event slot is no verdict");
        r.counter = 999;
        assert_eq!(r.counter(), None);
    }
}
