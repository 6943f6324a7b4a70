//! `cargo xtask run`: the self-contained demo. It builds a lab (two network namespaces, a
//! veth pair, a real HTTP server with a small listen backlog and kernel cookies off),
//! starts the agent in auto mode, and shows what an operator would see: legit requests,
//! a single-source flood blocked, a spoofed random-source flood answered with cookies
//! from XDP, then calm again. Everything it made is removed at the end.
//!
//! With `--iface IF` it runs the agent on a real interface instead (arguments after `--`
//! go to `syndetector run`).

use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::lab::{in_netns, Agent, ClientReport, Flood, FloodSources, Lab, Scrape, SERVER_V4};

const PORT: u16 = 8080;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Run the agent on these real interfaces instead of the lab demo.
    #[arg(long = "iface", value_name = "IF")]
    pub interfaces: Vec<String>,
    /// Further arguments for `syndetector run` (with --iface), e.g. `-- --mode cookie`.
    #[arg(last = true)]
    pub agent_args: Vec<String>,
}

pub fn main(args: &DemoArgs, agent: &Path, test_object: &Path) -> Result<()> {
    if !args.interfaces.is_empty() {
        let mut cmd = Command::new(agent);
        cmd.arg("run");
        for iface in &args.interfaces {
            cmd.args(["--iface", iface]);
        }
        let status = cmd.args(&args.agent_args).status().context("starting the agent")?;
        if !status.success() {
            bail!("the agent exited with {status}");
        }
        return Ok(());
    }
    lab_demo(agent, test_object)
}

fn step(text: &str) {
    println!("\n== {text}");
}

#[allow(clippy::too_many_lines, reason = "one straight script of demo steps, read top to bottom")]
fn lab_demo(agent_bin: &Path, test_object: &Path) -> Result<()> {
    step("building the lab: namespaces, veth, HTTP server (backlog 16, kernel SYN cookies off)");
    let mut lab = Lab::new()?;
    lab.attach_client_xdp(test_object)?;
    lab.sysctl(&lab.server_ns.clone(), "net.ipv4.tcp_syncookies", "0")?;
    lab.start_server(PORT, 16)?;
    println!("   server {SERVER_V4}:{PORT} in {}, clients in {}", lab.server_ns, lab.client_ns);

    step("starting syndetector in auto mode on the server's interface");
    let mut agent = Agent::start(
        &lab,
        agent_bin,
        &[
            "--mode",
            "auto",
            "--poll-interval-ms",
            "500",
            "--enter-syn-rate",
            "4000",
            "--exit-syn-rate",
            "1000",
            "--hold",
            "3",
            // The demo's one legit client opens hundreds of connections a second.
            "--syn-rate-limit",
            "2000",
            "--half-open-limit",
            "50",
            "--block-ttl",
            "5",
        ],
    )?;
    let legit = |n| {
        let addr = SocketAddr::from((SERVER_V4, PORT));
        in_netns(&lab.client_ns, move || ClientReport::run(addr, "/data", n, Duration::from_secs(3)))
    };
    println!("   legit requests while calm: {}", legit(100)?);

    step("a single spoofed source floods (3000 SYNs at 1000/s from 198.18.200.66)");
    let single = Flood {
        v6: false,
        sources: FloodSources::Single(0x4842),
        port: PORT,
        count: 3000,
        pps: 1000,
        limit: Duration::from_secs(10),
    };
    let sent = single.run(&lab)?.sent;
    thread::sleep(Duration::from_millis(600));
    let s = agent.scrape()?;
    println!(
        "   sent {sent}; dropped {} (blocked) + {} (over limit); sources blocked now: {}",
        s.value("syndetector_packets_total{reason=\"blocked\",verdict=\"drop\"}")?,
        s.value("syndetector_packets_total{reason=\"over_limit\",verdict=\"drop\"}")?,
        s.value("syndetector_sources_blocked")?
    );
    println!("   legit requests meanwhile: {}", legit(100)?);

    step("a spoofed random-source flood: 50000 SYNs at 5000/s from 198.18.128.0/17");
    let random = Flood { sources: FloodSources::Random, count: 50_000, pps: 5_000, ..single };
    let (flood, (during, report, kernel)) = thread::scope(|scope| -> Result<_> {
        let f = scope.spawn(|| random.run(&lab));
        thread::sleep(Duration::from_secs(2));
        let during = agent.scrape()?;
        // What an operator without Grafana sees: `syndetector top --once`, as printed.
        let top = Command::new("ip")
            .args(["netns", "exec", &lab.server_ns])
            .arg(agent_bin)
            .args(["top", "--once", "--addr", &agent.metrics_addr.to_string()])
            .output()?;
        println!("   `syndetector top --once` 2 s into the flood:");
        for line in String::from_utf8_lossy(&top.stdout).lines() {
            println!("   | {line}");
        }
        let before = lab.nstat(&lab.server_ns)?;
        let report = legit(500)?;
        let after = lab.nstat(&lab.server_ns)?;
        let d = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
        let kernel = (d("TcpExtSyncookiesRecv"), d("TcpExtListenOverflows"));
        let flood = f.join().map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
        Ok((flood, (during, report, kernel)))
    })?;
    let end = agent.scrape()?;
    println!(
        "   2 s in: under attack {}, cookies answering {}",
        during.value("syndetector_under_attack")?,
        during.value("syndetector_cookies_active")?
    );
    println!("   legit requests during the flood: {report}");
    println!(
        "   kernel, over those requests: cookies accepted (TcpExtSyncookiesRecv) +{}, listen overflows +{}",
        kernel.0, kernel.1
    );
    println!(
        "   sent {}; answered from XDP with cookies: {} (those never reached the kernel's SYN queue)",
        flood.sent,
        end.value("syndetector_cookies_sent_total")?
    );

    step("the flood is over: waiting for the agent to calm down (hold 3 s)");
    let calm = wait_calm(&agent, Duration::from_secs(20))?;
    println!(
        "   under attack: {}; transitions to attack/calm: {}/{}",
        calm.value("syndetector_under_attack")?,
        calm.value("syndetector_attack_transitions_total{to=\"attack\"}")?,
        calm.value("syndetector_attack_transitions_total{to=\"calm\"}")?
    );

    step("stopping the agent (SIGTERM)");
    let status = agent.stop()?;
    let attached = lab.server_link_details()?.contains("prog/xdp");
    println!("   exit: {status}; XDP still attached: {attached}");
    println!("\n-- agent log --\n{}", agent.log_text());
    drop(lab);
    println!("== lab removed");
    if !status.success() || attached {
        bail!("the agent did not stop cleanly");
    }
    Ok(())
}

fn wait_calm(agent: &Agent, limit: Duration) -> Result<Scrape> {
    let deadline = Instant::now() + limit;
    loop {
        let s = agent.scrape()?;
        if s.get("syndetector_under_attack") == Some(0.0) {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("still under attack after {limit:?}");
        }
        thread::sleep(Duration::from_millis(250));
    }
}
