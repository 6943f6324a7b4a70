//! The `--once` text: one snapshot as a plain table; also the source ordering the UI shares.

use std::fmt::Write as _;

use super::client::{Snapshot, TopSource};

/// How the sources are ordered (the UI's `s` key cycles through them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sort {
    #[default]
    Rate,
    HalfOpen,
    Blocked,
}

impl Sort {
    pub fn next(self) -> Self {
        match self {
            Sort::Rate => Sort::HalfOpen,
            Sort::HalfOpen => Sort::Blocked,
            Sort::Blocked => Sort::Rate,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Sort::Rate => "SYN rate",
            Sort::HalfOpen => "half-open",
            Sort::Blocked => "blocked",
        }
    }

    /// The sources ordered by this key, highest first, ties by SYN rate.
    pub fn apply(self, top: &[TopSource]) -> Vec<TopSource> {
        let mut v = top.to_vec();
        v.sort_by(|a, b| {
            let key = match self {
                Sort::Rate => std::cmp::Ordering::Equal,
                Sort::HalfOpen => b.half_open.cmp(&a.half_open),
                Sort::Blocked => {
                    b.blocked.cmp(&a.blocked).then(b.block_left_seconds.total_cmp(&a.block_left_seconds))
                }
            };
            key.then(b.syns_per_second.total_cmp(&a.syns_per_second))
        });
        v
    }
}

/// A source's state column: "blocked (4s left)" or empty.
pub fn state(t: &TopSource) -> String {
    if t.blocked {
        format!("blocked ({:.0}s left)", t.block_left_seconds.ceil())
    } else {
        String::new()
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// The `--once` text of `s`.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "mode {}  attack {}  cookies {}",
        s.mode.as_deref().unwrap_or("?"),
        if s.under_attack { "YES" } else { "no" },
        on_off(s.cookies_active)
    );
    let _ = writeln!(out, "SYN/s {:.1}  half-open {:.0}", s.syns_per_second, s.half_open);
    let fill: Vec<String> = s.map_fill.iter().map(|(m, r)| format!("{m} {:.1}%", r * 100.0)).collect();
    let _ = writeln!(out, "map fill: {}", fill.join("  "));
    let packets: Vec<String> =
        s.packets.iter().filter(|(_, &v)| v > 0.0).map(|(k, v)| format!("{k} {v:.0}")).collect();
    let _ = writeln!(
        out,
        "packets since start: {}",
        if packets.is_empty() { "none".into() } else { packets.join("  ") }
    );
    out.push('\n');
    if s.top.is_empty() {
        out.push_str("no SYNs from any source during the last poll\n");
        return out;
    }
    let _ = writeln!(out, "{:>4}  {:<40} {:>10} {:>9}  state", "rank", "source", "SYN/s", "half-open");
    for (i, t) in s.top.iter().enumerate() {
        let row = format!(
            "{:>4}  {:<40} {:>10.1} {:>9}  {}",
            i + 1,
            t.source,
            t.syns_per_second,
            t.half_open,
            state(t)
        );
        let _ = writeln!(out, "{}", row.trim_end());
    }
    out
}
