//! The agent's part of `cargo xtask bench`: poll time and `/metrics` scrape time with a full
//! per-source map, and the agent's peak RSS while it holds it. Builds the release agent
//! (embedding the release XDP object built just before) and runs its hidden `bench-poll`
//! command, which loads the program without attaching it, fills the map with BPF map
//! updates, and times polls and concurrent scrapes. The peak RSS is the kernel's
//! `ru_maxrss` of that process (wait4), so it covers the whole run, map walks included.
//! Targets: scrape < 5 ms; poll < half the poll interval (1 s by default).

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::{bench_report::Report, run, workspace_root};

/// Builds the release agent (embedding the release XDP object) and returns its path.
pub fn build() -> Result<std::path::PathBuf> {
    run(Command::new("cargo").current_dir(workspace_root()).args([
        "build",
        "--release",
        "-p",
        "detector-user",
    ]))
    .context("building the agent")?;
    Ok(workspace_root().join("target/release/syndetector"))
}

pub fn main(sources: u32, report: &mut Report) -> Result<()> {
    let agent = build()?;
    // The bench runs in a private network namespace, whose loopback starts down.
    run(Command::new("ip").args(["link", "set", "dev", "lo", "up"]))?;
    println!("\nagent: poll and scrape with {sources} entries in the per-source map");
    let mut child = Command::new(agent)
        .args(["bench-poll", "--sources", &sources.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting syndetector bench-poll")?;
    let mut lines = Vec::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            lines.push(line);
        }
    }
    let (status, max_rss_kib) = wait_with_rusage(child.id())?;
    if status != 0 {
        bail!("syndetector bench-poll failed (wait status {status})");
    }
    let label = format!("{sources} entries");
    #[allow(clippy::cast_precision_loss, reason = "KiB of a process, far below 2^52")]
    report.row("agent", format!("peak RSS, {label}"), max_rss_kib as f64 / 1024.0, "MiB");
    for (prefix, what, target) in [
        ("poll (wall clock)", "poll, wall clock", Some("< 500 ms (half the 1 s interval)")),
        ("poll (CPU time", "poll, CPU time of the agent (all threads)", None),
        ("scrape /metrics", "/metrics scrape during polls", Some("< 5 ms")),
    ] {
        let line =
            lines.iter().find(|l| l.starts_with(prefix)).with_context(|| format!("no `{prefix}` line"))?;
        let (p50, max) = p50_max(line).with_context(|| format!("unreadable line: {line}"))?;
        report.row("agent", format!("{what}, p50, {label}"), p50, "ms").target = target;
        report.row("agent", format!("{what}, max, {label}"), max, "ms").target = target;
    }
    Ok(())
}

/// `... p50     0.570 ms  max     2.200 ms` → (0.57, 2.2).
fn p50_max(line: &str) -> Option<(f64, f64)> {
    let after = |key: &str| line.split(key).nth(1)?.split_whitespace().next()?.parse::<f64>().ok();
    Some((after(" p50 ")?, after(" max ")?))
}

/// Reaps `pid` with wait4: its wait status and peak resident set (KiB).
fn wait_with_rusage(pid: u32) -> Result<(i32, i64)> {
    let mut status = 0;
    // SAFETY: all-zero is a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child with valid out-pointers.
    let r = unsafe { libc::wait4(libc::pid_t::try_from(pid)?, &raw mut status, 0, &raw mut usage) };
    if r < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    Ok((status, usage.ru_maxrss))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_figures_of_a_bench_poll_line() {
        let line = "scrape /metrics (concurrent with polls)   n=23    p50     0.570 ms  max     2.200 ms";
        assert_eq!(super::p50_max(line), Some((0.57, 2.2)));
        assert_eq!(super::p50_max("poll (wall clock) n=0"), None);
    }
}
