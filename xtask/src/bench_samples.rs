//! `cargo xtask bench`, packet samples: what sampling costs the drop path (a blocked
//! source) and the cookie path, with sampling off, 1 in 1000 and 1 in 1, in one program
//! instance per path. The three settings take turns in rounds (the config is rewritten
//! between rounds), so drift in the machine's speed falls on all three alike. The ring is
//! drained between calls, outside the kernel-measured time, as the agent would.

use std::{net::Ipv6Addr, time::Duration};

use anyhow::{ensure, Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::Xdp,
    EbpfLoader,
};
use detector_common::{
    config::{Config, FLAG_COOKIES, FLAG_COOKIE_TIMESTAMPS, FLAG_ENFORCE, FLAG_RAW_COOKIES},
    counters::Counter,
    names, sketch,
    state::{SourceKey, SourceState},
};

use crate::bench_cases::{detector_config, make_local, set_source, syn_frame, timed_run, Family};

const SETTINGS: [(u32, &str); 3] = [(0, "off"), (1_000, "1 in 1000"), (1, "1 in 1")];
const ROUNDS: u32 = 20;
const SOURCES: u32 = 1_000;

/// Prints ns/packet per path and setting, and each setting's ratio to sampling off.
pub fn main(object: &[u8], packets: u32) -> Result<()> {
    let per_round = (packets / ROUNDS).max(SOURCES);
    println!(
        "\npacket samples: {ROUNDS} rounds × {per_round} fresh packets per setting, settings interleaved"
    );
    let blocked = detector_config(1);
    let mut cookie = detector_config(u32::MAX);
    cookie.flags = FLAG_ENFORCE | FLAG_COOKIES | FLAG_COOKIE_TIMESTAMPS | FLAG_RAW_COOKIES;
    let drop =
        run_path(object, "drop path (blocked source), IPv4", blocked, Counter::DropBlocked, 1, per_round)?;
    let tx = run_path(object, "cookie path, IPv4, TS options", cookie, Counter::TxCookieFast, 3, per_round)?;
    println!(
        "\n{:<36} {:>10} {:>10} {:>10}   {:>9} {:>9}",
        "path", "off", "1/1000", "1/1", "1000/off", "1/off"
    );
    for (name, ns) in [("drop path (blocked source)", drop), ("cookie path (TS options)", tx)] {
        println!(
            "{name:<36} {:>10.1} {:>10.1} {:>10.1}   {:>9.3} {:>9.3}",
            ns[0],
            ns[1],
            ns[2],
            ns[1] / ns[0],
            ns[2] / ns[0]
        );
    }
    println!("(ns/packet, kernel-measured, trivial XDP_PASS not subtracted)");
    Ok(())
}

fn run_path(
    object: &[u8],
    name: &str,
    base: Config,
    path: Counter,
    verdict: u32,
    per_round: u32,
) -> Result<[f64; 3]> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(names::MAP_SKETCH, sketch::words(16_384))
        .load(object)
        .context("loading the object")?;
    let prog: &mut Xdp = ebpf.program_mut(names::PROGRAM).context("program")?.try_into()?;
    prog.load().context("verifying the program")?;
    make_local(&mut ebpf, &[detector_common::parse::ipv4_mapped([198, 18, 0, 1])])?;
    if path == Counter::DropBlocked {
        // Every bench source blocked for good before the first packet.
        let mut sources: HashMap<_, SourceKey, SourceState> =
            HashMap::try_from(ebpf.map_mut(names::MAP_SOURCES).context("SOURCES")?)?;
        let mut frame = syn_frame(Family::V4);
        for n in 0..SOURCES {
            set_source(&mut frame, Family::V4, n);
            let mut addr = Ipv6Addr::from(u128::from(0xffff_0000_0000u64)).octets();
            addr[12..].copy_from_slice(&frame[26..30]);
            let state = SourceState { blocked_until_ns: u64::MAX, ..zeroed_state() };
            sources.insert(SourceKey { addr }, state, 0)?;
        }
    }
    let mut ring = RingBuf::try_from(ebpf.take_map(names::MAP_SAMPLES).context("SAMPLES")?)?;
    let mut totals = [Duration::ZERO; 3];
    let mut sampled = [0u64; 3];
    let mut frame = syn_frame(Family::V4);
    let mut out = vec![0u8; 256];
    for round in 0..ROUNDS {
        for (i, (one_in, _)) in SETTINGS.iter().enumerate() {
            let mut cfg = base;
            cfg.sample_one_in = *one_in;
            Array::<_, Config>::try_from(ebpf.map_mut(names::MAP_CONFIG).context("CONFIG")?)?
                .set(0, cfg, 0)?;
            let prog: &Xdp = ebpf.program(names::PROGRAM).context("program")?.try_into()?;
            for p in 0..per_round {
                set_source(&mut frame, Family::V4, (round * per_round + p) % SOURCES);
                totals[i] += timed_run(prog, &frame, &mut out, verdict, &name)?;
                if *one_in != 0 && p % 64 == 0 {
                    sampled[i] += drain(&mut ring);
                }
            }
            sampled[i] += drain(&mut ring);
        }
    }
    let counters = PerCpuArray::<_, u64>::try_from(ebpf.map(names::MAP_COUNTERS).context("COUNTERS")?)?;
    let count = |c: Counter| -> Result<u64> { Ok(counters.get(&(c as u32), 0)?.iter().sum()) };
    // The fast path renews the listener with a socket-bound answer once a second.
    let renewals = if path == Counter::TxCookieFast { count(Counter::TxCookie)? } else { 0 };
    let counted = count(path)? + renewals;
    let all = u64::from(ROUNDS) * u64::from(per_round);
    ensure!(
        counted == 3 * all,
        "{name}: {path:?} counted {counted} of {} packets: another path ran",
        3 * all
    );
    let lost: u64 =
        PerCpuArray::<_, u64>::try_from(ebpf.map(names::MAP_SAMPLES_LOST).context("SAMPLES_LOST")?)?
            .get(&0, 0)?
            .iter()
            .sum();
    ensure!(sampled[0] == 0, "{name}: sampling off produced {} samples", sampled[0]);
    ensure!(sampled[2] + lost == all, "{name}: 1 in 1 gave {} samples + {lost} lost of {all}", sampled[2]);
    println!(
        "  {name}: samples {} (1 in 1000, expected about {}), {} (1 in 1), {lost} lost",
        sampled[1],
        all / 1_000,
        sampled[2]
    );
    #[allow(clippy::cast_precision_loss, reason = "durations in ns, far below 2^52")]
    Ok(totals.map(|t| t.as_nanos() as f64 / all as f64))
}

fn drain(ring: &mut RingBuf<MapData>) -> u64 {
    let mut n = 0;
    while ring.next().is_some() {
        n += 1;
    }
    n
}

fn zeroed_state() -> SourceState {
    SourceState {
        last_seen_ns: 0,
        window_start_ns: 0,
        blocked_until_ns: 0,
        syns_total: 0,
        syns_in_window: 0,
        completed: 0,
        failed: 0,
        blocks: 0,
        newest_slot: 0,
        _pad: 0,
        pending: [0; detector_common::config::PENDING_SLOTS],
    }
}
