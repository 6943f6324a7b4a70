//! Per-port policy: the config a SYN to its destination port is judged by
//! (`detector_common::ports`), or `None` when the port is not protected.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use detector_common::{
    config::Config,
    names::PORT_LIMITS_CAPACITY,
    parse::TcpSegment,
    ports::{self, PortLimits},
};

#[map(name = "PORT_LIMITS")]
static PORT_LIMITS: HashMap<u32, PortLimits> = HashMap::with_max_entries(PORT_LIMITS_CAPACITY, 0);

/// The config a SYN to a port with its own limits is judged by: a per-CPU copy, so that it
/// is not on the SYN path's stack (its frames are at the verifier's 512-byte limit).
#[map(name = "PORT_CONFIG")]
static PORT_CONFIG: PerCpuArray<Config> = PerCpuArray::with_max_entries(1, 0);

/// `cfg` itself unless the agent flagged per-port policy as in use; then one hash lookup,
/// and the port's config (`None`: the port is not protected).
#[inline(always)]
pub fn config_for<'a>(seg: &TcpSegment, cfg: &'a Config) -> Option<&'a Config> {
    if !ports::needs_lookup(cfg) {
        return Some(cfg);
    }
    // SAFETY: a read-only copy of a live map value.
    let entry = unsafe { PORT_LIMITS.get(&u32::from(seg.dst_port)) }.copied();
    // Slot 0 of a per-CPU array always exists; without it, the host-wide limits.
    let Some(slot) = PORT_CONFIG.get_ptr_mut(0) else {
        return Some(cfg);
    };
    // SAFETY: this CPU's slot, used by this program run only (no preemption in XDP).
    let port_cfg = unsafe {
        *slot = *cfg;
        &mut *slot
    };
    ports::apply_port(port_cfg, entry.as_ref()).then_some(&*port_cfg)
}
