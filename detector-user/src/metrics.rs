//! The agent's Prometheus metrics: `syndetector_` prefix, base units, `_total` counters,
//! bounded labels (verdict/reason, map, mode, interface, rank, reconcile step). No label
//! carries a value an attacker controls: top sources are ranked here, named only in
//! `/top`, `syndetector top` and the logs.
//!
//! Counters mirror kernel totals (per-CPU sums, /proc/net): each poll adds the increase
//! since the previous one, so a counter never goes down even if a total is reset.

use prometheus::{
    core::{Collector, GenericCounter, GenericCounterVec, GenericGauge, GenericGaugeVec},
    Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use detector_common::counters::Counter;

use crate::kernel_stats;

/// The `what` label of each built-in reconcile step (bounded: these plus
/// `control::reconcile::Reconciler::what`s). Here, beside the metrics, because `Metrics::new`
/// sets up each one's series before the first poll; the steps take their names from here.
pub const WHAT_SYSCTLS: &str = "sysctls";
pub const WHAT_PROGRAM_CONFIG: &str = "program_config";
pub const WHAT_WINDOW_SCALE: &str = "window_scale";
/// The cookie policy maps (`policy::feed::PolicyStep`).
pub const WHAT_POLICY: &str = "policy";
/// The per-port limits map (`control::ports::PortStep`).
pub const WHAT_PORT_LIMITS: &str = "port_limits";
/// The closed-connection filter's seeding (`control::time_wait::TimeWaitStep`).
pub const WHAT_CLOSED_FILTER: &str = "closed_filter";
pub const BUILTIN: [&str; 6] =
    [WHAT_SYSCTLS, WHAT_PROGRAM_CONFIG, WHAT_WINDOW_SCALE, WHAT_POLICY, WHAT_PORT_LIMITS, WHAT_CLOSED_FILTER];

pub struct Metrics {
    pub registry: Registry,
    pub packets: IntCounterVec,
    pub syns: IntCounter,
    pub syns_per_second: Gauge,
    pub half_open: IntGauge,
    pub handshakes: IntCounterVec,
    pub sources_tracked: IntGauge,
    pub sources_blocked: IntGauge,
    pub source_blocks: IntCounterVec,
    pub syn_retransmits: IntCounter,
    pub map_entries: IntGaugeVec,
    pub map_capacity: IntGaugeVec,
    pub map_fill_ratio: GaugeVec,
    pub mode: IntGaugeVec,
    pub under_attack: IntGauge,
    pub cookies_active: IntGauge,
    pub attack_transitions: IntCounterVec,
    pub cookies_sent: IntCounter,
    pub cookie_budget_drops: IntCounter,
    pub closed_filter_lookups: IntCounter,
    pub threshold: GaugeVec,
    pub kernel: Vec<IntCounter>,
    pub top_sources: GaugeVec,
    pub config_reloads: IntCounterVec,
    pub build_info: IntGaugeVec,
    pub poll_duration: Gauge,
    pub poll_errors: IntCounter,
    pub reconciled: IntGaugeVec,
    pub reconcile_errors: IntCounterVec,
    pub interface_attached: IntGaugeVec,
    pub list_entries: IntGaugeVec,
    pub control_requests: IntCounterVec,
    pub samples_written: IntCounter,
    pub samples_lost: IntCounter,
    pub sample_write_errors: IntCounter,
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry.register(Box::new(c.clone())).expect("metric names are unique");
    c
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl Metrics {
    #[allow(clippy::too_many_lines, reason = "one declaration per metric, nothing else")]
    pub fn new() -> Self {
        let r = Registry::new();
        let counter =
            |name: &str, help: &str| register(&r, GenericCounter::with_opts(opts(name, help)).unwrap());
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(&r, GenericCounterVec::new(opts(name, help), labels).unwrap())
        };
        let gauge = |name: &str, help: &str| register(&r, GenericGauge::with_opts(opts(name, help)).unwrap());
        let int_gauge =
            |name: &str, help: &str| register(&r, GenericGauge::with_opts(opts(name, help)).unwrap());
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(&r, GenericGaugeVec::new(opts(name, help), labels).unwrap())
        };
        let int_gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(&r, GenericGaugeVec::new(opts(name, help), labels).unwrap())
        };
        let kernel = kernel_stats::EXPORTED.iter().map(|(_, _, name, help)| counter(name, help)).collect();
        let m = Self {
            packets: counter_vec(
                "syndetector_packets_total",
                "Packets the XDP program decided on, by verdict and reason.",
                &["verdict", "reason"],
            ),
            syns: counter("syndetector_syns_total", "Connection requests (SYN without ACK) the program saw."),
            syns_per_second: gauge(
                "syndetector_syns_per_second",
                "SYNs per second over the last poll interval: what attack detection compares.",
            ),
            half_open: int_gauge(
                "syndetector_half_open",
                "Half-open handshakes tracked, host-wide (not tracked while answering with cookies).",
            ),
            handshakes: counter_vec(
                "syndetector_handshakes_total",
                "Tracked handshakes by result: completed, or failed (not completed within the timeout).",
                &["result"],
            ),
            sources_tracked: int_gauge("syndetector_sources_tracked", "Sources in the per-source map."),
            sources_blocked: int_gauge(
                "syndetector_sources_blocked",
                "Sources whose SYNs are being dropped.",
            ),
            source_blocks: counter_vec(
                "syndetector_source_blocks_total",
                "Times a source was blocked, by the limit it crossed.",
                &["reason"],
            ),
            syn_retransmits: counter(
                "syndetector_syn_retransmits_total",
                "SYNs for a flow already pending (retransmissions).",
            ),
            map_entries: int_gauge_vec(
                "syndetector_map_entries",
                "Entries of a map holding live state (a block, a rate window, a handshake that can still complete); idle ones wait for LRU eviction.",
                &["map"],
            ),
            map_capacity: int_gauge_vec("syndetector_map_capacity", "Maximum entries of a map.", &["map"]),
            map_fill_ratio: gauge_vec(
                "syndetector_map_fill_ratio",
                "Live entries over capacity (LRU maps evict the oldest, idle ones first, when full).",
                &["map"],
            ),
            mode: int_gauge_vec(
                "syndetector_mode",
                "The configured mode (1) among all modes (0).",
                &["mode"],
            ),
            under_attack: int_gauge(
                "syndetector_under_attack",
                "1 while host-wide SYN rate or half-open count says a flood is under way.",
            ),
            cookies_active: int_gauge(
                "syndetector_cookies_active",
                "1 while the program answers SYNs with cookies from XDP.",
            ),
            attack_transitions: counter_vec(
                "syndetector_attack_transitions_total",
                "Changes of attack state, by the state entered.",
                &["to"],
            ),
            cookies_sent: counter("syndetector_cookies_sent_total", "SYN-ACKs with a cookie sent from XDP."),
            cookie_budget_drops: counter(
                "syndetector_cookie_budget_drops_total",
                "SYNs dropped because the SYN-ACK budget for the second was spent.",
            ),
            closed_filter_lookups: counter(
                "syndetector_closed_filter_lookups_total",
                "SYNs the raw cookie helper would have answered that the closed-connection filter sent to the socket lookup (a tuple that may be in TIME_WAIT, or other flows' FINs covering its cells).",
            ),
            threshold: gauge_vec(
                "syndetector_threshold",
                "Configured thresholds (SYN/s or handshakes).",
                &["name"],
            ),
            kernel,
            top_sources: gauge_vec(
                "syndetector_top_source_syns_per_second",
                "SYN rate of the sources ranked 1..top_sources by SYN rate, averaged over about 5 s (addresses in /top).",
                &["rank"],
            ),
            config_reloads: counter_vec(
                "syndetector_config_reloads_total",
                "Configuration reloads (SIGHUP), by result.",
                &["result"],
            ),
            build_info: int_gauge_vec("syndetector_build_info", "Build metadata; always 1.", &["version"]),
            poll_duration: gauge(
                "syndetector_poll_duration_seconds",
                "How long the last poll of the maps took.",
            ),
            poll_errors: counter("syndetector_poll_errors_total", "Polls that could not read a map."),
            reconciled: int_gauge_vec(
                "syndetector_reconciled",
                "1 while what the agent wants applied (sysctls, program config, ...) is what is applied, by step.",
                &["what"],
            ),
            reconcile_errors: counter_vec(
                "syndetector_reconcile_errors_total",
                "Failed attempts to apply the desired state, by step (retried with backoff).",
                &["what"],
            ),
            interface_attached: int_gauge_vec(
                "syndetector_interface_attached",
                "1 per interface the program is attached to, with its XDP mode.",
                &["interface", "mode"],
            ),
            list_entries: int_gauge_vec(
                "syndetector_list_entries",
                "Prefixes in the allow or deny list as applied to the program (deny includes blocks).",
                &["list", "family"],
            ),
            control_requests: counter_vec(
                "syndetector_control_requests_total",
                "Requests on the control socket, by command and result.",
                &["command", "result"],
            ),
            samples_written: counter(
                "syndetector_samples_written_total",
                "Sampled dropped or cookie-answered packets written to the capture files.",
            ),
            samples_lost: counter(
                "syndetector_samples_lost_total",
                "Sampled packets lost because the program's sample ring buffer was full.",
            ),
            sample_write_errors: counter(
                "syndetector_sample_write_errors_total",
                "Sampled packets that could not be written (directory or disk problem; mitigation goes on).",
            ),
            registry: r,
        };
        m.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        // Every bounded label set exists from the first scrape, so dashboards and alerts
        // see zeros rather than missing series.
        for c in Counter::ALL {
            if let Some(verdict) = c.verdict() {
                m.packets.with_label_values(&[verdict.as_str(), c.label()]).inc_by(0);
            }
        }
        for result in ["completed", "failed"] {
            m.handshakes.with_label_values(&[result]).inc_by(0);
        }
        for reason in ["syn_rate", "half_open"] {
            m.source_blocks.with_label_values(&[reason]).inc_by(0);
        }
        for map in ["sources", "pending"] {
            m.map_entries.with_label_values(&[map]).set(0);
            m.map_fill_ratio.with_label_values(&[map]).set(0.0);
        }
        for result in ["success", "failure"] {
            m.config_reloads.with_label_values(&[result]).inc_by(0);
        }
        for what in BUILTIN {
            m.reconciled.with_label_values(&[what]).set(0);
            m.reconcile_errors.with_label_values(&[what]).inc_by(0);
        }
        for to in ["attack", "calm"] {
            m.attack_transitions.with_label_values(&[to]).inc_by(0);
        }
        for list in ["allow", "deny"] {
            for family in ["ipv4", "ipv6"] {
                m.list_entries.with_label_values(&[list, family]).set(0);
            }
        }
        // A refused peer is refused before its request is read: its command is "invalid".
        for command in crate::ctl::protocol::COMMANDS {
            for result in ["ok", "error"] {
                m.control_requests.with_label_values(&[command, result]).inc_by(0);
            }
        }
        m.control_requests.with_label_values(&["invalid", "forbidden"]).inc_by(0);
        m
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics");
        out
    }
}

/// Adds to `counter` what `total` grew by since `previous`, and remembers `total`.
pub fn advance(counter: &IntCounter, previous: &mut u64, total: u64) {
    counter.inc_by(total.saturating_sub(*previous));
    *previous = total;
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write,
        path::Path,
        process::{Command, Stdio},
    };

    use super::*;

    const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../dashboards/golden-metrics.prom");

    /// The exposition of a running agent: every family, with the label sets the agent
    /// fills in once it has its config and has polled (one top source, one interface).
    fn representative() -> String {
        let m = Metrics::new();
        for (mode, on) in [("monitor", 0), ("drop", 0), ("cookie", 0), ("auto", 1), ("off", 0)] {
            m.mode.with_label_values(&[mode]).set(on);
        }
        for name in [
            "enter_syn_rate",
            "exit_syn_rate",
            "enter_half_open",
            "exit_half_open",
            "source_syn_rate",
            "source_half_open",
        ] {
            m.threshold.with_label_values(&[name]).set(1.0);
        }
        m.top_sources.with_label_values(&["1"]).set(1000.0);
        for what in BUILTIN {
            m.reconciled.with_label_values(&[what]).set(1);
        }
        m.interface_attached.with_label_values(&["eth0", "driver"]).set(1);
        for map in ["sources", "pending"] {
            m.map_capacity.with_label_values(&[map]).set(65_536);
        }
        m.render()
    }

    /// Every family the agent exports, as dashboards/ may query them. Regenerate with
    /// `UPDATE_GOLDEN=1 cargo test -p detector-user golden`.
    #[test]
    fn exposition_matches_the_golden_file() {
        let text = representative();
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(GOLDEN, &text).unwrap();
        }
        let golden = std::fs::read_to_string(GOLDEN).expect("dashboards/golden-metrics.prom");
        assert_eq!(text, golden, "the exposition changed: review it, then UPDATE_GOLDEN=1");
    }

    #[test]
    fn promtool_accepts_the_exposition() {
        let text = representative();
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (Debian package prometheus; `cargo xtask setup` installs it)");
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let report =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && report.trim().is_empty(), "promtool check metrics:\n{report}");
        assert!(Path::new(GOLDEN).exists());
    }

    #[test]
    fn advance_never_goes_backwards() {
        let c = IntCounter::new("t_total", "t").unwrap();
        let mut prev = 0;
        advance(&c, &mut prev, 10);
        advance(&c, &mut prev, 4);
        advance(&c, &mut prev, 7);
        assert_eq!(c.get(), 13);
    }
}
