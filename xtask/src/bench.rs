//! `cargo xtask bench`: nanoseconds per packet for each path of the XDP program, measured
//! in one run against baseline programs from the same build's test object (the shipped
//! object holds `syndetector` alone: `xtask::objects`), printed with ratios.
//!
//! Method (docs/verifier.md for why): one BPF_PROG_TEST_RUN call per fresh packet
//! (`repeat = 1`: XDP_TX rewrites the packet, so repeating would time another path), the
//! kernel-measured duration averaged, minus a trivial XDP_PASS timed the same way; the
//! cases run in rounds, each reporting its median round (`ROUNDS`); after
//! each case the program's path counters are read to prove which path ran. Everything
//! runs in a private network namespace (listener sockets, `tcp_syncookies = 2`), which
//! disappears with the process: the host is not touched. First, `bench_verifier` reports
//! what loading each program costs (instructions the verifier processed, load time); then
//! the per-path cases; then the kernel selftest as a peer on the same SYNs
//! (`bench_selftest`); then the agent's footprint (`bench_agent`). Every part adds rows to
//! the report (`bench_report`: bench.md and bench.png under target/bench-results/).

use std::{collections::HashSet, net::TcpListener, path::Path, time::Duration};

use anyhow::{bail, ensure, Context, Result};
use aya::{
    maps::{Array, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use detector_common::{
    config::{
        Config, FLAG_COOKIES, FLAG_COOKIE_TIMESTAMPS, FLAG_ENFORCE, FLAG_NO_IFACE_POLICY,
        FLAG_NO_KERNEL_DESTS, FLAG_RAW_COOKIES, FLAG_SKETCH_ADMISSION,
    },
    counters::Counter,
    local_table::{self, LocalBucket},
    names,
    sketch::{self, SKETCH_ROWS},
    state::{SourceKey, SourceState},
};

use crate::bench_report::{Machine, Report};

const BENCH_PORT: u16 = 8080;
const SEC: u64 = 1_000_000_000;

#[derive(Debug, clap::Args)]
#[allow(clippy::struct_excessive_bools, reason = "command-line flags")]
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
    /// Bench this object instead of the shipped one just built, e.g. an older build to
    /// compare (the baselines still come from the test object just built).
    #[arg(long)]
    pub object: Option<std::path::PathBuf>,
    /// A smoke run (what `cargo xtask test` runs): few packets, one load per program, no
    /// agent part; still writes the report.
    #[arg(long)]
    pub quick: bool,
    /// Copy the report into BENCHMARKS.md and docs/bench.png.
    #[arg(long)]
    pub update_doc: bool,
    /// Also the step-up floods in the lab (kernel cookies, nftables SYNPROXY, ours; a few
    /// minutes): bench_flood.rs.
    #[arg(long)]
    pub flood: bool,
    /// Write the report here instead of target/bench-results/<UTC timestamp>.
    #[arg(long)]
    pub results: Option<std::path::PathBuf>,
    /// Time the detector's cases on these objects (comma-separated) at once, interleaved
    /// packet by packet, and print them side by side (bench_compare.rs); nothing else runs
    /// and no report is written.
    #[arg(long, value_delimiter = ',')]
    pub compare: Vec<std::path::PathBuf>,
}

impl BenchArgs {
    /// The figures `--quick` replaces: small enough for a test run, every path still taken.
    fn effective(&self) -> (u32, u32, u32, usize, bool) {
        if self.quick {
            (2_000, 20_000, 100, 1, true)
        } else {
            (self.packets, self.many_sources, self.few_sources, self.loads, self.no_agent)
        }
    }
}

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
}

#[derive(Clone, Copy)]
pub(crate) enum Family {
    V4,
    V6,
}

/// The verifier's figures for each program of both objects: instructions processed, load time.
fn verifier_rows(report: &mut Report, object: &Path, test_object: &Path, loads: usize) -> Result<()> {
    for cost in crate::bench_verifier::main(object, test_object, loads)? {
        let share = f64::from(cost.verified_insns) / f64::from(crate::bench_verifier::VERIFIER_LIMIT);
        report
            .row(
                "verifier",
                format!("{}: instructions processed", cost.program),
                f64::from(cost.verified_insns),
                "insns",
            )
            .ratio = Some(format!("{:.1} % of the 1M limit", share * 100.0));
        report.row(
            "verifier",
            format!("{}: load time (median of {loads})", cost.program),
            cost.median_ms,
            "ms",
        );
    }
    Ok(())
}

pub fn main(args: &BenchArgs, object: &Path) -> Result<()> {
    let object = args.object.as_deref().unwrap_or(object);
    ensure!(geteuid() == 0, "the benchmark loads BPF programs and makes a network namespace: run it as root");
    let read = |path: &Path| {
        std::fs::read(path).with_context(|| {
            format!("reading {} (build it with `cargo xtask build-ebpf --release`)", path.display())
        })
    };
    // The detector's cases run the shipped object (or `--object`); the baselines, which it
    // does not hold, come from the test object built with it.
    let test_object = xtask::objects::test_programs(true);
    let (bytes, test_bytes) = (read(object)?, read(&test_object)?);
    let (packets, many, few, loads, no_agent) = args.effective();
    let command = std::iter::once("cargo xtask bench".to_owned())
        .chain(std::env::args().skip(2))
        .collect::<Vec<_>>()
        .join(" ");
    if !args.compare.is_empty() {
        enter_private_netns()?;
        let _listener = TcpListener::bind(("::", BENCH_PORT)).context("bench listener")?;
        return crate::bench_compare::main(&args.compare, &test_bytes, &cases(packets, many, few), packets);
    }
    let mut report = Report::new(Machine::probe(command));
    verifier_rows(&mut report, object, &test_object, loads)?;
    if args.verifier_only {
        return finish(args, &report);
    }
    enter_private_netns()?;
    // Dual-stack (bindv6only is 0 in a fresh namespace): one listener serves both families.
    let _listener = TcpListener::bind(("::", BENCH_PORT)).context("bench listener")?;

    let cases = cases(packets, many, few);
    println!(
        "{packets} fresh packets per case (at least one per source), one BPF_PROG_TEST_RUN each, kernel-measured \
         time; {ROUNDS} rounds through all cases, the median round per case"
    );
    let mut running = cases
        .iter()
        .map(|case| {
            let from = if case.program == names::PROGRAM { &bytes } else { &test_bytes };
            Running::new(from, case, packets)
        })
        .collect::<Result<Vec<_>>>()?;
    for _ in 0..ROUNDS {
        for r in &mut running {
            r.round()?;
        }
    }
    let results =
        running.into_iter().map(|r| r.finish(args.object.is_none())).collect::<Result<Vec<Timing>>>()?;
    let base = results[0].ns;
    println!("\n{:<44} {:>12} {:>14} {:>18}", "path", "ns/packet", "minus PASS", "rounds");
    for t in &results {
        let [lo, hi] = t.spread;
        println!("{:<44} {:>12.1} {:>14.1} {lo:>8.0} - {hi:<7.0}", t.name, t.ns, t.ns - base);
    }
    report.row("per path", format!("{PASS}, absolute"), base, "ns/packet").ratio =
        Some("subtracted from all".into());
    for t in results.iter().skip(1) {
        report.row("per path", t.name, t.ns - base, "ns/packet");
    }
    ratios(&mut report, &results, many, few);
    crate::bench_samples::main(&bytes, packets)?;
    let ours = net(&results, COOKIE_V4).unwrap_or(0.0);
    let cookie_v4 = cases.iter().find(|c| c.name == COOKIE_V4).context("no IPv4 cookie case")?;
    let (ours_beside, pass_beside) = (load_case(&bytes, cookie_v4)?, load_case(&test_bytes, &cases[0])?);
    crate::bench_selftest::report(
        &mut report,
        &mut (0..packets).map(|i| peer_frame(i % few)),
        BENCH_PORT,
        base,
        ours,
        net(&results, RAW_FLOOR),
        &mut beside_the_peer(&ours_beside, &pass_beside, cookie_v4, &cases[0]),
    );
    if no_agent {
        report.note("agent part skipped (--quick or --no-agent)");
    } else {
        crate::bench_agent::main(many, &mut report)?;
    }
    if args.flood && !args.quick {
        let agent = crate::bench_agent::build()?;
        crate::bench_flood::main(&test_object, &agent, &mut report)?;
    }
    finish(args, &report)
}

/// The table of timed cases: the baselines first (the trivial XDP_PASS first of all, which
/// every other case is net of), then the detector's paths, each with its config.
fn cases(packets: u32, many: u32, few: u32) -> [Case; 20] {
    // A SYN-rate limit, or the cookie path skips the sketch altogether. No source can
    // reach it: no case sends more SYNs than this, and a sketch estimate never exceeds
    // the SYNs counted. No kernel destinations and no tag-stripping NIC here, which the
    // agent tells the program as it would on such a host (`FLAG_NO_*`).
    let cookie = {
        let mut c = detector_config(packets.max(many));
        c.flags = FLAG_ENFORCE
            | FLAG_COOKIES
            | FLAG_COOKIE_TIMESTAMPS
            | FLAG_RAW_COOKIES
            | FLAG_NO_KERNEL_DESTS
            | FLAG_NO_IFACE_POLICY;
        c
    };
    // The agent's default limits, and sketch admission: a source gets exact state only
    // once the sketch counts it near a limit (`track::promotion_threshold`).
    let tracked = {
        let mut c = detector_config(200);
        c.half_open_limit = 100;
        c.flags |= FLAG_SKETCH_ADMISSION;
        c
    };
    let cookie_mss = Config { flags: cookie.flags & !FLAG_COOKIE_TIMESTAMPS, ..cookie };
    // The table of cases: add a row to time another path (ratios below refer to names).
    #[rustfmt::skip]
    let cases = [
        Case { name: PASS, program: "baseline_pass", config: None, family: Family::V4, sources: few, verdict: 2, path: None, padded: false },
        Case { name: TX, program: "baseline_tx", config: None, family: Family::V4, sources: few, verdict: 3, path: None, padded: false },
        Case { name: FLOOR, program: "baseline_helper_floor", config: None, family: Family::V4, sources: few, verdict: 3, path: None, padded: true },
        Case { name: RAW_FLOOR, program: "baseline_raw_floor", config: None, family: Family::V4, sources: few, verdict: 3, path: None, padded: true },
        Case { name: MIN_RESPONDER, program: "baseline_min_responder", config: None, family: Family::V4, sources: few, verdict: 3, path: None, padded: true },
        Case { name: RULED_RESPONDER, program: "baseline_ruled_responder", config: None, family: Family::V4, sources: few, verdict: 3, path: None, padded: true },
        Case { name: COOKIE_V4, program: names::PROGRAM, config: Some(cookie), family: Family::V4, sources: few, verdict: 3, path: Some(Counter::TxCookieFast), padded: false },
        Case { name: COOKIE_V4_PADDED, program: names::PROGRAM, config: Some(cookie), family: Family::V4, sources: few, verdict: 3, path: Some(Counter::TxCookieFast), padded: true },
        Case { name: COOKIE_V6_FEW, program: names::PROGRAM, config: Some(cookie), family: Family::V6, sources: few, verdict: 3, path: Some(Counter::TxCookieFast), padded: false },
        Case { name: COOKIE_V6_MANY, program: names::PROGRAM, config: Some(cookie), family: Family::V6, sources: many, verdict: 3, path: Some(Counter::TxCookieFast), padded: false },
        Case { name: TRACKED_FEW, program: names::PROGRAM, config: Some(tracked), family: Family::V6, sources: few, verdict: 2, path: Some(Counter::PassSyn), padded: false },
        Case { name: TRACKED_MANY, program: names::PROGRAM, config: Some(tracked), family: Family::V6, sources: many, verdict: 2, path: Some(Counter::PassSyn), padded: false },
        Case { name: COOKIE_MSS, program: names::PROGRAM, config: Some(cookie_mss), family: Family::V4, sources: few, verdict: 3, path: Some(Counter::TxCookieFast), padded: false },
        Case { name: DROP, program: "baseline_drop", config: None, family: Family::V4, sources: few, verdict: 1, path: None, padded: false },
        Case { name: DROP_FLOOR, program: "baseline_drop_floor", config: None, family: Family::V4, sources: few, verdict: 1, path: None, padded: false },
        Case { name: DROP_BLOCKED, program: names::PROGRAM, config: Some(tracked), family: Family::V4, sources: few, verdict: 1, path: Some(Counter::DropBlocked), padded: false },
        Case { name: ACK_CALM, program: names::PROGRAM, config: Some(tracked), family: Family::V4, sources: few, verdict: 2, path: Some(Counter::PassTcp), padded: false },
        Case { name: ACK_COOKIES, program: names::PROGRAM, config: Some(cookie), family: Family::V4, sources: few, verdict: 2, path: Some(Counter::PassTcp), padded: false },
        Case { name: "forged cookie ACK, IPv4 (shield drop)", program: names::PROGRAM, config: Some(cookie), family: Family::V4, sources: few, verdict: 1, path: Some(Counter::DropAckShield), padded: false },
        Case { name: "forged cookie ACK, IPv6 (shield drop)", program: names::PROGRAM, config: Some(cookie), family: Family::V6, sources: few, verdict: 1, path: Some(Counter::DropAckShield), padded: false },
    ];

    cases
}

/// One case's figures: ns per packet of its program in its median round.
struct Timing {
    name: &'static str,
    ns: f64,
    /// The lowest and highest round: how much the machine moved.
    spread: [f64; 2],
}

/// A case's time minus the trivial XDP_PASS; `None` if the table has no such case.
fn net(results: &[Timing], name: &str) -> Option<f64> {
    let base = results.first()?.ns;
    results.iter().find(|t| t.name == name).map(|t| (t.ns - base).max(0.1))
}

/// The ratios between cases, printed and reported (a case missing from the table: no ratio).
fn ratios(report: &mut Report, results: &[Timing], many: u32, few: u32) {
    let ratios: [(&str, &str, &str, Option<&'static str>); 14] = [
        (COOKIE_V4, FLOOR, "cookie path IPv4 / helper floor", None),
        // A SYN longer than its headers (padding, TFO data): the reply's length cannot be
        // seen by pointer comparison, and the frame is measured and cut by two helpers.
        (COOKIE_V4_PADDED, COOKIE_V4, "cookie path IPv4: SYN padded by 20 bytes / as Linux sends it", None),
        (COOKIE_MSS, FLOOR, "cookie path IPv4, MSS only / helper floor", Some("≤ 0.6")),
        // Where the ≤ 0.6 comes from, and what it leaves: the raw helper alone against the
        // socket-bound floor, and our fast path against the raw helper alone.
        (RAW_FLOOR, FLOOR, "raw floor / helper floor (the least any fast path costs)", None),
        (COOKIE_MSS, RAW_FLOOR, "cookie path IPv4, MSS only / raw floor", None),
        (COOKIE_V4, RAW_FLOOR, "cookie path IPv4 / raw floor", None),
        // The least any program answering a SYN costs here: where it stands against the ≤ 0.6,
        // and what our rules (docs/hotpaths.md) add on top of it.
        (MIN_RESPONDER, FLOOR, "minimal responder / helper floor (the least any responder costs)", None),
        (COOKIE_MSS, MIN_RESPONDER, "cookie path IPv4, MSS only / minimal responder", None),
        // The least a responder that keeps our rules' random reads (the sketch, the closed
        // filter) costs: against the ≤ 0.6, and what the rest of our path adds to it.
        (
            RULED_RESPONDER,
            FLOOR,
            "ruled responder / helper floor (the least a responder with our rules' reads costs)",
            None,
        ),
        (COOKIE_MSS, RULED_RESPONDER, "cookie path IPv4, MSS only / ruled responder", None),
        (COOKIE_V6_FEW, FLOOR, "cookie path IPv6 / helper floor", None),
        (COOKIE_V4, TX, "cookie path IPv4 / trivial XDP_TX", None),
        (
            COOKIE_V6_MANY,
            COOKIE_V6_FEW,
            "cookie path: many / few sources (flat = 1: the sketch's cost does not grow)",
            Some("flat (≈ 1)"),
        ),
        (
            TRACKED_MANY,
            TRACKED_FEW,
            "tracked SYN: many / few sources (sketch admission: light sources stay in the sketch)",
            None,
        ),
    ];
    println!("\nratios (each minus the trivial XDP_PASS):");
    for (a, b, what, target) in ratios {
        if let (Some(x), Some(y)) = (net(results, a), net(results, b)) {
            println!("  {what:<76} {:>8.2}", x / y);
            let what = what.replace("many", &many.to_string()).replace("few", &few.to_string());
            report.row("per path", what, x / y, "ratio").target = target;
        }
    }
    // Against the trivial programs themselves, not net of XDP_PASS: issue 11's ≤ 2×. Both
    // sides are timed the same way on frames of the same length (the trivial programs
    // read none of it), so the test run's own cost is in both.
    // The shield's row has no target: while cookies are on, every ACK to an answered port
    // pays a socket lookup (docs/cookies.md, the ACK shield); the ≤ 2 is for a calm server.
    let raw: [(&str, &str, &str, Option<&'static str>); 5] = [
        (DROP_BLOCKED, DROP, "drop path (blocked source) / trivial XDP_DROP, raw", Some("≤ 2")),
        // The least a drop that accounts the SYN to its blocked source costs, and what the
        // rest of our path (parser, local-address check, config) adds to it.
        (DROP_FLOOR, DROP, "drop floor (source lookup + coarse clock) / trivial XDP_DROP, raw", None),
        (DROP_BLOCKED, DROP_FLOOR, "drop path (blocked source) / drop floor, raw", None),
        (ACK_CALM, PASS, "ACK, calm / trivial XDP_PASS, raw", Some("≤ 2")),
        (ACK_COOKIES, PASS, "ACK, cookies on (shield lookup) / trivial XDP_PASS, raw", None),
    ];
    println!("\nratios against the trivial programs, raw (nothing subtracted; issue 11: ≤ 2):");
    let ns = |name: &str| results.iter().find(|t| t.name == name).map(|t| t.ns);
    for (a, b, what, target) in raw {
        if let (Some(x), Some(y)) = (ns(a), ns(b)) {
            println!("  {what:<76} {:>8.2}  ({x:.1} / {y:.1} ns)", x / y);
            let row = report.row("per path", what, x / y, "ratio");
            row.ratio = Some(format!("{x:.0} ns / {y:.0} ns"));
            row.target = target;
        }
    }
}

const PASS: &str = "trivial XDP_PASS (subtracted from all)";
const TX: &str = "trivial XDP_TX (MAC swap)";
const FLOOR: &str = "helper floor (lookup + cookie helper)";
const RAW_FLOOR: &str = "raw floor (raw cookie helper alone)";
const MIN_RESPONDER: &str = "minimal responder (raw helper + SYN-ACK)";
const RULED_RESPONDER: &str = "ruled responder (minimal + sketch cells + closed filter)";
const COOKIE_V4: &str = "cookie path, IPv4, TS options";
const COOKIE_V4_PADDED: &str = "cookie path, IPv4, TS options, SYN padded by 20 bytes";
const COOKIE_V6_FEW: &str = "cookie path, IPv6, few sources";
const COOKIE_V6_MANY: &str = "cookie path, IPv6, many sources";
const TRACKED_FEW: &str = "tracked SYN, IPv6, few sources";
const TRACKED_MANY: &str = "tracked SYN, IPv6, many sources";
const COOKIE_MSS: &str = "cookie path, IPv4, MSS only";
const DROP: &str = "trivial XDP_DROP";
const DROP_BLOCKED: &str = "drop path, blocked source";
const DROP_FLOOR: &str = "drop floor (source lookup + coarse clock)";
const ACK_CALM: &str = "ACK, calm (no cookies)";
const ACK_COOKIES: &str = "ACK, cookies on, no owner (shield lookup)";

/// Writes the report (and BENCHMARKS.md with `--update-doc`).
fn finish(args: &BenchArgs, report: &Report) -> Result<()> {
    let dir = args.results.clone().unwrap_or_else(crate::bench_report::results_dir);
    let (_, png) = report.write(&dir)?;
    if args.update_doc {
        crate::bench_report::update_doc(report, &png)?;
    }
    Ok(())
}

/// Runs a packet the selftest peer just had through our IPv4 cookie case (`ours`, loaded
/// for `case`) and the trivial XDP_PASS (`pass`, loaded for `pass_case`): their times,
/// after checking that ours answered it.
fn beside_the_peer<'a>(
    ours: &'a Ebpf,
    pass: &'a Ebpf,
    case: &'a Case,
    pass_case: &'a Case,
) -> impl FnMut(&[u8]) -> Result<[Duration; 2]> + 'a {
    let mut out = vec![0u8; 256];
    move |frame| {
        let mut time = |ebpf: &Ebpf, c: &Case| -> Result<Duration> {
            let prog: &Xdp = ebpf.program(c.program).context("program")?.try_into()?;
            timed_run(prog, frame, &mut out, c.verdict, &format_args!("{} beside the selftest", c.name))
        };
        Ok([time(ours, case)?, time(pass, pass_case)?])
    }
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

/// The IPv4 bench SYN from the `n`th source, as the peer gets it (it fills in checksums).
fn peer_frame(n: u32) -> Vec<u8> {
    let mut f = syn_frame(Family::V4);
    set_source(&mut f, Family::V4, n);
    f
}

pub(crate) fn detector_config(rate_limit: u32) -> Config {
    let mut c = Config::new(rate_limit, 0, 60 * SEC, 3 * SEC);
    c.sketch_width = 16_384;
    c.sketch_seed = 0x5eed_1234;
    c.cookie_budget_per_second = u32::MAX;
    c.synack_wscale = 7;
    c
}

/// Rounds through all the cases: each case's packets are split over them, and the case's
/// figure is its median round. A burst of load from the machine's other tenants (they
/// took single cases of one run from about 400 to 670 ns while the cases around them
/// were unmoved) then lands in one round of several cases instead of all of one case.
pub(crate) const ROUNDS: u32 = 5;

/// The rounds a case's packets are split over: one for the tracked SYNs under sketch
/// admission, whose sources must reach the promotion threshold within one sketch epoch
/// (about a second), which packets split over rounds seconds apart would not (`check_state`
/// proves that every source got its entry). The blocked drop and the ACKs run under the
/// same config but never count in the sketch.
fn rounds_of(case: &Case) -> u32 {
    if case.path == Some(Counter::PassSyn) && case.config.is_some_and(|c| c.has(FLAG_SKETCH_ADMISSION)) {
        1
    } else {
        ROUNDS
    }
}

/// A case being timed round by round: its own program instance (fresh maps, so cases do
/// not see each other's state), the packets
/// it sends in all and those sent so far, and each round's ns per packet.
struct Running<'c> {
    case: &'c Case,
    ebpf: Ebpf,
    packets: u32,
    sent: u32,
    sent_sources: HashSet<SourceKey>,
    rounds: Vec<f64>,
}

impl<'c> Running<'c> {
    fn new(object: &[u8], case: &'c Case, packets: u32) -> Result<Self> {
        // Every source of the population at least once: a case claiming a million sources
        // sends a million packets even if fewer were asked for.
        let packets = packets.max(case.sources);
        let ebpf = load_case(object, case)?;
        Ok(Self { case, ebpf, packets, sent: 0, sent_sources: HashSet::new(), rounds: Vec::new() })
    }

    /// The next round's share of the packets.
    fn round(&mut self) -> Result<()> {
        let case = self.case;
        let prog: &Xdp = self.ebpf.program(case.program).context("program")?.try_into()?;
        let (mut template, mut out) = (case_template(case), vec![0u8; 256]);
        let mut total = Duration::ZERO;
        let (from, to) = (self.sent, self.packets.min(self.sent + self.packets.div_ceil(rounds_of(case))));
        for i in from..to {
            set_source(&mut template, case.family, i % case.sources);
            self.sent_sources.insert(source_of(&template, case.family));
            total += timed_run(
                prog,
                &template,
                &mut out,
                case.verdict,
                &format_args!("{}: packet {i}", case.name),
            )?;
        }
        self.sent = to;
        if to > from {
            #[allow(clippy::cast_precision_loss, reason = "a duration in ns, far below 2^52")]
            self.rounds.push(total.as_nanos() as f64 / f64::from(to - from));
        }
        Ok(())
    }

    /// Proves the path every packet took and the state it left; the median round.
    /// `own_hashing`: the object was built from this tree, so its sketch cells can be
    /// checked against this build's `sketch::cells` (an older object given with `--object`
    /// may hash sources to other cells).
    fn finish(mut self, own_hashing: bool) -> Result<Timing> {
        let (case, packets) = (self.case, self.packets);
        ensure!(self.sent == packets, "{}: {} of {packets} packets sent", case.name, self.sent);
        check_case(&self.ebpf, case, packets, &self.sent_sources, own_hashing)?;
        self.rounds.sort_by(f64::total_cmp);
        let ns = *self.rounds.get(self.rounds.len() / 2).context("no rounds")?;
        let spread = [self.rounds[0], self.rounds[self.rounds.len() - 1]];
        Ok(Timing { name: case.name, ns, spread })
    }
}

/// After all of a case's packets: its path counter saw each one, every source of its
/// population was sent, and its maps hold what the path leaves (`check_state`).
fn check_case(
    ebpf: &Ebpf,
    case: &Case,
    packets: u32,
    sent_sources: &HashSet<SourceKey>,
    own_hashing: bool,
) -> Result<()> {
    if let Some(path) = case.path {
        // The fast path renews each listener with a socket-bound answer once a second.
        let renewals = if path == Counter::TxCookieFast { counter(ebpf, Counter::TxCookie)? } else { 0 };
        let counted = counter(ebpf, path)? + renewals;
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
    if let Some(cfg) = case.config.filter(|_| !is_ack(case)) {
        check_state(ebpf, case, &cfg, sent_sources, packets, own_hashing)?;
    }
    Ok(())
}

/// A fresh instance of `object` (fresh maps) with `case.program` verified, the case's
/// config written, the bench destinations made local and, for the blocked-drop cases,
/// every source of the case blocked.
pub(crate) fn load_case(object: &[u8], case: &Case) -> Result<Ebpf> {
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
    }
    Ok(ebpf)
}

/// ACK cases (by their path) send ACKs, not SYNs.
fn is_ack(case: &Case) -> bool {
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

/// What the program's maps say about the sources it saw: in cookie mode, the sketch cells
/// they occupy (the sketch ran, once per source and row); when tracking, a `SOURCES` entry
/// for the sources the sketch promoted (every one that sent at least the promotion
/// threshold, up to the map's capacity). Printed, and checked against `sent`.
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

fn check_state(
    ebpf: &Ebpf,
    case: &Case,
    cfg: &Config,
    sent: &HashSet<SourceKey>,
    packets: u32,
    own_hashing: bool,
) -> Result<()> {
    if cfg.has(FLAG_COOKIES) {
        let sketch: Array<_, u64> = Array::try_from(ebpf.map(names::MAP_SKETCH).context("SKETCH")?)?;
        let cells: Vec<u64> = sketch.iter().collect::<Result<_, _>>()?;
        let mut summary = Vec::new();
        for row in 0..SKETCH_ROWS {
            let expected: HashSet<u32> =
                sent.iter().map(|key| sketch::cells(key, cfg)[row as usize]).collect();
            let used: HashSet<u32> = (row * cfg.sketch_width..(row + 1) * cfg.sketch_width)
                .filter(|&i| cells[i as usize] != 0)
                .collect();
            // Another build may place sources elsewhere: then only check that the row was
            // counted in, at no more cells than there were sources.
            let counted =
                if own_hashing { used == expected } else { !used.is_empty() && used.len() <= sent.len() };
            ensure!(
                counted,
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
        let threshold = detector_common::track::promotion_threshold(cfg);
        println!(
            "  {}: {} distinct sources; SOURCES holds {} (capacity {capacity}; exact state from {threshold} SYNs \
             per sketch epoch)",
            case.name,
            sent.len(),
            keys.len()
        );
        ensure!(keys.is_subset(sent), "{}: SOURCES holds sources that were never sent", case.name);
        let syns_each = packets / case.sources;
        if syns_each >= threshold && sent.len() <= capacity {
            ensure!(keys.len() == sent.len(), "{}: not every source got an entry", case.name);
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
