//! Per-port policy: the config a SYN to its destination port is judged by
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
    ports::{self, PortLimits},
};

#[map(name = "PORT_LIMITS")]
static PORT_LIMITS: HashMap<u32, PortLimits> = HashMap::with_max_entries(PORT_LIMITS_CAPACITY, 0);

/// The config a SYN is judged by: a per-CPU copy, so that it is not on the SYN path's stack
/// (its frames are at the verifier's 512-byte limit).
#[map(name = "PORT_CONFIG")]
static PORT_CONFIG: PerCpuArray<Config> = PerCpuArray::with_max_entries(1, 0);

/// The config for this SYN, always this CPU's `PORT_CONFIG` slot: a copy of `cfg`, with the
/// port's own limits applied when the agent flagged per-port policy as in use (one hash
/// lookup). `Err` is the counter of a SYN not judged: `PassUnprotectedPort`.
///
/// Verifier: every SYN path gets a pointer into the same map. Returning `cfg` itself (a
/// `CONFIG` value) on one branch and the slot on the other gave the verifier two pointer
/// types it could not merge, and it walked the whole SYN path twice (133,942 instructions
/// processed instead of ~70k; docs/verifier.md).
#[inline(always)]
pub fn config_for(seg: &TcpSegment, cfg: &Config) -> Result<&'static Config, Counter> {
    // Slot 0 of a per-CPU array always exists; without it (unreachable), fail open as
    // without a config rather than fall back to `cfg` (a second pointer type, see above).
    let Some(slot) = PORT_CONFIG.get_ptr_mut(0) else {
        return Err(Counter::PassNoConfig);
    };
    // SAFETY: this CPU's slot, used by this program run only (no preemption in XDP).
    let port_cfg = unsafe {
        *slot = *cfg;
        &mut *slot
    };
    if !ports::needs_lookup(cfg) {
        return Ok(port_cfg);
    }
    // SAFETY: a read-only copy of a live map value.
    let entry = unsafe { PORT_LIMITS.get(&u32::from(seg.dst_port)) }.copied();
    if ports::apply_port(port_cfg, entry.as_ref()) {
        Ok(port_cfg)
    } else {
        Err(Counter::PassUnprotectedPort)
    }
}
