//! The control loop: every poll it reads the program's counters and maps, updates the
//! metrics, runs attack detection, and switches the program (and the host's cookie
//! sysctls) between pass-through and cookie answering as the mode says.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use aya::maps::{Array, MapData};
use detector_common::{
    config::Config as KernelConfig,
    counters::{Counter, COUNTER_SLOTS},
    state::SourceKey,
};
use serde::Serialize;
use tracing::{info, warn};

use crate::{
    config::Config,
    detect::{Detector, Sample, Transition},
    error::{LoadError, SysctlError},
    kernel_stats, loader,
    maps::{monotonic_ns, Maps},
    metrics::{advance, Metrics},
    mode::Mode,
    sysctl::Sysctls,
};

const SYNCOOKIES: &str = "net.ipv4.tcp_syncookies";
const TIMESTAMPS: &str = "net.ipv4.tcp_timestamps";
/// The top-sources list averages each source's SYN rate over about this long.
const TOP_WINDOW_SECS: f64 = 5.0;
/// Block/unblock events logged per poll; the rest are summed up in one line.
const EVENTS_PER_POLL: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    #[error(transparent)]
    Load(Box<LoadError>),
    #[error("reading the counters: {0}")]
    Counters(#[from] aya::maps::MapError),
}

impl From<LoadError> for ControlError {
    fn from(e: LoadError) -> Self {
        Self::Load(Box::new(e))
    }
}

/// One of the top SYN sources, as `/top` and `syndetector top` show it.
#[derive(Clone, Debug, Serialize)]
pub struct TopSource {
    pub source: IpAddr,
    pub syns_per_second: f64,
    pub blocked: bool,
}

pub type SharedTop = Arc<Mutex<Vec<TopSource>>>;

pub struct Controller {
    cfg: Config,
    maps: Maps,
    config_map: Array<MapData, KernelConfig>,
    kernel_cfg: KernelConfig,
    detector: Detector,
    sysctls: Sysctls,
    metrics: Arc<Metrics>,
    top: SharedTop,
    cookies_on: bool,
    last_poll: Instant,
    counters: [u64; COUNTER_SLOTS as usize],
    kernel_totals: Vec<u64>,
    source_syns: HashMap<SourceKey, u64>,
    /// Smoothed SYN rate per source (see `TOP_WINDOW_SECS`).
    source_rates: HashMap<SourceKey, f64>,
    blocked: HashSet<SourceKey>,
}

impl Controller {
    /// Takes over the loaded program's maps; writes the first config (nothing attached yet).
    pub fn new(
        cfg: Config,
        mut kernel_cfg: KernelConfig,
        maps: Maps,
        config_map: Array<MapData, KernelConfig>,
        sysctls: Sysctls,
        metrics: Arc<Metrics>,
        top: SharedTop,
    ) -> Result<Self, ControlError> {
        kernel_cfg.flags = cfg.file.mode.flags(false, cfg.file.cookies.timestamps, cfg.file.cookies.ecn);
        let mut this = Self {
            detector: Detector::new(cfg.detection()),
            cfg,
            maps,
            config_map,
            kernel_cfg,
            sysctls,
            metrics,
            top,
            cookies_on: false,
            last_poll: Instant::now(),
            counters: [0; COUNTER_SLOTS as usize],
            kernel_totals: vec![0; kernel_stats::EXPORTED.len()],
            source_syns: HashMap::new(),
            source_rates: HashMap::new(),
            blocked: HashSet::new(),
        };
        this.publish_settings();
        this.apply_mode()?;
        Ok(this)
    }

    /// Sets the program's flags (and the cookie sysctls) for the mode and attack state.
    /// Cookies on: sysctls first, so the helper is armed before XDP asks it. Off: flags
    /// first, so XDP stops asking before the sysctls go back.
    fn apply_mode(&mut self) -> Result<(), ControlError> {
        let c = &self.cfg.file.cookies;
        let mode = self.cfg.file.mode;
        let want_cookies = mode.cookies_active(self.detector.under_attack());
        if want_cookies && !self.cookies_on {
            self.sysctls.set(SYNCOOKIES, "2")?;
            if c.timestamps {
                self.sysctls.set(TIMESTAMPS, "2")?;
            }
        }
        self.kernel_cfg.flags = mode.flags(self.detector.under_attack(), c.timestamps, c.ecn);
        loader::write_config(&mut self.config_map, &self.kernel_cfg)?;
        if !want_cookies && self.cookies_on {
            self.sysctls.restore(SYNCOOKIES)?;
            self.sysctls.restore(TIMESTAMPS)?;
        }
        if want_cookies != self.cookies_on {
            info!(
                event = "cookies",
                active = want_cookies,
                mode = mode.as_str(),
                "cookie answering {}",
                if want_cookies { "on" } else { "off" }
            );
        }
        self.cookies_on = want_cookies;
        self.metrics.cookies_active.set(i64::from(want_cookies));
        Ok(())
    }

    fn publish_settings(&self) {
        let m = &self.metrics;
        for mode in Mode::ALL {
            m.mode.with_label_values(&[mode.as_str()]).set(i64::from(mode == self.cfg.file.mode));
        }
        let d = self.cfg.detection();
        let t = &self.cfg.file.thresholds;
        #[allow(clippy::cast_precision_loss, reason = "thresholds are far below 2^52")]
        for (name, value) in [
            ("enter_syn_rate", d.enter_syn_rate),
            ("exit_syn_rate", d.exit_syn_rate),
            ("enter_half_open", d.enter_half_open as f64),
            ("exit_half_open", d.exit_half_open as f64),
            ("source_syn_rate", f64::from(t.syn_rate_limit)),
            ("source_half_open", f64::from(t.half_open_limit)),
        ] {
            m.threshold.with_label_values(&[name]).set(value);
        }
        let maps = &self.cfg.file.maps;
        for (map, capacity) in [("sources", maps.sources), ("pending", maps.pending)] {
            m.map_capacity.with_label_values(&[map]).set(i64::from(capacity));
        }
    }

    /// Takes a new configuration (SIGHUP). Thresholds, detection, mode and cookie settings
    /// apply at once; interfaces and map sizes need a restart and are refused here.
    pub fn reload(&mut self, new: Config) -> Result<(), String> {
        let (old, new_f) = (&self.cfg.file, &new.file);
        if old.interfaces != new_f.interfaces
            || old.maps.sources != new_f.maps.sources
            || old.maps.pending != new_f.maps.pending
            || old.maps.sketch_width != new_f.maps.sketch_width
            || old.metrics_addr != new_f.metrics_addr
        {
            return Err("interfaces, maps and metrics_addr only change with a restart".into());
        }
        let mut kernel_cfg = new.kernel_config();
        kernel_cfg.sketch_seed = self.kernel_cfg.sketch_seed;
        kernel_cfg.cookie_budget_per_second = per_cpu_budget(new.file.cookies.budget_per_second);
        kernel_cfg.synack_wscale = self.kernel_cfg.synack_wscale;
        let under_attack = self.detector.under_attack();
        self.kernel_cfg = kernel_cfg;
        self.detector = Detector::new(new.detection());
        if under_attack {
            // Keep the attack state: a reload must not drop mitigation mid-flood.
            self.detector.observe(Sample { syn_rate: f64::INFINITY, half_open: 0 }, Instant::now());
        }
        self.cfg = new;
        self.publish_settings();
        self.apply_mode().map_err(|e| e.to_string())
    }

    /// One poll: counters, maps, detection, metrics.
    pub fn poll(&mut self) -> Result<(), ControlError> {
        let started = Instant::now();
        let dt = started.duration_since(self.last_poll).as_secs_f64().max(1e-3);
        self.last_poll = started;
        let now_ns = monotonic_ns();

        let syns_before = self.metrics.syns.get();
        self.update_counters()?;
        #[allow(clippy::cast_precision_loss, reason = "a per-interval count")]
        let syn_rate = (self.metrics.syns.get() - syns_before) as f64 / dt;
        self.metrics.syns_per_second.set(syn_rate);

        let scan = self.maps.scan_sources(now_ns, &self.kernel_cfg);
        let m = &self.metrics;
        m.handshakes.with_label_values(&["failed"]).inc_by(scan.aged_failed);
        m.sources_tracked.set(i64::try_from(scan.tracked).unwrap_or(i64::MAX));
        m.sources_blocked.set(i64::try_from(scan.blocked.len()).unwrap_or(i64::MAX));
        m.half_open.set(i64::try_from(scan.half_open).unwrap_or(i64::MAX));
        let pending = self.maps.pending_entries();
        let maps = &self.cfg.file.maps;
        for (map, entries, capacity) in
            [("sources", scan.tracked, maps.sources), ("pending", pending, maps.pending)]
        {
            m.map_entries.with_label_values(&[map]).set(i64::try_from(entries).unwrap_or(i64::MAX));
            #[allow(clippy::cast_precision_loss, reason = "map sizes are far below 2^52")]
            m.map_fill_ratio.with_label_values(&[map]).set(entries as f64 / f64::from(capacity));
        }
        let blocked: HashSet<SourceKey> = scan.blocked.iter().copied().collect();
        self.log_block_changes(&blocked);
        self.update_top(&scan.syns_total, &blocked, dt);
        self.blocked = blocked;

        let sample = Sample { syn_rate, half_open: scan.half_open };
        if let Some(t) = self.detector.observe(sample, started) {
            let (to, what) = match t {
                Transition::AttackStarted => ("attack", "SYN flood detected"),
                Transition::AttackEnded => ("calm", "SYN flood over"),
            };
            info!(event = "attack_state", state = to, syn_rate, half_open = scan.half_open, "{what}");
            self.metrics.attack_transitions.with_label_values(&[to]).inc();
            self.apply_mode()?;
        }
        self.metrics.under_attack.set(i64::from(self.detector.under_attack()));
        self.update_kernel_stats();
        self.metrics.poll_duration.set(started.elapsed().as_secs_f64());
        Ok(())
    }

    fn update_counters(&mut self) -> Result<(), ControlError> {
        let totals = self.maps.counters()?;
        let m = &self.metrics;
        let mut syns = 0;
        for c in Counter::ALL {
            let (total, prev) = (totals[*c as usize], &mut self.counters[*c as usize]);
            let delta = total.saturating_sub(*prev);
            *prev = total;
            if c.is_syn() {
                syns += delta;
            }
            if let Some(verdict) = c.verdict() {
                m.packets.with_label_values(&[verdict.as_str(), c.label()]).inc_by(delta);
            }
            match c {
                Counter::HandshakeCompleted => m.handshakes.with_label_values(&["completed"]).inc_by(delta),
                Counter::HandshakeFailed => m.handshakes.with_label_values(&["failed"]).inc_by(delta),
                Counter::BlockedSynRate => m.source_blocks.with_label_values(&["syn_rate"]).inc_by(delta),
                Counter::BlockedHalfOpen => m.source_blocks.with_label_values(&["half_open"]).inc_by(delta),
                Counter::SynRetransmit => m.syn_retransmits.inc_by(delta),
                Counter::TxCookie => m.cookies_sent.inc_by(delta),
                Counter::DropCookieBudget => m.cookie_budget_drops.inc_by(delta),
                _ => {}
            }
        }
        m.syns.inc_by(syns);
        Ok(())
    }

    fn update_kernel_stats(&mut self) {
        let stats = kernel_stats::read();
        for (i, (section, field, _, _)) in kernel_stats::EXPORTED.iter().enumerate() {
            if let Some(v) = stats.get(&((*section).to_owned(), (*field).to_owned())) {
                advance(&self.metrics.kernel[i], &mut self.kernel_totals[i], *v);
            }
        }
    }

    /// One structured event per source blocked or unblocked (at most EVENTS_PER_POLL).
    fn log_block_changes(&self, now_blocked: &HashSet<SourceKey>) {
        let newly: Vec<_> = now_blocked.difference(&self.blocked).collect();
        let freed: Vec<_> = self.blocked.difference(now_blocked).collect();
        for key in newly.iter().take(EVENTS_PER_POLL) {
            info!(event = "source_blocked", source = %source_ip(key), "source blocked");
        }
        for key in freed.iter().take(EVENTS_PER_POLL) {
            info!(event = "source_unblocked", source = %source_ip(key), "source unblocked (block expired)");
        }
        let more = newly.len().saturating_sub(EVENTS_PER_POLL) + freed.len().saturating_sub(EVENTS_PER_POLL);
        if more > 0 {
            warn!(event = "block_changes_suppressed", count = more, "more block changes than logged");
        }
    }

    fn update_top(&mut self, syns_total: &HashMap<SourceKey, u64>, blocked: &HashSet<SourceKey>, dt: f64) {
        let k = self.cfg.file.top_sources;
        // An exponential average over about TOP_WINDOW_SECS: a burst shorter than a poll
        // stays on the list (and in a Prometheus scraping every few seconds) for a while.
        let alpha = 1.0 - (-dt / TOP_WINDOW_SECS).exp();
        let mut smoothed = HashMap::with_capacity(syns_total.len());
        for (key, total) in syns_total {
            // A source first seen now made all its SYNs since the last poll.
            let before = self.source_syns.get(key).copied().unwrap_or(0);
            #[allow(clippy::cast_precision_loss, reason = "per-interval counts")]
            let instant = total.saturating_sub(before) as f64 / dt;
            let previous = self.source_rates.get(key).copied().unwrap_or(0.0);
            let rate = previous + alpha * (instant - previous);
            if rate >= 0.01 {
                smoothed.insert(*key, rate);
            }
        }
        let mut rates: Vec<(SourceKey, f64)> = smoothed.iter().map(|(key, rate)| (*key, *rate)).collect();
        self.source_rates = smoothed;
        rates.sort_by(|a, b| b.1.total_cmp(&a.1));
        rates.truncate(k);
        self.source_syns.clone_from(syns_total);
        self.metrics.top_sources.reset();
        let top: Vec<TopSource> = rates
            .iter()
            .map(|(key, rate)| TopSource {
                source: source_ip(key),
                syns_per_second: *rate,
                blocked: blocked.contains(key),
            })
            .collect();
        for (rank, t) in top.iter().enumerate() {
            self.metrics
                .top_sources
                .with_label_values(&[&(rank + 1).to_string(), &t.source.to_string()])
                .set(t.syns_per_second);
        }
        *self.top.lock().expect("top list lock") = top;
    }

    pub fn poll_failed(&self) {
        self.metrics.poll_errors.inc();
    }

    /// Records the outcome of a SIGHUP reload, as a metric and one log event.
    pub fn reloaded(&self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                info!(event = "config_reload", result = "success", "configuration reloaded");
                self.metrics.config_reloads.with_label_values(&["success"]).inc();
            }
            Err(e) => {
                warn!(event = "config_reload", result = "failure", error = %e, "configuration reload refused; the old one stays");
                self.metrics.config_reloads.with_label_values(&["failure"]).inc();
            }
        }
    }

    /// Stops answering with cookies and puts the sysctls back (the caller then detaches).
    pub fn shutdown(&mut self) {
        self.kernel_cfg.flags = 0;
        if let Err(e) = loader::write_config(&mut self.config_map, &self.kernel_cfg) {
            warn!(error = %e, "could not switch the program to pass-through before detaching");
        }
        if let Err(e) = self.sysctls.restore_all() {
            warn!(error = %e, "could not restore sysctls; the next start will");
        }
    }
}

/// The SYN-ACK budget the program gets: the configured one as is, since the program now
/// counts it host-wide (one slot shared by all CPUs), not per CPU.
pub fn per_cpu_budget(per_second: u32) -> u32 {
    per_second
}

/// A source key as an address: IPv4-mapped keys print as IPv4.
pub fn source_ip(key: &SourceKey) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(key.addr);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}
