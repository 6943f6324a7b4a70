//! Typed access to the program's maps from the agent: counter sums, walks of the
//! per-source and pending maps. Read only: the agent never writes a per-source entry, so
//! it can never undo a decision (a block, a count) the kernel made meanwhile.
//!
//! Walks use BPF_MAP_LOOKUP_BATCH (a few thousand entries per syscall; kernel 5.6+) and
//! fall back to one lookup per key where the kernel refuses it.

use std::os::fd::{AsFd, OwnedFd};

use aya::{
    maps::{HashMap, Map, MapData, PerCpuArray},
    Ebpf,
};
use detector_common::{
    config::Config as KernelConfig,
    counters::{Counter, COUNTER_SLOTS},
    expiry, names,
    state::{FlowKey, PendingFlow, SourceKey, SourceState},
};

use crate::error::LoadError;

/// Entries asked for per batch syscall: 4096 × (16 + 72) bytes ≈ 360 KiB of buffers.
const BATCH: u32 = 4096;

pub struct Maps {
    counters: PerCpuArray<MapData, u64>,
    sources: HashMap<MapData, SourceKey, SourceState>,
    sources_fd: OwnedFd,
    pending: HashMap<MapData, FlowKey, PendingFlow>,
    pending_fd: OwnedFd,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<(T, OwnedFd), LoadError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(LoadError::Missing(name))?;
    let fd = match &map {
        Map::HashMap(data) | Map::LruHashMap(data) | Map::PerCpuArray(data) => {
            data.fd().as_fd().try_clone_to_owned()
        }
        _ => return Err(LoadError::Missing(name)),
    }
    .map_err(|e| LoadError::Map {
        map: name,
        source: aya::maps::MapError::SyscallError(sys_err("dup", e)),
    })?;
    let typed = T::try_from(map).map_err(|source| LoadError::Map { map: name, source })?;
    Ok((typed, fd))
}

fn sys_err(call: &'static str, io_error: std::io::Error) -> aya::sys::SyscallError {
    aya::sys::SyscallError { call, io_error }
}

impl Maps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        let (counters, _) = take(ebpf, names::MAP_COUNTERS)?;
        let (sources, sources_fd) = take(ebpf, names::MAP_SOURCES)?;
        let (pending, pending_fd) = take(ebpf, names::MAP_PENDING)?;
        Ok(Self { counters, sources, sources_fd, pending, pending_fd })
    }

    /// Every counter slot summed over CPUs, indexed by `Counter as usize`.
    pub fn counters(&self) -> Result<[u64; COUNTER_SLOTS as usize], aya::maps::MapError> {
        let mut out = [0u64; COUNTER_SLOTS as usize];
        for c in Counter::ALL {
            out[*c as usize] = self.counters.get(&(*c as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    /// Calls `f` with every per-source entry, as the kernel holds it right now, a batch
    /// (keys, values) at a time. An entry evicted while we walk is simply not seen.
    /// Memory: one batch of buffers.
    pub fn for_each_source_batch(&self, f: &mut dyn FnMut(&[SourceKey], &[SourceState])) {
        if crate::bpf_batch::walk(self.sources_fd.as_fd(), BATCH, f).is_err() {
            for (key, state) in self.sources.iter().flatten() {
                f(&[key], &[state]);
            }
        }
    }

    /// Adds a per-source entry (the benchmark fills the map this way; the agent never
    /// writes per-source state).
    pub fn insert_source(&mut self, key: &SourceKey, state: &SourceState) -> Result<(), aya::maps::MapError> {
        self.sources.insert(key, state, 0)
    }

    /// Removes a source's entry if the program has it blocked now (`syndetector unblock`);
    /// returns whether it did. The source starts afresh, as one never seen.
    pub fn release_source(&mut self, key: &SourceKey, now_ns: u64) -> Result<bool, aya::maps::MapError> {
        match self.sources.get(key, 0) {
            Ok(state) if state.is_blocked(now_ns) => self.sources.remove(key).map(|()| true),
            Ok(_) | Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Entries in the pending-handshake map whose handshake can still complete at
    /// `now_ns` (`expiry::pending_is_live`): the expired ones wait for LRU eviction.
    pub fn live_pending_entries(&self, now_ns: u64, cfg: &KernelConfig) -> u64 {
        let live = |flow: &PendingFlow| u64::from(expiry::pending_is_live(flow, now_ns, cfg));
        let mut n = 0u64;
        if crate::bpf_batch::walk(
            self.pending_fd.as_fd(),
            BATCH,
            &mut |_: &[FlowKey], flows: &[PendingFlow]| n += flows.iter().map(live).sum::<u64>(),
        )
        .is_err()
        {
            n = self.pending.iter().flatten().map(|(_, flow)| live(&flow)).sum();
        }
        n
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
