//! How much kernel memory the program's maps take with a configuration: per map from its
//! type, key and value sizes and entries, as the kernel itself counts it (the `memlock`
//! line of `/proc/<pid>/fdinfo/<map fd>`, which is `map->ops->map_mem_usage`, since 6.4).
//! `syndetector check-config` prints it; a root test loads the object and compares.
//!
//! The formulas, from the kernel (kernel/bpf/*.c, `*_mem_usage`; x86_64, 8-byte pointers):
//! - hash / LRU hash, preallocated (flags 0, ours): `htab_map_mem_usage`
//!   `sizeof(bpf_htab) + 16 × n_buckets + 4 × cpus × 8 (bucket locks) + elem_size × n`
//!   with `n_buckets = roundup_pow_of_two(max_entries)`,
//!   `elem_size = sizeof(htab_elem) (48) + round_up(key, 8) + round_up(value, 8)`, and
//!   `n = max_entries + cpus` for a plain hash (one spare element per CPU for updates) plus
//!   `8 × cpus` of per-CPU spare pointers; `n = max_entries` for LRU. The LRU's per-CPU
//!   lists are a few cache lines per CPU and not counted by the kernel either.
//! - array: `array_map_mem_usage`: `sizeof(bpf_array) + max_entries × round_up(value, 8)`.
//! - per-CPU array: `sizeof(bpf_array) + max_entries × (8 + round_up(value, 8) × cpus)`.
//! - LPM trie: `trie_mem_usage`: `n_entries × (sizeof(lpm_trie_node) (24) + key − 4 +
//!   value)`; nodes are allocated on insert, so a new trie counts 0. The estimate is the
//!   full trie (`max_entries` nodes; intermediate nodes are not counted by the kernel).
//! - ring buffer: `ringbuf_map_mem_usage`: `sizeof(bpf_ringbuf_map) + (3 + data pages) ×
//!   4096 + (3 + 2 × data pages) × 8` (3 meta pages; data pages mapped twice).
//!
//! The `sizeof` of the kernel's map structs depends on its version and config; the
//! values below were measured on 6.18 (x86_64) and only matter for the small maps.

use std::fmt::Write as _;

use detector_common::{
    config::Config as KernelConfig,
    counters::COUNTER_SLOTS,
    names,
    policy::IfacePolicy,
    sample,
    state::{FlowKey, PendingFlow, SourceKey, SourceState},
    synack::OptionScratch,
};

use super::Config;

/// `sizeof(struct htab_elem)` (kernel/bpf/hashtab.c).
const HTAB_ELEM: u64 = 48;
/// `sizeof(struct bucket)`: an `hlist_nulls_head` and a lock.
const HTAB_BUCKET: u64 = 16;
/// `HASHTAB_MAP_LOCK_COUNT` per-CPU `int` map-locks.
const HTAB_LOCKS: u64 = 8;
/// `sizeof(struct bpf_htab)`, `sizeof(struct bpf_array)`,
/// `sizeof(struct bpf_ringbuf_map)`: measured (see the module comment).
const HTAB_STRUCT: u64 = 832;
const ARRAY_STRUCT: u64 = 312;
const RINGBUF_STRUCT: u64 = 304;
/// `sizeof(struct lpm_trie_node)` without its data.
const LPM_NODE: u64 = 24;
const PAGE: u64 = 4096;
/// Maps the program declares with fixed sizes (detector-ebpf/src/policy.rs, aya-log).
const PORT_SLOTS: u32 = 1 << 16;
const IFACES_CAPACITY: u32 = 256;
const LOG_RING_BYTES: u32 = 1 << 17;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Hash,
    LruHash,
    Array,
    PerCpuArray,
    LpmTrie,
    RingBuf,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Hash => "hash",
            Kind::LruHash => "lru_hash",
            Kind::Array => "array",
            Kind::PerCpuArray => "percpu_array",
            Kind::LpmTrie => "lpm_trie",
            Kind::RingBuf => "ringbuf",
        }
    }
}

/// One map as the kernel creates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    pub name: &'static str,
    pub kind: Kind,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

fn round8(n: u32) -> u64 {
    u64::from(n).next_multiple_of(8)
}

fn size_of<T>() -> u32 {
    u32::try_from(std::mem::size_of::<T>()).expect("a map type of less than 4 GiB")
}

impl MapShape {
    /// Bytes the kernel counts for this map when full (`cpus`: possible CPUs).
    pub fn bytes(&self, cpus: u64) -> u64 {
        self.bytes_with(cpus, u64::from(self.max_entries))
    }

    /// As `bytes`, with `trie_nodes` nodes in an LPM trie (the kernel counts a new trie
    /// as empty); other kinds allocate everything at creation.
    pub fn bytes_with(&self, cpus: u64, trie_nodes: u64) -> u64 {
        let entries = u64::from(self.max_entries);
        let (key, value) = (round8(self.key_size), round8(self.value_size));
        match self.kind {
            Kind::Hash | Kind::LruHash => {
                let lru = self.kind == Kind::LruHash;
                let buckets = entries.next_power_of_two();
                let elements = if lru { entries } else { entries + cpus };
                let spares = if lru { 0 } else { 8 * cpus };
                HTAB_STRUCT
                    + HTAB_BUCKET * buckets
                    + 4 * cpus * HTAB_LOCKS
                    + (HTAB_ELEM + key + value) * elements
                    + spares
            }
            Kind::Array => ARRAY_STRUCT + entries * value,
            Kind::PerCpuArray => ARRAY_STRUCT + entries * (8 + value * cpus),
            Kind::LpmTrie => {
                trie_nodes * (LPM_NODE + u64::from(self.key_size) - 4 + u64::from(self.value_size))
            }
            Kind::RingBuf => {
                let data_pages = entries / PAGE;
                RINGBUF_STRUCT + (3 + data_pages) * PAGE + (3 + 2 * data_pages) * 8
            }
        }
    }
}

/// Every map of the program with this configuration's sizes.
pub fn maps(cfg: &Config) -> Vec<MapShape> {
    let m = &cfg.file.maps;
    let shape = |name, kind, key_size, value_size, max_entries| MapShape {
        name,
        kind,
        key_size,
        value_size,
        max_entries,
    };
    vec![
        shape(names::MAP_SOURCES, Kind::LruHash, size_of::<SourceKey>(), size_of::<SourceState>(), m.sources),
        shape(names::MAP_PENDING, Kind::LruHash, size_of::<FlowKey>(), size_of::<PendingFlow>(), m.pending),
        shape(names::MAP_SKETCH, Kind::Array, 4, 8, cfg.sketch_words()),
        shape(names::MAP_PENDING_FILTER, Kind::Array, 4, 4, names::PENDING_FILTER_BUCKETS),
        shape(names::MAP_BLOCK_FILTER, Kind::Array, 4, 4, names::BLOCK_FILTER_SLOTS),
        shape(
            names::MAP_BLOCKED_TABLE,
            Kind::Array,
            4,
            size_of::<detector_common::blocked_table::BlockedBucket>(),
            detector_common::blocked_table::BLOCKED_TABLE_BUCKETS,
        ),
        shape(names::MAP_CONFIG, Kind::Array, 4, size_of::<KernelConfig>(), 1),
        shape(names::MAP_COUNTERS, Kind::PerCpuArray, 4, 8, COUNTER_SLOTS),
        shape(names::MAP_COOKIE_BUDGET, Kind::Array, 4, 16, 1),
        shape(
            names::MAP_COOKIE_RENEWALS,
            Kind::PerCpuArray,
            4,
            size_of::<detector_common::fastpath::RenewalSlot>(),
            detector_common::fastpath::RENEWAL_SLOTS,
        ),
        shape(
            names::MAP_CLOSED_FILTER,
            Kind::Array,
            4,
            size_of::<detector_common::closed_filter::ClosedLine>(),
            cfg.closed_filter_entries(),
        ),
        shape("OPTION_WALK", Kind::PerCpuArray, 4, size_of::<OptionScratch>(), 1),
        shape("EVENT_BUDGET", Kind::PerCpuArray, 4, 16, 1),
        shape(names::MAP_LOCAL_ADDRS, Kind::Hash, 16, 4, names::LOCAL_ADDRS_CAPACITY),
        shape(
            names::MAP_LOCAL_TABLE,
            Kind::Array,
            4,
            size_of::<detector_common::local_table::LocalBucket>(),
            detector_common::local_table::LOCAL_TABLE_BUCKETS,
        ),
        shape(names::MAP_PORT_POLICY, Kind::Array, 4, 4, PORT_SLOTS),
        shape(
            names::MAP_PORT_LIMITS,
            Kind::Hash,
            4,
            size_of::<detector_common::ports::PortLimits>(),
            names::PORT_LIMITS_CAPACITY,
        ),
        shape(names::MAP_KERNEL_DESTS, Kind::LpmTrie, 4 + 16, 4, names::KERNEL_DESTS_CAPACITY),
        shape(names::MAP_ALLOW, Kind::LpmTrie, 4 + 16, 4, names::LIST_CAPACITY),
        shape(names::MAP_DENY, Kind::LpmTrie, 4 + 16, 4, names::LIST_CAPACITY),
        shape(names::MAP_IFACES, Kind::Hash, 4, size_of::<IfacePolicy>(), IFACES_CAPACITY),
        shape("AYA_LOGS", Kind::RingBuf, 0, 0, LOG_RING_BYTES),
        shape(names::MAP_SAMPLES, Kind::RingBuf, 0, 0, sample::RING_BYTES),
        shape(names::MAP_SAMPLES_LOST, Kind::PerCpuArray, 4, 8, 1),
        shape(names::MAP_SAMPLE_SCRATCH, Kind::PerCpuArray, 4, size_of::<sample::SampleRecord>(), 1),
        shape(names::MAP_PORT_CONFIG, Kind::PerCpuArray, 4, size_of::<detector_common::config::Config>(), 1),
        shape(
            names::MAP_TICK_ANCHOR,
            Kind::PerCpuArray,
            4,
            size_of::<detector_common::tick_clock::TickAnchor>(),
            1,
        ),
    ]
}

/// Possible CPUs (per-CPU maps have a value for each), 1 if unknown.
pub fn possible_cpus() -> u64 {
    aya::util::nr_cpus().map_or(1, |n| n as u64)
}

/// The table `check-config` prints: one line per map, then the total.
pub fn report(cfg: &Config, cpus: u64) -> String {
    let mut out = format!("kernel memory of the maps ({cpus} possible CPUs; hash maps preallocated):\n");
    let mut total = 0;
    for m in maps(cfg) {
        let bytes = m.bytes(cpus);
        total += bytes;
        let _ = writeln!(
            out,
            "  {:<15} {:<13} key {:>2} B  value {:>2} B  {:>10} {:<7}  {:>10}",
            m.name,
            m.kind.as_str(),
            m.key_size,
            m.value_size,
            m.max_entries,
            // A ring buffer's max_entries is its size in bytes.
            if m.kind == Kind::RingBuf { "bytes" } else { "entries" },
            human(bytes)
        );
    }
    let _ = writeln!(out, "  {:<15} {:>68}", "total", human(total));
    out
}

/// Bytes in binary units, one decimal.
pub fn human(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss, reason = "a display value")]
    let b = bytes as f64;
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", b / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", b / 1_048_576.0),
        _ => format!("{:.2} GiB", b / 1_073_741_824.0),
    }
}

#[cfg(test)]
#[path = "memory_tests.rs"]
mod tests;
