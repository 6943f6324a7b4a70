//! `cargo xtask bench`: nanoseconds per packet for each path of the XDP program, measured
//! in one run against baseline programs from the same object, printed with ratios.
//!
//! Method (docs/verifier.md for why): one BPF_PROG_TEST_RUN call per fresh packet
//! (`repeat = 1`: XDP_TX rewrites the packet, so repeating would time another path), the
//! kernel-measured duration averaged, minus a trivial XDP_PASS timed the same way; after
//! each case the program's path counters are read to prove which path ran. Everything
//! runs in a private network namespace (listener sockets, `tcp_syncookies = 2`), which
//! disappears with the process: the host is not touched. First, `bench_verifier` reports
//! what loading each program costs (instructions the verifier processed, load time).

use std::{collections::HashSet, net::TcpListener, path::Path, time::Duration};

use anyhow::{bail, ensure, Context, Result};
use aya::{
    maps::{Array, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use detector_common::{
    config::{Config, FLAG_COOKIES, FLAG_COOKIE_TIMESTAMPS, FLAG_ENFORCE},
    counters::Counter,
    names,
    sketch::{self, SKETCH_ROWS},
    state::{SourceKey, SourceState},
};

const BENCH_PORT: u16 = 8080;
const SEC: u64 = 1_000_000_000;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Fresh packets timed per case.
    #[arg(long, default_value_t = 200_000)]
    pub packets: u32,
    /// Distinct sources in the large-population cases (IPv6, inside 2001:2::/48).
    #[arg(long, default_value_t = 1_000_000)]
    pub many_sources: u32,
    /// Distinct sources in the small-population cases.
    #[arg(long, default_value_t = 1_000)]
    pub few_sources: u32,
    /// Loads per program for the verifier figures (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub loads: usize,
    /// Only the verifier figures: skip the per-path timings and the agent's part.
    #[arg(long)]
    pub verifier_only: bool,
    /// Skip the agent's part (poll and scrape times), which builds the release agent.
    #[arg(long)]
    pub no_agent: bool,
    /// Bench this object instead of the one just built, e.g. an older build to compare.
    #[arg(long)]
    pub object: Option<std::path::PathBuf>,
}

/// One timed case: which program, what config, which packets, what it must have done.
struct Case {
    name: &'static str,
    program: &'static str,
    config: Option<Config>,
    family: Family,
    sources: u32,
    /// The verdict every packet must get (XDP_PASS = 2, XDP_TX = 3).
    verdict: u32,
    /// For the detector: the counter that must have counted every packet.
    path: Option<Counter>,
}

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

pub fn main(args: &BenchArgs, object: &Path) -> Result<()> {
    let object = args.object.as_deref().unwrap_or(object);
    ensure!(geteuid() == 0, "the benchmark loads BPF programs and makes a network namespace: run it as root");
    let bytes = std::fs::read(object).with_context(|| {
        format!("reading {} (build it with `cargo xtask build-ebpf --release`)", object.display())
    })?;
    crate::bench_verifier::main(object, args.loads)?;
    if args.verifier_only {
        return Ok(());
    }
    enter_private_netns()?;
    // Dual-stack (bindv6only is 0 in a fresh namespace): one listener serves both families.
    let _listener = TcpListener::bind(("::", BENCH_PORT)).context("bench listener")?;

    // A SYN-rate limit, or the cookie path skips the sketch altogether. No source can
    // reach it: no case sends more SYNs than this, and a sketch estimate never exceeds
    // the SYNs counted.
    let cookie = {
        let mut c = detector_config(args.packets.max(args.many_sources));
        c.flags = FLAG_ENFORCE | FLAG_COOKIES | FLAG_COOKIE_TIMESTAMPS;
        c
    };
    let tracked = detector_config(0);
    let cookie_mss = Config { flags: FLAG_ENFORCE | FLAG_COOKIES, ..cookie };
    let (few, many) = (args.few_sources, args.many_sources);
    #[rustfmt::skip]
    let cases = [
        Case { name: "trivial XDP_PASS (subtracted from all)", program: "baseline_pass", config: None, family: Family::V4, sources: few, verdict: 2, path: None },
        Case { name: "trivial XDP_TX (MAC swap)", program: "baseline_tx", config: None, family: Family::V4, sources: few, verdict: 3, path: None },
        Case { name: "helper floor (lookup + cookie helper)", program: "baseline_helper_floor", config: None, family: Family::V4, sources: few, verdict: 3, path: None },
        Case { name: "cookie path, IPv4, TS options", program: names::PROGRAM, config: Some(cookie), family: Family::V4, sources: few, verdict: 3, path: Some(Counter::TxCookieFast) },
        Case { name: "cookie path, IPv6, few sources", program: names::PROGRAM, config: Some(cookie), family: Family::V6, sources: few, verdict: 3, path: Some(Counter::TxCookieFast) },
        Case { name: "cookie path, IPv6, many sources", program: names::PROGRAM, config: Some(cookie), family: Family::V6, sources: many, verdict: 3, path: Some(Counter::TxCookieFast) },
        Case { name: "tracked SYN, IPv6, few sources", program: names::PROGRAM, config: Some(tracked), family: Family::V6, sources: few, verdict: 2, path: Some(Counter::PassSyn) },
        Case { name: "tracked SYN, IPv6, many sources", program: names::PROGRAM, config: Some(tracked), family: Family::V6, sources: many, verdict: 2, path: Some(Counter::PassSyn) },
        Case { name: "cookie path, IPv4, MSS only", program: names::PROGRAM, config: Some(cookie_mss), family: Family::V4, sources: few, verdict: 3, path: Some(Counter::TxCookieFast) },
        Case { name: "trivial XDP_DROP", program: "baseline_drop", config: None, family: Family::V4, sources: few, verdict: 1, path: None },
        Case { name: "drop path, blocked source", program: names::PROGRAM, config: Some(tracked), family: Family::V4, sources: few, verdict: 1, path: Some(Counter::DropBlocked) },
        Case { name: "ACK, calm (no cookies)", program: names::PROGRAM, config: Some(tracked), family: Family::V4, sources: few, verdict: 2, path: Some(Counter::PassTcp) },
        Case { name: "ACK, cookies on, no owner (shield lookup)", program: names::PROGRAM, config: Some(cookie), family: Family::V4, sources: few, verdict: 2, path: Some(Counter::PassTcp) },
        Case { name: "forged cookie ACK, IPv4 (shield drop)", program: names::PROGRAM, config: Some(cookie), family: Family::V4, sources: few, verdict: 1, path: Some(Counter::DropAckShield) },
        Case { name: "forged cookie ACK, IPv6 (shield drop)", program: names::PROGRAM, config: Some(cookie), family: Family::V6, sources: few, verdict: 1, path: Some(Counter::DropAckShield) },
    ];

    println!(
        "{} fresh packets per case (at least one per source), one BPF_PROG_TEST_RUN each, kernel-measured time",
        args.packets
    );
    let mut results = Vec::new();
    for case in &cases {
        let ns = run_case(&bytes, case, args.packets)?;
        results.push(ns);
    }
    let base = results[0];
    println!("\n{:<44} {:>12} {:>14}", "path", "ns/packet", "minus PASS");
    for (case, ns) in cases.iter().zip(&results) {
        println!("{:<44} {:>12.1} {:>14.1}", case.name, ns, ns - base);
    }
    let net = |i: usize| (results[i] - base).max(0.1);
    println!("\nratios (each minus the trivial XDP_PASS):");
    println!("  cookie path IPv4 / helper floor        {:>8.2}", net(3) / net(2));
    println!("  cookie path IPv4 / trivial XDP_TX      {:>8.2}", net(3) / net(1));
    println!(
        "  cookie path: {many} / {few} sources  {:>8.2}   (flat = 1: the sketch's cost does not grow)",
        net(5) / net(4)
    );
    println!(
        "  tracked SYN: {many} / {few} sources  {:>8.2}   (LRU churn when sources outnumber the map)",
        net(7) / net(6)
    );
    let raw = |i: usize, j: usize| results[i] / results[j];
    println!("  cookie fast path IPv4 MSS only / helper floor {:>8.2}", net(8) / net(2));
    println!("  cookie fast path IPv6 / helper floor   {:>8.2}", net(4) / net(2));
    println!("  drop path / trivial XDP_DROP (raw)     {:>8.2}", raw(10, 9));
    println!("  ACK calm / trivial XDP_PASS (raw)      {:>8.2}", raw(11, 0));
    println!("  ACK cookies on / trivial XDP_PASS (raw) {:>7.2}", raw(12, 0));
    if args.no_agent {
        return Ok(());
    }
    crate::bench_agent::main(args.many_sources)
}

fn detector_config(rate_limit: u32) -> Config {
    let mut c = Config::new(rate_limit, 0, 60 * SEC, 3 * SEC);
    c.sketch_width = 16_384;
    c.sketch_seed = 0x5eed_1234;
    c.cookie_budget_per_second = u32::MAX;
    c.synack_wscale = 7;
    c
}

/// A fresh program instance (fresh maps) per case, so cases do not see each other's state.
fn run_case(object: &[u8], case: &Case, packets: u32) -> Result<f64> {
    // Every source of the population at least once: a case claiming a million sources
    // sends a million packets even if fewer were asked for.
    let packets = packets.max(case.sources);
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(names::MAP_SKETCH, SKETCH_ROWS * 16_384)
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
        let mut local: aya::maps::HashMap<_, [u8; 16], u32> =
            aya::maps::HashMap::try_from(ebpf.map_mut(names::MAP_LOCAL_ADDRS).context("LOCAL_ADDRS")?)?;
        for server in [
            detector_common::parse::ipv4_mapped([198, 18, 0, 1]),
            [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        ] {
            local.insert(server, 1, 0)?;
        }
    }
    if case.path == Some(Counter::DropBlocked) {
        let mut sources: aya::maps::HashMap<_, SourceKey, SourceState> =
            aya::maps::HashMap::try_from(ebpf.map_mut(names::MAP_SOURCES).context("SOURCES")?)?;
        let (mut frame, cfg) = (syn_frame(case.family), case.config.context("config")?);
        for n in 0..case.sources {
            set_source(&mut frame, case.family, n);
            sources.insert(
                source_of(&frame, case.family),
                SourceState { blocked_until_ns: u64::MAX, ..SourceState::new(0, &cfg) },
                0,
            )?;
        }
    }
    let prog: &Xdp = ebpf.program(case.program).context("program")?.try_into()?;
    let mut template = syn_frame(case.family);
    // ACK cases (by their path): flags ACK; under cookies to a port nobody listens on, so
    // the shield's socket lookup runs and finds no owner.
    let ack = matches!(case.path, Some(Counter::PassTcp | Counter::DropAckShield));
    if ack {
        let th = match case.family {
            Family::V4 => 34,
            Family::V6 => 54,
        };
        template[th + 13] = 0x10;
        if case.path == Some(Counter::PassTcp) && case.config.is_some_and(|c| c.has(FLAG_COOKIES)) {
            template[th + 2..th + 4].copy_from_slice(&(BENCH_PORT + 1).to_be_bytes());
        }
    }
    let mut out = vec![0u8; 256];
    let mut total = Duration::ZERO;
    let mut sent_sources = HashSet::new();
    for i in 0..packets {
        set_source(&mut template, case.family, i % case.sources);
        sent_sources.insert(source_of(&template, case.family));
        let result = prog.test_run(TestRunOptions {
            data_in: Some(&template),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })?;
        if result.return_value != case.verdict {
            bail!("{}: packet {i} got verdict {}, expected {}", case.name, result.return_value, case.verdict);
        }
        total += result.duration;
    }
    if let Some(path) = case.path {
        // The fast path renews each listener with a socket-bound answer once a second.
        let renewals = if path == Counter::TxCookieFast { counter(&ebpf, Counter::TxCookie)? } else { 0 };
        let counted = counter(&ebpf, path)? + renewals;
        ensure!(
            counted == u64::from(packets),
            "{}: counter {path:?} saw {counted} of {packets} packets: another path ran",
            case.name
        );
    }
    ensure!(
        sent_sources.len() == case.sources as usize,
        "{}: {} distinct sources sent, the case claims {}",
        case.name,
        sent_sources.len(),
        case.sources
    );
    if let Some(cfg) = case.config.filter(|_| !ack) {
        check_state(&ebpf, case, &cfg, &sent_sources)?;
    }
    #[allow(clippy::cast_precision_loss, reason = "a duration in ns, far below 2^52")]
    Ok(total.as_nanos() as f64 / f64::from(packets))
}

/// What the program's maps say about the sources it saw: in cookie mode, the sketch cells
/// they occupy (the sketch ran, once per source and row); when tracking, one `SOURCES`
/// entry per source, up to the map's capacity. Printed, and checked against `sent`.
fn check_state(ebpf: &Ebpf, case: &Case, cfg: &Config, sent: &HashSet<SourceKey>) -> Result<()> {
    if cfg.has(FLAG_COOKIES) {
        let sketch: Array<_, u64> = Array::try_from(ebpf.map(names::MAP_SKETCH).context("SKETCH")?)?;
        let cells: Vec<u64> = sketch.iter().collect::<Result<_, _>>()?;
        let mut summary = Vec::new();
        for row in 0..SKETCH_ROWS {
            let expected: HashSet<u32> = sent.iter().map(|key| sketch::cell_index(key, row, cfg)).collect();
            let used: HashSet<u32> = (row * cfg.sketch_width..(row + 1) * cfg.sketch_width)
                .filter(|&i| cells[i as usize] != 0)
                .collect();
            ensure!(
                used == expected,
                "{}: sketch row {row} has {} cells in use, the {} sources sent map to {}: the sketch did not \
                 count every source",
                case.name,
                used.len(),
                sent.len(),
                expected.len()
            );
            summary.push(used.len().to_string());
        }
        println!(
            "  {}: {} distinct sources; sketch cells in use per row: {} of {}",
            case.name,
            sent.len(),
            summary.join("/"),
            cfg.sketch_width
        );
    } else {
        let map = ebpf.map(names::MAP_SOURCES).context("SOURCES")?;
        let aya::maps::Map::LruHashMap(data) = map else {
            bail!("SOURCES is not an LRU hash map");
        };
        let capacity = data.info()?.max_entries() as usize;
        let sources: aya::maps::HashMap<_, SourceKey, SourceState> = aya::maps::HashMap::try_from(map)?;
        let keys: HashSet<SourceKey> = sources.keys().collect::<Result<_, _>>()?;
        println!(
            "  {}: {} distinct sources; SOURCES holds {} (capacity {capacity})",
            case.name,
            sent.len(),
            keys.len()
        );
        ensure!(keys.is_subset(sent), "{}: SOURCES holds sources that were never sent", case.name);
        if sent.len() <= capacity {
            ensure!(keys.len() == sent.len(), "{}: not every source got an entry", case.name);
        } else {
            // LRU: the map is full of the latest sources (less a few in per-CPU free lists).
            ensure!(
                keys.len() * 10 >= capacity * 9,
                "{}: SOURCES is not full although {} sources were sent",
                case.name,
                sent.len()
            );
        }
    }
    Ok(())
}

/// The source address of a bench frame, as the program keys it.
fn source_of(frame: &[u8], family: Family) -> SourceKey {
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

fn counter(ebpf: &Ebpf, counter: Counter) -> Result<u64> {
    let map: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.map(names::MAP_COUNTERS).context("COUNTERS")?)?;
    Ok(map.get(&(counter as u32), 0)?.iter().sum())
}

/// An untagged SYN from a client to BENCH_PORT with the options Linux sends
/// (MSS, SACK-permitted, timestamp, window scale), padded so the helper floor can read
/// 60 bytes of TCP header. Checksums are not checked on this path, so they stay zero.
fn syn_frame(family: Family) -> Vec<u8> {
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
    f.resize(f.len() + 20, 0);
    f
}

/// Makes the frame's source the `n`th address of the bench population: inside
/// 198.18.0.0/15 for IPv4 (at most 2^17 sources), 2001:2::/48 for IPv6.
fn set_source(frame: &mut [u8], family: Family, n: u32) {
    match family {
        Family::V4 => {
            let addr = 0xc612_0000 | (n & 0x1_ffff);
            frame[26..30].copy_from_slice(&addr.to_be_bytes());
        }
        Family::V6 => frame[34..38].copy_from_slice(&n.to_be_bytes()),
    }
}

fn enter_private_netns() -> Result<()> {
    // SAFETY: plain syscalls; the bench is single-threaded at this point.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        bail!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
    }
    // Inside the private namespace only: this is not the host's setting.
    std::fs::write("/proc/sys/net/ipv4/tcp_syncookies", "2")
        .context("tcp_syncookies=2 in the bench namespace")?;
    Ok(())
}

fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}
