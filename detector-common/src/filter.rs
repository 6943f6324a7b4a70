//! The pending-handshake pre-filter: lets an ACK skip the exact flow lookup unless a SYN
//! hashed to the same bucket recently.
//!
//! Nearly every packet a server receives is an ACK of an established connection; an exact
//! lookup in the LRU flow map for each would be the main cost of tracking handshakes. One
//! array read with a timestamp per bucket rules most of them out, needs no clean-up (old
//! stamps simply stop matching), and false positives only cost the exact lookup.

use crate::{config::Config, config::PENDING_SLOTS, names::PENDING_FILTER_BUCKETS, state::FlowKey};

/// Stamps count in units of 2^24 ns (about 16.8 ms); a u32 of them wraps after 2.2 years,
/// and comparisons use wrapping arithmetic anyway.
const STAMP_SHIFT: u32 = 24;

/// The bucket of a flow in the filter array.
#[inline(always)]
#[must_use]
pub fn bucket(flow: &FlowKey) -> u32 {
    // FNV-1a over the fields that vary between flows of one server: the client address,
    // both ports, and the low word of the server address. Not keyed: a flood that
    // targets one bucket only makes its ACKs take the exact lookup, as without a filter.
    let mut h: u32 = 0x811c_9dc5;
    let mut mix = |b: u8| h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    for b in flow.src {
        mix(b);
    }
    for b in flow.src_port.to_ne_bytes() {
        mix(b);
    }
    for b in flow.dst_port.to_ne_bytes() {
        mix(b);
    }
    for b in &flow.dst[12..] {
        mix(*b);
    }
    h & (PENDING_FILTER_BUCKETS - 1)
}

/// The value a SYN leaves in its bucket. Never 0: a zeroed bucket is one no SYN ever
/// stamped (`never_stamped`). The first 16.8 ms after boot, and that much once every wrap,
/// read as the next unit, which only makes `is_recent` answer yes a little longer.
#[inline(always)]
#[must_use]
#[allow(clippy::cast_possible_truncation, reason = "stamps wrap by design")]
pub fn stamp(now_ns: u64) -> u32 {
    ((now_ns >> STAMP_SHIFT) as u32).max(1)
}

/// Whether no SYN ever stamped this bucket: then no handshake can be pending in it, and
/// the ACK needs neither the clock nor the exact lookup. Most ACKs of a calm server land
/// in such buckets or in stale ones; reading the clock (about 30 ns on the machines
/// measured) only for the others keeps it off their path.
#[inline(always)]
#[must_use]
pub const fn never_stamped(stamp_value: u32) -> bool {
    stamp_value == 0
}

/// Whether a bucket stamped at `stamp` may still hold a pending handshake at `now_ns`:
/// pending handshakes live at most `PENDING_SLOTS` slots.
#[inline(always)]
#[must_use]
pub fn is_recent(stamp_value: u32, now_ns: u64, cfg: &Config) -> bool {
    let horizon = (cfg.pending_slot_ns * PENDING_SLOTS as u64) >> STAMP_SHIFT;
    u64::from(stamp(now_ns).wrapping_sub(stamp_value)) <= horizon + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn flow(port: u16) -> FlowKey {
        FlowKey { src: [7; 16], dst: [9; 16], src_port: port, dst_port: 80 }
    }

    #[test]
    fn recent_for_the_pending_lifetime_then_not() {
        let cfg = Config::new(0, 0, SEC, 3 * SEC);
        let t0 = 1_000 * SEC;
        let s = stamp(t0);
        assert!(is_recent(s, t0, &cfg));
        assert!(is_recent(s, t0 + 4 * SEC, &cfg), "a handshake may pend 4/3 × timeout");
        assert!(!is_recent(s, t0 + 5 * SEC, &cfg));
    }

    #[test]
    fn a_stamp_is_never_the_empty_value() {
        // At boot, and where the u32 of stamps wraps: 1, so the bucket still counts as stamped.
        for now in [0, 1, (1 << 24) - 1, 1u64 << 56, (1u64 << 56) + (1 << 24) - 1] {
            assert_eq!(stamp(now), 1, "at {now} ns");
            assert!(!never_stamped(stamp(now)));
        }
        assert_eq!(stamp(1 << 24), 1);
        assert_eq!(stamp(2 << 24), 2);
        assert!(never_stamped(0));
    }

    #[test]
    fn a_boot_time_stamp_is_recent_then_expires() {
        let cfg = Config::new(0, 0, SEC, 3 * SEC);
        let s = stamp(5_000_000);
        assert!(is_recent(s, 5_000_000, &cfg));
        assert!(is_recent(s, 4 * SEC, &cfg));
        assert!(!is_recent(s, 6 * SEC, &cfg));
    }

    #[test]
    fn buckets_spread_over_ports() {
        let mut seen = std::collections::BTreeSet::new();
        for port in 1000..3000 {
            let b = bucket(&flow(port));
            assert!(b < PENDING_FILTER_BUCKETS);
            seen.insert(b);
        }
        assert!(seen.len() > 1900, "only {} distinct buckets of 2000", seen.len());
    }
}
