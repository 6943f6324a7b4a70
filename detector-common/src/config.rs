//! The configuration the agent writes into the program's `CONFIG` array (one slot).

/// Set by the agent when it writes a complete config. A zeroed slot (nothing written yet)
/// fails this check and the program passes everything: fail open.
pub const CONFIG_MAGIC: u32 = 0x5359_4e31; // "SYN1"

/// Number of time slots a source's half-open count is spread over (see `state`).
pub const PENDING_SLOTS: usize = 4;

const NS_PER_SEC: u64 = 1_000_000_000;

/// Thresholds and timings for the XDP program. All durations in nanoseconds of
/// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub magic: u32,
    /// SYNs per second one source may send before it is blocked; 0 disables the check.
    pub syn_rate_limit: u32,
    /// Half-open handshakes one source may hold before it is blocked; 0 disables the check.
    pub half_open_limit: u32,
    /// Reserved for the mitigation mode; u32 rather than an enum so that any value the
    /// agent writes is a valid bit pattern for the program.
    pub mode: u32,
    /// How long a blocked source stays blocked.
    pub block_ttl_ns: u64,
    /// A handshake not completed within this long counts as failed.
    pub handshake_timeout_ns: u64,
    /// Width of one half-open slot: `handshake_timeout_ns / (PENDING_SLOTS - 1)`, so a
    /// pending handshake expires between 1× and 4/3× the timeout.
    pub pending_slot_ns: u64,
}

const _: () = assert!(core::mem::size_of::<Config>() == 40);

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
            mode: 0,
            block_ttl_ns,
            handshake_timeout_ns,
            pending_slot_ns: handshake_timeout_ns / (PENDING_SLOTS as u64 - 1),
        }
    }

    /// Whether the program may act on this config. Anything else means pass-through.
    #[inline(always)]
    #[must_use]
    pub fn is_usable(&self) -> bool {
        self.magic == CONFIG_MAGIC && self.pending_slot_ns != 0
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
