//! Handing the host over from one run of the agent to the next (docs/operations.md): at
//! start, what is taken over from a previous run (its pinned program protects until ours
//! is loaded and switched in); at a stop that keeps protecting, what is said about it.

use std::path::Path;

use anyhow::{Context, Result};
use aya::{maps::Array, Ebpf};
use detector_common::{config::Config as KernelConfig, names};
use tracing::{info, warn};

use crate::{
    config::Config,
    control::Controller,
    pins::{MapsPlan, Pins},
    sysctl::Sysctls,
};

/// What a start found and decided.
pub struct TakeOver {
    /// `None`: `pin_dir` is not on bpffs, nothing is pinned (a warning said so).
    pub pins: Option<Pins>,
    /// A previous run's link is pinned for one of our interfaces: its program protects now.
    pub inherited: bool,
    /// Adopt the pinned maps or load fresh ones (with `pins`).
    pub maps_plan: Option<MapsPlan>,
}

/// Opens the pin directory; with a previous run's program pinned, adopts the sysctls it
/// left (they stay as they are: that program needs them), otherwise restores them (a crash
/// without pins: nothing protects, put the host back); then decides about the maps.
pub fn take_over(cfg: &Config, sysctls: &mut Sysctls) -> Result<TakeOver> {
    let dir = &cfg.file.pin_dir;
    let pins = Pins::open(dir).context("opening the pin directory")?;
    if pins.is_none() {
        warn!(
            pin_dir = %dir.display(),
            "pin_dir is not on a BPF file system (mount -t bpf bpf /sys/fs/bpf): nothing is pinned, and \
             a restart leaves the host unprotected while the next program loads"
        );
    }
    let inherited = pins.as_ref().is_some_and(|p| cfg.file.interfaces.iter().any(|i| p.has_link(i)));
    if inherited {
        let adopted = sysctls.adopt()?;
        info!(
            sysctls = adopted,
            "a previous run's program is pinned and protecting: its sysctls are adopted, not restored"
        );
    } else {
        let recovered = sysctls.recover()?;
        if !recovered.is_empty() {
            warn!(count = recovered.len(), "restored sysctls a previous run left changed");
        }
    }
    let maps_plan = match &pins {
        Some(p) => {
            let sizes = [
                (names::MAP_SOURCES, cfg.file.maps.sources),
                (names::MAP_PENDING, cfg.file.maps.pending),
                (names::MAP_SKETCH, cfg.sketch_words()),
                (names::MAP_CLOSED_FILTER, cfg.closed_filter_entries()),
            ];
            let plan = p.prepare_maps(&sizes).context("preparing the pinned maps")?;
            match &plan {
                MapsPlan::Adopt => {
                    info!(
                        layout = p.version(),
                        "adopting the pinned maps: counters and per-source state carry on"
                    );
                }
                MapsPlan::Fresh { reason } => info!(layout = p.version(), reason, "fresh maps"),
            }
            Some(plan)
        }
        None => None,
    };
    Ok(TakeOver { pins, inherited, maps_plan })
}

/// Attaching failed: with a previous run's program pinned, it protects on (`attach_all`
/// undid only what this run made), so the sysctls stay as it needs them; otherwise the
/// host is put back.
pub fn attach_failed(controller: &mut Controller, inherited: bool) {
    if inherited {
        controller.hand_over();
    } else {
        crate::log_restored(&controller.shutdown());
    }
}

/// Every interface runs our program now: maps pinned under other layout versions are no
/// longer used by anything.
pub fn attached(pins: Option<&Pins>, plan: Option<&MapsPlan>) {
    if let (Some(p), Some(MapsPlan::Fresh { .. })) = (pins, plan) {
        p.remove_other_versions();
    }
}

/// With adopted maps, the sketch seed the previous run wrote: SKETCH holds counts hashed
/// with it, which a new seed would scatter to other cells.
pub fn adopted_sketch_seed(ebpf: &Ebpf, plan: Option<&MapsPlan>) -> Option<u32> {
    if plan != Some(&MapsPlan::Adopt) {
        return None;
    }
    let map = Array::<_, KernelConfig>::try_from(ebpf.map(names::MAP_CONFIG)?).ok()?;
    let seed = map.get(&0, 0).ok()?.sketch_seed;
    (seed != 0).then_some(seed)
}

/// The last words of a stop that keeps the program protecting.
pub fn log_kept(all_kept: bool, pin_dir: &Path) {
    if all_kept {
        info!(
            pin_dir = %pin_dir.display(),
            "stopped; the XDP program, its maps and the sysctls it needs stay in place (restart: \
             the next start adopts them; `syndetector detach` removes them and restores the sysctls)"
        );
    } else {
        warn!(
            "stopped; some interfaces could not stay protected (see above); the sysctls are left for \
             the next start or `syndetector detach`"
        );
    }
}
