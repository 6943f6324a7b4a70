//! The agent's per-source records: an open-addressing table (linear probing) of 32-byte
//! slots, so one lookup costs one cache miss, and a walk can prefetch the slots of a whole
//! batch before touching them. With a million sources the table does not fit any cache;
//! a general-purpose hash map (control bytes apart from the entries) costs two misses.
//!
//! A source is identified by a 64-bit SipHash of its address under a random key: the
//! attacker picks addresses but cannot predict slots (no hash flooding). Two addresses
//! sharing a 64-bit tag (about 3·10⁻⁸ for a million sources) would share a record: their
//! top-list rate and failure count mix. Memory: 32 bytes × a power of two at least twice
//! the number of sources (1,000,000 sources: 2^21 slots, 64 MiB).

use std::hash::{BuildHasher, RandomState};

use detector_common::state::SourceKey;

const EMPTY: u64 = 0;
/// A slot whose source is gone: probing continues past it, inserts may reuse it.
const TOMBSTONE: u64 = 1;

/// What the agent remembers about one source between polls.
#[derive(Clone, Copy, Debug, Default)]
pub struct Record {
    /// `syns_total` at the previous poll.
    pub syns_seen: u64,
    /// Smoothed SYN rate.
    pub rate: f32,
    /// Failed handshakes of this source already added to the metric.
    pub failed_reported: u32,
    /// Bits for the walk (seen this poll, blocked).
    pub flags: u8,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    tag: u64,
    record: Record,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 32);

pub struct Records {
    slots: Vec<Slot>,
    live: usize,
    tombstones: usize,
    hasher: RandomState,
}

impl Default for Records {
    fn default() -> Self {
        Self { slots: empty_slots(1024), live: 0, tombstones: 0, hasher: RandomState::new() }
    }
}

impl Records {
    /// A table sized for `n` sources up front (the map's capacity: memory is then known at
    /// start, and the first walk of a full map does not grow the table step by step).
    pub fn with_capacity(n: usize) -> Self {
        let mut this = Self::default();
        this.reserve(n);
        this
    }

    /// The tag of a source (never EMPTY or TOMBSTONE).
    pub fn tag(&self, key: &SourceKey) -> u64 {
        self.hasher.hash_one(key.addr).max(2)
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    #[allow(clippy::cast_possible_truncation, reason = "only the low bits index the table")]
    fn home(&self, tag: u64) -> usize {
        (tag as usize) & self.mask()
    }

    /// Hints the CPU to fetch the slot where `tag` probably lives.
    pub fn prefetch(&self, tag: u64) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: prefetching is a hint; the pointer is within the slot vector.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(self.slots.as_ptr().add(self.home(tag)).cast());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = tag;
    }

    /// Makes room for `n` sources (load at most 1/2, tombstones included).
    pub fn reserve(&mut self, n: usize) {
        let needed = ((n + self.tombstones) * 2).next_power_of_two().max(1024);
        if needed > self.slots.len() || self.tombstones > self.live {
            self.rebuild(needed.max(self.slots.len()));
        }
    }

    fn rebuild(&mut self, size: usize) {
        let old = std::mem::replace(&mut self.slots, empty_slots(size));
        (self.live, self.tombstones) = (0, 0);
        for s in old.into_iter().filter(|s| s.tag > TOMBSTONE) {
            *self.get_or_insert(s.tag) = s.record;
        }
    }

    /// The record of `tag`, a zeroed one if new. Call `reserve` first.
    pub fn get_or_insert(&mut self, tag: u64) -> &mut Record {
        let mask = self.mask();
        let mut i = self.home(tag);
        let mut reuse = None;
        loop {
            match self.slots[i].tag {
                t if t == tag => return &mut self.slots[i].record,
                EMPTY => break,
                TOMBSTONE if reuse.is_none() => reuse = Some(i),
                _ => {}
            }
            i = (i + 1) & mask;
        }
        let at = match reuse {
            Some(at) => {
                self.tombstones -= 1;
                at
            }
            None => i,
        };
        self.live += 1;
        self.slots[at] = Slot { tag, record: Record::default() };
        &mut self.slots[at].record
    }

    /// Drops every record for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(&Record) -> bool) {
        for s in &mut self.slots {
            if s.tag > TOMBSTONE && !keep(&s.record) {
                s.tag = TOMBSTONE;
                self.live -= 1;
                self.tombstones += 1;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.live
    }
}

/// `n` empty slots, in huge pages where the system gives them on request: lookups land
/// anywhere in the table, and in 4-KiB pages each would also miss the TLB (a million
/// sources: 16,000 pages; docs/tracking.md has the measurements).
fn empty_slots(n: usize) -> Vec<Slot> {
    let mut slots = Vec::with_capacity(n);
    let bytes = n * size_of::<Slot>();
    if bytes >= HUGE_PAGE {
        // madvise wants a page-aligned start; the kernel uses huge pages for the aligned
        // 2-MiB stretches inside. Advice only: refused, the table works as well, slower.
        let start = slots.as_ptr() as usize;
        let aligned = start.next_multiple_of(PAGE);
        let len = (start + bytes).saturating_sub(aligned) / PAGE * PAGE;
        // SAFETY: the range lies within this vector's allocation, not yet touched.
        let _ = unsafe { libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
    }
    slots.resize(n, Slot::default());
    slots
}

const PAGE: usize = 4096;
const HUGE_PAGE: usize = 2 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> SourceKey {
        let mut addr = [0u8; 16];
        addr[12..].copy_from_slice(&n.to_be_bytes());
        SourceKey { addr }
    }

    #[test]
    fn insert_find_forget_and_grow() {
        let mut r = Records::default();
        r.reserve(5000);
        for n in 0..5000 {
            let tag = r.tag(&key(n));
            r.get_or_insert(tag).syns_seen = u64::from(n);
        }
        assert_eq!(r.len(), 5000);
        r.retain(|rec| rec.syns_seen % 2 == 0);
        assert_eq!(r.len(), 2500);
        r.reserve(20_000);
        for n in (0..5000).step_by(2) {
            let tag = r.tag(&key(n));
            assert_eq!(r.get_or_insert(tag).syns_seen, u64::from(n), "kept across a rebuild");
        }
        let tag = r.tag(&key(1));
        assert_eq!(r.get_or_insert(tag).syns_seen, 0, "a forgotten source starts afresh");
        assert_eq!(r.len(), 2501);
        assert!(r.slots.len() >= 2 * 2501, "at most half full");
    }
}
