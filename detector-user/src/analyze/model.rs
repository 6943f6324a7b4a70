//! The XDP program's tracking replayed offline: pure, over (timestamp ns, Ethernet frame).
//!
//! Mirrors detector-ebpf/src/track.rs step by step with the same detector-common
//! functions (`parse_tcp`, `SourceState::age`, `track::on_syn`, the pending filter,
//! `track::on_handshake_complete`), and feeds the agent's `Detector` one sample per capture
//! second. Sources below `track::promotion_threshold` are counted in a sketch as the
//! program does (its epochs start at the first frame, not at the host's boot, so which
//! SYNs share an epoch can differ from a live run). Differences from a live run: every
//! SYN counts as addressed to this host (the
//! program skips SYNs for other machines), the maps never evict (they are LRU maps of
//! `maps.sources`/`maps.pending` entries), and cookie mode is not replayed.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use detector_common::{
    config::Config as KernelConfig,
    filter,
    names::PENDING_FILTER_BUCKETS,
    parse::{parse_tcp, tcp_flags},
    sketch,
    state::{FlowKey, PendingFlow, SourceKey, SourceState},
    track::{self, BlockReason, SynVerdict},
};

use crate::detect::{DetectionThresholds, Detector, Sample, Transition};

const SEC: u64 = 1_000_000_000;

/// detector-ebpf/src/track.rs `sketch_estimate` as tracking calls it (every row, hot mark
/// 0): counts the SYN, returns the estimate.
fn sketch_estimate(cells: &mut [u64], addr: [u8; 16], now: u64, cfg: &KernelConfig) -> u32 {
    sketch::count_syn(cells, &SourceKey { addr }, cfg, sketch::epoch(now), 0)
}

/// What one source did and what the program would have done to it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SourceReport {
    pub syns: u64,
    /// Handshakes completed in time (the ACK carried the SYN's sequence number + 1).
    pub completed: u64,
    /// Still pending at the end of the capture.
    pub half_open: u64,
    /// Handshakes that timed out.
    pub failed: u64,
    /// RST segments the source sent.
    pub rsts: u64,
    /// SYN-ACKs addressed to the source.
    pub syn_acks: u64,
    /// SYNs of a flow that was already pending.
    pub retransmits: u64,
    /// SYNs the program would have dropped.
    pub dropped: u64,
    /// Times the source was blocked.
    pub blocks: u64,
    /// The first block: capture time (ns since the epoch) and the limit crossed (the
    /// JSON report gives it as fields of its own).
    #[serde(skip)]
    pub first_block: Option<(u64, BlockReason)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    SourceBlocked(IpAddr, BlockReason),
    AttackStarted,
    AttackEnded,
}

/// The outcome of a replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Analysis {
    /// Capture times (ns since the epoch) of the first and last frame.
    pub first_ns: u64,
    pub last_ns: u64,
    pub frames: u64,
    pub tcp_segments: u64,
    /// Sources in address order.
    pub sources: Vec<(IpAddr, SourceReport)>,
    /// In capture order, with capture times.
    pub timeline: Vec<(u64, Event)>,
    pub under_attack_at_end: bool,
}

/// Replays `frames` (capture time in ns since the epoch, Ethernet frame) in order.
#[allow(dead_code, reason = "the entry point for differential tests; the CLI streams through `Model`")]
pub fn analyze<F: AsRef<[u8]>>(
    frames: impl IntoIterator<Item = (u64, F)>,
    cfg: KernelConfig,
    detection: DetectionThresholds,
) -> Analysis {
    let mut model = Model::new(cfg, detection);
    for (ns, frame) in frames {
        model.feed(ns, frame.as_ref());
    }
    model.finish()
}

struct Source {
    report: SourceReport,
    state: Option<SourceState>, // created by a SYN, as in the program's map
}

/// The incremental form of `analyze`, for readers that stream.
pub struct Model {
    cfg: KernelConfig,
    detector: Detector,
    epoch: Instant,
    /// Capture time of the first frame; the program's clock is the offset from it.
    start: Option<u64>,
    last: u64,
    frames: u64,
    tcp_segments: u64,
    sources: HashMap<[u8; 16], Source>,
    pending: HashMap<FlowKey, PendingFlow>,
    filter: Vec<u32>,
    /// The program's `SKETCH`: sources below `track::promotion_threshold` are only counted
    /// here. Empty when the threshold is 1 (every source tracked from its first SYN).
    sketch: Vec<u64>,
    /// Offset (ns) at which the next detector sample is due, and SYNs since the last one.
    next_sample: u64,
    syns_this_second: u64,
    timeline: Vec<(u64, Event)>,
}

impl Model {
    #[must_use]
    pub fn new(cfg: KernelConfig, detection: DetectionThresholds) -> Self {
        Self {
            cfg,
            detector: Detector::new(detection),
            epoch: Instant::now(),
            start: None,
            last: 0,
            frames: 0,
            tcp_segments: 0,
            sources: HashMap::new(),
            pending: HashMap::new(),
            filter: vec![0; PENDING_FILTER_BUCKETS as usize],
            sketch: if track::promotion_threshold(&cfg) > 1 {
                vec![0; sketch::words(cfg.sketch_width) as usize]
            } else {
                Vec::new()
            },
            next_sample: SEC,
            syns_this_second: 0,
            timeline: Vec::new(),
        }
    }

    /// A frame whose link-layer header could not be read: counted, not parsed.
    pub fn feed_unreadable(&mut self, ns: u64) {
        self.clock(ns);
    }

    /// One frame, starting at its Ethernet header.
    pub fn feed(&mut self, ns: u64, frame: &[u8]) {
        let now = self.clock(ns);
        let Ok(seg) = parse_tcp(frame) else { return };
        self.tcp_segments += 1;
        if seg.has(tcp_flags::RST) {
            self.source(seg.src).report.rsts += 1;
        }
        if seg.has(tcp_flags::SYN) && seg.has(tcp_flags::ACK) {
            self.source(seg.dst).report.syn_acks += 1;
        }
        let flow = seg.flow();
        if seg.is_syn() {
            self.on_syn(now, flow, seg.seq);
        } else if seg.may_complete_handshake() {
            self.on_ack(now, &flow, seg.seq);
        }
    }

    /// Advances the clock to the frame's time, sampling the detector for each second that
    /// ended before it; returns the program's `now` (ns since the first frame).
    fn clock(&mut self, ns: u64) -> u64 {
        self.frames += 1;
        let start = *self.start.get_or_insert(ns);
        self.last = self.last.max(ns);
        let now = ns.saturating_sub(start);
        while self.next_sample <= now {
            self.sample(self.next_sample);
            self.next_sample += SEC;
        }
        now
    }

    fn sample(&mut self, at: u64) {
        let cfg = self.cfg;
        let half_open: u64 = self
            .sources
            .values()
            .filter_map(|s| s.state)
            .map(|mut state| {
                state.age(at, &cfg);
                u64::from(state.half_open())
            })
            .sum();
        #[allow(clippy::cast_precision_loss, reason = "a rate; exact below 2^53 SYNs per second")]
        let sample = Sample { syn_rate: self.syns_this_second as f64, half_open };
        self.syns_this_second = 0;
        let event = match self.detector.observe(sample, self.epoch + Duration::from_nanos(at)) {
            Some(Transition::AttackStarted) => Event::AttackStarted,
            Some(Transition::AttackEnded) => Event::AttackEnded,
            None => return,
        };
        self.timeline.push((self.absolute(at), event));
    }

    fn absolute(&self, offset: u64) -> u64 {
        self.start.unwrap_or(0).saturating_add(offset)
    }

    fn source(&mut self, addr: [u8; 16]) -> &mut Source {
        self.sources.entry(addr).or_insert_with(|| Source { report: SourceReport::default(), state: None })
    }

    /// detector-ebpf/src/track.rs `on_syn`, with a map that never evicts.
    fn on_syn(&mut self, now: u64, flow: FlowKey, isn: u32) {
        let cfg = self.cfg;
        let at = self.absolute(now);
        let src = self
            .sources
            .entry(flow.src)
            .or_insert_with(|| Source { report: SourceReport::default(), state: None });
        src.report.syns += 1;
        if src.state.is_none() {
            let threshold = track::promotion_threshold(&cfg);
            let estimate =
                if threshold > 1 { sketch_estimate(&mut self.sketch, flow.src, now, &cfg) } else { 1 };
            if estimate < threshold {
                // Not tracked yet: passed, counted only in the sketch.
                self.syns_this_second += 1;
                return;
            }
            src.state = Some(SourceState::promoted(now, &cfg, estimate));
        }
        let Some(state) = src.state.as_mut() else { return };
        state.age(now, &cfg);
        if state.is_blocked(now) {
            let _ = track::on_syn(state, now, &cfg, false);
            src.report.dropped += 1;
            return;
        }
        // The agent's rate leaves out already-blocked sources (`counts_toward_detection`).
        self.syns_this_second += 1;
        let new_flow = !self.pending.contains_key(&flow);
        if new_flow {
            self.pending.insert(flow, PendingFlow { syn_ns: now, isn, _pad: 0 });
        } else {
            src.report.retransmits += 1;
        }
        match track::on_syn(state, now, &cfg, new_flow) {
            SynVerdict::Pass => self.filter[filter::bucket(&flow) as usize] = filter::stamp(now),
            SynVerdict::DropBlocked => src.report.dropped += 1,
            SynVerdict::DropNewlyBlocked(reason) => {
                if new_flow {
                    self.pending.remove(&flow);
                }
                src.report.dropped += 1;
                src.report.blocks += 1;
                src.report.first_block.get_or_insert((at, reason));
                self.timeline.push((at, Event::SourceBlocked(to_ip(flow.src), reason)));
            }
        }
    }

    /// detector-ebpf/src/track.rs `on_ack`.
    fn on_ack(&mut self, now: u64, flow: &FlowKey, seq: u32) {
        if !filter::is_recent(self.filter[filter::bucket(flow) as usize], now, &self.cfg) {
            return;
        }
        let Some(pending) = self.pending.get(flow).copied() else { return };
        if seq != pending.isn.wrapping_add(1) {
            return;
        }
        self.pending.remove(flow);
        let cfg = self.cfg;
        if let Some(state) = self.source(flow.src).state.as_mut() {
            state.age(now, &cfg);
            track::on_handshake_complete(state, pending.syn_ns, now, &cfg);
        }
    }

    /// Takes the detector's sample of the last (partial) second, as the agent's next poll
    /// would, ages every source to the last frame and takes the report.
    #[must_use]
    pub fn finish(mut self) -> Analysis {
        if self.start.is_some() {
            self.sample(self.next_sample);
        }
        let now = self.last.saturating_sub(self.start.unwrap_or(0));
        let cfg = self.cfg;
        let mut sources: Vec<(IpAddr, SourceReport)> = self
            .sources
            .into_iter()
            .map(|(addr, s)| {
                let mut report = s.report;
                if let Some(mut state) = s.state {
                    state.age(now, &cfg);
                    report.completed = u64::from(state.completed);
                    report.failed = u64::from(state.failed);
                    report.half_open = u64::from(state.half_open());
                }
                (to_ip(addr), report)
            })
            .collect();
        sources.sort_by_key(|(addr, _)| *addr);
        Analysis {
            first_ns: self.start.unwrap_or(0),
            last_ns: self.last,
            frames: self.frames,
            tcp_segments: self.tcp_segments,
            sources,
            timeline: self.timeline,
            under_attack_at_end: self.detector.under_attack(),
        }
    }
}

/// A key address (IPv4 mapped into IPv6) as the address it stands for.
#[must_use]
pub fn to_ip(addr: [u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(addr);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}
