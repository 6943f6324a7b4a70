//! Per-port policy for SYNs: which local ports are protected, and per-port limits where
//! they differ from the config's (`names::MAP_PORT_LIMITS`, keyed by destination port).
//!
//! Per-source state stays per source: a SYN is accounted to its source as always, and
//! compared with the limits of the port it is for. So a source blocked by one port's lower
//! limit is blocked on every protected port (a block is per source; unprotected ports pass
//! everyone), and a source spreading SYNs over ports counts them all against whichever
//! port's limit the next SYN meets.

use crate::config::{Config, FLAG_PORT_LIMITS, FLAG_PROTECTED_PORTS_ONLY};

/// `PortLimits::flags`: the port is protected (matters with `FLAG_PROTECTED_PORTS_ONLY`).
pub const PORT_PROTECTED: u32 = 1 << 0;
/// `PortLimits::flags`: `syn_rate_limit` replaces the config's for this port.
pub const PORT_SYN_RATE: u32 = 1 << 1;
/// `PortLimits::flags`: `half_open_limit` replaces the config's for this port.
pub const PORT_HALF_OPEN: u32 = 1 << 2;

/// A `PORT_LIMITS` value. A bit per overridden limit rather than a sentinel value, so
/// that 0 ("no limit") can be a port's own choice.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortLimits {
    pub syn_rate_limit: u32,
    pub half_open_limit: u32,
    /// `PORT_*` bits.
    pub flags: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<PortLimits>() == 16);

/// The limits a SYN is judged by: the config's, or its port's where the port's entry sets
/// them. Cookie mode needs only `syn_rate_limit` (it keeps no half-open state), so it
/// carries these two values instead of a copy of the config; tracking applies them to a
/// copy (`apply`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub syn_rate_limit: u32,
    pub half_open_limit: u32,
}

impl Limits {
    /// The config's own limits.
    #[inline(always)]
    #[must_use]
    pub const fn of(cfg: &Config) -> Self {
        Self { syn_rate_limit: cfg.syn_rate_limit, half_open_limit: cfg.half_open_limit }
    }

    /// Puts these limits into `cfg` (the program's copy in map memory, not on its stack:
    /// docs/verifier.md).
    #[inline(always)]
    pub fn apply(self, cfg: &mut Config) {
        cfg.syn_rate_limit = self.syn_rate_limit;
        cfg.half_open_limit = self.half_open_limit;
    }
}

/// The limits a SYN to a port is judged by, or `None` when the port is not protected (the
/// SYN passes untouched). `entry` is the port's `PORT_LIMITS` value, if any; it is only
/// looked up when `needs_lookup`.
#[inline(always)]
#[must_use]
pub fn limits_for_port(cfg: &Config, entry: Option<&PortLimits>) -> Option<Limits> {
    let mut limits = Limits::of(cfg);
    let Some(entry) = entry else {
        return (!cfg.has(FLAG_PROTECTED_PORTS_ONLY)).then_some(limits);
    };
    if cfg.has(FLAG_PROTECTED_PORTS_ONLY) && entry.flags & PORT_PROTECTED == 0 {
        return None;
    }
    if entry.flags & PORT_SYN_RATE != 0 {
        limits.syn_rate_limit = entry.syn_rate_limit;
    }
    if entry.flags & PORT_HALF_OPEN != 0 {
        limits.half_open_limit = entry.half_open_limit;
    }
    Some(limits)
}

/// Whether the program must look the port up at all.
#[inline(always)]
#[must_use]
pub const fn needs_lookup(cfg: &Config) -> bool {
    cfg.has(FLAG_PORT_LIMITS) || cfg.has(FLAG_PROTECTED_PORTS_ONLY)
}

#[cfg(feature = "user")]
// SAFETY: repr(C), only u32 fields, no implicit padding (size asserted above).
unsafe impl aya::Pod for PortLimits {}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(flags: u32) -> Config {
        let mut c = Config::new(200, 100, 1, 3);
        c.flags |= flags;
        c
    }

    #[test]
    fn without_an_entry_the_config_applies_unless_only_listed_ports_are_protected() {
        let c = cfg(FLAG_PORT_LIMITS);
        assert_eq!(limits_for_port(&c, None), Some(Limits::of(&c)));
        assert_eq!(limits_for_port(&cfg(FLAG_PROTECTED_PORTS_ONLY), None), None);
    }

    #[test]
    fn an_entry_overrides_only_the_limits_it_sets() {
        let rate = PortLimits { syn_rate_limit: 5, half_open_limit: 999, flags: PORT_SYN_RATE, _pad: 0 };
        let c = limits_for_port(&cfg(FLAG_PORT_LIMITS), Some(&rate)).unwrap();
        assert_eq!((c.syn_rate_limit, c.half_open_limit), (5, 100));
        let none = PortLimits {
            syn_rate_limit: 0,
            half_open_limit: 0,
            flags: PORT_SYN_RATE | PORT_HALF_OPEN,
            _pad: 0,
        };
        let c = limits_for_port(&cfg(FLAG_PORT_LIMITS), Some(&none)).unwrap();
        assert_eq!((c.syn_rate_limit, c.half_open_limit), (0, 0), "0 = no limit on this port");
    }

    #[test]
    fn only_listed_ports_marked_protected_are_judged() {
        let flags = FLAG_PORT_LIMITS | FLAG_PROTECTED_PORTS_ONLY;
        let limits_only = PortLimits { syn_rate_limit: 5, half_open_limit: 0, flags: PORT_SYN_RATE, _pad: 0 };
        assert_eq!(limits_for_port(&cfg(flags), Some(&limits_only)), None);
        let protected = PortLimits { flags: PORT_PROTECTED | PORT_SYN_RATE, ..limits_only };
        assert_eq!(limits_for_port(&cfg(flags), Some(&protected)).map(|c| c.syn_rate_limit), Some(5));
    }

    #[test]
    fn applied_limits_replace_only_the_two_limits() {
        let mut c = cfg(FLAG_PORT_LIMITS);
        let before = c;
        Limits { syn_rate_limit: 7, half_open_limit: 0 }.apply(&mut c);
        assert_eq!((c.syn_rate_limit, c.half_open_limit), (7, 0));
        assert_eq!(
            Config { syn_rate_limit: before.syn_rate_limit, half_open_limit: before.half_open_limit, ..c },
            before
        );
    }

    #[test]
    fn lookup_only_when_a_flag_asks() {
        assert!(!needs_lookup(&cfg(0)));
        assert!(needs_lookup(&cfg(FLAG_PORT_LIMITS)));
        assert!(needs_lookup(&cfg(FLAG_PROTECTED_PORTS_ONLY)));
    }
}
