//! The control loop, on its own thread (map walks, /proc reads, sysctl writes and fsync
//! are blocking work; the async runtime only serves HTTP and waits for signals). Every
//! poll: counters, the per-source walk, detection, then reconciliation of the desired
//! state (mode and attack state → cookie sysctls and program config) with what is applied.
//!
//! - `counters`: the program's and the kernel's counters into metrics, SYN rates.
//! - `sources`: the per-source walk (read only), failures, top-K; `records`: its table.
//! - `reconcile`: desired vs applied, behind small traits so it is tested with fakes.
//! - `thread`: the control thread and its commands; `bench`: `syndetector bench-poll`.

#[doc(hidden)]
pub mod bench;
mod closed_lines;
mod counters;
pub mod ports;
pub mod reconcile;
mod records;
mod sources;
mod thread;
pub mod time_wait;

#[cfg(test)]
mod tests;

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use aya::maps::{Array, MapData};
use detector_common::{config::Config as KernelConfig, state::SourceKey};
use serde::Serialize;
use tracing::{info, warn};

use crate::{
    config::{reload, Config},
    detect::{Detector, Sample, Transition},
    maps::{monotonic_ns, Maps},
    metrics::Metrics,
    mode::Mode,
    sysctl::Sysctls,
};
use counters::CounterState;
use reconcile::{ConfigSlot, Desired, Reconcile, Reconciler, SystemClock};
use sources::SourceTracker;
pub use thread::Command;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("reading the counters: {0}")]
    Counters(#[from] aya::maps::MapError),
}

/// One of the top SYN sources, as `/top` and `syndetector top` show it.
#[derive(Clone, Debug, Serialize)]
pub struct TopSource {
    pub source: IpAddr,
    pub syns_per_second: f64,
    pub blocked: bool,
    /// Half-open handshakes of this source at the walk (aged as the kernel would).
    pub half_open: u32,
    /// Seconds until the block expires; 0 when not blocked.
    pub block_left_seconds: f64,
}

pub type SharedTop = Arc<Mutex<Vec<TopSource>>>;

/// The program's config slot (`CONFIG[0]`).
pub struct ProgramSlot(pub Array<MapData, KernelConfig>);

impl ConfigSlot for ProgramSlot {
    fn read(&self) -> Result<KernelConfig, String> {
        self.0.get(&0, 0).map_err(|e| format!("reading CONFIG: {e}"))
    }
    fn write(&mut self, cfg: &KernelConfig) -> Result<(), String> {
        self.0.set(0, cfg, 0).map_err(|e| format!("writing CONFIG: {e}"))
    }
}

pub struct Controller {
    cfg: Config,
    maps: Maps,
    slot: ProgramSlot,
    /// The program config as the configuration says (flags and wscale are filled in by
    /// each reconcile).
    kernel_cfg: KernelConfig,
    detector: Detector,
    sysctls: Sysctls,
    metrics: Arc<Metrics>,
    top: SharedTop,
    reconcile: Reconcile,
    sources: SourceTracker,
    counters: CounterState,
    cookies_active: bool,
    last_poll: Instant,
    /// `syndetector mode X` over the control socket: wins over the configured mode until
    /// the next reload or restart.
    mode_override: Option<Mode>,
    /// Whether the sources and pending maps were (nearly) full at the last poll: reaching
    /// and leaving it is logged once each (LRU maps evict the oldest entries when full, so
    /// tracking would degrade quietly otherwise).
    maps_full: [bool; 2],
}

impl Controller {
    /// Takes over the loaded program's maps and reconciles once (nothing attached yet).
    /// `others` are further desired state to converge each poll (see `Reconciler`).
    #[allow(clippy::too_many_arguments, reason = "the parts main assembled, handed over once")]
    pub fn new(
        cfg: Config,
        kernel_cfg: KernelConfig,
        maps: Maps,
        config_map: Array<MapData, KernelConfig>,
        sysctls: Sysctls,
        metrics: Arc<Metrics>,
        top: SharedTop,
        others: Vec<Box<dyn Reconciler>>,
    ) -> Self {
        let capacity = usize::try_from(cfg.file.maps.sources).unwrap_or(usize::MAX);
        let parts = maps.source_parts();
        let mut this = Self {
            detector: Detector::new(cfg.detection()),
            cfg,
            maps,
            slot: ProgramSlot(config_map),
            kernel_cfg,
            sysctls,
            metrics,
            top,
            reconcile: Reconcile::new(others),
            sources: SourceTracker::with_capacity(capacity, parts),
            counters: CounterState::default(),
            cookies_active: false,
            last_poll: Instant::now(),
            mode_override: None,
            maps_full: [false; 2],
        };
        this.publish_settings();
        // Adopted pinned maps carry a previous run's totals: they become the metrics'
        // starting values (the counters continue), not one poll's burst of SYNs that
        // detection would read as an attack.
        if let Ok(totals) = this.maps.counters() {
            this.counters.update(&totals, &this.metrics);
        }
        this.reconcile();
        this
    }

    /// The desired state now: mode and attack state.
    fn desired(&self) -> Desired {
        let c = &self.cfg.file.cookies;
        let mode = self.mode();
        let under_attack = self.detector.under_attack();
        let mut program = self.kernel_cfg;
        program.flags = mode.flags(under_attack, c.timestamps, c.ecn)
            | self.reconcile.extra_flags()
            | self.cfg.config_flags();
        Desired { cookies: mode.cookies_active(under_attack), cookie_timestamps: c.timestamps, program }
    }

    /// The mode in force: the control socket's override, else the configured one.
    pub fn mode(&self) -> Mode {
        self.mode_override.unwrap_or(self.cfg.file.mode)
    }

    /// `syndetector mode X`: overrides the configured mode until the next reload/restart.
    pub fn set_mode(&mut self, mode: Mode) {
        info!(
            event = "mode",
            mode = mode.as_str(),
            configured = self.cfg.file.mode.as_str(),
            "mode set over the control socket"
        );
        self.mode_override = Some(mode);
        self.publish_settings();
        self.reconcile();
    }

    /// Brings the host and the program to the desired state (level-triggered).
    pub fn reconcile(&mut self) {
        let desired = self.desired();
        let applied =
            self.reconcile.step(&desired, &mut self.sysctls, &mut self.slot, &SystemClock, &self.metrics);
        if applied.cookies_active != self.cookies_active {
            info!(
                event = "cookies",
                active = applied.cookies_active,
                mode = self.mode().as_str(),
                "cookie answering {}",
                if applied.cookies_active { "on" } else { "off" }
            );
        }
        self.cookies_active = applied.cookies_active;
        self.metrics.cookies_active.set(i64::from(applied.cookies_active));
    }

    fn publish_settings(&self) {
        let m = &self.metrics;
        for mode in Mode::ALL {
            m.mode.with_label_values(&[mode.as_str()]).set(i64::from(mode == self.mode()));
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

    /// Takes a new configuration (SIGHUP), all or nothing: `config::reload::decide` refuses
    /// it whole, naming each key that needs a restart, before anything changes; otherwise
    /// the new desired state is installed (thresholds, detection, mode, cookies; the
    /// control thread takes `poll_interval_ms`) and reconciled once before it returns the
    /// keys it applied. The attack state is kept: a reload must not drop mitigation
    /// mid-flood.
    pub fn reload(&mut self, new: Config) -> Result<Vec<&'static str>, String> {
        let plan = reload::decide(&self.cfg.file, &new.file).map_err(|e| e.to_string())?;
        // The other steps take theirs (the list files are read here: the only fallible
        // part, before anything changes).
        self.reconcile.reload_others(&new)?;
        // A reload puts the configured mode back (see docs/control.md).
        self.mode_override = None;
        let mut kernel_cfg = new.kernel_config();
        kernel_cfg.sketch_seed = self.kernel_cfg.sketch_seed;
        kernel_cfg.cookie_budget_per_second = new.file.cookies.budget_per_second;
        self.kernel_cfg = kernel_cfg;
        self.detector.set_thresholds(new.detection());
        self.cfg = new;
        self.publish_settings();
        // The window scale is re-read from the sysctls here too.
        self.reconcile();
        Ok(plan.changed)
    }

    /// One poll: counters, maps, detection, reconciliation, metrics.
    pub fn poll(&mut self) -> Result<(), ControlError> {
        let started = Instant::now();
        let dt = started.duration_since(self.last_poll).as_secs_f64().max(1e-3);
        self.last_poll = started;
        let now_ns = monotonic_ns();

        let totals = self.maps.counters();
        let syns = match totals {
            Ok(totals) => self.counters.update(&totals, &self.metrics),
            Err(e) => {
                // Still reconcile below: a broken counter read must not stop convergence.
                self.reconcile();
                return Err(e.into());
            }
        };
        #[allow(clippy::cast_precision_loss, reason = "a per-interval count")]
        let syn_rate = syns.toward_detection as f64 / dt;
        self.metrics.syns_per_second.set(syn_rate);

        let maps = &self.maps;
        let scan = self.sources.poll(
            &|part, f| maps.for_each_source_in_part(part, f),
            now_ns,
            &self.kernel_cfg,
            dt,
            self.cfg.file.top_sources,
        );
        let m = &self.metrics;
        m.handshakes.with_label_values(&["failed"]).inc_by(scan.failed);
        m.sources_tracked.set(i64::try_from(scan.tracked).unwrap_or(i64::MAX));
        m.sources_blocked.set(i64::try_from(scan.blocked).unwrap_or(i64::MAX));
        m.half_open.set(i64::try_from(scan.half_open).unwrap_or(i64::MAX));
        // Live entries only: idle ones wait in the LRU maps for eviction, so counting them
        // would make the fill a measure of history rather than load (`expiry`).
        let pending = self.maps.live_pending_entries(now_ns, &self.kernel_cfg);
        let capacities = &self.cfg.file.maps;
        for (i, (map, entries, capacity)) in
            [("sources", scan.live, capacities.sources), ("pending", pending, capacities.pending)]
                .into_iter()
                .enumerate()
        {
            let full = nearly_full(entries, capacity, possible_cpus());
            if full != self.maps_full[i] {
                self.maps_full[i] = full;
                if full {
                    warn!(
                        map,
                        entries, capacity, "map full: its oldest entries are evicted (raise maps.{map})"
                    );
                } else {
                    info!(map, entries, capacity, "map no longer full");
                }
            }
            m.map_entries.with_label_values(&[map]).set(i64::try_from(entries).unwrap_or(i64::MAX));
            #[allow(clippy::cast_precision_loss, reason = "map sizes are far below 2^52")]
            m.map_fill_ratio.with_label_values(&[map]).set(entries as f64 / f64::from(capacity));
        }
        m.top_sources.reset();
        for (rank, t) in scan.top.iter().enumerate() {
            m.top_sources.with_label_values(&[&(rank + 1).to_string()]).set(t.syns_per_second);
        }
        *self.top.lock().expect("top list lock") = scan.top;

        let sample = Sample { syn_rate, half_open: scan.half_open };
        if let Some(t) = self.detector.observe(sample, started) {
            let (to, what) = match t {
                Transition::AttackStarted => ("attack", "SYN flood detected"),
                Transition::AttackEnded => ("calm", "SYN flood over"),
            };
            info!(event = "attack_state", state = to, syn_rate, half_open = scan.half_open, "{what}");
            self.metrics.attack_transitions.with_label_values(&[to]).inc();
        }
        self.metrics.under_attack.set(i64::from(self.detector.under_attack()));
        self.reconcile();
        self.counters.update_kernel(&self.metrics);
        self.metrics.poll_duration.set(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Records the outcome of a SIGHUP reload, as a metric and one log event.
    pub fn reloaded(&self, outcome: Result<Vec<&'static str>, String>) {
        match outcome {
            Ok(changed) => {
                let changed = changed.join(", ");
                info!(event = "config_reload", result = "success", changed, "configuration reloaded");
                self.metrics.config_reloads.with_label_values(&["success"]).inc();
            }
            Err(e) => {
                warn!(event = "config_reload", result = "failure", error = %e, "configuration reload refused; the old one stays");
                self.metrics.config_reloads.with_label_values(&["failure"]).inc();
            }
        }
    }

    /// Stops answering with cookies and puts the sysctls back (the caller then detaches),
    /// and says what it did: the caller logs only what really happened.
    pub fn shutdown(&mut self) -> ShutdownReport {
        let mut off = self.kernel_cfg;
        off.flags = 0;
        let pass_through = self.slot.write(&off);
        if let Err(e) = &pass_through {
            warn!(error = %e, "could not switch the program to pass-through before detaching");
        }
        let sysctls = self.sysctls.restore_all();
        for (key, e) in &sysctls.failed {
            warn!(key, error = %e, "could not restore a sysctl; the state file keeps it for the next start");
        }
        if let Some(e) = &sysctls.state_file {
            warn!(error = %e, "could not update the sysctl state file after restoring");
        }
        ShutdownReport { pass_through, sysctls }
    }
}

impl Controller {
    /// The stop that keeps the pinned program protecting: its config slot stays as it is
    /// and the changed sysctls stay changed, recorded in the state file for the next start
    /// (which adopts them) or `syndetector detach` (which restores them).
    pub fn hand_over(&mut self) -> ShutdownReport {
        let kept = self.sysctls.hand_over();
        info!(sysctls_kept = kept, "program config and sysctls left as they are for the next start");
        ShutdownReport { pass_through: Ok(()), sysctls: crate::sysctl::RestoreReport::default() }
    }
}

/// What `Controller::shutdown` did.
#[derive(Debug)]
pub struct ShutdownReport {
    /// The program switched to pass-through (no cookies, no drops) before detaching.
    pub pass_through: Result<(), String>,
    /// The sysctls put back, and those that could not be.
    pub sysctls: crate::sysctl::RestoreReport,
}

impl ShutdownReport {
    /// Every sysctl the agent changed is back to its original value, and the state file
    /// says so.
    pub fn restored(&self) -> bool {
        self.sysctls.complete()
    }
}

/// A source key as an address: IPv4-mapped keys print as IPv4.
pub fn source_ip(key: &SourceKey) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(key.addr);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// Whether an LRU hash map holding `entries` of `capacity` is evicting (or about to). It
/// starts before it holds `capacity`: each CPU keeps up to 128 free entries of its own
/// (the kernel's `LOCAL_FREE_TARGET`, kernel/bpf/bpf_lru_list.h), and 95 % of a large map
/// is close enough. Never below half full, so a tiny map is not "full" when nearly empty.
pub fn nearly_full(entries: u64, capacity: u32, cpus: u64) -> bool {
    let capacity = u64::from(capacity);
    let slack = (capacity / 20).max(128 * cpus).min(capacity / 2);
    entries + slack >= capacity
}

/// The CPUs the kernel sizes per-CPU caches for (configured, not only online ones).
fn possible_cpus() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    u64::try_from(n).unwrap_or(1).max(1)
}
