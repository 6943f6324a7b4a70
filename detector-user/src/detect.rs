//! Global attack detection with hysteresis: enter when the host-wide SYN rate or half-open
//! estimate crosses its "enter" threshold; leave only after both have stayed below their
//! lower "exit" thresholds for a hold time, so a flood hovering at the boundary does not
//! flap the mode.

use std::time::{Duration, Instant};

/// The smallest exit thresholds `config::validate` accepts. Calm is a sample strictly below
/// both exit values, and no rate or count is below 0: with an exit value of 0 attack mode
/// could never end. At these minimums calm means "no SYNs" / "no half-open handshakes".
pub const MIN_EXIT_SYN_RATE: f64 = 1.0;
pub const MIN_EXIT_HALF_OPEN: u64 = 1;

/// Thresholds, validated by the config (minimum ≤ exit ≤ enter).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectionThresholds {
    pub enter_syn_rate: f64,
    pub exit_syn_rate: f64,
    pub enter_half_open: u64,
    pub exit_half_open: u64,
    pub hold: Duration,
}

/// One observation of the host: SYNs per second over the last interval, and half-open
/// handshakes now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub syn_rate: f64,
    pub half_open: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    AttackStarted,
    AttackEnded,
}

#[derive(Debug)]
pub struct Detector {
    thresholds: DetectionThresholds,
    under_attack: bool,
    /// While under attack: since when every sample has been below the exit thresholds.
    calm_since: Option<Instant>,
}

impl Detector {
    #[must_use]
    pub fn new(thresholds: DetectionThresholds) -> Self {
        Self { thresholds, under_attack: false, calm_since: None }
    }

    /// New thresholds (a reload). The attack state stays (a reload must not drop
    /// mitigation mid-flood); the hold restarts, judged by the new exit thresholds.
    pub fn set_thresholds(&mut self, thresholds: DetectionThresholds) {
        self.thresholds = thresholds;
        self.calm_since = None;
    }

    #[must_use]
    pub fn under_attack(&self) -> bool {
        self.under_attack
    }

    /// Feeds one sample taken at `now`; returns the transition it caused, if any.
    pub fn observe(&mut self, sample: Sample, now: Instant) -> Option<Transition> {
        let t = &self.thresholds;
        if !self.under_attack {
            if sample.syn_rate >= t.enter_syn_rate || sample.half_open >= t.enter_half_open {
                self.under_attack = true;
                self.calm_since = None;
                return Some(Transition::AttackStarted);
            }
            return None;
        }
        let calm = sample.syn_rate < t.exit_syn_rate && sample.half_open < t.exit_half_open;
        if !calm {
            self.calm_since = None;
            return None;
        }
        let since = *self.calm_since.get_or_insert(now);
        if now.duration_since(since) >= t.hold {
            self.under_attack = false;
            self.calm_since = None;
            return Some(Transition::AttackEnded);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: DetectionThresholds = DetectionThresholds {
        enter_syn_rate: 1000.0,
        exit_syn_rate: 500.0,
        enter_half_open: 10_000,
        exit_half_open: 5_000,
        hold: Duration::from_secs(10),
    };

    fn s(syn_rate: f64, half_open: u64) -> Sample {
        Sample { syn_rate, half_open }
    }

    #[test]
    fn enters_on_either_threshold() {
        let t0 = Instant::now();
        let mut d = Detector::new(T);
        assert_eq!(d.observe(s(999.0, 9_999), t0), None);
        assert_eq!(d.observe(s(1000.0, 0), t0), Some(Transition::AttackStarted));
        let mut d = Detector::new(T);
        assert_eq!(d.observe(s(0.0, 10_000), t0), Some(Transition::AttackStarted));
        assert!(d.under_attack());
    }

    #[test]
    fn leaves_only_after_hold_time_below_both_exit_thresholds() {
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let mut d = Detector::new(T);
        d.observe(s(5000.0, 0), at(0));
        assert_eq!(d.observe(s(100.0, 100), at(1)), None);
        assert_eq!(d.observe(s(100.0, 100), at(10)), None, "9 s calm is not enough");
        assert_eq!(d.observe(s(100.0, 100), at(11)), Some(Transition::AttackEnded));
        assert!(!d.under_attack());
    }

    #[test]
    fn hovering_between_exit_and_enter_does_not_flap() {
        let t0 = Instant::now();
        let mut d = Detector::new(T);
        d.observe(s(2000.0, 0), t0);
        let mut transitions = 0;
        for i in 1..100 {
            // Alternates around the enter threshold but never below the exit one.
            let rate = if i % 2 == 0 { 1100.0 } else { 900.0 };
            transitions += usize::from(d.observe(s(rate, 0), t0 + Duration::from_secs(i)).is_some());
        }
        assert_eq!(transitions, 0);
        assert!(d.under_attack());
    }

    /// Every configuration `validate` accepts has exits ≥ the minimums: an idle host (no
    /// SYNs, nothing half-open) is calm under each, so attack mode ends after the hold.
    #[test]
    fn an_idle_host_leaves_attack_mode_under_every_valid_config() {
        let t0 = Instant::now();
        let rates = [MIN_EXIT_SYN_RATE, 2.0, 500.0, 1e9];
        let counts = [MIN_EXIT_HALF_OPEN, 2, 5_000, u64::MAX];
        for &exit_syn_rate in &rates {
            for &exit_half_open in &counts {
                for hold_secs in [0, 1, 3_600] {
                    let t = DetectionThresholds {
                        enter_syn_rate: exit_syn_rate,
                        exit_syn_rate,
                        enter_half_open: exit_half_open,
                        exit_half_open,
                        hold: Duration::from_secs(hold_secs),
                    };
                    let mut d = Detector::new(t);
                    assert_eq!(d.observe(s(f64::MAX, u64::MAX), t0), Some(Transition::AttackStarted));
                    // Calm from 1 s on; the hold ends at 1 s + hold.
                    let first = d.observe(s(0.0, 0), t0 + Duration::from_secs(1));
                    let end = t0 + Duration::from_secs(1 + hold_secs);
                    let ended = first.or_else(|| d.observe(s(0.0, 0), end));
                    assert_eq!(ended, Some(Transition::AttackEnded), "{t:?}");
                    assert!(!d.under_attack(), "{t:?}");
                }
            }
        }
    }

    #[test]
    fn new_thresholds_keep_the_attack_state_and_restart_the_hold() {
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let mut d = Detector::new(T);
        d.observe(s(5000.0, 0), at(0));
        d.observe(s(10.0, 0), at(1));
        d.set_thresholds(DetectionThresholds { exit_syn_rate: 5.0, ..T });
        assert!(d.under_attack());
        assert_eq!(d.observe(s(10.0, 0), at(20)), None, "10/s is no longer calm");
        assert_eq!(d.observe(s(1.0, 0), at(21)), None);
        assert_eq!(d.observe(s(1.0, 0), at(31)), Some(Transition::AttackEnded));
    }

    #[test]
    fn a_burst_during_the_hold_restarts_it() {
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let mut d = Detector::new(T);
        d.observe(s(5000.0, 0), at(0));
        d.observe(s(10.0, 0), at(1));
        d.observe(s(600.0, 0), at(8));
        assert_eq!(d.observe(s(10.0, 0), at(12)), None, "calm restarted at 12 s");
        assert_eq!(d.observe(s(10.0, 0), at(22)), Some(Transition::AttackEnded));
    }
}
