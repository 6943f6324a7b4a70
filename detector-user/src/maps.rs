//! Typed access to the program's maps from the agent: counter sums, walks of the
//! per-source and pending maps. Read only: the agent never writes a per-source entry, so
//! it can never undo a decision (a block, a count) the kernel made meanwhile.
//!
//! Walks use BPF_MAP_LOOKUP_BATCH (a few thousand entries per syscall; kernel 5.6+) and
//! fall back to one lookup per key where the kernel refuses it.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use aya::{
    maps::{HashMap, Map, MapData, PerCpuArray},
    Ebpf, Pod,
};
use detector_common::{
    counters::{Counter, COUNTER_SLOTS},
    names,
    state::{FlowKey, PendingFlow, SourceKey, SourceState},
};

use crate::error::LoadError;

/// Entries asked for per batch syscall: 4096 × (16 + 72) bytes ≈ 360 KiB of buffers.
const BATCH: u32 = 4096;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

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
        if batch_walk(&self.sources_fd, f).is_err() {
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

    /// Entries in the pending-handshake map.
    pub fn pending_entries(&self) -> u64 {
        let mut n = 0u64;
        if batch_walk(&self.pending_fd, &mut |keys: &[FlowKey], _: &[PendingFlow]| n += keys.len() as u64)
            .is_err()
        {
            n = self.pending.keys().flatten().count() as u64;
        }
        n
    }
}

/// `union bpf_attr` for the BPF_MAP_*_BATCH commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Walks a hash map with BPF_MAP_LOOKUP_BATCH. Fails (before calling `f`) only if the
/// first call fails; the caller then falls back to key-by-key iteration.
fn batch_walk<K: Pod, V: Pod>(fd: &OwnedFd, f: &mut dyn FnMut(&[K], &[V])) -> std::io::Result<()> {
    // SAFETY: Pod types are plain integers and byte arrays: all-zero is a valid value.
    let (zero_key, zero_value) = unsafe { (std::mem::zeroed::<K>(), std::mem::zeroed::<V>()) };
    let mut keys = vec![zero_key; BATCH as usize];
    let mut values = vec![zero_value; BATCH as usize];
    // The hash map's batch token is a bucket index (u32); 8 bytes leave room.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { (&raw const token_in) as u64 },
            out_batch: (&raw mut token_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH,
            map_fd: u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX),
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a valid bpf_attr prefix for this command; the key and value
        // buffers hold `count` elements of the map's key and value sizes (Pod types the
        // map was created with), and the tokens are 8 writable bytes.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = (rc < 0).then(std::io::Error::last_os_error);
        let done = match &err {
            None => false,
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Some(e) if first => return Err(std::io::Error::new(e.kind(), e.to_string())),
            // A later failure (e.g. a bucket larger than a batch): stop, what was seen counts.
            Some(_) => true,
        };
        let n = attr.count as usize;
        if n > 0 {
            f(&keys[..n], &values[..n]);
        }
        if done {
            return Ok(());
        }
        token_in = token_out;
        first = false;
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
