//! `cargo xtask soak --minutes N`: the agent in auto mode against a changing flood in the
//! lab, for N minutes, watched for leaks and for harm to legit traffic.
//!
//! Phases of `PHASE` each cycle: a single spoofed source, random spoofed sources, forged
//! ACKs from random sources, calm. A legit client makes `LEGIT_PER_SECOND` requests a
//! second throughout. Every `SAMPLE` the agent's RSS (/proc/PID/status), open descriptors
//! (/proc/PID/fd), map fill (its metrics) and the legit requests of that window are
//! recorded. The run fails if, after `WARM_UP`, RSS grew by more than `RSS_GROWTH_BOUND`
//! or the descriptor count left `FD_BAND` of its warmed-up value, if legit success over the
//! whole run is below `MIN_LEGIT_SUCCESS`, or if the agent exits. docs/robustness.md.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::lab::{http_get, in_netns, Agent, ClientReport, Flood, FloodSources, Lab, SERVER_V4};

const PORT: u16 = 8080;
const PHASE: Duration = Duration::from_secs(15);
const SAMPLE: Duration = Duration::from_secs(5);
/// Start-up allocations (maps read into buffers, tokio's pools, the first flood's
/// top-sources table) settle within the first phases; growth is measured from here.
const WARM_UP: Duration = Duration::from_secs(30);
/// RSS may grow this much after warm-up (allocator noise is well below it; a leak of a
/// few hundred bytes per poll or per source is not).
pub const RSS_GROWTH_BOUND: u64 = 10 << 20;
/// Open descriptors may differ this much from the warmed-up count (a scrape in flight).
pub const FD_BAND: i64 = 2;
pub const MIN_LEGIT_SUCCESS: f64 = 0.999;
const LEGIT_PER_SECOND: u32 = 20;
const LEGIT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// How long to run (whole cycles of four phases are not required).
    #[arg(long, default_value_t = 2)]
    pub minutes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    SingleSource,
    RandomSources,
    ForgedAcks,
    Calm,
}

impl Phase {
    const CYCLE: [Self; 4] = [Self::SingleSource, Self::RandomSources, Self::ForgedAcks, Self::Calm];

    fn name(self) -> &'static str {
        match self {
            Self::SingleSource => "single",
            Self::RandomSources => "random",
            Self::ForgedAcks => "acks",
            Self::Calm => "calm",
        }
    }

    /// The phase's flood, bounded by count and by `PHASE`; none when calm.
    fn flood(self) -> Option<Flood> {
        let (sources, pps) = match self {
            Self::SingleSource => (FloodSources::Single(0x4842), 1_000),
            Self::RandomSources | Self::ForgedAcks => (FloodSources::Random, 3_000),
            Self::Calm => return None,
        };
        Some(Flood { v6: false, sources, port: PORT, count: pps * PHASE.as_secs(), pps, limit: PHASE })
    }
}

/// One row of the summary.
#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    phase: Phase,
    rss: u64,
    fds: i64,
    sources_fill: f64,
    pending_fill: f64,
    under_attack: bool,
    legit: ClientReport,
}

/// What a run found: the samples and the bounds it broke (none: a pass).
pub struct Outcome {
    pub table: String,
    pub violations: Vec<String>,
}

pub fn main(args: &SoakArgs, agent: &Path, test_object: &Path) -> Result<()> {
    let outcome = run(agent, test_object, Duration::from_mins(args.minutes))?;
    // The rows were printed as they came; the summary line closes them.
    println!("{}", outcome.table.lines().last().unwrap_or_default());
    if !outcome.violations.is_empty() {
        bail!("soak failed:\n  {}", outcome.violations.join("\n  "));
    }
    println!("soak passed: every bound held");
    Ok(())
}

/// Runs the soak for `length` in a lab of its own and judges it.
pub fn run(agent_bin: &Path, test_object: &Path, length: Duration) -> Result<Outcome> {
    if length < WARM_UP + SAMPLE * 2 {
        bail!("a soak shorter than {:?} measures nothing after its warm-up", WARM_UP + SAMPLE * 2);
    }
    let mut lab = Lab::new()?;
    lab.attach_client_xdp(test_object)?;
    // The host default (kernel cookies when the SYN queue overflows) and an ordinary backlog:
    // the soak measures the agent, not a server tuned to fall over.
    lab.sysctl(&lab.server_ns.clone(), "net.ipv4.tcp_syncookies", "1")?;
    lab.start_server(PORT, 128)?;
    let mut agent = Agent::start(
        &lab,
        agent_bin,
        &[
            "--mode",
            "auto",
            "--poll-interval-ms",
            "500",
            "--enter-syn-rate",
            "2000",
            "--exit-syn-rate",
            "500",
            "--hold",
            "3",
            "--syn-rate-limit",
            "500",
            "--half-open-limit",
            "50",
            "--block-ttl",
            "5",
        ],
    )?;
    let pid = agent.pid().context("the agent is not running")?;
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut violations = Vec::new();
    'phases: for phase in Phase::CYCLE.iter().copied().cycle() {
        let phase_end = (started.elapsed() + PHASE).min(length);
        thread::scope(|scope| -> Result<()> {
            let flood = phase.flood().map(|f| {
                let lab = &lab;
                scope.spawn(move || if phase == Phase::ForgedAcks { f.run_acks(lab) } else { f.run(lab) })
            });
            while started.elapsed() + Duration::from_millis(500) < phase_end {
                let window = SAMPLE.min(phase_end.saturating_sub(started.elapsed()));
                let legit = legit_window(&lab, window)?;
                let s = sample(&agent, pid, started.elapsed(), phase, legit)?;
                // Printed as it goes, so a long run shows its progress.
                if samples.is_empty() {
                    print!("{HEADER}");
                }
                print!("{}", row(&s));
                samples.push(s);
            }
            if let Some(f) = flood {
                f.join().map_err(|_| anyhow::anyhow!("the flood thread panicked"))??;
            }
            Ok(())
        })?;
        if let Some(status) = agent.exited() {
            violations.push(format!("the agent exited ({status}):\n{}", agent.log_text()));
            break 'phases;
        }
        if started.elapsed() + Duration::from_secs(1) >= length {
            break;
        }
    }
    violations.extend(judge(&samples));
    let stopped = agent.stop();
    if !matches!(&stopped, Ok(s) if s.success()) {
        violations.push(format!("the agent did not stop cleanly: {stopped:?}"));
    }
    Ok(Outcome { table: table(&samples), violations })
}

/// Legit requests at `LEGIT_PER_SECOND` for `window`, from the client namespace.
fn legit_window(lab: &Lab, window: Duration) -> Result<ClientReport> {
    let addr = SocketAddr::from((SERVER_V4, PORT));
    in_netns(&lab.client_ns, move || {
        let mut report = ClientReport::default();
        let end = Instant::now() + window;
        let pace = Duration::from_secs(1) / LEGIT_PER_SECOND;
        while Instant::now() < end {
            let t = Instant::now();
            match http_get(addr, "/data", LEGIT_TIMEOUT) {
                Ok(bytes) => {
                    report.ok += 1;
                    report.bytes += bytes as u64;
                    report.latencies.push(t.elapsed());
                }
                Err(e) => {
                    report.failed += 1;
                    report.first_error.get_or_insert_with(|| format!("{e:#}"));
                }
            }
            thread::sleep(pace.saturating_sub(t.elapsed()));
        }
        report
    })
}

fn sample(agent: &Agent, pid: u32, at: Duration, phase: Phase, legit: ClientReport) -> Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("the agent's /proc/{pid}/status (has it exited?)"))?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    let s = agent.scrape()?;
    Ok(Sample {
        at,
        phase,
        rss: rss_kib * 1024,
        fds: i64::try_from(fds)?,
        sources_fill: s.value("syndetector_map_fill_ratio{map=\"sources\"}")?,
        pending_fill: s.value("syndetector_map_fill_ratio{map=\"pending\"}")?,
        under_attack: s.value("syndetector_under_attack")? > 0.0,
        legit,
    })
}

/// The bounds, checked on the samples; one line per broken bound.
fn judge(samples: &[Sample]) -> Vec<String> {
    let mut broken = Vec::new();
    let Some(base) = samples.iter().find(|s| s.at >= WARM_UP) else {
        return vec!["no sample after the warm-up".to_owned()];
    };
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at >= WARM_UP).collect();
    let rss_max = after.iter().map(|s| s.rss).max().unwrap_or(base.rss);
    if rss_max.saturating_sub(base.rss) > RSS_GROWTH_BOUND {
        broken.push(format!(
            "RSS grew by {} KiB after warm-up (bound {} KiB)",
            (rss_max - base.rss) / 1024,
            RSS_GROWTH_BOUND / 1024
        ));
    }
    if let Some(s) = after.iter().find(|s| (s.fds - base.fds).abs() > FD_BAND) {
        broken.push(format!(
            "open descriptors {} at {:.0} s, {} after warm-up (band ±{FD_BAND})",
            s.fds,
            s.at.as_secs_f64(),
            base.fds
        ));
    }
    let mut all = ClientReport::default();
    for s in samples {
        all.ok += s.legit.ok;
        all.failed += s.legit.failed;
        if all.first_error.is_none() {
            all.first_error.clone_from(&s.legit.first_error);
        }
    }
    if all.success_ratio() < MIN_LEGIT_SUCCESS {
        broken.push(format!(
            "legit success {:.3} % ({} of {}) is below {:.1} %; first failure: {}",
            100.0 * all.success_ratio(),
            all.ok,
            all.total(),
            100.0 * MIN_LEGIT_SUCCESS,
            all.first_error.as_deref().unwrap_or("-")
        ));
    }
    broken
}

const HEADER: &str = "    t  phase   attack  rss MiB  fds  sources  pending  legit ok/total  p99 ms\n";

fn row(s: &Sample) -> String {
    #[allow(clippy::cast_precision_loss, reason = "MiB for display")]
    let rss = s.rss as f64 / f64::from(1 << 20);
    format!(
        "{:>5.0}  {:<6}  {:<6}  {rss:>7.1}  {:>3}  {:>7.3}  {:>7.3}  {:>6}/{:<7}  {:>6.1}\n",
        s.at.as_secs_f64(),
        s.phase.name(),
        if s.under_attack { "yes" } else { "no" },
        s.fds,
        s.sources_fill,
        s.pending_fill,
        s.legit.ok,
        s.legit.total(),
        s.legit.quantile(0.99).as_secs_f64() * 1e3
    )
}

fn table(samples: &[Sample]) -> String {
    let mut t = String::from(HEADER);
    for s in samples {
        t.push_str(&row(s));
    }
    let (ok, total) = samples.iter().fold((0, 0), |(o, t), s| (o + s.legit.ok, t + s.legit.total()));
    let _ = writeln!(
        t,
        "legit: {ok}/{total} ok; bounds: RSS growth after {} s < {} MiB, fds ±{FD_BAND}, legit ≥ {:.1} %",
        WARM_UP.as_secs(),
        RSS_GROWTH_BOUND >> 20,
        100.0 * MIN_LEGIT_SUCCESS
    );
    t
}
