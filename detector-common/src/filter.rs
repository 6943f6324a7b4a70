//! The pending-handshake pre-filter: lets an ACK skip the exact flow lookup unless a SYN
//! hashed to the same bucket recently.
//!
//! Nearly every packet a server receives is an ACK of an established connection; an exact
//! lookup in the LRU flow map for each would be the main cost of tracking handshakes. One
//! array read with a timestamp per bucket rules most of them out, needs no clean-up (old
//! stamps simply stop matching), and false positives only cost the exact lookup.

use crate::{config::Config, config::PENDING_SLOTS, names::PENDING_FILTER_BUCKETS, state::FlowKey, words};

/// Stamps count in units of 2^24 ns (about 16.8 ms); a u32 of them wraps after 2.2 years,
/// and comparisons use wrapping arithmetic anyway. `block_filter` stamps in the same unit.
pub(crate) const STAMP_SHIFT: u32 = 24;

/// log2 of `PENDING_FILTER_BUCKETS`: the bits of `words::hash` a bucket takes.
const BUCKET_BITS: u32 = PENDING_FILTER_BUCKETS.trailing_zeros();
const _: () = assert!(PENDING_FILTER_BUCKETS.is_power_of_two() && BUCKET_BITS <= 32);

/// The bucket of a flow in the filter array.
#[inline(always)]
#[must_use]
pub fn bucket(flow: &FlowKey) -> u32 {
    flow_hash(flow, BUCKET_BITS)
}

/// A `bits`-bit hash of a flow (at most 32), shared by this filter and the closed filter
/// (`closed_filter::spot`).
#[inline(always)]
#[must_use]
pub fn flow_hash(flow: &FlowKey, bits: u32) -> u32 {
    // The fields that vary between flows of one server (`words::hash`): the client
    // address, and the two ports with the low word of the server address. The client port
    // sits in the low bits of its word: it is what tells a client's connections apart.
    let ports = u64::from(flow.src_port) | u64::from(flow.dst_port) << 16;
    let last = ports | u64::from(words::be32(&flow.dst, 12)) << 32;
    words::hash(words::address_words(&flow.src), last, bits)
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

    /// xorshift64*: reproducible pseudo-random flows without a crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// A client in 198.18.0.0/15 (IPv4-mapped) or 2001:2::/48, any port, to one of
        /// four servers on port 80 or 443.
        #[allow(clippy::cast_possible_truncation, reason = "random bits cut to size")]
        fn flow(&mut self) -> FlowKey {
            let r = self.next();
            let mut src = [0u8; 16];
            if r & 1 == 0 {
                src[10..12].copy_from_slice(&[0xff, 0xff]);
                src[12..].copy_from_slice(&(0xc612_0000 | (r >> 8) as u32 & 0x1_ffff).to_be_bytes());
            } else {
                src[..6].copy_from_slice(&[0x20, 0x01, 0, 2, 0, 0]);
                src[6..8].copy_from_slice(&(r >> 16).to_be_bytes()[6..]);
                src[8..].copy_from_slice(&self.next().to_be_bytes());
            }
            let mut dst = crate::parse::ipv4_mapped([198, 19, 0, (r >> 40) as u8 & 3]);
            dst[15] |= 0x10;
            let dst_port = if r & 2 == 0 { 80 } else { 443 };
            FlowKey { src, dst, src_port: (r >> 48) as u16, dst_port }
        }
    }

    /// How many buckets hold at least one of the flows, and the most any bucket holds.
    fn occupancy(flows: impl Iterator<Item = FlowKey>) -> (usize, u32) {
        let mut load = std::vec![0u32; PENDING_FILTER_BUCKETS as usize];
        for f in flows {
            load[bucket(&f) as usize] += 1;
        }
        (load.iter().filter(|&&n| n > 0).count(), load.iter().copied().max().unwrap_or(0))
    }

    /// Buckets n random flows are expected to fill: B × (1 - e^(-n/B)).
    fn expected_occupied(n: u32) -> f64 {
        let b = f64::from(PENDING_FILTER_BUCKETS);
        b * (1.0 - (-f64::from(n) / b).exp())
    }

    #[test]
    fn random_flows_fill_the_buckets_as_a_uniform_hash_would() {
        let mut rng = Rng(0x5eed);
        let (occupied, max) = occupancy((0..100_000).map(|_| rng.flow()));
        let expected = expected_occupied(100_000);
        #[allow(clippy::cast_precision_loss, reason = "counts below 2^17")]
        let off = (occupied as f64 - expected).abs() / expected;
        assert!(off < 0.01, "{occupied} buckets occupied, {expected:.0} expected");
        // Poisson with a mean of 1.5: a bucket with 12 flows is a one-in-10^7 event.
        assert!(max < 12, "a bucket holds {max} of 100,000 flows");
    }

    #[test]
    fn sequential_ports_and_addresses_spread_at_least_as_well_as_random_ones() {
        // One client cycling through its ports: the filter's commonest pattern.
        let ports = (0..=u16::MAX).map(|port| FlowKey { src_port: port, ..flow(0) });
        let (occupied, max) = occupancy(ports);
        #[allow(clippy::cast_precision_loss, reason = "counts below 2^17")]
        let ratio = occupied as f64 / expected_occupied(65_536);
        assert!(ratio > 0.99 && max < 12, "65,536 ports of one client: {occupied} buckets, max {max}");
        // 100,000 consecutive IPv4 clients on one port.
        let clients = (0..100_000u32).map(|i| FlowKey {
            src: crate::parse::ipv4_mapped((0xc612_0000 + i).to_be_bytes()),
            src_port: 40_000,
            ..flow(0)
        });
        let (occupied, max) = occupancy(clients);
        #[allow(clippy::cast_precision_loss, reason = "counts below 2^17")]
        let ratio = occupied as f64 / expected_occupied(100_000);
        assert!(ratio > 0.99 && max < 12, "100,000 consecutive clients: {occupied} buckets, max {max}");
    }

    #[test]
    #[allow(clippy::cast_possible_truncation, reason = "random bits cut to size")]
    fn flows_differing_in_one_port_or_one_address_byte_land_apart() {
        let mut rng = Rng(7);
        let (mut same, mut pairs) = (0, 0);
        for _ in 0..20_000 {
            let f = rng.flow();
            let r = rng.next() as u16;
            let mut twins = std::vec![
                FlowKey { src_port: f.src_port.wrapping_add(1), ..f },
                FlowKey { src_port: f.src_port ^ r.max(1), ..f },
                FlowKey { dst_port: f.dst_port ^ r.max(1), ..f },
            ];
            for i in 0..16 {
                let mut g = f;
                g.src[i] ^= (r as u8).max(1);
                twins.push(g);
            }
            for i in 12..16 {
                let mut g = f;
                g.dst[i] ^= (r >> 8) as u8 | 1;
                twins.push(g);
            }
            for g in twins {
                pairs += 1;
                same += u32::from(bucket(&g) == bucket(&f));
            }
        }
        // Two unrelated flows share a bucket once in 65,536 pairs; allow three times that.
        assert!(same * 65_536 < 3 * pairs, "{same} of {pairs} near-twin flows share a bucket");
    }

    #[test]
    fn buckets_spread_over_ports() {
        let mut seen = std::collections::BTreeSet::new();
        for port in 1000..3000 {
            let b = bucket(&flow(port));
            assert!(b < PENDING_FILTER_BUCKETS);
            seen.insert(b);
        }
        assert!(seen.len() > 1990, "only {} distinct buckets of 2000", seen.len());
    }
}
