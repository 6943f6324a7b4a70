//! The configuration the agent writes into the program's `CONFIG` array (one slot).

/// Set by the agent when it writes a complete config. A zeroed slot (nothing written yet)
/// fails this check and the program passes everything: fail open.
pub const CONFIG_MAGIC: u32 = 0x5359_4e31; // "SYN1"

/// Number of time slots a source's half-open count is spread over (see `state`).
pub const PENDING_SLOTS: usize = 4;

const NS_PER_SEC: u64 = 1_000_000_000;

/// Thresholds and timings for the XDP program. All durations in nanoseconds of
/// `bpf_ktime_get_ns` (`CLOCK_MONOTONIC`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub magic: u32,
    /// SYNs per second one source may send before it is blocked; 0 disables the check.
    pub syn_rate_limit: u32,
    /// Half-open handshakes one source may hold before it is blocked; 0 disables the check.
    pub half_open_limit: u32,
    /// `FLAG_*` bits: what the program may do right now. A u32 of bits rather than an
    /// enum so that any value the agent writes is a valid bit pattern for the program.
    pub flags: u32,
    /// How long a blocked source stays blocked.
    pub block_ttl_ns: u64,
    /// A handshake not completed within this long counts as failed.
    pub handshake_timeout_ns: u64,
    /// Width of one half-open slot: `handshake_timeout_ns / (PENDING_SLOTS - 1)`, so a
    /// pending handshake expires between 1× and 4/3× the timeout.
    pub pending_slot_ns: u64,
    /// SYN-ACKs the host may send from XDP per second, over all CPUs together; beyond it
    /// SYNs are dropped (a spoofed flood cannot make us reflect more than this).
    pub cookie_budget_per_second: u32,
    /// Columns per row of the heavy-hitter sketch (a power of two; see `sketch`).
    pub sketch_width: u32,
    /// The unscaled window a cookie SYN-ACK advertises.
    pub synack_window: u16,
    /// The window scale the kernel will use for cookie connections (from the host's
    /// `tcp_rmem`/`rmem_max`, computed by the agent).
    pub synack_wscale: u8,
    /// log2 of the closed filter's lines less the default's (`closed_filter::line_bits`;
    /// 0 = the default, 8,192 lines). Set by the agent from `maps.closed_filter_lines`,
    /// with the map's size.
    pub closed_filter_extra_bits: i8,
    /// Keys the sketch's hashes, so a flood cannot be crafted offline to collide with a
    /// legitimate source in every row. Chosen at random by the agent.
    pub sketch_seed: u32,
    /// Sample 1 in this many dropped or cookie-answered packets into the `SAMPLES` ring
    /// buffer (see `sample`); 0 = off, which costs the program one compare per packet.
    pub sample_one_in: u32,
    /// Cookie mode counts a source in the sketch's rows past the first only once its
    /// first-row cell holds more SYNs than this in the epoch (`sketch::cascade`): a light
    /// source then costs one random read, not four. 0 counts every row for every SYN (as
    /// tracking always does). The agent sets `sketch::hot_mark` of the lowest SYN-rate
    /// limit in force, global or per port: the mark must be the same for every SYN, and
    /// under every limit it is compared with.
    pub sketch_hot_mark: u32,
}

const _: () = assert!(core::mem::size_of::<Config>() == 64);

/// Verdicts are applied. Without it the program only counts what it would do (monitor).
pub const FLAG_ENFORCE: u32 = 1 << 0;
/// Answer SYNs to local listeners with cookies from XDP (cookie mode, or auto under attack).
pub const FLAG_COOKIES: u32 = 1 << 1;
/// Cookie SYN-ACKs carry a timestamp that encodes wscale/SACK/ECN (host `tcp_timestamps=2`).
pub const FLAG_COOKIE_TIMESTAMPS: u32 = 1 << 2;
/// Cookie SYN-ACKs accept ECN when the client asks (only with timestamps).
pub const FLAG_COOKIE_ECN: u32 = 1 << 3;
/// Answer only SYNs to ports marked `PORT_ANSWER` in `PORT_POLICY` (the operator listed
/// the ports to answer for); without it every port not marked `PORT_KERNEL` is answered.
pub const FLAG_LISTED_PORTS_ONLY: u32 = 1 << 4;
/// Kill switch (`mode off`): pass every packet at once, before parsing, without detaching.
pub const FLAG_OFF: u32 = 1 << 5;
/// The `ALLOW` trie has entries: look sources up in it (see `lists`). Without entries the
/// lookup is skipped, so established traffic pays nothing for an empty list.
pub const FLAG_ALLOW_LIST: u32 = 1 << 6;
/// The `DENY` trie has entries: look sources up in it.
pub const FLAG_DENY_LIST: u32 = 1 << 7;
/// Tracking gives exact per-source state only to sources the sketch counts near a limit
/// (`track::promotion_threshold`); the others are counted in the sketch alone.
pub const FLAG_SKETCH_ADMISSION: u32 = 1 << 8;
/// `PORT_LIMITS` holds per-port limits: look the SYN's destination port up (`ports`).
pub const FLAG_PORT_LIMITS: u32 = 1 << 9;
/// Only ports marked `PORT_PROTECTED` in `PORT_LIMITS` are tracked, blocked and answered;
/// SYNs to the others pass (`unprotected_port`).
pub const FLAG_PROTECTED_PORTS_ONLY: u32 = 1 << 10;
/// The closed-connection filter (`closed_filter`, `CLOSED_FILTER`) knows every tuple that may
/// be in TIME_WAIT here: the agent seeded it from the kernel's sockets after attaching, or
/// adopted a pinned one the program kept current. Only then may the raw cookie helper
/// answer; without it every cookie takes the socket lookup.
pub const FLAG_RAW_COOKIES: u32 = 1 << 11;
/// The agent knows `KERNEL_DESTS` is empty (nothing desired, nothing left in the map):
/// the cookie policy skips its trie walk. Negative on purpose: a config without the bit
/// (an older agent, a zeroed slot) makes the program look, which is the safe side.
pub const FLAG_NO_KERNEL_DESTS: u32 = 1 << 12;
/// The agent knows no `IFACES` entry carries a flag: the cookie policy skips the lookup.
/// Negative for the same reason as `FLAG_NO_KERNEL_DESTS`.
pub const FLAG_NO_IFACE_POLICY: u32 = 1 << 13;

impl Config {
    /// A config with the derived fields filled in. `handshake_timeout_ns` must be at least
    /// `PENDING_SLOTS - 1` ns (the agent validates whole milliseconds).
    #[must_use]
    pub const fn new(
        syn_rate_limit: u32,
        half_open_limit: u32,
        block_ttl_ns: u64,
        handshake_timeout_ns: u64,
    ) -> Self {
        Self {
            magic: CONFIG_MAGIC,
            syn_rate_limit,
            half_open_limit,
            flags: FLAG_ENFORCE,
            block_ttl_ns,
            handshake_timeout_ns,
            pending_slot_ns: handshake_timeout_ns / (PENDING_SLOTS as u64 - 1),
            cookie_budget_per_second: 0,
            sketch_width: 0,
            synack_window: 65_535,
            synack_wscale: 0,
            closed_filter_extra_bits: 0,
            sketch_seed: 0,
            sample_one_in: 0,
            sketch_hot_mark: 0,
        }
    }

    #[inline(always)]
    #[must_use]
    pub const fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }

    /// Whether the program may act on this config. Anything else means pass-through.
    #[inline(always)]
    #[must_use]
    pub fn is_usable(&self) -> bool {
        self.magic == CONFIG_MAGIC
            && self.pending_slot_ns != 0
            && (!self.has(FLAG_COOKIES) || self.sketch_width.is_power_of_two())
    }

    /// The length of the window over which `syn_rate_limit` is counted.
    #[inline(always)]
    #[must_use]
    pub const fn rate_window_ns() -> u64 {
        NS_PER_SEC
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), only integers, no implicit padding (size asserted above).
unsafe impl aya::Pod for Config {}
