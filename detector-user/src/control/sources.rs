//! One walk of the per-source map per poll: tracked/blocked/half-open totals, failed
//! handshakes, the top-K SYN sources, and block/unblock events. Read only: aging happens
//! on a copy of each entry, so nothing the kernel decided (a block, a count) is undone.
//!
//! Failed handshakes: for each source, the failures so far are `state.failed` (what the
//! kernel aged itself) plus what aging a copy expires now (spoofed sources never send
//! again, so the kernel never ages them). The agent remembers per source how many it has
//! reported and adds only the increase; the kernel's `HandshakeFailed` counter is
//! therefore not added to the metric (it would count the kernel-aged ones twice). A source
//! evicted from the LRU map between two polls takes its unreported failures with it.
//!
//! Memory: one 32-byte record per entry of the map (bounded by `maps.sources`), in a
//! table sized at start for the map's capacity, at most half full (`records`: 64 MiB for
//! `maps.sources = 1000000`), a buffer of tags for
//! one batch, and a heap of K top sources. Nothing else grows with the map.

use std::{
    cmp::{Ordering, Reverse},
    collections::BinaryHeap,
};

use detector_common::{
    config::Config as KernelConfig,
    expiry,
    state::{SourceKey, SourceState},
};
use tracing::{info, warn};

use super::{
    records::{Record, Records},
    source_ip, TopSource,
};

/// The top-sources list averages each source's SYN rate over about this long.
const TOP_WINDOW_SECS: f64 = 5.0;
/// Block/unblock events logged per poll; the rest are summed up in one line.
const EVENTS_PER_POLL: usize = 20;

const SEEN: u8 = 1;
const BLOCKED: u8 = 2;

/// What one walk found.
#[derive(Debug, Default)]
pub struct SourceSummary {
    pub tracked: u64,
    /// Entries still holding state the program acts on (`expiry::source_is_live`).
    pub live: u64,
    pub blocked: u64,
    pub half_open: u64,
    /// Handshakes that failed since the previous walk.
    pub failed: u64,
    pub top: Vec<TopSource>,
}

#[derive(Default)]
pub struct SourceTracker {
    records: Records,
    /// Tags of the batch being walked (reused).
    tags: Vec<u64>,
    /// The `SEEN` value of this walk.
    parity: bool,
}

struct Candidate {
    rate: f32,
    key: SourceKey,
    blocked: bool,
    half_open: u32,
    block_left_ns: u64,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rate.total_cmp(&other.rate).then_with(|| other.key.addr.cmp(&self.key.addr))
    }
}

#[derive(Default)]
struct Events {
    blocked: Vec<SourceKey>,
    freed: Vec<SourceKey>,
    more: usize,
}

impl Events {
    fn push(list: &mut Vec<SourceKey>, more: &mut usize, key: SourceKey) {
        if list.len() < EVENTS_PER_POLL {
            list.push(key);
        } else {
            *more += 1;
        }
    }

    fn log(&self) {
        for key in &self.blocked {
            info!(event = "source_blocked", source = %source_ip(key), "source blocked");
        }
        for key in &self.freed {
            info!(event = "source_unblocked", source = %source_ip(key), "source unblocked (block expired)");
        }
        if self.more > 0 {
            warn!(event = "block_changes_suppressed", count = self.more, "more block changes than logged");
        }
    }
}

impl SourceTracker {
    /// A tracker with room for `sources` records (the per-source map's capacity).
    pub fn with_capacity(sources: usize) -> Self {
        Self { records: Records::with_capacity(sources), ..Self::default() }
    }

    /// Walks the map through `walk` (which calls its argument with batches of entries),
    /// `dt` seconds after the previous walk; keeps the `k` highest rates.
    pub fn poll(
        &mut self,
        walk: impl FnOnce(&mut dyn FnMut(&[SourceKey], &[SourceState])),
        now_ns: u64,
        cfg: &KernelConfig,
        dt: f64,
        k: usize,
    ) -> SourceSummary {
        self.parity = !self.parity;
        let seen = if self.parity { SEEN } else { 0 };
        // An exponential average over about TOP_WINDOW_SECS: a burst shorter than a poll
        // stays on the list (and in a Prometheus scraping every few seconds) for a while.
        let alpha = 1.0 - (-dt / TOP_WINDOW_SECS).exp();
        let mut summary = SourceSummary::default();
        let mut top: BinaryHeap<Reverse<Candidate>> = BinaryHeap::with_capacity(k + 1);
        let mut events = Events::default();
        let (records, tags) = (&mut self.records, &mut self.tags);
        walk(&mut |keys, states| {
            records.reserve(records.len() + keys.len());
            // First the tags, fetching their slots meanwhile; then the work, from cache.
            tags.clear();
            for key in keys {
                let tag = records.tag(key);
                records.prefetch(tag);
                tags.push(tag);
            }
            for ((key, state), tag) in keys.iter().zip(states).zip(tags.iter()) {
                summary.tracked += 1;
                summary.live += u64::from(expiry::source_is_live(state, now_ns, cfg));
                let blocked = state.is_blocked(now_ns);
                summary.blocked += u64::from(blocked);
                // Aged on a copy: the kernel's entry stays exactly as the kernel left it.
                let mut aged = *state;
                aged.age(now_ns, cfg);
                summary.half_open += u64::from(aged.half_open());
                let failed_total = aged.failed;
                // A source first seen now made all its SYNs since the last poll (a zeroed
                // record); a count below the record's: the entry was evicted and made anew.
                let record = records.get_or_insert(*tag);
                let new_syns = state.syns_total.checked_sub(record.syns_seen).unwrap_or(state.syns_total);
                summary.failed +=
                    u64::from(failed_total.checked_sub(record.failed_reported).unwrap_or(failed_total));
                #[allow(clippy::cast_precision_loss, reason = "per-interval counts")]
                let instant = new_syns as f64 / dt;
                let before = f64::from(record.rate);
                #[allow(clippy::cast_possible_truncation, reason = "a rate for display")]
                let rate = (before + alpha * (instant - before)) as f32;
                let was_blocked = record.flags & BLOCKED != 0;
                *record = Record {
                    syns_seen: state.syns_total,
                    rate,
                    failed_reported: failed_total,
                    flags: seen | if blocked { BLOCKED } else { 0 },
                };
                if blocked && !was_blocked {
                    Events::push(&mut events.blocked, &mut events.more, *key);
                } else if was_blocked && !blocked {
                    Events::push(&mut events.freed, &mut events.more, *key);
                }
                if k > 0 && rate >= 0.01 {
                    let c = Candidate {
                        rate,
                        key: *key,
                        blocked,
                        half_open: aged.half_open(),
                        block_left_ns: if blocked {
                            state.blocked_until_ns.saturating_sub(now_ns)
                        } else {
                            0
                        },
                    };
                    if top.len() < k {
                        top.push(Reverse(c));
                    } else if top.peek().is_some_and(|Reverse(min)| c > *min) {
                        top.pop();
                        top.push(Reverse(c));
                    }
                }
            }
        });
        // Entries gone from the map (expired or evicted) are forgotten. (Their addresses
        // are not kept, so a blocked source evicted from the map is counted, not named.)
        let mut gone_blocked = 0;
        self.records.retain(|r| {
            let keep = r.flags & SEEN == seen;
            gone_blocked += usize::from(!keep && r.flags & BLOCKED != 0);
            keep
        });
        events.more += gone_blocked;
        events.log();
        summary.top = top
            .into_sorted_vec()
            .into_iter()
            .map(|Reverse(c)| TopSource {
                source: source_ip(&c.key),
                syns_per_second: f64::from(c.rate),
                blocked: c.blocked,
                half_open: c.half_open,
                #[allow(clippy::cast_precision_loss, reason = "seconds for display")]
                block_left_seconds: c.block_left_ns as f64 / 1e9,
            })
            .collect();
        summary
    }

    /// Sources remembered (the records this module's memory note is about).
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.records.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn cfg() -> KernelConfig {
        KernelConfig::new(0, 0, 60 * SEC, 3 * SEC)
    }

    fn key(n: u8) -> SourceKey {
        let mut addr = [0u8; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12] = 198;
        addr[15] = n;
        SourceKey { addr }
    }

    fn poll(t: &mut SourceTracker, entries: &[(SourceKey, SourceState)], now: u64) -> SourceSummary {
        t.poll(
            |f| {
                let (keys, states): (Vec<_>, Vec<_>) = entries.iter().copied().unzip();
                f(&keys, &states);
            },
            now,
            &cfg(),
            1.0,
            3,
        )
    }

    #[test]
    fn a_kernel_blocked_entry_is_never_modified_by_a_poll() {
        let c = cfg();
        let mut s = SourceState::new(0, &c);
        s.pending = [5, 0, 0, 0];
        s.blocked_until_ns = 100 * SEC;
        s.syns_total = 500;
        let entries = [(key(1), s)];
        let before = entries;
        let mut t = SourceTracker::default();
        let summary = poll(&mut t, &entries, 10 * SEC);
        assert_eq!(entries, before, "the walk sees entries by shared reference only");
        assert_eq!((summary.blocked, summary.failed, summary.half_open), (1, 5, 0));
        assert!(summary.top[0].blocked);
        assert_eq!(summary.top[0].half_open, 0, "expired in the copy");
        assert!((summary.top[0].block_left_seconds - 90.0).abs() < 1e-9);
    }

    #[test]
    fn failures_are_counted_once_whether_the_agent_or_the_kernel_aged_them() {
        let c = cfg();
        let mut s = SourceState::new(0, &c);
        s.pending = [3, 0, 0, 0];
        let mut t = SourceTracker::default();
        assert_eq!(poll(&mut t, &[(key(1), s)], SEC).failed, 0, "not expired yet");
        assert_eq!(poll(&mut t, &[(key(1), s)], 5 * SEC).failed, 3, "expired in the copy");
        assert_eq!(poll(&mut t, &[(key(1), s)], 6 * SEC).failed, 0, "the same ones again");
        // The kernel now ages the source itself (it sent again) and two more fail later.
        s.age(7 * SEC, &c);
        assert_eq!(poll(&mut t, &[(key(1), s)], 7 * SEC).failed, 0, "kernel-aged: already reported");
        s.failed += 2;
        assert_eq!(poll(&mut t, &[(key(1), s)], 8 * SEC).failed, 2);
    }

    #[test]
    fn top_k_keeps_the_highest_rates_in_order_and_forgets_gone_sources() {
        let c = cfg();
        let mut t = SourceTracker::default();
        let entries: Vec<_> = (1..=10u8)
            .map(|n| {
                let mut s = SourceState::new(0, &c);
                s.syns_total = u64::from(n) * 100;
                (key(n), s)
            })
            .collect();
        let summary = poll(&mut t, &entries, SEC);
        let top: Vec<String> = summary.top.iter().map(|s| s.source.to_string()).collect();
        assert_eq!(top, ["198.0.0.10", "198.0.0.9", "198.0.0.8"]);
        assert_eq!(t.remembered(), 10);
        poll(&mut t, &entries[..2], 2 * SEC);
        assert_eq!(t.remembered(), 2);
    }
}
