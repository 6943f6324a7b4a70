//! Rate-limited log events for the agent (aya-log): slow paths only, never per packet.

use aya_ebpf::{macros::map, maps::PerCpuArray, programs::XdpContext};
use aya_log_ebpf::{info, warn};
use detector_common::{state::SourceKey, track::BlockReason};

/// Events one CPU may log per second; the rest are only counted.
const EVENTS_PER_SECOND: u64 = 10;
const NS_PER_SEC: u64 = 1_000_000_000;

/// Per CPU: [start of the current second, events logged in it].
#[map(name = "EVENT_BUDGET")]
static EVENT_BUDGET: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn allowed(now: u64) -> bool {
    let Some(budget) = EVENT_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU value, only this CPU touches it.
    let budget = unsafe { &mut *budget };
    if now.wrapping_sub(budget[0]) >= NS_PER_SEC {
        budget[0] = now;
        budget[1] = 0;
    }
    budget[1] += 1;
    budget[1] <= EVENTS_PER_SECOND
}

/// Calls of their own, rare: inlined, they grew the entry point's frame (280 to 296 bytes),
/// which every other call from it stacks on (docs/verifier.md).
#[inline(never)]
pub fn source_blocked(ctx: &XdpContext, key: &SourceKey, reason: BlockReason, now: u64) {
    if !allowed(now) {
        return;
    }
    let reason = match reason {
        BlockReason::SynRate => "syn_rate",
        BlockReason::HalfOpen => "half_open",
    };
    info!(ctx, "source blocked: {:i} reason={}", key.addr, reason);
}

#[inline(never)]
pub fn map_full(ctx: &XdpContext) {
    if !allowed(unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }) {
        return;
    }
    warn!(ctx, "SOURCES map insert failed: counting as map_error and passing");
}
