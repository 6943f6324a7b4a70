//! The program's per-CPU counters and the kernel's TCP counters, turned into metric
//! increments; and the SYN counts attack detection compares.

use detector_common::counters::{Counter, COUNTER_SLOTS};

use crate::{
    kernel_stats,
    metrics::{advance, Metrics},
};

/// What one poll's counter deltas say about SYNs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynDeltas {
    /// Every connection request (`syndetector_syns_total`).
    pub all: u64,
    /// Those that reached the decision for a local listener: what detection compares
    /// (`Counter::counts_toward_detection`; not already-blocked sources, not other hosts').
    pub toward_detection: u64,
}

/// The previous totals, to turn the program's running sums into increments.
pub struct CounterState {
    previous: [u64; COUNTER_SLOTS as usize],
    kernel_totals: Vec<u64>,
}

impl Default for CounterState {
    fn default() -> Self {
        Self { previous: [0; COUNTER_SLOTS as usize], kernel_totals: vec![0; kernel_stats::EXPORTED.len()] }
    }
}

impl CounterState {
    /// Adds the increase of every slot since the last call to its metric; returns the SYNs.
    ///
    /// `HandshakeFailed` does not feed `syndetector_handshakes_total{result="failed"}`:
    /// failures are counted from the per-source entries (`sources`), which include what the
    /// kernel aged itself, so counting both would count those twice.
    pub fn update(&mut self, totals: &[u64; COUNTER_SLOTS as usize], m: &Metrics) -> SynDeltas {
        let mut syns = SynDeltas::default();
        for c in Counter::ALL {
            let (total, prev) = (totals[*c as usize], &mut self.previous[*c as usize]);
            let delta = total.saturating_sub(*prev);
            *prev = total;
            if c.is_syn() {
                syns.all += delta;
            }
            if c.counts_toward_detection() {
                syns.toward_detection += delta;
            }
            if let Some(verdict) = c.verdict() {
                m.packets.with_label_values(&[verdict.as_str(), c.label()]).inc_by(delta);
            }
            match c {
                Counter::HandshakeCompleted => m.handshakes.with_label_values(&["completed"]).inc_by(delta),
                Counter::BlockedSynRate => m.source_blocks.with_label_values(&["syn_rate"]).inc_by(delta),
                Counter::BlockedHalfOpen => m.source_blocks.with_label_values(&["half_open"]).inc_by(delta),
                Counter::SynRetransmit => m.syn_retransmits.inc_by(delta),
                Counter::TxCookie | Counter::TxCookieFast => m.cookies_sent.inc_by(delta),
                Counter::DropCookieBudget => m.cookie_budget_drops.inc_by(delta),
                Counter::ClosedFilterLookup => m.closed_filter_lookups.inc_by(delta),
                _ => {}
            }
        }
        m.syns.inc_by(syns.all);
        syns
    }

    /// /proc/net/{netstat,snmp} into the kernel counters (a blocking read: call it from
    /// the control thread).
    pub fn update_kernel(&mut self, m: &Metrics) {
        let stats = kernel_stats::read();
        for (i, (section, field, _, _)) in kernel_stats::EXPORTED.iter().enumerate() {
            if let Some(v) = stats.get(&((*section).to_owned(), (*field).to_owned())) {
                advance(&m.kernel[i], &mut self.kernel_totals[i], *v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_counts_only_syns_that_reach_the_listener_decision() {
        let m = Metrics::new();
        let mut state = CounterState::default();
        let mut totals = [0u64; COUNTER_SLOTS as usize];
        totals[Counter::PassSyn as usize] = 10;
        totals[Counter::TxCookie as usize] = 5;
        totals[Counter::DropBlocked as usize] = 1000;
        totals[Counter::PassNotLocal as usize] = 300;
        totals[Counter::PassMonitorBlocked as usize] = 7;
        totals[Counter::PassTcp as usize] = 99_999;
        let d = state.update(&totals, &m);
        assert_eq!(d, SynDeltas { all: 1322, toward_detection: 15 });
        assert_eq!(m.syns.get(), 1322, "syns_total keeps every SYN");
        totals[Counter::PassSyn as usize] = 12;
        assert_eq!(state.update(&totals, &m), SynDeltas { all: 2, toward_detection: 2 });
    }

    #[test]
    fn kernel_handshake_failures_do_not_feed_the_metric() {
        let m = Metrics::new();
        let mut state = CounterState::default();
        let mut totals = [0u64; COUNTER_SLOTS as usize];
        totals[Counter::HandshakeFailed as usize] = 40;
        totals[Counter::HandshakeCompleted as usize] = 3;
        state.update(&totals, &m);
        assert_eq!(m.handshakes.with_label_values(&["failed"]).get(), 0);
        assert_eq!(m.handshakes.with_label_values(&["completed"]).get(), 3);
    }
}
