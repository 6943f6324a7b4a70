//! Names by which the agent finds the program and its maps in the object file.

/// The XDP entry point.
pub const PROGRAM: &str = "syndetector";

/// `Array<Config>`, one slot, written by the agent.
pub const MAP_CONFIG: &str = "CONFIG";
/// `PerCpuArray<u64>` with `counters::COUNTER_SLOTS` slots.
pub const MAP_COUNTERS: &str = "COUNTERS";
/// `LruHashMap<SourceKey, SourceState>`; size from config.
pub const MAP_SOURCES: &str = "SOURCES";
/// `LruHashMap<FlowKey, PendingFlow>`; size from config.
pub const MAP_PENDING: &str = "PENDING";
/// `Array<u32>`: per flow-hash bucket, the second (of `bpf_ktime_get_ns`) of the last SYN
/// that hashed there. An ACK looks up `PENDING` only when its bucket saw a SYN recently,
/// which keeps the established-traffic path to one array read.
pub const MAP_PENDING_FILTER: &str = "PENDING_FILTER";
/// Buckets in `PENDING_FILTER` (a power of two).
pub const PENDING_FILTER_BUCKETS: u32 = 1 << 16;
/// `Array<u64>` of `sketch::SKETCH_ROWS × Config::sketch_width` cells; size from config.
pub const MAP_SKETCH: &str = "SKETCH";
