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
//! Parts: the kernel's side of the walk (a cache miss or two per entry) is most of a
//! poll's time, so the map is walked in parts at once, one thread each
//! (`Maps::source_parts`: up to 4, by CPUs), each a range of the kernel's hash buckets. A
//! source always lives in the same bucket, so each part keeps its own records and needs
//! no lock; the parts' counts, top lists and events are merged at the end.
//!
//! Memory: one 32-byte record per entry of the map (bounded by `maps.sources`), in one
//! table per part sized at start for its share of the map's capacity, at most half full
//! (`records`: 64 MiB in all for `maps.sources = 1000000`), per part a buffer of tags and
//! one of entries for one batch, and a heap of K top sources. Nothing else grows with
//! the map.

use std::{
    cmp::{Ordering, Reverse},
    collections::BinaryHeap,
    sync::{Mutex, PoisonError},
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

/// How far ahead of the entry at hand its record slot is fetched.
const PREFETCH_AHEAD: usize = 16;

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

pub struct SourceTracker {
    /// One per part of the map (`Maps::source_parts`), walked on threads of their own.
    /// (The locks are never contended: each part is walked by one thread at a time.)
    parts: Vec<Mutex<Part>>,
    /// The `SEEN` value of this walk.
    parity: bool,
}

impl Default for SourceTracker {
    fn default() -> Self {
        Self::with_capacity(0, 1)
    }
}

/// The records of the sources in one part of the map (a source is always in the same
/// part), and the tags of the batch being walked (reused).
#[derive(Default)]
struct Part {
    records: Records,
    tags: Vec<u64>,
}

/// What one part's walk found; `SourceTracker::poll` merges them.
#[derive(Default)]
struct PartScan {
    summary: SourceSummary,
    top: Vec<Candidate>,
    events: Events,
}

/// What every part's walk needs to know of the poll.
struct PollInputs<'a> {
    now_ns: u64,
    cfg: &'a KernelConfig,
    dt: f64,
    /// The weight of this poll's rate in the smoothed one.
    alpha: f64,
    k: usize,
    seen: u8,
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

    /// Adds another part's events (still at most `EVENTS_PER_POLL` named of each kind).
    fn merge(&mut self, other: Events) {
        self.more += other.more;
        for key in other.blocked {
            Self::push(&mut self.blocked, &mut self.more, key);
        }
        for key in other.freed {
            Self::push(&mut self.freed, &mut self.more, key);
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

/// Calls its argument with batches of (keys, entries) of one walk.
pub type BatchWalk<'a> = dyn Fn(&mut dyn FnMut(&[SourceKey], &[SourceState])) + 'a;

/// Walks one part of the map: `walk(part, f)` calls `f` with batches of that part's
/// entries. `Sync`: the parts are walked on threads of their own at once.
pub type PartWalk<'a> = dyn Fn(u32, &mut dyn FnMut(&[SourceKey], &[SourceState])) + Sync + 'a;

impl SourceTracker {
    /// A tracker for a map of `sources` entries (its capacity) walked in `parts` parts,
    /// each with room for its share of records.
    pub fn with_capacity(sources: usize, parts: u32) -> Self {
        let parts = parts.max(1);
        let share = sources / parts as usize;
        Self {
            parts: (0..parts)
                .map(|_| Mutex::new(Part { records: Records::with_capacity(share), tags: Vec::new() }))
                .collect(),
            parity: false,
        }
    }

    /// Walks the map through `walk`, every part at once (part 0 on this thread, the
    /// others on threads of their own),
    /// `dt` seconds after the previous walk; keeps the `k` highest rates.
    pub fn poll(
        &mut self,
        walk: &PartWalk<'_>,
        now_ns: u64,
        cfg: &KernelConfig,
        dt: f64,
        k: usize,
    ) -> SourceSummary {
        self.parity = !self.parity;
        // An exponential average over about TOP_WINDOW_SECS: a burst shorter than a poll
        // stays on the list (and in a Prometheus scraping every few seconds) for a while.
        let inputs = PollInputs {
            now_ns,
            cfg,
            dt,
            alpha: 1.0 - (-dt / TOP_WINDOW_SECS).exp(),
            k,
            seen: if self.parity { SEEN } else { 0 },
        };
        let inputs = &inputs;
        let parts = &self.parts;
        let walk_part = move |i: u32| {
            // A walk that panicked (and was reported as such) leaves its records usable.
            let part = &mut *parts[i as usize].lock().unwrap_or_else(PoisonError::into_inner);
            part.walk(&|f| walk(i, f), inputs)
        };
        let scans: Vec<PartScan> = std::thread::scope(|scope| {
            let threads: Vec<_> = (1..u32::try_from(parts.len()).unwrap_or(1))
                .map(|i| {
                    let thread = std::thread::Builder::new()
                        .name(format!("walk-{i}"))
                        .spawn_scoped(scope, move || walk_part(i));
                    (i, thread)
                })
                .collect();
            let mut scans = vec![walk_part(0)];
            for (i, thread) in threads {
                scans.push(match thread {
                    Ok(thread) => thread.join().expect("a source walk thread panicked"),
                    // Walked here instead: slower, but nothing is missed.
                    Err(e) => {
                        warn!(error = %e, part = i, "could not start a thread to walk part of the source map");
                        walk_part(i)
                    }
                });
            }
            scans
        });
        merge(scans, k)
    }

    /// Sources remembered (the records this module's memory note is about).
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.parts.iter().map(|p| p.lock().expect("part lock").records.len()).sum()
    }
}

/// One summary of every part's: counts added, the top `k` of all, events together.
fn merge(scans: Vec<PartScan>, k: usize) -> SourceSummary {
    let mut summary = SourceSummary::default();
    let mut top = Vec::new();
    let mut events = Events::default();
    for scan in scans {
        let s = scan.summary;
        summary.tracked += s.tracked;
        summary.live += s.live;
        summary.blocked += s.blocked;
        summary.half_open += s.half_open;
        summary.failed += s.failed;
        top.extend(scan.top);
        events.merge(scan.events);
    }
    events.log();
    top.sort_unstable_by(|a, b| b.cmp(a));
    top.truncate(k);
    summary.top = top
        .into_iter()
        .map(|c| TopSource {
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

impl Part {
    /// Walks this part: counts, failures, rates, events, and its `k` highest rates.
    fn walk(&mut self, walk: &BatchWalk<'_>, p: &PollInputs<'_>) -> PartScan {
        let (now_ns, cfg, dt, alpha, k, seen) = (p.now_ns, p.cfg, p.dt, p.alpha, p.k, p.seen);
        let mut scan = PartScan::default();
        let summary = &mut scan.summary;
        let events = &mut scan.events;
        let mut top: BinaryHeap<Reverse<Candidate>> = BinaryHeap::with_capacity(k + 1);
        let (records, tags) = (&mut self.records, &mut self.tags);
        walk(&mut |keys, states| {
            // Between batches, the CPU is offered to whatever else is runnable: with as
            // many walkers as CPUs, a `/metrics` scrape otherwise waited out the walkers'
            // whole time slices (max 8-22 ms on 2 vCPUs); a yield with nothing else to run
            // returns at once.
            std::thread::yield_now();
            records.reserve(records.len() + keys.len());
            // First the tags; then the work, each slot fetched a few entries ahead (a
            // whole batch ahead, the first ones fall out of the cache again).
            tags.clear();
            tags.extend(keys.iter().map(|key| records.tag(key)));
            for &tag in tags.iter().take(PREFETCH_AHEAD) {
                records.prefetch(tag);
            }
            for (i, ((key, state), tag)) in keys.iter().zip(states).zip(tags.iter()).enumerate() {
                if let Some(&ahead) = tags.get(i + PREFETCH_AHEAD) {
                    records.prefetch(ahead);
                }
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
        scan.events.more += gone_blocked;
        scan.top = top.into_iter().map(|Reverse(c)| c).collect();
        scan
    }
}

#[cfg(test)]
#[path = "sources_tests.rs"]
mod tests;
