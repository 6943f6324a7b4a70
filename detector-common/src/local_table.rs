//! `names::MAP_LOCAL_TABLE`: the host's own addresses in an array the verifier inlines,
//! so the "is this SYN for us?" check costs an array read and a few compares instead of
//! a hash-map helper call. `LOCAL_ADDRS` stays the authoritative list: a bucket that
//! cannot hold all its addresses says so (`overflow`), and only then the program asks it.
//!
//! The bucket hash is unkeyed: local addresses are chosen by the host's administrator,
//! not by an attacker, so nobody outside can aim addresses at one bucket.

/// Buckets in `LOCAL_TABLE` (a power of two).
pub const LOCAL_TABLE_BUCKETS: u32 = 1 << LOCAL_TABLE_BITS;
const LOCAL_TABLE_BITS: u32 = 10;
/// Addresses one bucket holds.
pub const WAYS: usize = 4;

/// One `LOCAL_TABLE` slot.
///
/// Addresses are stored as two `u64` words each, the 16 network-order bytes read in the
/// host's byte order (`words`): the program compares 8 bytes at a time, and BPF has no
/// unaligned loads, so a `[u8; 16]` field would be read byte by byte.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalBucket {
    /// `words(address)` per way; meaningful only where `valid` has the way's bit.
    pub addrs: [[u64; 2]; WAYS],
    /// Bit `i` set: way `i` holds a local address. The bits decide, not the bytes: an
    /// all-zero bucket holds nothing, not the address `::`.
    pub valid: u32,
    /// Non-zero: the bucket's addresses may not all be in its ways (more than `WAYS`
    /// hashed here, or the agent is rewriting it): ask `LOCAL_ADDRS`.
    pub overflow: u32,
}

const _: () = assert!(core::mem::size_of::<LocalBucket>() == 72);

#[cfg(feature = "user")]
// SAFETY: repr(C), integers only, no padding (64 + 4 + 4 bytes, 8-aligned).
unsafe impl aya::Pod for LocalBucket {}

/// What a bucket says about an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Local,
    NotLocal,
    /// Not in the bucket's ways, but the bucket overflowed: `LOCAL_ADDRS` decides.
    AskMap,
}

/// An address (IPv4 mapped, network order) as the two words a bucket stores.
#[inline(always)]
#[must_use]
pub fn words(addr: &[u8; 16]) -> [u64; 2] {
    let (mut hi, mut lo) = ([0u8; 8], [0u8; 8]);
    hi.copy_from_slice(&addr[..8]);
    lo.copy_from_slice(&addr[8..]);
    [u64::from_ne_bytes(hi), u64::from_ne_bytes(lo)]
}

/// The bucket of an address given as `words`: both words mixed, folded, and the top bits
/// of a multiplicative (Fibonacci) hash taken, so that every input bit reaches them
/// (addresses of one subnet differ only in their last bytes).
#[inline(always)]
#[must_use]
pub fn bucket_of(w: [u64; 2]) -> u32 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let x = w[0].wrapping_mul(K) ^ w[1];
    let x = (x ^ (x >> 32)).wrapping_mul(K);
    #[allow(clippy::cast_possible_truncation, reason = "the top LOCAL_TABLE_BITS bits")]
    let bucket = (x >> (64 - LOCAL_TABLE_BITS)) as u32;
    bucket
}

/// Looks an address up in its bucket. Unrolled by the compiler: `WAYS` compares of two
/// words each, no loop for the verifier to walk.
#[inline(always)]
#[must_use]
pub fn probe(bucket: &LocalBucket, w: [u64; 2]) -> Probe {
    let mut way = 0;
    while way < WAYS {
        if bucket.valid & (1 << way) != 0 && bucket.addrs[way] == w {
            return Probe::Local;
        }
        way += 1;
    }
    if bucket.overflow == 0 {
        Probe::NotLocal
    } else {
        Probe::AskMap
    }
}

#[cfg(any(test, feature = "user"))]
pub use user::{place, transition};

/// The agent's side (and the tests' and bench's): needs `std`.
#[cfg(any(test, feature = "user"))]
mod user {
    use std::{collections::BTreeMap, vec::Vec};

    use super::{bucket_of, words, LocalBucket, WAYS};

    /// The table for a set of addresses: only the buckets that hold something (all
    /// others are zero). Deterministic: each bucket takes its addresses in ascending
    /// order, the first `WAYS` in its ways; any more set `overflow` and are found in
    /// `LOCAL_ADDRS` alone. Duplicates count once.
    #[must_use]
    pub fn place<'a>(addrs: impl IntoIterator<Item = &'a [u8; 16]>) -> BTreeMap<u32, LocalBucket> {
        let mut sorted: Vec<[u8; 16]> = addrs.into_iter().copied().collect();
        sorted.sort_unstable();
        sorted.dedup();
        let mut table: BTreeMap<u32, LocalBucket> = BTreeMap::new();
        for addr in &sorted {
            let w = words(addr);
            let bucket = table.entry(bucket_of(w)).or_default();
            #[allow(clippy::cast_possible_truncation, reason = "at most WAYS bits")]
            let used = bucket.valid.count_ones() as usize;
            if used < WAYS {
                bucket.addrs[used] = w;
                bucket.valid |= 1 << used;
            } else {
                bucket.overflow = 1;
            }
        }
        table
    }

    /// The writes that take one bucket from `old` to `new` while the program reads it:
    /// those to make before the caller removes addresses from `LOCAL_ADDRS`, and those to
    /// make after it has added the new ones.
    ///
    /// A map update copies the value in place, not atomically: a reader may see any mix
    /// of the old and new fields. So each write changes one kind of field only, and no
    /// mix says `Local` for an address the bucket holds in neither state, nor loses an
    /// address that stays:
    /// 1. `overflow` set: from now on whatever is not in a way is asked of `LOCAL_ADDRS`,
    ///    which still holds the old addresses and already holds the kept ones;
    /// 2. the bits of every way that changes cleared (bytes kept): the ways that go or
    ///    move say nothing now;
    /// 3. the new bytes, in ways without a bit only;
    /// 4. the new bits, over bytes already in place;
    /// 5. `overflow` as the new bucket has it, cleared last.
    ///
    /// Writes equal to the one before are left out; no change, no writes.
    #[must_use]
    pub fn transition(old: &LocalBucket, new: &LocalBucket) -> (Vec<LocalBucket>, Vec<LocalBucket>) {
        let mut kept = 0;
        for way in 0..WAYS {
            let bit = 1 << way;
            if old.valid & new.valid & bit != 0 && old.addrs[way] == new.addrs[way] {
                kept |= bit;
            }
        }
        let flagged = LocalBucket { overflow: 1, ..*old };
        let cleared = LocalBucket { valid: old.valid & kept, ..flagged };
        let rewritten = LocalBucket { addrs: new.addrs, ..cleared };
        let marked = LocalBucket { valid: new.valid, ..rewritten };
        let mut last = *old;
        let mut step = |next: LocalBucket, into: &mut Vec<LocalBucket>| {
            if next != last {
                into.push(next);
                last = next;
            }
        };
        let (mut before, mut after) = (Vec::new(), Vec::new());
        if old != new {
            step(flagged, &mut before);
            step(cleared, &mut before);
            step(rewritten, &mut after);
            step(marked, &mut after);
            step(*new, &mut after);
        }
        (before, after)
    }
}

#[cfg(test)]
#[path = "local_table_tests.rs"]
mod tests;
