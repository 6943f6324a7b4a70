//! The block cache (`detector_common::blocked_table`): the blocked drop without the
//! `SOURCES` hash lookup, in tracking and in cookie mode. A running block is cached here by
//! the SYN that the `SOURCES` path drops as surely blocked; the source's next SYNs are
//! dropped from here, counted in the slot and folded into the entry every `FOLD_EVERY`
//! SYNs.

use aya_ebpf::{macros::map, maps::Array};
use detector_common::{
    block_filter, blocked,
    blocked_table::{BlockedBucket, BLOCKED_TABLE_BUCKETS},
    config::Config,
    counters::Counter,
    parse::{two_words, TcpSegment},
    state::{SourceKey, SourceState},
};

use crate::track;

/// Running blocks, cached for the blocked drop (`blocked_table`): a blocked source's SYNs
/// are dropped from here without the `SOURCES` lookup. Not pinned: a cache, refilled from
/// `SOURCES` by each blocked source's next SYN.
#[map(name = "BLOCKED_TABLE")]
static BLOCKED_TABLE: Array<BlockedBucket> = Array::with_max_entries(BLOCKED_TABLE_BUCKETS, 0);

/// Tracking mode's blocked drop from the block cache (`BLOCKED_TABLE`): a SYN from a
/// source cached as blocked for a while yet is counted in its slot (every
/// `blocked_table::FOLD_EVERY`th SYN the count goes to its `SOURCES` entry) and dropped,
/// without the `SOURCES` lookup. `None`: not cached, or its block nears its end (what the
/// slot counted goes to the entry then, and the slot is emptied); the caller goes on to
/// `SOURCES`. Only while a block runs somewhere (the block filter's latest slot, one line
/// every SYN reads): otherwise the table's bucket, a random line, is not read.
#[inline(always)]
pub fn drop_cached_block(seg: &TcpSegment, cfg: &Config, now: u64) -> Option<Counter> {
    if !track::any_block_runs(now) {
        return None;
    }
    drop_from_table(seg, cfg, now)
}

/// `drop_cached_block` past the latest slot. Cookie mode calls it only for a source whose
/// block filter bucket says it may be blocked (`track::may_be_blocked`): there the SYNs
/// that reach the cache are mostly answered ones, which must not pay a second random read.
// A BPF-to-BPF call: inlined, its locals grew the entry point's frame and the verifier
// refused the tracking chain (combined stack 528 of 512 bytes).
#[inline(never)]
pub fn drop_from_table(seg: &TcpSegment, cfg: &Config, now: u64) -> Option<Counter> {
    // The key's alignment (8) lets the hash read the address as words.
    let key = SourceKey { addr: seg.src };
    let bucket = BLOCKED_TABLE.get_ptr_mut(block_filter::bucket(&key.addr))?;
    // SAFETY: a live array value; `blocked_table` says what concurrent CPUs can do to it.
    let slot = unsafe { &mut *bucket }.find(two_words(key.addr))?;
    if blocked::surely_blocked_until(slot.until_ns, now) {
        let fold = slot.count_drop();
        if fold != 0 {
            track::fold_blocked_syns(&key, fold, now, cfg);
        }
        return Some(Counter::DropBlocked);
    }
    let rest = slot.take();
    if rest != 0 {
        track::fold_blocked_syns(&key, rest, now, cfg);
    }
    None
}

/// `track::drop_if_blocked`, and a source it drops (surely blocked) cached here for its
/// next SYNs.
#[inline(always)]
pub fn drop_if_blocked(seg: &TcpSegment, state: &mut SourceState, cfg: &Config, now: u64) -> Option<Counter> {
    let drop = track::drop_if_blocked(state, cfg, now)?;
    cache_block(seg, state.blocked_until_ns);
    Some(drop)
}

/// Cookie mode's `track::drop_if_blocked_now`, and a source it drops that stays blocked
/// for a while yet (`blocked::surely_blocked`) cached here for its next SYNs.
#[inline(always)]
pub fn drop_if_blocked_now(
    seg: &TcpSegment,
    state: &mut SourceState,
    cfg: &Config,
    now: u64,
) -> Option<Counter> {
    let drop = track::drop_if_blocked_now(state, cfg, now)?;
    if blocked::surely_blocked(state, now) {
        cache_block(seg, state.blocked_until_ns);
    }
    Some(drop)
}

/// Caches the block of the SYN's source until `until_ns` in `BLOCKED_TABLE`.
// A BPF-to-BPF call: once per blocked source (its next SYNs find the slot), and its
// locals stay out of the entry point's frame.
#[inline(never)]
fn cache_block(seg: &TcpSegment, until_ns: u64) {
    let key = SourceKey { addr: seg.src };
    if let Some(bucket) = BLOCKED_TABLE.get_ptr_mut(block_filter::bucket(&key.addr)) {
        // SAFETY: a live array value; see `blocked_table` for concurrent writers.
        unsafe { &mut *bucket }.place(two_words(key.addr), until_ns);
    }
}
