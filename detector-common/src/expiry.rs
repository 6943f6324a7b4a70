//! When a `SOURCES` or `PENDING` entry stops mattering. Neither the program nor the agent
//! deletes entries (the agent never writes per-source state, so it cannot undo a decision
//! the program made meanwhile); an idle entry stays in its LRU map until evicted, and
//! LRU eviction takes such entries first. The agent counts only live entries in
//! `syndetector_map_entries` and the fill ratio, so that a "map full" means load now, not
//! history.

use crate::{
    config::{Config, PENDING_SLOTS},
    state::{PendingFlow, SourceState},
};

/// How long a pending handshake can still complete: its SYN's half-open slot stays among
/// the `PENDING_SLOTS` newest (between one and 4/3 of the handshake timeout, depending on
/// where in its slot the SYN fell). Later, the program has counted it as failed.
#[inline(always)]
#[must_use]
pub fn pending_lifetime_ns(cfg: &Config) -> u64 {
    cfg.pending_slot_ns.saturating_mul(PENDING_SLOTS as u64)
}

/// Whether a `PENDING` entry can still complete at `now_ns`.
#[must_use]
pub fn pending_is_live(flow: &PendingFlow, now_ns: u64, cfg: &Config) -> bool {
    now_ns.saturating_sub(flow.syn_ns) < pending_lifetime_ns(cfg)
}

/// Whether a `SOURCES` entry still holds state the program acts on at `now_ns`: a block,
/// a SYN-rate window, or handshakes that can still complete. An idle one is history: a
/// source that returns after it is judged afresh either way (its window has ended and its
/// half-open slots have expired).
#[must_use]
pub fn source_is_live(state: &SourceState, now_ns: u64, cfg: &Config) -> bool {
    let idle = now_ns.saturating_sub(state.last_seen_ns);
    state.is_blocked(now_ns) || idle < Config::rate_window_ns().max(pending_lifetime_ns(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn cfg() -> Config {
        Config::new(200, 100, 10 * SEC, 3 * SEC)
    }

    #[test]
    fn a_pending_flow_lives_as_long_as_its_slot_and_no_longer() {
        let c = cfg();
        let life = pending_lifetime_ns(&c);
        assert!((3 * SEC..=4 * SEC).contains(&life), "between the timeout and 4/3 of it: {life}");
        let flow = PendingFlow { syn_ns: 100 * SEC, isn: 1, _pad: 0 };
        assert!(pending_is_live(&flow, 100 * SEC, &c));
        assert!(pending_is_live(&flow, 100 * SEC + life - 1, &c));
        assert!(!pending_is_live(&flow, 100 * SEC + life, &c));
        assert!(pending_is_live(&flow, 99 * SEC, &c), "a clock behind the entry: still live");
    }

    #[test]
    fn a_source_lives_while_blocked_or_recently_seen() {
        let c = cfg();
        let mut s = SourceState::new(100 * SEC, &c);
        assert!(source_is_live(&s, 100 * SEC, &c));
        let idle_after = 100 * SEC + Config::rate_window_ns().max(pending_lifetime_ns(&c));
        assert!(source_is_live(&s, idle_after - 1, &c));
        assert!(!source_is_live(&s, idle_after, &c));
        s.blocked_until_ns = 110 * SEC;
        assert!(source_is_live(&s, idle_after, &c), "blocked for 10 s");
        assert!(!source_is_live(&s, 111 * SEC, &c), "the block over");
    }
}
