//! `cargo xtask bench --flood`: step-up spoofed SYN floods in the lab against a real server,
//! one defence at a time: the kernel's own SYN cookies (`tcp_syncookies = 1`), nftables
//! SYNPROXY (as in the nftables wiki: notrack on SYNs, `synproxy` for `ct state
//! invalid,untracked`), and ours in cookie mode. Each step floods for `STEP` at a target
//! rate (trafgen, random sources in 198.18.128.0/17, bounded in count and time) while a
//! legit client fetches in a loop; a defence stops at the first step below 99.9 % legit
//! success, or when the sender cannot reach the target rate (then the sender, not the
//! defence, is the limit, and the report says so).
//!
//! CPU per flood SYN: on veth, the receiver's softirq work runs on the sender's CPU, partly
//! charged to the sender, so no per-namespace figure exists. What is measured: the whole
//! machine's softirq time (/proc/stat) during the step, minus a control step at the same
//! rate whose frames the server drops at its veth's ingress hook (same sender, same veth,
//! no IP or TCP work), divided by the SYNs sent. The control is the validation: it is the
//! floor, and a defence above it pays that much more per SYN. Receive work done inline in
//! the sender's system call is not in softirq time, so this is a lower bound; on veth the
//! sender's achieved rate is a second measure (the receiver's work slows the sender).

use std::{
    net::SocketAddr,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use xtask::lab::{http_get, in_netns, Agent, Flood, FloodSources, Lab, SERVER_V4};

use crate::bench_report::Report;

const PORT: u16 = 8080;
const STEP: Duration = Duration::from_secs(5);
const RATES: [u64; 7] = [10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000];
/// Below this share of the target rate, the sender is the limit.
const SENDER_SHARE: f64 = 0.9;
const LEGIT_OK: f64 = 0.999;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Defence {
    Control,
    Kernel,
    Synproxy,
    Ours,
}

impl Defence {
    fn name(self) -> &'static str {
        match self {
            Self::Control => "control: flood dropped at the veth's ingress",
            Self::Kernel => "kernel tcp_syncookies=1",
            Self::Synproxy => "nftables SYNPROXY",
            Self::Ours => "syndetector, cookie mode",
        }
    }
}

/// One step's outcome.
struct Step {
    rate: u64,
    sent: u64,
    achieved: f64,
    ok: u32,
    total: u32,
    p50_ms: f64,
    p99_ms: f64,
    /// Softirq time of the whole machine during the step.
    busy_ns: f64,
    first_error: Option<String>,
}

impl Step {
    /// Machine busy time per flood SYN sent, in ns.
    fn per_syn(&self) -> f64 {
        #[allow(clippy::cast_precision_loss, reason = "packet counts far below 2^52")]
        let sent = self.sent.max(1) as f64;
        self.busy_ns / sent
    }
}

/// The control's cost per SYN at `rate` (0 if the control did not reach that rate).
fn floor(control: &[Step], rate: u64) -> f64 {
    control.iter().find(|c| c.rate == rate).map_or(0.0, Step::per_syn)
}

pub fn main(test_object: &Path, agent: &Path, report: &mut Report) -> Result<()> {
    let started = Instant::now();
    let mut control: Vec<Step> = Vec::new();
    for defence in [Defence::Control, Defence::Kernel, Defence::Synproxy, Defence::Ours] {
        let steps = run_defence(defence, test_object, agent).with_context(|| defence.name())?;
        for s in &steps {
            println!(
                "flood {:<44} target {:>8}/s achieved {:>9.0}/s legit {}/{} p50 {:.2} ms p99 {:.2} ms \
                 CPU {:.0} ns/SYN (control {:.0})",
                defence.name(),
                s.rate,
                s.achieved,
                s.ok,
                s.total,
                s.p50_ms,
                s.p99_ms,
                s.per_syn(),
                floor(&control, s.rate)
            );
        }
        if defence == Defence::Control {
            control = steps;
        } else {
            add_rows(report, defence, &steps, &control);
        }
    }
    report.note(format!(
        "The flood part (--flood) took {:.0} s: {} s steps at {} SYN/s.",
        started.elapsed().as_secs_f64(),
        STEP.as_secs(),
        RATES.map(|r| r.to_string()).join(", ")
    ));
    Ok(())
}

/// A defence's rows: its highest passing rate, legit p50/p99 and CPU there, and why it
/// stopped (legit failures, or the sender's limit).
fn add_rows(report: &mut Report, defence: Defence, steps: &[Step], control: &[Step]) {
    let name = defence.name();
    let why = match steps.last() {
        Some(s) if !ok(s) => format!(
            "stopped at {}/s: legit {}/{} ok, first failure: {}",
            s.rate,
            s.ok,
            s.total,
            s.first_error.as_deref().unwrap_or("?")
        ),
        Some(s) if s.achieved < SENDER_SHARE * rate_f(s.rate) => {
            let reached = control.iter().find(|c| c.rate == s.rate).map_or(0.0, |c| c.achieved);
            if reached >= SENDER_SHARE * rate_f(s.rate) {
                format!(
                    "the sender reached only {:.0}/s (target {}/s) while the control reached {reached:.0}/s: \
                     the defence's receive work, run on the sender's CPU over veth, slowed it",
                    s.achieved, s.rate
                )
            } else {
                format!(
                    "the sender saturated at {:.0}/s (target {}/s; the control reached {reached:.0}/s): \
                     the sender, not the defence, is the limit",
                    s.achieved, s.rate
                )
            }
        }
        _ => "every step passed".into(),
    };
    let Some(s) = steps.iter().rev().find(|s| ok(s)) else {
        return report.note(format!("flood, {name}: no step reached 99.9 % legit success ({why})"));
    };
    report.row("flood", format!("{name}: highest rate with ≥ 99.9 % legit"), s.achieved, "SYN/s").ratio =
        Some(why);
    report.row("flood", format!("{name}: legit p50 at that rate"), s.p50_ms, "ms");
    report.row("flood", format!("{name}: legit p99 at that rate"), s.p99_ms, "ms");
    let base = floor(control, s.rate);
    report
        .row(
            "flood",
            format!("{name}: softirq CPU per flood SYN above the control"),
            s.per_syn() - base,
            "ns",
        )
        .ratio = Some(format!("control {base:.0} ns/SYN at {}/s", s.rate));
}

fn ok(s: &Step) -> bool {
    f64::from(s.ok) >= LEGIT_OK * f64::from(s.total.max(1))
}

#[allow(clippy::cast_precision_loss, reason = "rates far below 2^52")]
fn rate_f(r: u64) -> f64 {
    r as f64
}

/// A fresh lab for one defence; steps up until legit success or the sender gives out.
fn run_defence(defence: Defence, test_object: &Path, agent_bin: &Path) -> Result<Vec<Step>> {
    let mut lab = Lab::new()?;
    lab.attach_client_xdp(test_object)?;
    lab.start_server(PORT, 1024)?;
    let _agent = match defence {
        Defence::Ours => Some(Agent::start(
            &lab,
            agent_bin,
            &[
                "--mode",
                "cookie",
                "--cookie-budget",
                "4000000",
                "--syn-rate-limit",
                "1000000",
                "--half-open-limit",
                "1000000",
            ],
        )?),
        _ => None,
    };
    match defence {
        Defence::Synproxy => synproxy(&lab)?,
        Defence::Control => drop_at_ingress(&lab)?,
        _ => {}
    }
    let mut steps = Vec::new();
    for rate in RATES {
        let step = run_step(&lab, rate)?;
        let (good, saturated) = (ok(&step), step.achieved < SENDER_SHARE * rate_f(rate));
        steps.push(step);
        if (defence != Defence::Control && !good) || saturated {
            break;
        }
    }
    Ok(steps)
}

/// nftables SYNPROXY in the server namespace, in a table of its own (nftables wiki recipe).
fn synproxy(lab: &Lab) -> Result<()> {
    let rules = format!(
        "table inet sd_bench_synproxy {{\n\
           chain pre {{ type filter hook prerouting priority raw; policy accept;\n\
             tcp dport {PORT} tcp flags syn notrack\n\
           }}\n\
           chain in {{ type filter hook input priority filter; policy accept;\n\
             tcp dport {PORT} ct state invalid,untracked synproxy mss 1460 wscale 7 timestamp sack-perm\n\
             ct state invalid drop\n\
           }}\n\
         }}\n"
    );
    nft(lab, "synproxy.nft", &rules)?;
    // The wiki's sysctls: ACKs that do not belong to a connection are invalid (so they reach
    // synproxy), and timestamps on; inside the lab's namespace only.
    lab.sysctl(&lab.server_ns, "net.netfilter.nf_conntrack_tcp_loose", "0")?;
    lab.sysctl(&lab.server_ns, "net.ipv4.tcp_timestamps", "1")
}

fn run_step(lab: &Lab, rate: u64) -> Result<Step> {
    let flood = Flood {
        v6: false,
        sources: FloodSources::Random,
        port: PORT,
        count: rate * STEP.as_secs(),
        pps: rate,
        limit: STEP + Duration::from_secs(2),
    };
    let done = AtomicBool::new(false);
    let addr = SocketAddr::from((SERVER_V4, PORT));
    let before = busy_ns()?;
    let (flood_report, legit) = std::thread::scope(|scope| -> Result<_> {
        let legit = scope.spawn(|| {
            in_netns(&lab.client_ns, || {
                let (mut ok, mut total, mut times, mut first_error) = (0u32, 0u32, Vec::new(), None);
                while !done.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    total += 1;
                    match http_get(addr, "/", Duration::from_secs(1)) {
                        Ok(_) => {
                            ok += 1;
                            times.push(t.elapsed());
                        }
                        Err(e) => {
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
                (ok, total, times, first_error)
            })
        });
        std::thread::sleep(Duration::from_millis(200));
        let result = flood.run(lab);
        done.store(true, Ordering::Relaxed);
        let legit = legit.join().map_err(|_| anyhow::anyhow!("legit client panicked"))??;
        Ok((result?, legit))
    })?;
    let busy = busy_ns()? - before;
    let (ok, total, mut times, first_error) = legit;
    times.sort();
    let q = |p: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index"
        )]
        times
            .get(((times.len().saturating_sub(1)) as f64 * p).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    #[allow(clippy::cast_precision_loss, reason = "packet counts far below 2^52")]
    let achieved = flood_report.sent as f64 / flood_report.elapsed.as_secs_f64().max(1e-3);
    Ok(Step {
        rate,
        sent: flood_report.sent,
        achieved,
        ok,
        total,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        busy_ns: busy,
        first_error,
    })
}

/// The control: the flood's sources dropped at the server veth's ingress hook (nftables
/// netdev table), before IP and TCP: same sender, same veth, no TCP work.
fn drop_at_ingress(lab: &Lab) -> Result<()> {
    let rules = format!(
        "table netdev sd_bench_control {{\n\
           chain in {{ type filter hook ingress device \"{}\" priority -500; policy accept;\n\
             ip saddr 198.18.128.0/17 drop\n\
           }}\n\
         }}\n",
        lab.server_if
    );
    nft(lab, "control.nft", &rules)
}

fn nft(lab: &Lab, name: &str, rules: &str) -> Result<()> {
    let file = lab.scratch().join(name);
    std::fs::write(&file, rules)?;
    crate::run(
        std::process::Command::new("ip").args(["netns", "exec", &lab.server_ns, "nft", "-f"]).arg(&file),
    )
}

/// Softirq time of the whole machine so far (/proc/stat, all CPUs), in ns: where packet
/// receive work is accounted whichever process's CPU it ran on; compile jobs and other
/// tenants of the machine add little to it, unlike to user or system time.
fn busy_ns() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let f: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq ...; USER_HZ is 100 on Linux.
    Ok(f.get(6).copied().context("no softirq column in /proc/stat")? * 1e7)
}
