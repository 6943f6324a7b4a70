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
/// `Array<u32>`: per source-hash bucket, the end (a `block_filter::stamp`) of the latest
/// block of a source that hashes there, and past the buckets one slot with the latest end
/// of all (`block_filter::LATEST_SLOT`). A SYN in cookie mode looks its source up in
/// `SOURCES` only when both hold a block still running.
pub const MAP_BLOCK_FILTER: &str = "BLOCK_FILTER";
/// Buckets in `BLOCK_FILTER` (a power of two).
pub const BLOCK_FILTER_BUCKETS: u32 = 1 << 16;
/// Entries of `BLOCK_FILTER`: the buckets and the slot after them.
pub const BLOCK_FILTER_SLOTS: u32 = BLOCK_FILTER_BUCKETS + 1;
/// `Array<blocked_table::BlockedBucket>` of `blocked_table::BLOCKED_TABLE_BUCKETS`: running
/// blocks cached for the blocked drop, so that it skips the `SOURCES` lookup. Not pinned.
pub const MAP_BLOCKED_TABLE: &str = "BLOCKED_TABLE";
/// `Array<u64>` of `sketch::SKETCH_ROWS × Config::sketch_width` cells; size from config.
pub const MAP_SKETCH: &str = "SKETCH";
/// `HashMap<[u8; 16], u32>`: the host's own addresses in the agent's network namespace
/// (IPv4 mapped into IPv6, network order; value 1), kept current by the agent from
/// rtnetlink address events. Cookies answer only SYNs to these: a forwarded SYN matches a
/// wildcard listener too, but its handshake belongs to another machine.
pub const MAP_LOCAL_ADDRS: &str = "LOCAL_ADDRS";
/// Capacity of `LOCAL_ADDRS`.
pub const LOCAL_ADDRS_CAPACITY: u32 = 4_096;
/// `Array<local_table::LocalBucket>` of `local_table::LOCAL_TABLE_BUCKETS`: the same
/// addresses as `LOCAL_ADDRS`, placed by `local_table::place`, so the program checks them
/// without a hash lookup; a bucket that overflowed sends the check to `LOCAL_ADDRS`.
pub const MAP_LOCAL_TABLE: &str = "LOCAL_TABLE";
/// `Array<u32>`, one slot per TCP port (host order index): a `policy::PORT_*` value.
/// `PORT_KERNEL` for ports published by DNAT/redirect rules or listed by the operator.
pub const MAP_PORT_POLICY: &str = "PORT_POLICY";
/// `LpmTrie<[u8; 16], u32>`: destination prefixes (IPv4-mapped, so an IPv4 /n is /96+n)
/// whose SYNs are always left to the kernel (DNAT'd addresses, operator's list); value 1.
pub const MAP_KERNEL_DESTS: &str = "KERNEL_DESTS";
/// Capacity of `KERNEL_DESTS`.
pub const KERNEL_DESTS_CAPACITY: u32 = 1_024;
/// `HashMap<u32, policy::IfacePolicy>`, keyed by ifindex: what the agent learnt about each
/// interface the program is attached to (e.g. that the NIC strips VLAN tags).
pub const MAP_IFACES: &str = "IFACES";
/// `Array<[u64; 2]>`, one slot: [start of the current second, SYN-ACKs sent in it], shared
/// by all CPUs so the budget holds host-wide.
pub const MAP_COOKIE_BUDGET: &str = "COOKIE_BUDGET";
/// `LpmTrie<[u8; 16], u32>`: source prefixes (IPv4-mapped, so an IPv4 /n is /96+n) that
/// are always passed, never dropped nor answered with cookies; value 1. See `lists`.
pub const MAP_ALLOW: &str = "ALLOW";
/// `LpmTrie<[u8; 16], u32>`: source prefixes whose every IP packet is dropped (operator's
/// deny list and `block` entries); value 1. See `lists`.
pub const MAP_DENY: &str = "DENY";
/// Capacity of `ALLOW` and of `DENY` each (LPM tries allocate per entry, not up front).
pub const LIST_CAPACITY: u32 = 16_384;

/// `RingBuf` of `sample::SampleRecord`s (`sample::RING_BYTES`): 1 in `Config::sample_one_in`
/// dropped or cookie-answered frames, as received, for the agent's capture files.
pub const MAP_SAMPLES: &str = "SAMPLES";
/// `PerCpuArray<u64>`, one slot: samples lost because `SAMPLES` was full.
pub const MAP_SAMPLES_LOST: &str = "SAMPLES_LOST";
/// `PerCpuArray<sample::SampleRecord>`, one slot: the frame captured before the verdict.
pub const MAP_SAMPLE_SCRATCH: &str = "SAMPLE_SCRATCH";

/// Hash map: destination port (u32, host order) → `ports::PortLimits`. Not pinned: the
/// agent rewrites it from its config on every poll.
pub const MAP_PORT_LIMITS: &str = "PORT_LIMITS";
pub const PORT_LIMITS_CAPACITY: u32 = 1_024;
/// `PerCpuArray<Config>`, one slot: the config with a port's own limits, for the SYN
/// the tracking path is judging (a copy off the stack; cookie mode makes none). Not pinned.
pub const MAP_PORT_CONFIG: &str = "PORT_CONFIG";
/// `PerCpuArray<tick_clock::TickAnchor>`, one slot: the CPU's coarse time and the jiffies
/// it was read at (`tick_clock`). Not pinned.
pub const MAP_TICK_ANCHOR: &str = "TICK_ANCHOR";

/// `PerCpuArray<fastpath::RenewalSlot>` of `fastpath::RENEWAL_SLOTS`, direct-mapped by
/// `fastpath::renewal_index`: per slot, the listener the socket-bound cookie helper last
/// answered for there (renewing its overflow stamp) and when; the raw helper answers for
/// it within a second of that. Written by the program only; not pinned (it refills itself).
pub const MAP_COOKIE_RENEWALS: &str = "COOKIE_RENEWALS";
/// `Array<closed_filter::ClosedLine>` of `closed_filter::CLOSED_FILTER_LINES`: a blocked
/// Bloom filter of when clients last sent us a FIN (`closed_filter`); such tuples may be in
/// TIME_WAIT and take the socket lookup. Written by the program, and by the agent once
/// after attaching (the kernel's TIME_WAIT sockets, `control::time_wait`). Pinned: a
/// restart must not forget the FINs the old program saw.
pub const MAP_CLOSED_FILTER: &str = "CLOSED_FILTER";

/// The layout of the maps the agent pins (docs/operations.md): a restarted agent whose
/// version equals the pinned one adopts the pinned maps (counters and per-source state
/// survive); any other version loads fresh maps and switches the link to its program.
///
/// Bump it whenever a pinned map changes in a way the other side could misread: a map
/// added, removed or renamed; its type, key or value type (a field added, removed,
/// reordered or resized in a `#[repr(C)]` type such as `SourceState` or `Config`); the
/// meaning of a slot (e.g. a `counters` index) or of a value. Map sizes are not part of
/// it: the agent compares them itself and loads fresh maps when they differ.
/// 5: `COUNTERS` gained `cookie_fast` and `ack_shield` (slots 36 and 37).
/// 6: `CLOSED_FILTER` pinned; `Config` flag `FLAG_RAW_COOKIES`.
/// 7: `Config` flags `FLAG_NO_KERNEL_DESTS`, `FLAG_NO_IFACE_POLICY`; `BLOCK_FILTER` and
///    `LOCAL_TABLE` pinned (an older program would not read them; a newer one needs them filled);
///    `filter::bucket` is word-wise (`words::hash`): `PENDING_FILTER` and `CLOSED_FILTER`
///    buckets mean other flows; sketch rows from one keyed hash (`sketch::Rows`): a source's
///    `SKETCH` cells are other cells.
/// 8: `BLOCK_FILTER` has a slot past its buckets, the latest block end of all
///    (`block_filter::LATEST_SLOT`): an older filter has none, and a newer program would
///    read its zero as "nothing blocked".
/// 9: `CLOSED_FILTER` holds lines of 64 one-byte stamps (`closed_filter::ClosedLine`), a
///    flow's FIN three of them, instead of one stamp per bucket; `COUNTERS` gained
///    `closed_filter_lookup` (slot 38).
/// 10: `CLOSED_FILTER` has its lines' latest stamps after its lines (`closed_filter::entries`),
///    which a SYN reads before its line: an older filter has none, and its FINs would be
///    skipped by a newer program's check. `SKETCH`'s first row is packed, four 16-bit cells
///    a word (`sketch::words`): an older sketch's words would read as other cells.
pub const LAYOUT_VERSION: u32 = 10;

/// The maps pinned under `<pin_dir>/maps-v<LAYOUT_VERSION>/`: the state a restart keeps.
/// The log ring buffer and the per-CPU scratch maps hold nothing worth keeping.
pub const PINNED_MAPS: [&str; 16] = [
    MAP_CONFIG,
    MAP_COUNTERS,
    MAP_SOURCES,
    MAP_PENDING,
    MAP_PENDING_FILTER,
    MAP_SKETCH,
    MAP_LOCAL_ADDRS,
    MAP_LOCAL_TABLE,
    MAP_PORT_POLICY,
    MAP_KERNEL_DESTS,
    MAP_IFACES,
    MAP_COOKIE_BUDGET,
    MAP_ALLOW,
    MAP_DENY,
    MAP_CLOSED_FILTER,
    MAP_BLOCK_FILTER,
];
