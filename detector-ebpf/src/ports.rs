//! Per-port policy: the limits a SYN to its destination port is judged by
//! (`detector_common::ports`), or why it is not judged (the port is not protected).

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use detector_common::{
    config::Config,
    counters::Counter,
    names::PORT_LIMITS_CAPACITY,
    parse::TcpSegment,
    ports::{self, Limits, PortLimits},
};

#[map(name = "PORT_LIMITS")]
static PORT_LIMITS: HashMap<u32, PortLimits> = HashMap::with_max_entries(PORT_LIMITS_CAPACITY, 0);

/// The tracking path's config: a per-CPU copy, so that it is not on the SYN path's stack
/// (its frames are at the verifier's 512-byte limit).
#[map(name = "PORT_CONFIG")]
static PORT_CONFIG: PerCpuArray<Config> = PerCpuArray::with_max_entries(1, 0);

/// The limits this SYN is judged by (`ports::limits_for_port`): the config's own when the
/// agent did not flag per-port policy as in use, else the port's (one hash lookup). `Err`
/// is the counter of a SYN not judged: `PassUnprotectedPort`.
#[inline(always)]
pub fn limits_for(seg: &TcpSegment, cfg: &Config) -> Result<Limits, Counter> {
    if !ports::needs_lookup(cfg) {
        return Ok(Limits::of(cfg));
    }
    // SAFETY: a read-only copy of a live map value.
    let entry = unsafe { PORT_LIMITS.get(&u32::from(seg.dst_port)) }.copied();
    ports::limits_for_port(cfg, entry.as_ref()).ok_or(Counter::PassUnprotectedPort)
}

/// The config the tracking path judges a SYN by: this CPU's `PORT_CONFIG` slot, a copy of
/// `cfg` with `limits` in it. Cookie mode makes no copy: it takes the SYN-rate limit alone,
/// and its answered SYN is spared the copy's two cache lines (docs/hotpaths.md).
///
/// Verifier: the tracking path gets a pointer into this map on every branch. Returning
/// `cfg` itself (a `CONFIG` value) on one branch and the slot on the other gave the
/// verifier two pointer types it could not merge, and it walked the whole SYN path twice
/// (133,942 instructions processed instead of ~70k; docs/verifier.md).
#[inline(always)]
pub fn config_with(cfg: &Config, limits: Limits) -> Result<&'static Config, Counter> {
    // Slot 0 of a per-CPU array always exists; without it (unreachable), fail open as
    // without a config rather than fall back to `cfg` (a second pointer type, see above).
    let Some(slot) = PORT_CONFIG.get_ptr_mut(0) else {
        return Err(Counter::PassNoConfig);
    };
    // SAFETY: this CPU's slot, used by this program run only (no preemption in XDP).
    unsafe {
        *slot = *cfg;
        limits.apply(&mut *slot);
        Ok(&*slot)
    }
}
