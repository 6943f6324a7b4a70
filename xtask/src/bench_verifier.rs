//! The verifier's part of `cargo xtask bench`: for every program in the shipped object
//! (`syndetector`) and the test object (the baselines and the cookie probe; its copy of
//! `syndetector` is skipped: the shipped one is the figure that matters), the
//! instructions the verifier processed (`verified_insns`, kernel >= 5.16) and the
//! wall-clock time of `BPF_PROG_LOAD`, median of a few loads.
//!
//! Why: loading is part of every agent start and restart, and the production program's
//! load time is almost all verifier time, which grows with the instructions it processes
//! (docs/verifier.md). A change that makes the verifier explore more paths shows up here
//! before it reaches the 1M-instruction limit.

use std::{path::Path, time::Instant};

use anyhow::{Context, Result};
use aya::{programs::Xdp, EbpfLoader};
use detector_common::{names, sketch};

/// The verifier's limit on instructions processed per program (`BPF_COMPLEXITY_LIMIT_INSNS`).
pub const VERIFIER_LIMIT: u32 = 1_000_000;

/// One program's figures.
pub struct LoadCost {
    pub program: String,
    /// Which object it was loaded from: "shipped" or "test".
    pub object: &'static str,
    pub verified_insns: u32,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

/// Loads every XDP program of `object` that `skip` does not name `loads` times (a fresh
/// object each time, so each load really verifies) and reports each one's cost.
pub fn measure(object: &[u8], which: &'static str, skip: &[String], loads: usize) -> Result<Vec<LoadCost>> {
    let mut names: Vec<String> = open(object)?
        .programs()
        .map(|(name, _)| name.to_owned())
        .filter(|name| !skip.contains(name))
        .collect();
    names.sort();
    let mut costs = Vec::new();
    for program in names {
        let mut times = Vec::with_capacity(loads);
        let mut verified_insns = 0;
        for _ in 0..loads {
            let mut ebpf = open(object)?;
            let prog: &mut Xdp = ebpf
                .program_mut(&program)
                .with_context(|| format!("no program {program}"))?
                .try_into()
                .with_context(|| format!("{program} is not an XDP program"))?;
            let start = Instant::now();
            prog.load().with_context(|| format!("verifying {program}"))?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
            verified_insns = prog
                .info()?
                .verified_instruction_count()
                .context("the kernel does not report verified_insns (needs 5.16 or later)")?;
        }
        times.sort_by(f64::total_cmp);
        costs.push(LoadCost {
            program,
            object: which,
            verified_insns,
            median_ms: times[times.len() / 2],
            min_ms: times[0],
            max_ms: times[times.len() - 1],
        });
    }
    Ok(costs)
}

/// Prints the table `cargo xtask bench` shows and returns the figures for its report.
pub fn main(shipped: &Path, test: &Path, loads: usize) -> Result<Vec<LoadCost>> {
    let read = |path: &Path| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let mut costs = measure(&read(shipped)?, "shipped", &[], loads)?;
    let in_shipped: Vec<String> = costs.iter().map(|c| c.program.clone()).collect();
    costs.extend(measure(&read(test)?, "test", &in_shipped, loads)?);
    costs.sort_by(|a, b| a.program.cmp(&b.program));
    println!("\nverifier: instructions processed and BPF_PROG_LOAD wall time, {loads} loads per program");
    println!(
        "{:<24} {:>8} {:>14} {:>9} {:>11} {:>11} {:>11}",
        "program", "object", "verified_insns", "of 1M", "median ms", "min ms", "max ms"
    );
    for c in &costs {
        println!(
            "{:<24} {:>8} {:>14} {:>8.1}% {:>11.1} {:>11.1} {:>11.1}",
            c.program,
            c.object,
            c.verified_insns,
            f64::from(c.verified_insns) * 100.0 / f64::from(VERIFIER_LIMIT),
            c.median_ms,
            c.min_ms,
            c.max_ms
        );
    }
    Ok(costs)
}

/// The object parsed and its maps created, programs not loaded; the sketch sized as the
/// bench's cases size it (the map's size does not change what the verifier does).
fn open(object: &[u8]) -> Result<aya::Ebpf> {
    EbpfLoader::new()
        .map_max_entries(names::MAP_SKETCH, sketch::words(16_384))
        .load(object)
        .context("loading the object")
}
