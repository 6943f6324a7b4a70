//! Blocked sources' SYNs, dropped on the coarse clock.
//!
//! A blocked source's SYN is the packet a flood sends most, and its drop must be cheap.
//! `bpf_ktime_get_ns` reads the clock source (measured at about 30 ns on the machines
//! here, twice what `bpf_ktime_get_coarse_ns` costs: the time of the last tick). The
//! coarse clock is the same `CLOCK_MONOTONIC`, only behind by up to a tick (1 to 10 ms;
//! two ticks as `tick_clock` reads it), so a source blocked until well past the coarse
//! time is blocked by the fine clock too.
//! Only the last `COARSE_SLACK_NS` of a block, and sources whose block has run out, go
//! through the fine clock (and `SourceState::is_blocked`) as before.

use crate::state::SourceState;

/// How far behind the fine clock the coarse one may be, with a wide margin: ticks run at
/// 100 to 1000 Hz, and a CPU handling packets has its timekeeping brought up to date on
/// interrupt entry even with `NO_HZ`.
pub const COARSE_SLACK_NS: u64 = 1_000_000_000;

/// Whether the source is blocked at every instant the fine clock can show while the
/// coarse one shows `coarse_now_ns`. `false` means: ask the fine clock.
#[inline(always)]
#[must_use]
pub const fn surely_blocked(state: &SourceState, coarse_now_ns: u64) -> bool {
    surely_blocked_until(state.blocked_until_ns, coarse_now_ns)
}

/// `surely_blocked` for a block ending at `until_ns` (a `blocked_table` slot's copy).
#[inline(always)]
#[must_use]
pub const fn surely_blocked_until(until_ns: u64, coarse_now_ns: u64) -> bool {
    coarse_now_ns.saturating_add(COARSE_SLACK_NS) < until_ns
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const SEC: u64 = 1_000_000_000;

    fn blocked_until(until: u64) -> SourceState {
        SourceState {
            blocked_until_ns: until,
            ..SourceState::new(0, &Config::new(10, 10, 60 * SEC, 3 * SEC))
        }
    }

    #[test]
    fn a_source_never_blocked_is_never_surely_blocked() {
        // `blocked_until_ns` is 0 until a block: no coarse time makes it sure.
        let state = blocked_until(0);
        for coarse in [0, 1, 100 * SEC, u64::MAX - COARSE_SLACK_NS - 1, u64::MAX] {
            assert!(!surely_blocked(&state, coarse), "coarse {coarse}");
        }
    }

    #[test]
    fn surely_blocked_until_the_slack_before_the_end_then_the_fine_clock_decides() {
        let state = blocked_until(100 * SEC);
        assert!(surely_blocked(&state, 50 * SEC));
        assert!(surely_blocked(&state, 100 * SEC - COARSE_SLACK_NS - 1));
        // The last slack of the block, and after it: not sure (the fine clock may be ahead).
        assert!(!surely_blocked(&state, 100 * SEC - COARSE_SLACK_NS));
        assert!(!surely_blocked(&state, 100 * SEC - 1));
        assert!(!surely_blocked(&state, 200 * SEC));
    }

    #[test]
    fn whenever_surely_blocked_the_fine_clock_agrees() {
        let state = blocked_until(100 * SEC);
        // The fine clock is ahead of the coarse one by less than the slack.
        for coarse in (0..120).map(|s| s * SEC / 2) {
            for lag in [0, 1, 10_000_000, COARSE_SLACK_NS - 1] {
                if surely_blocked(&state, coarse) {
                    assert!(state.is_blocked(coarse + lag), "coarse {coarse}, lag {lag}");
                }
            }
        }
    }

    #[test]
    fn a_block_without_end_is_sure_at_any_time() {
        let state = blocked_until(u64::MAX);
        assert!(surely_blocked(&state, u64::MAX - COARSE_SLACK_NS - 1));
        assert!(surely_blocked(&state, 0));
    }
}
