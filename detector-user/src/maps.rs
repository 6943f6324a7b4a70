//! Typed access to the program's maps from the agent: counter sums, source scans, the
//! aging write-back, pending-flow counts.

use std::collections::HashMap as StdHashMap;

use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    Ebpf,
};
use detector_common::{
    config::Config as KernelConfig,
    counters::{Counter, COUNTER_SLOTS},
    names,
    state::{FlowKey, PendingFlow, SourceKey, SourceState},
};

use crate::error::LoadError;

/// BPF_EXIST: update only an entry that is still there (the kernel may have evicted it).
const BPF_EXIST: u64 = 2;

pub struct Maps {
    counters: PerCpuArray<MapData, u64>,
    sources: HashMap<MapData, SourceKey, SourceState>,
    pending: HashMap<MapData, FlowKey, PendingFlow>,
}

/// What one scan of the per-source map found.
#[derive(Debug, Default)]
pub struct SourceScan {
    pub tracked: u64,
    pub blocked: Vec<SourceKey>,
    pub half_open: u64,
    /// Handshakes the agent aged into "failed" for sources the kernel had not seen since.
    pub aged_failed: u64,
    /// SYNs seen so far per source (for rates between scans).
    pub syns_total: StdHashMap<SourceKey, u64>,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, LoadError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(LoadError::Missing(name))?;
    T::try_from(map).map_err(|source| LoadError::Map { map: name, source })
}

impl Maps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        Ok(Self {
            counters: take(ebpf, names::MAP_COUNTERS)?,
            sources: take(ebpf, names::MAP_SOURCES)?,
            pending: take(ebpf, names::MAP_PENDING)?,
        })
    }

    /// Every counter slot summed over CPUs, indexed by `Counter as usize`.
    pub fn counters(&self) -> Result<[u64; COUNTER_SLOTS as usize], aya::maps::MapError> {
        let mut out = [0u64; COUNTER_SLOTS as usize];
        for c in Counter::ALL {
            out[*c as usize] = self.counters.get(&(*c as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    /// Walks the per-source map. Sources with expired pending handshakes that the kernel
    /// has not aged (it ages a source only when it sends again, and spoofed sources never
    /// do) are aged here and written back. A write can race a kernel update of the same
    /// source and lose it; the kernel ages any source it sees itself, so this only
    /// touches idle ones and the window is tiny.
    pub fn scan_sources(&mut self, now_ns: u64, cfg: &KernelConfig) -> SourceScan {
        let mut scan = SourceScan::default();
        let mut aged = Vec::new();
        for entry in &self.sources {
            // An entry evicted while we walk shows up as an error: skip it.
            let Ok((key, mut state)) = entry else { continue };
            scan.tracked += 1;
            let failed = state.age(now_ns, cfg);
            if failed != 0 {
                scan.aged_failed += u64::from(failed);
                aged.push((key, state));
            }
            if state.is_blocked(now_ns) {
                scan.blocked.push(key);
            }
            scan.half_open += u64::from(state.half_open());
            scan.syns_total.insert(key, state.syns_total);
        }
        for (key, state) in aged {
            // Gone meanwhile (evicted): nothing to write back.
            let _ = self.sources.insert(key, state, BPF_EXIST);
        }
        scan
    }

    pub fn pending_entries(&self) -> u64 {
        self.pending.keys().flatten().count() as u64
    }
}

/// `bpf_ktime_get_ns` in user space: CLOCK_MONOTONIC.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid pointer to a timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    #[allow(clippy::cast_sign_loss, reason = "monotonic time is never negative")]
    let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    ns
}
