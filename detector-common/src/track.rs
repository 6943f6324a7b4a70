//! Per-source decisions: SYN rate, half-open estimate, blocking and handshake accounting.
//!
//! Pure functions over `SourceState`; the program fetches the state from its LRU map,
//! calls these, and applies the verdict.
//!
//! Not every source gets a map entry: a source without one is counted in the sketch, and
//! only once its estimate for the current epoch reaches `promotion_threshold` does it get
//! exact state (`SourceState::promoted`). A flood of many light sources then costs one
//! sketch update per SYN instead of an LRU insert (and eviction) per source and per flow.

use crate::{
    config::{Config, FLAG_SKETCH_ADMISSION, PENDING_SLOTS},
    sketch,
    state::SourceState,
};

/// Why a source was blocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockReason {
    SynRate,
    HalfOpen,
}

/// What to do with a SYN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynVerdict {
    Pass,
    /// The source was already blocked.
    DropBlocked,
    /// This SYN pushed the source over a threshold; it is blocked from now on.
    DropNewlyBlocked(BlockReason),
}

#[allow(clippy::cast_possible_truncation, reason = "PENDING_SLOTS is 4")]
const SLOTS: u32 = PENDING_SLOTS as u32;

#[inline(always)]
#[allow(clippy::cast_possible_truncation, reason = "slot numbers wrap by design")]
fn slot_of(ns: u64, cfg: &Config) -> u32 {
    // checked: a plain `/` would leave a panicking branch that the BPF target cannot link.
    // `Config::is_usable` guarantees a non-zero slot width before we get here.
    ns.checked_div(cfg.pending_slot_ns).unwrap_or(0) as u32
}

impl SourceState {
    /// A source seen for the first time at `now_ns`.
    #[must_use]
    pub fn new(now_ns: u64, cfg: &Config) -> Self {
        Self {
            last_seen_ns: now_ns,
            window_start_ns: now_ns,
            blocked_until_ns: 0,
            syns_total: 0,
            syns_in_window: 0,
            completed: 0,
            failed: 0,
            blocks: 0,
            newest_slot: slot_of(now_ns, cfg),
            _pad: 0,
            pending: [0; PENDING_SLOTS],
        }
    }

    /// Handshakes begun and neither completed nor timed out.
    #[inline(always)]
    #[must_use]
    pub fn half_open(&self) -> u32 {
        let mut sum = 0u32;
        for n in self.pending {
            sum = sum.saturating_add(n);
        }
        sum
    }

    #[inline(always)]
    #[must_use]
    pub fn is_blocked(&self, now_ns: u64) -> bool {
        now_ns < self.blocked_until_ns
    }

    /// Moves pending handshakes older than the timeout into `failed`; returns how many.
    #[inline(always)]
    pub fn age(&mut self, now_ns: u64, cfg: &Config) -> u32 {
        let current = slot_of(now_ns, cfg);
        let gap = current.wrapping_sub(self.newest_slot);
        if gap == 0 || gap > u32::MAX / 2 {
            // Same slot, or a clock that went backwards (a state written with a later
            // timestamp by another CPU): nothing expires.
            return 0;
        }
        let mut expired = 0u32;
        // Slots newest+1 ..= newest+gap (mod PENDING_SLOTS) hold the ones that fell off.
        // Bounded at PENDING_SLOTS iterations so the verifier sees a fixed loop.
        for i in 1..=SLOTS {
            if i > gap {
                break;
            }
            let idx = (self.newest_slot.wrapping_add(i) as usize) % PENDING_SLOTS;
            expired = expired.saturating_add(self.pending[idx]);
            self.pending[idx] = 0;
        }
        self.newest_slot = current;
        self.failed = self.failed.saturating_add(expired);
        expired
    }

    /// Blocks the source from `now_ns` for the configured TTL.
    #[inline(always)]
    fn block(&mut self, now_ns: u64, cfg: &Config) {
        self.blocked_until_ns = now_ns.saturating_add(cfg.block_ttl_ns);
        self.blocks = self.blocks.saturating_add(1);
    }
}

/// The sketch estimate (SYNs in the current epoch) at which a source without a map entry
/// gets one. Low enough that no limit can be crossed unseen:
/// - SYN rate: a quarter of the limit, so a source approaching it is tracked exactly for
///   most of its way there (and the state is seeded with the estimate, which never
///   undercounts).
/// - half-open: a pending handshake lives at most `PENDING_SLOTS` slots, which touch at
///   most `lifetime / epoch + 2` epochs; a source below the threshold in every one of them
///   holds fewer than `half_open_limit` half-open handshakes.
///
/// 1 (every source tracked from its first SYN) without `FLAG_SKETCH_ADMISSION`, when no
/// limit is set, or when the sketch is unusable (width not a power of two: the map cannot
/// be indexed).
///
/// What admission changes: the SYNs of a source before its promotion have no pending-flow
/// entry, so their handshakes are neither completed nor failed in the counters, and the
/// host-wide half-open sum (over source entries) leaves out sources below the threshold.
/// The promoted state counts the epoch's earlier SYNs as pending; those expire as failed.
#[inline(always)]
#[must_use]
pub fn promotion_threshold(cfg: &Config) -> u32 {
    if !cfg.has(FLAG_SKETCH_ADMISSION) || !cfg.sketch_width.is_power_of_two() {
        return 1;
    }
    let mut threshold = u32::MAX;
    if cfg.syn_rate_limit != 0 {
        threshold = cfg.syn_rate_limit / 4;
    }
    if cfg.half_open_limit != 0 {
        let lifetime_ns = crate::expiry::pending_lifetime_ns(cfg);
        let epochs = (lifetime_ns >> sketch::EPOCH_SHIFT).saturating_add(2);
        // checked: see `slot_of`; `epochs` is at least 2 anyway.
        let per_epoch = u64::from(cfg.half_open_limit).checked_div(epochs).unwrap_or(0);
        threshold = threshold.min(u32::try_from(per_epoch).unwrap_or(u32::MAX));
    }
    if threshold == u32::MAX {
        return 1;
    }
    threshold.max(1)
}

impl SourceState {
    /// A source that reached the promotion threshold with `estimate` SYNs in this epoch,
    /// this SYN included. The earlier ones are taken as sent in the current rate window and
    /// still pending (their flows were not recorded, so they cannot complete: they expire
    /// as failed); `on_syn` then counts this SYN. So a source flooding from its first SYN
    /// is blocked at the same SYN as if it had been tracked all along, when those SYNs
    /// share a sketch epoch (an earlier epoch's are not carried over).
    #[must_use]
    pub fn promoted(now_ns: u64, cfg: &Config, estimate: u32) -> Self {
        let mut state = Self::new(now_ns, cfg);
        let earlier = estimate.saturating_sub(1);
        state.syns_total = u64::from(earlier);
        state.syns_in_window = earlier;
        let idx = (state.newest_slot as usize) % PENDING_SLOTS;
        state.pending[idx] = earlier;
        state
    }
}

/// Accounts a SYN from this source and decides its fate. `new_flow` is false for a
/// retransmitted SYN of a flow that is already pending: it counts towards the rate but
/// not again towards the half-open estimate. Call `SourceState::age` first.
#[inline(always)]
pub fn on_syn(state: &mut SourceState, now_ns: u64, cfg: &Config, new_flow: bool) -> SynVerdict {
    state.last_seen_ns = now_ns;
    state.syns_total = state.syns_total.saturating_add(1);
    if state.is_blocked(now_ns) {
        return SynVerdict::DropBlocked;
    }
    if now_ns.wrapping_sub(state.window_start_ns) >= Config::rate_window_ns() {
        state.window_start_ns = now_ns;
        state.syns_in_window = 0;
    }
    state.syns_in_window = state.syns_in_window.saturating_add(1);
    if cfg.syn_rate_limit != 0 && state.syns_in_window > cfg.syn_rate_limit {
        state.block(now_ns, cfg);
        return SynVerdict::DropNewlyBlocked(BlockReason::SynRate);
    }
    if new_flow {
        if cfg.half_open_limit != 0 && state.half_open() >= cfg.half_open_limit {
            state.block(now_ns, cfg);
            return SynVerdict::DropNewlyBlocked(BlockReason::HalfOpen);
        }
        let idx = (state.newest_slot as usize) % PENDING_SLOTS;
        state.pending[idx] = state.pending[idx].saturating_add(1);
    }
    SynVerdict::Pass
}

/// Accounts `syns` SYNs of a blocked source, dropped from the block cache
/// (`blocked_table`) and folded into its entry at `now_ns`, as `on_syn` accounts one.
#[inline(always)]
pub fn on_blocked_syns(state: &mut SourceState, now_ns: u64, syns: u32) {
    state.last_seen_ns = now_ns;
    state.syns_total = state.syns_total.saturating_add(u64::from(syns));
}

/// Blocks a source that the sketch found over its SYN-rate limit (cookie mode, where no
/// per-source window is kept).
#[inline(always)]
pub fn block_heavy_hitter(state: &mut SourceState, now_ns: u64, cfg: &Config) {
    state.last_seen_ns = now_ns;
    state.syns_total = state.syns_total.saturating_add(1);
    state.block(now_ns, cfg);
}

/// Accounts the ACK that completes a handshake whose SYN was seen at `syn_ns`.
/// Call `SourceState::age` first. Returns whether the handshake was still pending (a late
/// one was already counted as failed, and stays so).
#[inline(always)]
pub fn on_handshake_complete(state: &mut SourceState, syn_ns: u64, now_ns: u64, cfg: &Config) -> bool {
    state.last_seen_ns = now_ns;
    let syn_slot = slot_of(syn_ns, cfg);
    let age_in_slots = state.newest_slot.wrapping_sub(syn_slot);
    if age_in_slots >= SLOTS {
        return false;
    }
    let idx = (syn_slot as usize) % PENDING_SLOTS;
    if state.pending[idx] == 0 {
        // The estimate was already reduced (e.g. the entry was re-created after eviction).
        return false;
    }
    state.pending[idx] -= 1;
    state.completed = state.completed.saturating_add(1);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000 * MS;

    fn cfg(rate: u32, half_open: u32) -> Config {
        Config::new(rate, half_open, 10 * SEC, 3 * SEC)
    }

    fn syn(s: &mut SourceState, now: u64, c: &Config) -> SynVerdict {
        s.age(now, c);
        on_syn(s, now, c, true)
    }

    #[test]
    fn rate_limit_blocks_the_syn_that_crosses_it_then_drops_until_ttl() {
        let c = cfg(5, 0);
        let mut s = SourceState::new(0, &c);
        for i in 0..5 {
            assert_eq!(syn(&mut s, i * MS, &c), SynVerdict::Pass, "syn {i}");
        }
        assert_eq!(syn(&mut s, 6 * MS, &c), SynVerdict::DropNewlyBlocked(BlockReason::SynRate));
        assert_eq!(syn(&mut s, 7 * MS, &c), SynVerdict::DropBlocked);
        assert!(s.is_blocked(10 * SEC));
        assert!(!s.is_blocked(10 * SEC + 6 * MS));
        assert_eq!(syn(&mut s, 11 * SEC, &c), SynVerdict::Pass);
        assert_eq!(s.blocks, 1);
        assert_eq!(s.syns_total, 8);
    }

    #[test]
    fn rate_window_resets_each_second() {
        let c = cfg(3, 0);
        let mut s = SourceState::new(0, &c);
        for second in 0..10 {
            for i in 0..3 {
                let now = second * SEC + i * MS;
                assert_eq!(syn(&mut s, now, &c), SynVerdict::Pass, "{second}/{i}");
            }
        }
    }

    #[test]
    fn half_open_limit_blocks_and_completion_frees_room() {
        let c = cfg(0, 3);
        let mut s = SourceState::new(0, &c);
        for i in 0..3 {
            assert_eq!(syn(&mut s, i * MS, &c), SynVerdict::Pass);
        }
        assert_eq!(s.half_open(), 3);
        assert!(on_handshake_complete(&mut s, 0, 5 * MS, &c));
        assert_eq!(s.half_open(), 2);
        assert_eq!(syn(&mut s, 6 * MS, &c), SynVerdict::Pass);
        assert_eq!(syn(&mut s, 7 * MS, &c), SynVerdict::DropNewlyBlocked(BlockReason::HalfOpen));
        assert_eq!(s.completed, 1);
    }

    #[test]
    fn retransmitted_syn_does_not_count_twice() {
        let c = cfg(0, 2);
        let mut s = SourceState::new(0, &c);
        assert_eq!(syn(&mut s, 0, &c), SynVerdict::Pass);
        for i in 1..10 {
            assert_eq!(on_syn(&mut s, i * MS, &c, false), SynVerdict::Pass);
        }
        assert_eq!(s.half_open(), 1);
        assert_eq!(s.syns_total, 10);
    }

    #[test]
    fn pending_handshakes_fail_between_one_and_four_thirds_of_the_timeout() {
        let c = cfg(0, 0);
        let mut s = SourceState::new(0, &c);
        for i in 0..4 {
            syn(&mut s, i * 100 * MS, &c);
        }
        assert_eq!(s.age(3 * SEC - MS, &c), 0, "none may fail before the timeout");
        assert_eq!(s.half_open(), 4);
        assert_eq!(s.age(4 * SEC, &c), 4, "all must fail by 4/3 of the timeout");
        assert_eq!((s.half_open(), s.failed), (0, 4));
    }

    #[test]
    fn long_idle_gap_expires_everything_once() {
        let c = cfg(0, 0);
        let mut s = SourceState::new(0, &c);
        syn(&mut s, 0, &c);
        syn(&mut s, 2 * SEC, &c);
        assert_eq!(s.age(1_000 * SEC, &c), 2);
        assert_eq!(s.age(1_001 * SEC, &c), 0);
        assert_eq!(s.failed, 2);
    }

    #[test]
    fn late_completion_is_not_pending_any_more() {
        let c = cfg(0, 0);
        let mut s = SourceState::new(0, &c);
        syn(&mut s, 0, &c);
        s.age(5 * SEC, &c);
        assert!(!on_handshake_complete(&mut s, 0, 5 * SEC, &c));
        assert_eq!((s.failed, s.completed, s.half_open()), (1, 0, 0));
    }

    fn with_sketch(rate: u32, half_open: u32, timeout_ns: u64) -> Config {
        let mut c = Config::new(rate, half_open, 10 * SEC, timeout_ns);
        c.sketch_width = 1024;
        c.flags |= FLAG_SKETCH_ADMISSION;
        c
    }

    #[test]
    fn promotion_threshold_is_the_tighter_limit_share() {
        // Defaults: 200 SYN/s → 50; 100 half-open over 4 s of pending life (3 epochs + 2) → 20.
        assert_eq!(promotion_threshold(&with_sketch(200, 100, 3 * SEC)), 20);
        assert_eq!(promotion_threshold(&with_sketch(200, 0, 3 * SEC)), 50);
        assert_eq!(promotion_threshold(&with_sketch(0, 100, 30 * SEC)), 100 / (37 + 2));
        assert_eq!(promotion_threshold(&with_sketch(3, 3, 3 * SEC)), 1, "never 0");
        assert_eq!(promotion_threshold(&with_sketch(0, 0, 3 * SEC)), 1, "no limit: track all");
        assert_eq!(promotion_threshold(&cfg(200, 100)), 1, "no sketch: track all");
        let mut off = with_sketch(200, 100, 3 * SEC);
        off.flags &= !FLAG_SKETCH_ADMISSION;
        assert_eq!(promotion_threshold(&off), 1, "admission off: track all");
    }

    #[test]
    fn untracked_sources_cannot_reach_the_half_open_limit() {
        // Below the threshold in every epoch a pending handshake can live through, a source
        // holds fewer than the limit however its SYNs fall.
        for timeout in [SEC, 3 * SEC, 10 * SEC, 60 * SEC] {
            for limit in [5, 50, 100, 1_000] {
                let c = with_sketch(0, limit, timeout);
                let p = u64::from(promotion_threshold(&c));
                let lifetime = c.pending_slot_ns * PENDING_SLOTS as u64;
                let epochs_touched = lifetime / (1 << sketch::EPOCH_SHIFT) + 2;
                if p > 1 {
                    assert!((p - 1) * epochs_touched < u64::from(limit), "{timeout} ns, {limit}");
                }
            }
        }
    }

    #[test]
    fn a_promoted_flooder_is_blocked_at_the_same_syn_as_an_exact_one() {
        for (rate, half_open) in [(8, 0), (0, 10), (40, 20)] {
            let c = with_sketch(rate, half_open, 3 * SEC);
            let p = promotion_threshold(&c);
            let mut exact = SourceState::new(0, &c);
            let mut promoted = None;
            for n in 1..=100u32 {
                let now = u64::from(n) * MS;
                let want = syn(&mut exact, now, &c);
                let got = if n < p {
                    SynVerdict::Pass
                } else {
                    let s = promoted.get_or_insert_with(|| SourceState::promoted(now, &c, n));
                    syn(s, now, &c)
                };
                assert_eq!(got, want, "limits {rate}/{half_open}, SYN {n}");
            }
        }
    }

    #[test]
    fn promoted_state_counts_the_earlier_syns() {
        let c = with_sketch(200, 100, 3 * SEC);
        let mut s = SourceState::promoted(5 * SEC, &c, 20);
        assert_eq!(on_syn(&mut s, 5 * SEC, &c, true), SynVerdict::Pass);
        assert_eq!((s.syns_total, s.syns_in_window, s.half_open()), (20, 20, 20));
        assert_eq!(s.age(10 * SEC, &c), 20, "the unrecorded ones expire as failed");
    }

    #[test]
    fn clock_going_backwards_expires_nothing() {
        let c = cfg(0, 0);
        let mut s = SourceState::new(10 * SEC, &c);
        syn(&mut s, 10 * SEC, &c);
        assert_eq!(s.age(9 * SEC, &c), 0);
        assert_eq!(s.half_open(), 1);
    }
}
