//! Per-CPU counters, one slot per verdict reason and per event (see `detector_common::counters`).

use aya_ebpf::{macros::map, maps::PerCpuArray};
use detector_common::counters::{Counter, COUNTER_SLOTS};

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[inline(always)]
pub fn count(counter: Counter) {
    count_by(counter, 1);
}

#[inline(always)]
pub fn count_by(counter: Counter, n: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += u64::from(n) };
    }
}
