//! Half-open tracking and per-source blocking: fetch state from the maps, call
//! `detector_common::track`, apply the result.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, LruHashMap},
    programs::XdpContext,
};
use detector_common::{
    block_filter, blocked,
    config::{Config, FLAG_COOKIES},
    counters::Counter,
    filter,
    names::{BLOCK_FILTER_SLOTS, PENDING_FILTER_BUCKETS},
    parse::TcpSegment,
    sketch,
    state::{FlowKey, PendingFlow, SourceKey, SourceState},
    track::{self, BlockReason, SynVerdict},
};

use crate::{
    cookie::CookieStep,
    events,
    stats::{count, count_by},
};

/// Default sizes; the agent sets the real ones from its config before loading.
#[map(name = "SOURCES")]
static SOURCES: LruHashMap<SourceKey, SourceState> = LruHashMap::with_max_entries(65_536, 0);

#[map(name = "PENDING")]
static PENDING: LruHashMap<FlowKey, PendingFlow> = LruHashMap::with_max_entries(131_072, 0);

/// Default size; the agent sets `sketch::words(sketch_width)` from its config.
#[map(name = "SKETCH")]
static SKETCH: Array<u64> = Array::with_max_entries(sketch::words(16_384), 0);

#[map(name = "PENDING_FILTER")]
static PENDING_FILTER: Array<u32> = Array::with_max_entries(PENDING_FILTER_BUCKETS, 0);

/// Per source-hash bucket, the end of the latest block there, and the latest end of all
/// past the buckets (`block_filter`). Pinned with `SOURCES`, whose blocks it summarises.
#[map(name = "BLOCK_FILTER")]
static BLOCK_FILTER: Array<u32> = Array::with_max_entries(BLOCK_FILTER_SLOTS, 0);

/// Records a block of `key`'s source until `until_ns` in its filter bucket and in the
/// latest slot. Another CPU writing the same slot at the same moment may win with an
/// earlier end; the blocked source's SYNs then skip the lookup once that end has passed,
/// are answered until the sketch catches them again (its next SYN, if it still floods
/// within the sketch's epoch), and the new block stamps both again.
#[inline(always)]
fn note_block(key: &SourceKey, until_ns: u64, now: u64) {
    let stamp = block_filter::stamp(until_ns, now);
    for at in block_filter::slots(&key.addr) {
        if let Some(slot) = BLOCK_FILTER.get_ptr_mut(at) {
            // SAFETY: a live array value.
            unsafe { *slot = block_filter::later(*slot, stamp) };
        }
    }
}

/// Whether the SYN's source may be blocked at `now` (cookie mode asks before looking it
/// up): only if a block runs anywhere (the latest slot, the same line for every SYN) and
/// in its bucket. A missing slot cannot happen (an array); if it did, the lookup decides.
#[inline(always)]
pub fn may_be_blocked(seg: &TcpSegment, now: u64) -> bool {
    // The key's alignment (8) lets the hash read the address as words; `seg.src` read
    // through a plain `&[u8; 16]` came as 1- and 2-byte loads.
    any_block_runs(now) && stamp_runs(block_filter::bucket(&SourceKey { addr: seg.src }.addr), now)
}

/// Ages the source's pending handshakes to `now` (`SourceState::age`) and counts those
/// that timed out as failed handshakes.
#[inline(always)]
fn age_pending(state: &mut SourceState, now: u64, cfg: &Config) {
    let expired = state.age(now, cfg);
    if expired != 0 {
        count_by(Counter::HandshakeFailed, expired);
    }
}

/// Whether a block runs anywhere at `now` (the latest slot, the same line for every SYN).
/// A missing slot cannot happen (an array); if it did, say yes.
#[inline(always)]
pub fn any_block_runs(now: u64) -> bool {
    stamp_runs(block_filter::LATEST_SLOT, now)
}

/// Whether the block filter's slot `at` holds a block still running at `now`; a missing
/// slot (impossible in an array) says yes, so the lookup decides.
#[inline(always)]
fn stamp_runs(at: u32, now: u64) -> bool {
    BLOCK_FILTER.get(at).is_none_or(|&stamp| block_filter::may_be_blocked(stamp, now))
}

/// Adds `syns` SYNs of a blocked source, dropped from the block cache (`block_cache`), to
/// its entry, as `drop_if_blocked` accounts one (in tracking mode its pending handshakes
/// aged on the way).
/// An entry evicted meanwhile loses them: the counters (`DropBlocked`) have them all.
// A BPF-to-BPF call: once per `FOLD_EVERY` drops, and its lookup stays out of the caller's
// frame.
#[inline(never)]
pub fn fold_blocked_syns(key: &SourceKey, syns: u32, now: u64, cfg: &Config) {
    let Some(state) = SOURCES.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: see `source_state`.
    let state = unsafe { &mut *state };
    // As `drop_if_blocked`: tracking ages the pending handshakes, cookie mode keeps none.
    if !cfg.has(FLAG_COOKIES) {
        age_pending(state, now, cfg);
    }
    track::on_blocked_syns(state, now, syns);
}

/// The state of `key`'s source, created as `fresh` if it has none.
#[inline(always)]
fn source_state(key: &SourceKey, fresh: &SourceState) -> Option<&'static mut SourceState> {
    if let Some(state) = SOURCES.get_ptr_mut(key) {
        // SAFETY: a live map value; concurrent updates from other CPUs can lose an
        // increment, which the estimates tolerate.
        return Some(unsafe { &mut *state });
    }
    // BPF_NOEXIST: another CPU may have created it meanwhile; then use theirs.
    let _ = SOURCES.insert(key, fresh, u64::from(BPF_NOEXIST));
    // SAFETY: as above.
    SOURCES.get_ptr_mut(key).map(|state| unsafe { &mut *state })
}

/// The state of the SYN's source, if it has any: looked up once per SYN, by the caller of
/// `drop_if_blocked`, `on_syn` and `screen_for_cookie`.
#[inline(always)]
pub fn state_of(seg: &TcpSegment) -> Option<&'static mut SourceState> {
    // SAFETY: see `source_state`.
    SOURCES.get_ptr_mut(&SourceKey { addr: seg.src }).map(|state| unsafe { &mut *state })
}

/// A SYN from a source blocked for a while yet (`blocked::surely_blocked`): accounted as
/// `on_syn` and `screen_for_cookie` account a blocked source's SYN, on the coarse clock
/// (`now`, read once by the entry point), and dropped. `None`: not sure, the caller goes
/// on with the fine clock.
#[inline(always)]
pub fn drop_if_blocked(state: &mut SourceState, cfg: &Config, now: u64) -> Option<Counter> {
    if !blocked::surely_blocked(state, now) {
        return None;
    }
    // Tracking ages the source's pending handshakes on every SYN; cookie mode keeps none.
    if !cfg.has(FLAG_COOKIES) {
        age_pending(state, now, cfg);
    }
    // A blocked source's retransmissions must not refresh its pending flows.
    let _ = track::on_syn(state, now, cfg, false);
    Some(Counter::DropBlocked)
}

/// What `on_syn` leaves to its caller: a counter, or one to log an event for first
/// (`logged`). The events are logged by the entry point, so that their frames sit beside
/// `on_syn`'s on the stack rather than on top of it (docs/verifier.md).
pub enum TrackedSyn {
    Done(Counter),
    /// The source was blocked just now, for this reason: `DropOverLimit`.
    NewlyBlocked(BlockReason),
    /// `SOURCES` took no entry for a new source: `PassMapError`.
    SourcesFull,
}

/// The counter of what `on_syn` did, its event logged (rate-limited, `events`).
#[inline(always)]
pub fn logged(ctx: &XdpContext, seg: &TcpSegment, tracked: TrackedSyn, now: u64) -> Counter {
    match tracked {
        TrackedSyn::Done(counter) => counter,
        TrackedSyn::NewlyBlocked(reason) => {
            events::source_blocked(ctx, &SourceKey { addr: seg.src }, reason, now);
            Counter::DropOverLimit
        }
        TrackedSyn::SourcesFull => {
            events::map_full(ctx);
            Counter::PassMapError
        }
    }
}

/// A connection request: account it to its source (`found`, its state if it has any) and
/// decide. A source without state is only counted in the sketch until its estimate
/// reaches the promotion threshold (`track::promotion_threshold`, only with
/// `FLAG_SKETCH_ADMISSION`): no source entry, no pending flow, nothing for the ACK path to
/// find.
// A BPF-to-BPF call: its own stack frame, beside (not on top of) the other paths.
#[inline(never)]
pub fn on_syn(seg: &TcpSegment, cfg: &Config, now: u64, found: Option<&'static mut SourceState>) -> TrackedSyn {
    let key = SourceKey { addr: seg.src };
    let state = if let Some(state) = found {
        state
    } else {
        let threshold = track::promotion_threshold(cfg);
        let estimate = if threshold > 1 {
            // Tracking counts every row (mark 0): its promotion threshold lies under cookie
            // mode's mark, where the cascade's estimate would be the first row's alone.
            match sketch_estimate(&SKETCH, &key, cfg, now, 0) {
                Some(estimate) if estimate < threshold => return TrackedSyn::Done(Counter::PassSyn),
                Some(estimate) => estimate,
                // A cell outside the map (the config's width disagrees with it): track
                // exactly, as without a sketch.
                None => 1,
            }
        } else {
            1
        };
        let Some(state) = source_state(&key, &SourceState::promoted(now, cfg, estimate)) else {
            return TrackedSyn::SourcesFull;
        };
        state
    };
    age_pending(state, now, cfg);
    if state.is_blocked(now) {
        // A blocked source's retransmissions must not refresh its pending flows.
        let _ = track::on_syn(state, now, cfg, false);
        return TrackedSyn::Done(Counter::DropBlocked);
    }
    let flow = seg.flow();
    let pending = PendingFlow { syn_ns: now, isn: seg.seq, _pad: 0 };
    let new_flow = PENDING.insert(&flow, &pending, u64::from(BPF_NOEXIST)).is_ok();
    if !new_flow {
        count(Counter::SynRetransmit);
    }
    match track::on_syn(state, now, cfg, new_flow) {
        SynVerdict::Pass => {
            let _ = PENDING_FILTER.set(filter::bucket(&flow), filter::stamp(now), u64::from(BPF_ANY));
            TrackedSyn::Done(Counter::PassSyn)
        }
        SynVerdict::DropBlocked => TrackedSyn::Done(Counter::DropBlocked),
        SynVerdict::DropNewlyBlocked(reason) => {
            if new_flow {
                let _ = PENDING.remove(&flow);
            }
            note_block(&key, state.blocked_until_ns, now);
            count(match reason {
                BlockReason::SynRate => Counter::BlockedSynRate,
                BlockReason::HalfOpen => Counter::BlockedHalfOpen,
            });
            TrackedSyn::NewlyBlocked(reason)
        }
    }
}

/// A SYN from a source that is blocked, in cookie mode: accounted and dropped. `None`:
/// not blocked, go on.
#[inline(always)]
pub fn drop_if_blocked_now(state: &mut SourceState, cfg: &Config, now: u64) -> Option<Counter> {
    if !state.is_blocked(now) {
        return None;
    }
    let _ = track::on_syn(state, now, cfg, false);
    Some(Counter::DropBlocked)
}

/// Screens a SYN that the responder is about to answer with a cookie: counts it in the
/// sketch. No per-flow or per-source entry is made for it: a spoofed flood must not fill
/// the maps. Only a source the sketch estimates over the SYN-rate limit gets an entry, as
/// a block (`CookieStep::BlockSource`: `block_heavy_source`, called by the entry point).
/// `None` means: go ahead and answer. `syn_rate_limit` is the port's (`ports::limits_for`;
/// 0: no limit). Inlined into the cookie answer (`cookie_syn` in main.rs): the common case,
/// an estimate under the limit, then costs no call of its own.
#[inline(always)]
pub fn screen_for_cookie(
    seg: &TcpSegment,
    cfg: &Config,
    syn_rate_limit: u32,
    now: u64,
) -> Option<CookieStep> {
    if syn_rate_limit == 0 {
        return None;
    }
    match sketch_estimate(&SKETCH, &SourceKey { addr: seg.src }, cfg, now, cfg.sketch_hot_mark) {
        Some(estimate) if estimate <= syn_rate_limit => None,
        Some(_) => Some(CookieStep::BlockSource),
        // A cell outside the map (the config's width disagrees with it): without the
        // estimate no flooder can be found, so say so rather than answer blind.
        None => Some(CookieStep::Done(Counter::PassMapError)),
    }
}

/// A source the sketch estimates over the SYN-rate limit, in cookie mode: an entry for it,
/// as a block.
// A BPF-to-BPF call from the entry point: rare, and its map update and event stay out of
// the answer call's frame.
#[inline(never)]
pub fn block_heavy_source(ctx: &XdpContext, seg: &TcpSegment, cfg: &Config, now: u64) -> Counter {
    let key = SourceKey { addr: seg.src };
    let Some(state) = source_state(&key, &SourceState::new(now, cfg)) else {
        events::map_full(ctx);
        return Counter::PassMapError;
    };
    track::block_heavy_hitter(state, now, cfg);
    note_block(&key, state.blocked_until_ns, now);
    count(Counter::BlockedSynRate);
    events::source_blocked(ctx, &key, BlockReason::SynRate, now);
    Counter::DropOverLimit
}

/// Counts the SYN in `sketch` (`SKETCH`, or the ruled responder's own in the test object)
/// and returns the source's estimate for this epoch; `None` when a cell is outside the map.
/// The first row counts every SYN; the later rows only those past `hot_mark` in the first
/// (`sketch::cascade`; cookie mode passes the config's mark, tracking 0: every row).
#[inline(always)]
pub fn sketch_estimate(
    sketch: &Array<u64>,
    key: &SourceKey,
    cfg: &Config,
    now: u64,
    hot_mark: u32,
) -> Option<u32> {
    let epoch = sketch::epoch(now);
    sketch::count_syn_with(
        key,
        cfg,
        hot_mark,
        |word, lane| {
            // Out of range only if the config's width disagrees with the map.
            let word = sketch.get_ptr_mut(word)?;
            // SAFETY: lane `lane` (below `FIRST_LANES`) of a live array value, 16 bits at
            // byte `2 * lane` (`sketch::lane`: little-endian); concurrent CPUs may lose an
            // increment (an estimate).
            Some(sketch::bump_first(
                unsafe { &mut *word.cast::<sketch::FirstCell>().add(lane as usize) },
                epoch,
            ))
        },
        |at| {
            let cell = sketch.get_ptr_mut(at)?;
            // SAFETY: a live array value; concurrent CPUs may lose an increment (an estimate).
            Some(sketch::bump(unsafe { &mut *cell }, epoch))
        },
    )
}

/// A segment that may be a handshake's third packet: complete its pending flow, if any.
/// Always passes; only the accounting differs. Inlined up to the filter: most ACKs stop
/// at a bucket no SYN ever stamped, without the clock or a call (each costs about as much
/// as the filter check itself on machines with return-thunk mitigations).
#[inline(always)]
pub fn on_ack(seg: &TcpSegment, cfg: &Config) {
    let Some(&stamp) = PENDING_FILTER.get(filter::bucket(&seg.flow())) else {
        return;
    };
    if !filter::never_stamped(stamp) {
        complete_handshake(seg, cfg, stamp);
    }
}

/// `on_ack` past the filter: a bucket some SYN stamped, `stamp`.
// A BPF-to-BPF call: its own stack frame, beside (not on top of) the other paths.
#[inline(never)]
fn complete_handshake(seg: &TcpSegment, cfg: &Config, stamp: u32) {
    let flow = seg.flow();
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if !filter::is_recent(stamp, now, cfg) {
        return;
    }
    // SAFETY: read-only copy of a live map value.
    let Some(pending) = (unsafe { PENDING.get(&flow) }).copied() else {
        return;
    };
    if seg.seq != pending.isn.wrapping_add(1) {
        return;
    }
    // Whoever removes the entry accounts for it: another CPU may race us to it.
    if PENDING.remove(&flow).is_err() {
        return;
    }
    let key = SourceKey { addr: seg.src };
    let on_time = match SOURCES.get_ptr_mut(&key) {
        Some(state) => {
            // SAFETY: see `source_state`.
            let state = unsafe { &mut *state };
            age_pending(state, now, cfg);
            track::on_handshake_complete(state, pending.syn_ns, now, cfg)
        }
        // The source was evicted meanwhile; the handshake did complete.
        None => true,
    };
    if on_time {
        count(Counter::HandshakeCompleted);
    }
}
