//! The analysis as a text table (for people) or JSON (for scripts).

use std::fmt::Write as _;

use detector_common::{config::Config as KernelConfig, track::BlockReason};
use serde::Serialize;

use crate::{
    analyze::{
        model::{Analysis, Event, SourceReport},
        reader::CaptureInfo,
    },
    detect::DetectionThresholds,
};

/// Events the text report lists; the JSON has all.
const TIMELINE_LINES: usize = 50;

/// One source in the JSON report: its address, its counts (flattened: one object per
/// source), and its first block.
#[derive(Serialize)]
pub struct JsonSource {
    pub address: String,
    #[serde(flatten)]
    pub counts: SourceReport,
    pub blocked: bool,
    /// "syn_rate" or "half_open"; null when never blocked.
    pub blocked_by: Option<&'static str>,
    /// Capture time of the first block, ns since the epoch, and seconds into the capture.
    pub blocked_at_ns: Option<u64>,
    pub blocked_at_offset_s: Option<f64>,
}

#[derive(Serialize)]
pub struct JsonEvent {
    pub at_ns: u64,
    pub offset_s: f64,
    /// "source_blocked", "attack_started" or "attack_ended".
    pub event: &'static str,
    pub address: Option<String>,
    pub reason: Option<&'static str>,
}

#[derive(Serialize)]
pub struct JsonSummary {
    pub format: &'static str,
    pub link_types: Vec<String>,
    pub frames: u64,
    pub tcp_segments: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    pub sources: u64,
    pub blocked_sources: u64,
    pub syns: u64,
    pub completed: u64,
    pub half_open: u64,
    pub dropped: u64,
    pub under_attack_at_end: bool,
    pub timeline: Vec<JsonEvent>,
}

#[derive(Serialize)]
pub struct JsonReport {
    pub summary: JsonSummary,
    pub sources: Vec<JsonSource>,
}

fn reason_name(r: BlockReason) -> &'static str {
    match r {
        BlockReason::SynRate => "syn_rate",
        BlockReason::HalfOpen => "half_open",
    }
}

#[allow(clippy::cast_precision_loss, reason = "seconds for display")]
fn offset_s(a: &Analysis, ns: u64) -> f64 {
    ns.saturating_sub(a.first_ns) as f64 / 1e9
}

/// Sources by SYNs sent, most first; ties in address order.
fn ranked(a: &Analysis) -> Vec<&(std::net::IpAddr, SourceReport)> {
    let mut v: Vec<_> = a.sources.iter().collect();
    v.sort_by_key(|(addr, r)| (std::cmp::Reverse(r.syns), *addr));
    v
}

#[must_use]
pub fn json(a: &Analysis, info: &CaptureInfo) -> JsonReport {
    let sum = |f: fn(&SourceReport) -> u64| a.sources.iter().map(|(_, r)| f(r)).sum::<u64>();
    let timeline = a
        .timeline
        .iter()
        .map(|&(at_ns, ev)| {
            let (event, address, reason) = match ev {
                Event::SourceBlocked(addr, r) => {
                    ("source_blocked", Some(addr.to_string()), Some(reason_name(r)))
                }
                Event::AttackStarted => ("attack_started", None, None),
                Event::AttackEnded => ("attack_ended", None, None),
            };
            JsonEvent { at_ns, offset_s: offset_s(a, at_ns), event, address, reason }
        })
        .collect();
    let summary = JsonSummary {
        format: info.format,
        link_types: info.link_types.clone(),
        frames: a.frames,
        tcp_segments: a.tcp_segments,
        first_ns: a.first_ns,
        last_ns: a.last_ns,
        sources: a.sources.len() as u64,
        blocked_sources: a.sources.iter().filter(|(_, r)| r.blocks > 0).count() as u64,
        syns: sum(|r| r.syns),
        completed: sum(|r| r.completed),
        half_open: sum(|r| r.half_open),
        dropped: sum(|r| r.dropped),
        under_attack_at_end: a.under_attack_at_end,
        timeline,
    };
    let sources = ranked(a)
        .into_iter()
        .map(|(addr, r)| JsonSource {
            address: addr.to_string(),
            counts: r.clone(),
            blocked: r.blocks > 0,
            blocked_by: r.first_block.map(|(_, reason)| reason_name(reason)),
            blocked_at_ns: r.first_block.map(|(at, _)| at),
            blocked_at_offset_s: r.first_block.map(|(at, _)| offset_s(a, at)),
        })
        .collect();
    JsonReport { summary, sources }
}

/// The text report; at most `top` sources in the table (all in the JSON).
#[must_use]
pub fn text(
    a: &Analysis,
    info: &CaptureInfo,
    cfg: &KernelConfig,
    d: &DetectionThresholds,
    top: usize,
) -> String {
    let j = json(a, info);
    let s = &j.summary;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "capture: {} ({}), {} frames, {} TCP segments over {:.3} s",
        s.format,
        s.link_types.join(", "),
        s.frames,
        s.tcp_segments,
        offset_s(a, a.last_ns)
    );
    let _ = writeln!(
        out,
        "limits: {} SYN/s and {} half-open per source (0 = none), blocks of {} s, handshake timeout {} ms; \
         attack mode at {} SYN/s or {} half-open, ends below {} SYN/s and {} half-open for {} s",
        cfg.syn_rate_limit,
        cfg.half_open_limit,
        cfg.block_ttl_ns / 1_000_000_000,
        cfg.handshake_timeout_ns / 1_000_000,
        d.enter_syn_rate,
        d.enter_half_open,
        d.exit_syn_rate,
        d.exit_half_open,
        d.hold.as_secs()
    );
    let _ = writeln!(
        out,
        "{} sources, {} blocked; {} SYNs, {} would be dropped; {} handshakes completed, {} half-open at the end\n",
        s.sources, s.blocked_sources, s.syns, s.dropped, s.completed, s.half_open
    );
    let _ = writeln!(
        out,
        "{:<39} {:>8} {:>9} {:>9} {:>7} {:>6} {:>8} {:>7} {:>8}  VERDICT",
        "SOURCE", "SYNS", "COMPLETED", "HALF-OPEN", "FAILED", "RSTS", "SYN-ACKS", "RETRANS", "DROPPED"
    );
    for src in j.sources.iter().take(top) {
        let verdict = match (src.blocked_by, src.blocked_at_offset_s) {
            (Some(by), Some(at)) => format!("blocked ({}) at +{at:.3} s", by.replace('_', " ")),
            _ => "passed".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<39} {:>8} {:>9} {:>9} {:>7} {:>6} {:>8} {:>7} {:>8}  {verdict}",
            src.address,
            src.counts.syns,
            src.counts.completed,
            src.counts.half_open,
            src.counts.failed,
            src.counts.rsts,
            src.counts.syn_acks,
            src.counts.retransmits,
            src.counts.dropped
        );
    }
    if j.sources.len() > top {
        let _ = writeln!(out, "... and {} more sources (--top N, or --json for all)", j.sources.len() - top);
    }
    let _ = writeln!(out, "\ntimeline:");
    if s.timeline.is_empty() {
        let _ = writeln!(out, "  nothing would have been blocked; attack mode never started");
    }
    for ev in s.timeline.iter().take(TIMELINE_LINES) {
        let what = match ev.event {
            "source_blocked" => format!(
                "{} blocked ({})",
                ev.address.as_deref().unwrap_or("?"),
                ev.reason.unwrap_or("?").replace('_', " ")
            ),
            "attack_started" => "attack mode started".to_string(),
            _ => "attack mode ended".to_string(),
        };
        let _ = writeln!(out, "  {:>10} s  {what}", format!("+{:.3}", ev.offset_s));
    }
    if s.timeline.len() > TIMELINE_LINES {
        let _ = writeln!(out, "  ... and {} more events (--json for all)", s.timeline.len() - TIMELINE_LINES);
    }
    if s.under_attack_at_end {
        let _ = writeln!(out, "  (still in attack mode at the end of the capture)");
    }
    out
}
