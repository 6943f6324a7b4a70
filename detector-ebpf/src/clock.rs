//! The coarse clock, read once per tick on each CPU (`detector_common::tick_clock`): the
//! cookie path and the blocked drop read it on every SYN, and the helper's call and return
//! were a tenth of the drop's cost (docs/hotpaths.md).

use aya_ebpf::{
    helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::map,
    maps::PerCpuArray,
};
use detector_common::tick_clock::TickAnchor;

/// Not pinned: a fresh one costs each CPU one helper call.
#[map(name = "TICK_ANCHOR")]
static TICK_ANCHOR: PerCpuArray<TickAnchor> = PerCpuArray::with_max_entries(1, 0);

/// `CLOCK_MONOTONIC` nanoseconds as of the last tick or the one before (see
/// `tick_clock`): what `bpf_ktime_get_coarse_ns` returns, without its call on most SYNs.
#[inline(always)]
pub fn coarse_now() -> u64 {
    // SAFETY: helpers without arguments (kernel >= 5.11 for the coarse clock; jiffies
    // since 5.6, inlined by the verifier into one load).
    let coarse = || unsafe { bpf_ktime_get_coarse_ns() };
    let jiffies = unsafe { bpf_jiffies64() };
    match TICK_ANCHOR.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; only this CPU writes it while the program runs.
        Some(anchor) => unsafe { &mut *anchor }.now(jiffies, coarse),
        // Slot 0 of an array always exists; if it did not, the helper still answers.
        None => coarse(),
    }
}
