//! Per-port policy: the config a SYN to its destination port is judged by
//! (`detector_common::ports`), or `None` when the port is not protected.

use aya_ebpf::{macros::map, maps::HashMap};
use detector_common::{
    config::Config,
    names::PORT_LIMITS_CAPACITY,
    parse::TcpSegment,
    ports::{self, PortLimits},
};

#[map(name = "PORT_LIMITS")]
static PORT_LIMITS: HashMap<u32, PortLimits> = HashMap::with_max_entries(PORT_LIMITS_CAPACITY, 0);

/// One hash lookup, and only when the agent flagged the map as in use.
#[inline(always)]
pub fn config_for(seg: &TcpSegment, cfg: &Config) -> Option<Config> {
    if !ports::needs_lookup(cfg) {
        return Some(*cfg);
    }
    // SAFETY: a read-only copy of a live map value.
    let entry = unsafe { PORT_LIMITS.get(&u32::from(seg.dst_port)) }.copied();
    ports::config_for_port(cfg, entry.as_ref())
}
