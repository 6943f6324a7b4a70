//! The blocked-source filter: lets a SYN in cookie mode skip the per-source lookup unless a
//! source that hashes to the same bucket is blocked.
//!
//! In cookie mode `SOURCES` holds an entry only for a source the sketch caught (and those
//! left from tracking mode): a spoofed flood's SYNs come from sources it has never seen,
//! and each one's hash lookup (a helper call, about 25 ns, more with cold caches) finds
//! nothing. Every block writes its end time into its source's bucket here; a SYN whose
//! bucket holds no block that is still running cannot come from a blocked source, and one
//! array read (inlined by the verifier) says so. A false positive (another source in the
//! bucket is blocked) only costs the lookup. Not keyed: a flood that targets a blocked
//! source's bucket only makes its own SYNs take the lookup, as without a filter.
//!
//! One slot past the buckets (`LATEST_SLOT`) holds the latest end of all: every block
//! stamps it too. While it says nothing is blocked, which is the usual case during a
//! spoofed flood (the sketch catches no source that sends only a few SYNs), a SYN skips
//! the address hash and its bucket: that bucket lies at a random place in 256 KiB, a cache
//! miss per SYN under a many-source flood, where the latest slot is one line every SYN
//! reads. It sits in the same map so that the two are pinned, kept and replaced together:
//! a restarted agent can never pair kept buckets with a fresh slot saying "nothing".

// Stamps count in `filter`'s unit (2^24 ns, about 16.8 ms), rounded up here, and are
// compared with wrapping arithmetic: two stamps compare right while they are less than
// 2^31 units (about a year) apart.
use crate::{
    filter::STAMP_SHIFT,
    names::{BLOCK_FILTER_BUCKETS, BLOCK_FILTER_SLOTS},
    words,
};

/// The slot after the buckets: the latest end of any block stamped into any bucket, so
/// never earlier than a bucket's (`later` of all of them), but for a race of two CPUs
/// stamping at once (see the program's `note_block`).
pub const LATEST_SLOT: u32 = BLOCK_FILTER_BUCKETS;
const _: () = assert!(LATEST_SLOT + 1 == BLOCK_FILTER_SLOTS);

/// The longest block a stamp says: about 208 days, well inside the wrap. The agent's
/// blocks last at most a day (`thresholds.block_ttl_secs`); a longer one written by hand
/// (tests set 110 years) is stamped as this long.
pub const MAX_STAMPED_BLOCK_NS: u64 = 1 << (STAMP_SHIFT + 30);

/// The bucket of a source address (IPv4-mapped for IPv4): `words::hash`, as the flow
/// filters use.
#[inline(always)]
#[must_use]
pub fn bucket(addr: &[u8; 16]) -> u32 {
    words::hash(words::address_words(addr), 0, BLOCK_FILTER_BUCKETS.trailing_zeros())
}

/// The slots a block of `addr` stamps: its bucket and `LATEST_SLOT`.
#[inline(always)]
#[must_use]
pub fn slots(addr: &[u8; 16]) -> [u32; 2] {
    [bucket(addr), LATEST_SLOT]
}

/// The stamp of a block, made at `now_ns`, that ends at `until_ns` (at most
/// `MAX_STAMPED_BLOCK_NS` later): rounded up, never 0 (a zeroed bucket saw no block).
#[inline(always)]
#[must_use]
#[allow(clippy::cast_possible_truncation, reason = "stamps wrap by design")]
pub fn stamp(until_ns: u64, now_ns: u64) -> u32 {
    let until = until_ns.min(now_ns.saturating_add(MAX_STAMPED_BLOCK_NS));
    ((until >> STAMP_SHIFT) as u32).wrapping_add(1).max(1)
}

/// What a bucket holding `old` holds after a block stamped `new`: the later of the two, so
/// one source's short block never hides another's longer one in the same bucket.
#[inline(always)]
#[must_use]
pub fn later(old: u32, new: u32) -> u32 {
    if old == 0 || runs_past(new, old) {
        new
    } else {
        old
    }
}

/// Whether a SYN at `now_ns` whose bucket holds `stamp_value` may come from a blocked
/// source. `false` is certain: no source in the bucket is blocked at `now_ns`.
#[inline(always)]
#[must_use]
#[allow(clippy::cast_possible_truncation, reason = "stamps wrap by design")]
pub fn may_be_blocked(stamp_value: u32, now_ns: u64) -> bool {
    stamp_value != 0 && !runs_past((now_ns >> STAMP_SHIFT) as u32, stamp_value)
}

/// Whether stamp `a` is after stamp `b`, with wrapping.
#[inline(always)]
#[allow(clippy::cast_possible_wrap, reason = "wrapping comparison")]
fn runs_past(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::ipv4_mapped;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_block_is_seen_until_it_ends_and_not_after() {
        let until = 100 * SEC;
        let s = stamp(until, 1);
        assert!(may_be_blocked(s, 1));
        assert!(may_be_blocked(s, until - 1));
        assert!(may_be_blocked(s, until), "rounded up: never too early");
        assert!(!may_be_blocked(s, until + SEC / 10), "within one stamp unit after the end");
        assert!(!may_be_blocked(0, until), "a bucket no block stamped");
    }

    #[test]
    fn the_later_block_wins_a_shared_bucket() {
        let (short, long) = (stamp(10 * SEC, 0), stamp(60 * SEC, 0));
        assert_eq!(later(0, short), short);
        assert_eq!(later(short, long), long);
        assert_eq!(later(long, short), long);
        // Across the wrap of the u32 stamp.
        let (before, after) = (u32::MAX - 2, 5);
        assert_eq!(later(before, after), after);
        assert!(may_be_blocked(after, u64::from(u32::MAX) << STAMP_SHIFT));
    }

    /// The gate the program puts before the bucket: the latest slot says "maybe" whenever
    /// any bucket does, through blocks of every length, shared buckets and the stamps' wrap.
    #[test]
    fn the_latest_slot_says_maybe_whenever_a_bucket_does() {
        let mut filter = std::vec![0u32; BLOCK_FILTER_SLOTS as usize];
        let mut blocked = std::vec::Vec::new();
        let start = (u64::from(u32::MAX - 100) << STAMP_SHIFT) - 3 * SEC;
        for i in 0..400u64 {
            let now = start + i * SEC / 4;
            let addr = ipv4_mapped([198, 18, (i % 3) as u8, (i % 7) as u8]);
            let until = now + (1 + i % 11) * SEC;
            for slot in slots(&addr) {
                filter[slot as usize] = later(filter[slot as usize], stamp(until, now));
            }
            blocked.push(addr);
            for probe in (0..20).map(|k| now + k * SEC) {
                let latest = may_be_blocked(filter[LATEST_SLOT as usize], probe);
                let any = blocked.iter().any(|a| may_be_blocked(filter[bucket(a) as usize], probe));
                assert!(latest || !any, "a bucket says blocked at {probe} and the latest slot does not");
            }
        }
        // And it is not always "maybe": a second past the last block's end it says no.
        let last_end = start + 399 * SEC / 4 + 11 * SEC;
        assert!(!may_be_blocked(filter[LATEST_SLOT as usize], last_end + SEC));
    }

    #[test]
    fn a_block_longer_than_the_stamps_reach_is_stamped_as_long_as_they_reach() {
        let now = 1_000 * SEC;
        let s = stamp(u64::MAX, now);
        assert!(may_be_blocked(s, now + 200 * 86_400 * SEC), "still blocked 200 days on");
        assert!(!may_be_blocked(s, now + 210 * 86_400 * SEC));
        assert_eq!(stamp(now + 86_400 * SEC, now), stamp(now + 86_400 * SEC, 0), "a day is not clamped");
    }

    #[test]
    fn addresses_spread_over_the_buckets() {
        let mut hits = std::vec![0u32; BLOCK_FILTER_BUCKETS as usize];
        let n = 1u32 << 20;
        // Sequential IPv4 addresses, and IPv6 ones differing in the interface id's low bytes.
        for i in 0..n / 2 {
            hits[bucket(&ipv4_mapped((0x0a00_0000 + i).to_be_bytes())) as usize] += 1;
            let mut v6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            v6[12..].copy_from_slice(&i.to_be_bytes());
            hits[bucket(&v6) as usize] += 1;
        }
        let mean = f64::from(n) / f64::from(BLOCK_FILTER_BUCKETS);
        let max = f64::from(*hits.iter().max().unwrap());
        let empty = hits.iter().filter(|&&h| h == 0).count();
        assert!(max < mean * 3.0, "fullest bucket {max} against a mean of {mean}");
        assert!(empty < BLOCK_FILTER_BUCKETS as usize / 100, "{empty} empty buckets");
    }

    #[test]
    fn neighbouring_addresses_rarely_share_a_bucket() {
        let collisions = (0u32..10_000)
            .filter(|&i| {
                let a = ipv4_mapped((0xc612_0000 + 2 * i).to_be_bytes());
                let b = ipv4_mapped((0xc612_0000 + 2 * i + 1).to_be_bytes());
                bucket(&a) == bucket(&b)
            })
            .count();
        assert!(collisions < 10, "{collisions} of 10000 neighbours collide");
    }
}
