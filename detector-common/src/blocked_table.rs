//! A cache of running blocks, read in place: the blocked drop's way around the `SOURCES`
//! hash lookup.
//!
//! A blocked source's SYN is the packet a flood sends most. Finding its state in `SOURCES`
//! (an LRU hash map) hashes the key, walks the bucket's list and compares the key with an
//! out-of-line `memcmp`, a call: in the bench that lookup was most of what the drop cost
//! above a trivial `XDP_DROP` (docs/hotpaths.md, "the table drop floor"). This table is an
//! array of 64-byte buckets of two slots, read in place by the verifier's inlined array
//! access, as `LOCAL_TABLE` is; a source's bucket is its `block_filter::bucket`.
//!
//! It is a cache, never the record: the block lives in `SOURCES` as before. A SYN that the
//! `SOURCES` path drops as surely blocked puts its source here (`place`); the source's
//! next SYNs are dropped from here and counted in the slot, and every `FOLD_EVERY`th SYN
//! adds the slot's count to the source's entry (`syns_total`, `last_seen_ns`), which also
//! keeps the entry fresh in its LRU. Near its end (`blocked::COARSE_SLACK_NS`) a block
//! goes back to the `SOURCES` path, which ends it on the fine clock, and the slot's count
//! is folded in then. So `syns_total` lags by at most `FOLD_EVERY - 1` SYNs per blocked
//! source; the counters (`DropBlocked`) do not lag. Not pinned: a new program starts with
//! an empty table, refilled by each blocked source's next SYN, and the counts a replaced
//! program had not folded yet (under `FOLD_EVERY` per source) are lost.
//!
//! Races: two CPUs may place different sources in one slot at once, and a slot's four
//! words are not written atomically, so a reader may see one source's address with the
//! other's end. Both were blocked when placed, with ends one TTL after their blocks began;
//! the mix can only move a blocked source's end within that, and the `SOURCES` path
//! decides once the slot says the end is near. Counts may be lost as `SOURCES`' own are.

use crate::names::BLOCK_FILTER_BUCKETS;

/// Buckets of the table: the block filter's, so a source's bucket is the one its blocks
/// stamp (`block_filter::bucket`).
pub const BLOCKED_TABLE_BUCKETS: u32 = BLOCK_FILTER_BUCKETS;

/// SYNs counted in a slot before they are added to the source's `SOURCES` entry.
pub const FOLD_EVERY: u32 = 64;

/// A cached block: the source's address as two words (`parse::two_words`), the block's end
/// (0: an empty slot), and the SYNs dropped from here not yet added to `SOURCES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockedSlot {
    pub addr: [u64; 2],
    pub until_ns: u64,
    pub unfolded: u32,
    pub _pad: u32,
}

/// One bucket: one 64-byte cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockedBucket {
    pub slots: [BlockedSlot; 2],
}

const _: () = assert!(core::mem::size_of::<BlockedSlot>() == 32);
const _: () = assert!(core::mem::size_of::<BlockedBucket>() == 64);

#[cfg(feature = "user")]
// SAFETY: repr(C), integers only, explicit padding (sizes asserted above).
unsafe impl aya::Pod for BlockedBucket {}

impl BlockedBucket {
    /// The slot caching a block of `addr`, if any.
    #[inline(always)]
    pub fn find(&mut self, addr: [u64; 2]) -> Option<&mut BlockedSlot> {
        self.slots.iter_mut().find(|slot| slot.holds(addr))
    }

    /// Caches a block of `addr` until `until_ns`: in its own slot if it has one, else in an
    /// empty slot, else over the block that ends first (a cache: that source's next SYN
    /// takes the `SOURCES` path and places it again).
    #[inline(always)]
    pub fn place(&mut self, addr: [u64; 2], until_ns: u64) {
        let [a, b] = &mut self.slots;
        let slot = if b.holds(addr) {
            b
        } else if a.until_ns == 0 || same(a.addr, addr) || b.until_ns != 0 && a.until_ns <= b.until_ns {
            a
        } else {
            b
        };
        *slot = BlockedSlot { addr, until_ns, unfolded: 0, _pad: 0 };
    }
}

/// Word by word: LLVM's BPF backend turns an array compare into a `memcmp` call.
#[inline(always)]
const fn same(a: [u64; 2], b: [u64; 2]) -> bool {
    a[0] == b[0] && a[1] == b[1]
}

impl BlockedSlot {
    /// Whether the slot caches a block of `addr` (an empty slot holds none, whatever its
    /// address words).
    #[inline(always)]
    #[must_use]
    pub const fn holds(&self, addr: [u64; 2]) -> bool {
        self.until_ns != 0 && same(self.addr, addr)
    }

    /// Counts a SYN dropped from this slot; returns how many to add to the source's entry
    /// now: `FOLD_EVERY` every `FOLD_EVERY`th SYN, else 0.
    #[inline(always)]
    pub fn count_drop(&mut self) -> u32 {
        self.unfolded += 1;
        if self.unfolded < FOLD_EVERY {
            return 0;
        }
        self.unfolded = 0;
        FOLD_EVERY
    }

    /// Empties the slot (its block is ending); returns the SYNs it had not folded yet.
    #[inline(always)]
    pub fn take(&mut self) -> u32 {
        let unfolded = self.unfolded;
        *self = Self::default();
        unfolded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const X: [u64; 2] = [0, 0x0700_12c6_ffff_0000];
    const Y: [u64; 2] = [0, 0x0800_12c6_ffff_0000];
    const Z: [u64; 2] = [0, 0x0900_12c6_ffff_0000];

    #[test]
    fn a_placed_block_is_found_and_an_empty_slot_never_is() {
        let mut bucket = BlockedBucket::default();
        assert!(bucket.find([0, 0]).is_none(), "the zero address does not match an empty slot");
        bucket.place(X, 100);
        assert_eq!(bucket.find(X).map(|s| s.until_ns), Some(100));
        assert!(bucket.find(Y).is_none());
        bucket.place(Y, 200);
        assert_eq!((bucket.find(X).unwrap().until_ns, bucket.find(Y).unwrap().until_ns), (100, 200));
    }

    #[test]
    fn placing_again_updates_the_sources_own_slot() {
        let mut bucket = BlockedBucket::default();
        bucket.place(X, 100);
        bucket.place(Y, 200);
        bucket.place(Y, 300);
        bucket.place(X, 400);
        assert_eq!((bucket.find(X).unwrap().until_ns, bucket.find(Y).unwrap().until_ns), (400, 300));
    }

    #[test]
    fn a_full_bucket_gives_up_the_block_that_ends_first() {
        let mut bucket = BlockedBucket::default();
        bucket.place(X, 500);
        bucket.place(Y, 200);
        bucket.place(Z, 900);
        assert!(bucket.find(Y).is_none(), "Y ended first");
        assert!(bucket.find(X).is_some() && bucket.find(Z).is_some());
    }

    #[test]
    fn every_fold_every_th_drop_is_folded_and_take_returns_the_rest() {
        let mut slot = BlockedSlot { addr: X, until_ns: 1, ..BlockedSlot::default() };
        let folded: u32 = (0..2 * FOLD_EVERY + 5).map(|_| slot.count_drop()).sum();
        assert_eq!(folded, 2 * FOLD_EVERY);
        assert_eq!(slot.take(), 5, "the SYNs not folded yet");
        assert_eq!(slot, BlockedSlot::default(), "empty after take");
    }
}
