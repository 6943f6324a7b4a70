//! The bench's cases: what each one sends (the SYN as Linux sends it, an ACK, the source
//! of each packet), the program instance it runs on (its config, local addresses and
//! blocked sources written first), one timed test run, and the counters that prove a path.
//! Shared by the per-path cases (`bench_rounds`), the compare harness, the samples part and
//! the selftest peer.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use aya::{
    maps::{Array, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use detector_common::{
    config::{Config, FLAG_COOKIES},
    counters::Counter,
    local_table::{self, LocalBucket},
    names, sketch,
    state::{SourceKey, SourceState},
};

pub(crate) const BENCH_PORT: u16 = 8080;

pub(crate) const SEC: u64 = 1_000_000_000;

/// One timed case: which program, what config, which packets, what it must have done.
pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) program: &'static str,
    pub(crate) config: Option<Config>,
    pub(crate) family: Family,
    pub(crate) sources: u32,
    /// The verdict every packet must get (XDP_PASS = 2, XDP_TX = 3).
    pub(crate) verdict: u32,
    /// For the detector: the counter that must have counted every packet.
    pub(crate) path: Option<Counter>,
    /// The SYN carries `FLOOR_PADDING` bytes after its headers: the floors need them (they
    /// read 60 bytes of TCP header whatever its length), and one cookie case times what a
    /// padded SYN costs the responder (the frame is cut to the reply by the helpers).
    pub(crate) padded: bool,
    /// Connections whose client FIN the closed filter saw just now, as on a server that
    /// closes connections all the time (`stamp_closed_filter`).
    pub(crate) closed_flows: u32,
}

#[derive(Clone, Copy)]
pub(crate) enum Family {
    V4,
    V6,
}

/// One BPF_PROG_TEST_RUN of `prog` on `frame` (the reply in `out`): its kernel-measured
/// time, once it is checked that the program gave `verdict` (`what` names the run in the
/// error, e.g. the case and the packet).
pub(crate) fn timed_run(
    prog: &Xdp,
    frame: &[u8],
    out: &mut [u8],
    verdict: u32,
    what: &dyn std::fmt::Display,
) -> Result<Duration> {
    let result = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(out),
        ..TestRunOptions::default()
    })?;
    ensure!(result.return_value == verdict, "{what}: verdict {}, expected {verdict}", result.return_value);
    Ok(result.duration)
}

pub(crate) fn detector_config(rate_limit: u32) -> Config {
    let mut c = Config::new(rate_limit, 0, 60 * SEC, 3 * SEC);
    c.sketch_width = 16_384;
    c.sketch_seed = 0x5eed_1234;
    // As the agent derives it (cookie mode's cascade; tracking ignores it).
    c.sketch_hot_mark = sketch::hot_mark(rate_limit);
    c.cookie_budget_per_second = u32::MAX;
    c.synack_wscale = 7;
    c
}

/// A fresh instance of `object` (fresh maps) with `case.program` verified, the case's
/// config written, the bench destinations made local and, for the blocked-drop cases,
/// every source of the case blocked.
pub(crate) fn load_case(object: &[u8], case: &Case) -> Result<Ebpf> {
    // As many words as rows of unpacked cells: this build uses the first
    // `sketch::words(16_384)` of them, and an older object compared (`--compare`,
    // `--object`), whose first row is a word a cell, finds its later rows.
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(names::MAP_SKETCH, sketch::SKETCH_ROWS * 16_384)
        .load(object)
        .context("loading the object")?;
    let prog: &mut Xdp = ebpf
        .program_mut(case.program)
        .with_context(|| format!("no program {} in the object", case.program))?
        .try_into()?;
    prog.load().with_context(|| format!("verifying {}", case.program))?;
    if let Some(cfg) = case.config {
        let mut map: Array<_, Config> = Array::try_from(ebpf.map_mut(names::MAP_CONFIG).context("CONFIG")?)?;
        map.set(0, cfg, 0)?;
        // The bench SYNs' destinations are "ours", as the agent would record them; any
        // other destination passes as not_local before the paths measured here.
        make_local(
            &mut ebpf,
            &[
                detector_common::parse::ipv4_mapped([198, 18, 0, 1]),
                [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            ],
        )?;
    }
    // Every source of the case blocked for good before the first packet: in the real
    // program's SOURCES, or in the drop floor's copy of it.
    let blocked_map = match (case.path, case.program) {
        (Some(Counter::DropBlocked), _) => Some(names::MAP_SOURCES),
        (_, "baseline_drop_floor") => Some("FLOOR_SOURCES"),
        _ => None,
    };
    if case.closed_flows != 0 {
        stamp_closed_filter(&mut ebpf, case.closed_flows)?;
    }
    if case.program == "baseline_drop_table_floor" {
        fill_floor_table(&mut ebpf, case)?;
    }
    if let Some(map) = blocked_map {
        let mut sources: aya::maps::HashMap<_, SourceKey, SourceState> =
            aya::maps::HashMap::try_from(ebpf.map_mut(map).context("the blocked sources' map")?)?;
        let (mut frame, cfg) = (syn_frame(case.family), case.config.unwrap_or_else(|| detector_config(1)));
        for n in 0..case.sources {
            set_source(&mut frame, case.family, n);
            sources.insert(
                source_of(&frame, case.family),
                SourceState { blocked_until_ns: u64::MAX, ..SourceState::new(0, &cfg) },
                0,
            )?;
        }
        if map == names::MAP_SOURCES {
            stamp_blocks(&mut ebpf, case)?;
        }
    }
    Ok(ebpf)
}

/// The block filter's stamps for the case's blocked sources, as the program's own blocks
/// leave them (`note_block`): their buckets and the latest slot, so that the program knows
/// blocks run (the block cache is read only then).
fn stamp_blocks(ebpf: &mut Ebpf, case: &Case) -> Result<()> {
    use detector_common::block_filter;
    let mut filter: Array<_, u32> =
        Array::try_from(ebpf.map_mut(names::MAP_BLOCK_FILTER).context("BLOCK_FILTER")?)?;
    let stamp = block_filter::stamp(u64::MAX, monotonic_ns()?);
    let mut frame = syn_frame(case.family);
    for n in 0..case.sources {
        set_source(&mut frame, case.family, n);
        for at in block_filter::slots(&source_of(&frame, case.family).addr) {
            filter.set(at, stamp, 0)?;
        }
    }
    Ok(())
}

/// `CLOCK_MONOTONIC` in ns: the program's clock, which its stamps are compared with.
pub(crate) fn monotonic_ns() -> Result<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a timespec to write.
    ensure!(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) } == 0, "clock_gettime");
    Ok(u64::try_from(ts.tv_sec)? * 1_000_000_000 + u64::try_from(ts.tv_nsec)?)
}

/// Stamps `flows` client FINs into the closed filter, as the program would have just now:
/// flows of other clients than the case's (198.19.0.0/16, inside the lab's range but
/// above the few-source cases' clients; pseudo-random, the same in every run and for every
/// object compared). A SYN whose cells they all stamped may reuse a tuple in
/// `TIME_WAIT` for all the filter knows: it takes the socket-bound path (a listener lookup)
/// instead of the raw helper (docs/cookies.md).
fn stamp_closed_filter(ebpf: &mut Ebpf, flows: u32) -> Result<()> {
    use detector_common::{
        closed_filter::{self, ClosedLine},
        parse::ipv4_mapped,
        state::FlowKey,
    };
    let mut filter: Array<_, ClosedLine> =
        Array::try_from(ebpf.map_mut(names::MAP_CLOSED_FILTER).context("CLOSED_FILTER")?)?;
    let stamp = closed_filter::stamp(monotonic_ns()?);
    let mut lines = std::collections::HashMap::<u32, ClosedLine>::new();
    // xorshift64: the same flows in every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..flows {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let [a, b, p0, p1, ..] = x.to_le_bytes();
        let flow = FlowKey {
            src: ipv4_mapped([198, 19, a, b]),
            dst: ipv4_mapped([198, 18, 0, 1]),
            src_port: u16::from_le_bytes([p0, p1]),
            dst_port: BENCH_PORT,
        };
        // The bench's configs leave the filter at its default size, as its map is.
        for (entry, cell) in closed_filter::spot(&flow, closed_filter::DEFAULT_LINE_BITS).fin_bytes() {
            lines.entry(entry).or_default().cells[cell] = stamp;
        }
    }
    // An older object compared (`--compare`) has no latest stamps after its lines.
    let len = filter.len();
    for (at, line) in lines.into_iter().filter(|&(at, _)| at < len) {
        filter.set(at, line, 0)?;
    }
    Ok(())
}

/// The table drop floor's copy of the blocked sources: each in a free slot of its bucket
/// (two per bucket), blocked for good (`baseline_drop_table_floor` in baseline.rs).
fn fill_floor_table(ebpf: &mut Ebpf, case: &Case) -> Result<()> {
    use detector_common::blocked_table::BlockedBucket;
    let mut table: Array<_, BlockedBucket> =
        Array::try_from(ebpf.map_mut("FLOOR_TABLE").context("the table drop floor's map")?)?;
    let mut frame = syn_frame(case.family);
    for n in 0..case.sources {
        set_source(&mut frame, case.family, n);
        let addr = source_of(&frame, case.family).addr;
        let at = detector_common::block_filter::bucket(&addr);
        let mut bucket = table.get(&at, 0)?;
        // `place` would give up a block to make room: every source must be in the table.
        ensure!(
            bucket.slots.iter().any(|slot| slot.until_ns == 0),
            "the table drop floor's bucket {at} is full"
        );
        bucket.place(detector_common::parse::two_words(addr), u64::MAX);
        table.set(at, bucket, 0)?;
    }
    Ok(())
}

/// ACK cases (by their path) send ACKs, not SYNs.
pub(crate) fn is_ack(case: &Case) -> bool {
    matches!(case.path, Some(Counter::PassTcp | Counter::DropAckShield))
}

/// The case's frame, before `set_source` picks each packet's source: a SYN, or for the
/// ACK cases an ACK (under cookies to a port nobody listens on, so the shield's socket
/// lookup runs and finds no owner).
pub(crate) fn case_template(case: &Case) -> Vec<u8> {
    let mut template = syn_frame(case.family);
    if case.padded {
        template.resize(template.len() + FLOOR_PADDING, 0);
    }
    if is_ack(case) {
        let th = match case.family {
            Family::V4 => 34,
            Family::V6 => 54,
        };
        template[th + 13] = 0x10;
        if case.path == Some(Counter::PassTcp) && case.config.is_some_and(|c| c.has(FLAG_COOKIES)) {
            template[th + 2..th + 4].copy_from_slice(&(BENCH_PORT + 1).to_be_bytes());
        }
    }
    template
}

/// Makes `addrs` local as the agent would: in `LOCAL_ADDRS`, and in `LOCAL_TABLE` placed
/// by `local_table::place`. An object from before `LOCAL_TABLE` (`--object` with an older
/// build) gets the hash map alone, which is all it reads.
pub fn make_local(ebpf: &mut Ebpf, addrs: &[[u8; 16]]) -> Result<()> {
    let mut local: aya::maps::HashMap<_, [u8; 16], u32> =
        aya::maps::HashMap::try_from(ebpf.map_mut(names::MAP_LOCAL_ADDRS).context("LOCAL_ADDRS")?)?;
    for addr in addrs {
        local.insert(addr, 1, 0)?;
    }
    if let Some(table) = ebpf.map_mut(names::MAP_LOCAL_TABLE) {
        let mut table: Array<_, LocalBucket> = Array::try_from(table)?;
        for (index, bucket) in local_table::place(addrs) {
            table.set(index, bucket, 0)?;
        }
    }
    Ok(())
}

/// The source address of a bench frame, as the program keys it.
pub(crate) fn source_of(frame: &[u8], family: Family) -> SourceKey {
    let mut addr = [0u8; 16];
    match family {
        Family::V4 => {
            addr[10..12].copy_from_slice(&[0xff, 0xff]);
            addr[12..].copy_from_slice(&frame[26..30]);
        }
        Family::V6 => addr.copy_from_slice(&frame[22..38]),
    }
    SourceKey { addr }
}

pub(crate) fn counter(ebpf: &Ebpf, counter: Counter) -> Result<u64> {
    let map: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.map(names::MAP_COUNTERS).context("COUNTERS")?)?;
    Ok(map.get(&(counter as u32), 0)?.iter().sum())
}

/// What the floors' SYNs carry after their headers, so that they can read 60 bytes of TCP
/// header whatever its length (`baseline.rs`, `floor_headers`).
const FLOOR_PADDING: usize = 20;

/// An untagged SYN from a client to BENCH_PORT as Linux sends it: the options MSS,
/// SACK-permitted, timestamp and window scale (a 40-byte TCP header), nothing after it,
/// 74 bytes for IPv4. Checksums are not checked on this path, so they stay zero.
pub(crate) fn syn_frame(family: Family) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    let tcp_len = 40u16;
    match family {
        Family::V4 => {
            f.extend_from_slice(&[0x08, 0x00]);
            f.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0]);
            f[16..18].copy_from_slice(&(20 + tcp_len).to_be_bytes());
            f.extend_from_slice(&[198, 18, 0, 2, 198, 18, 0, 1]);
        }
        Family::V6 => {
            f.extend_from_slice(&[0x86, 0xdd]);
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&tcp_len.to_be_bytes());
            f.extend_from_slice(&[6, 64]);
            f.extend_from_slice(&[0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
            f.extend_from_slice(&[0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        }
    }
    f.extend_from_slice(&40_000u16.to_be_bytes());
    f.extend_from_slice(&BENCH_PORT.to_be_bytes());
    f.extend_from_slice(&1000u32.to_be_bytes());
    f.extend_from_slice(&0u32.to_be_bytes());
    f.extend_from_slice(&[(10 << 4), 0x02, 0xfa, 0xf0, 0, 0, 0, 0]);
    f.extend_from_slice(&[2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0x30, 0x39, 0, 0, 0, 0, 1, 3, 3, 7]);
    f
}

/// Makes the frame's source the `n`th address of the bench population: inside
/// 198.18.0.0/15 for IPv4 (at most 2^17 sources), 2001:2::/48 for IPv6.
pub(crate) fn set_source(frame: &mut [u8], family: Family, n: u32) {
    match family {
        Family::V4 => {
            let addr = 0xc612_0000 | (n & 0x1_ffff);
            frame[26..30].copy_from_slice(&addr.to_be_bytes());
        }
        Family::V6 => frame[34..38].copy_from_slice(&n.to_be_bytes()),
    }
}
