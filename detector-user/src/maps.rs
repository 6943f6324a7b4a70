//! Typed access to the program's maps from the agent: counter sums, walks of the
//! per-source and pending maps. Read only: the agent never writes a per-source entry, so
//! it can never undo a decision (a block, a count) the kernel made meanwhile.
//!
//! Walks use BPF_MAP_LOOKUP_BATCH (a thousand entries per syscall; kernel 5.6+) and
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

/// Entries asked for per batch syscall: 1024 × (16 + 72) bytes ≈ 90 KiB of buffers per
/// walker, which stay in the CPU's cache. Smaller than the 4096 it was: a `/metrics` scrape
/// during a poll waits for a walker to come out of the kernel (no preemption inside a
/// batch call on `PREEMPT_NONE` kernels) and yield (`control::sources`), and with two
/// walkers on 2 vCPUs 4096 entries made that wait up to 8-22 ms; at 1024 the scrape's max
/// was 1.5-5 ms and the poll no slower (`cargo xtask bench`, agent part).
const BATCH: u32 = 1024;

pub struct Maps {
    counters: PerCpuArray<MapData, u64>,
    sources: HashMap<MapData, SourceKey, SourceState>,
    sources_fd: OwnedFd,
    pending: HashMap<MapData, FlowKey, PendingFlow>,
    pending_fd: OwnedFd,
    /// The per-source map's hash buckets (a power of two), split among walkers.
    source_buckets: u32,
    /// Walkers for the per-source map: 1 where the kernel refuses batch reads.
    source_parts: u32,
}

/// Walkers of the per-source map at most: the walk is the kernel's work (a cache miss or
/// two per entry), which spreads over CPUs; more threads than this buy little.
const MAX_PARTS: u32 = 4;

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
        // The kernel gives a hash map the next power of two of buckets (kernel/bpf/
        // hashtab.c, htab_map_alloc). Were it otherwise, the parts would only be uneven:
        // the last one reaches past any bucket.
        let source_buckets = aya::maps::IterableMap::map(&sources)
            .info()
            .map_or(1, |info| info.max_entries().max(1).checked_next_power_of_two().unwrap_or(1 << 31));
        let source_parts = if crate::bpf_batch::supported::<SourceKey, SourceState>(sources_fd.as_fd()) {
            walkers()
        } else {
            1
        };
        Ok(Self { counters, sources, sources_fd, pending, pending_fd, source_buckets, source_parts })
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

    /// Parts the per-source map is walked in (`for_each_source_in_part`).
    pub fn source_parts(&self) -> u32 {
        self.source_parts
    }

    /// Like `for_each_source_batch`, for part `part` of `source_parts()`: walkers of all
    /// parts, each on a thread of its own, see every entry once between them (an entry
    /// lives in one hash bucket; each part is a range of buckets), and a source is always
    /// in the same part. Without batch reads there is one part, read key by key.
    pub fn for_each_source_in_part(&self, part: u32, f: &mut dyn FnMut(&[SourceKey], &[SourceState])) {
        if self.source_parts == 1 {
            self.for_each_source_batch(f);
            return;
        }
        let (start, end) = part_buckets(self.source_buckets, part, self.source_parts);
        // A refusal now (it did batch reads at start) ends this part's walk: nothing seen.
        let _ = crate::bpf_batch::walk_buckets(self.sources_fd.as_fd(), start..end, BATCH, f);
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

/// Walkers: the CPUs this process may use, at most `MAX_PARTS`, rounded down to a power
/// of two (each part's record table is then as large as one table for all would be).
fn walkers() -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1));
    let n = cpus.clamp(1, MAX_PARTS);
    1 << n.ilog2()
}

/// The buckets `[start, end)` of part `part` of `parts` of a map with `buckets` buckets;
/// the last part runs to the end of any map.
pub fn part_buckets(buckets: u32, part: u32, parts: u32) -> (u32, u32) {
    let parts = parts.max(1);
    let bound =
        |p: u32| u32::try_from(u64::from(buckets) * u64::from(p) / u64::from(parts)).unwrap_or(u32::MAX);
    (bound(part), if part + 1 >= parts { u32::MAX } else { bound(part + 1) })
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
