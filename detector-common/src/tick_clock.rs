//! The coarse clock, read once per tick on each CPU.
//!
//! `bpf_ktime_get_coarse_ns` returns the time of the last tick, so it gives the same value
//! for every packet a CPU handles within one tick; yet each call is a helper call, whose
//! return goes through a thunk on machines with return-thunk mitigations (about 15 ns
//! here, a tenth of a blocked source's drop). `bpf_jiffies64` is inlined by the verifier
//! on 64-bit JITs into one load of a global that changes on the same tick. So a CPU keeps
//! the coarse time it read last and the jiffies it read it at, and calls the helper again
//! only when jiffies have moved (once per tick per CPU: 100 to 1000 times a second).
//!
//! How far behind the fine clock this is: the kernel moves jiffies and then the
//! timekeeper's coarse time in the same tick handler. A CPU that reads between the two
//! keeps the previous tick's time for the whole of the new tick, so the result lags the
//! fine clock by up to two ticks (2 to 20 ms) where the helper lags by up to one. Every
//! user of the coarse time tolerates far more: the blocked drop's slack is a second
//! (`blocked::COARSE_SLACK_NS`), and cookie mode counts in seconds and minutes.

/// One CPU's last coarse reading and the jiffies it was taken at. Per-CPU map memory, not
/// shared with the agent; zero until the CPU's first read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickAnchor {
    pub jiffies: u64,
    pub coarse_ns: u64,
}

const _: () = assert!(core::mem::size_of::<TickAnchor>() == 16);

#[cfg(feature = "user")]
// SAFETY: repr(C), two u64s, no padding (size asserted above).
unsafe impl aya::Pod for TickAnchor {}

impl TickAnchor {
    /// The coarse time at `jiffies`: the kept one if jiffies have not moved since it was
    /// read, else a fresh `read_coarse()`, kept for the rest of the tick. A zero time is
    /// never kept (the helper does not return one after boot), so a zeroed anchor always
    /// reads.
    #[inline(always)]
    pub fn now(&mut self, jiffies: u64, read_coarse: impl FnOnce() -> u64) -> u64 {
        if self.jiffies == jiffies && self.coarse_ns != 0 {
            return self.coarse_ns;
        }
        let coarse_ns = read_coarse();
        *self = Self { jiffies, coarse_ns };
        coarse_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helper_is_asked_once_per_tick() {
        let mut anchor = TickAnchor::default();
        let reads = core::cell::Cell::new(0);
        let read = |ns| {
            let reads = &reads;
            move || {
                reads.set(reads.get() + 1);
                ns
            }
        };
        assert_eq!(anchor.now(1000, read(5_000)), 5_000);
        assert_eq!(anchor.now(1000, read(9_999)), 5_000, "same tick: the kept time");
        assert_eq!(anchor.now(1000, read(9_999)), 5_000);
        assert_eq!(anchor.now(1001, read(9_000)), 9_000, "the next tick reads again");
        assert_eq!(anchor.now(1001, read(1)), 9_000);
        assert_eq!(reads.get(), 2);
    }

    #[test]
    fn a_zeroed_anchor_reads_whatever_the_jiffies() {
        // Jiffies of 0 (a fresh per-CPU slot) must not pass for a kept time of 0.
        let mut anchor = TickAnchor::default();
        assert_eq!(anchor.now(0, || 42), 42);
        assert_eq!(anchor.now(0, || 7), 42);
        assert_eq!(anchor, TickAnchor { jiffies: 0, coarse_ns: 42 });
    }

    #[test]
    fn jiffies_that_go_back_also_read_again() {
        // Not expected of the kernel, but only equality keeps a time: nothing stale is
        // kept for a tick it was not read in.
        let mut anchor = TickAnchor::default();
        anchor.now(500, || 10);
        assert_eq!(anchor.now(499, || 11), 11);
    }
}
