//! `cargo xtask fuzz`: coverage-guided fuzzing of the pure packet logic (cargo-fuzz and
//! libFuzzer, targets in fuzz/), and `--differential`, the long model-versus-kernel run.
//!
//! cargo-fuzz needs `-Z` flags (sanitizer, coverage instrumentation); the stable rustc
//! accepts them under `RUSTC_BOOTSTRAP=1`, which is set here for the fuzz build only.
//! Corpora live under target/fuzz-corpus/<target> (kept between runs), seeded each run
//! from the differential test's generators; findings go to target/fuzz-findings/<target>/.
//! Exits non-zero on a finding. See docs/robustness.md.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::{build_ebpf, run, workspace_root};

/// Every target in fuzz/Cargo.toml. The control-socket request parser is not among them
/// yet: it is not reachable as a library function (docs/robustness.md).
pub const TARGETS: &[&str] = &["parse", "options", "synack"];
/// Sequences of the long differential run: at about 24 frames each, over 100k frames.
const DIFFERENTIAL_CASES: u32 = 4_500;

#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// One target (parse, options, synack) instead of all.
    #[arg(long, value_name = "T")]
    pub target: Option<String>,
    /// Instead of fuzzing: the differential test over 100k+ frames (root).
    #[arg(long)]
    pub differential: bool,
}

pub fn main(args: &FuzzArgs) -> Result<()> {
    if args.differential {
        return differential();
    }
    // libFuzzer reads -max_total_time=0 as "no limit": a run that never ends.
    if args.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let targets: Vec<&str> = match &args.target {
        Some(t) if TARGETS.contains(&t.as_str()) => vec![t.as_str()],
        Some(t) => bail!("no fuzz target {t:?}: the targets are {}", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    if !Command::new("cargo").args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success()) {
        bail!("cargo-fuzz is missing: run `cargo xtask setup`");
    }
    let root = workspace_root();
    let seeds = root.join("target/fuzz-seeds");
    seed(&seeds)?;
    let mut findings = Vec::new();
    for target in targets {
        let corpus = root.join("target/fuzz-corpus").join(target);
        let found = root.join("target/fuzz-findings").join(target);
        std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        std::fs::create_dir_all(&found).with_context(|| format!("creating {}", found.display()))?;
        let mut cargo = Command::new("cargo");
        cargo
            .current_dir(root.join("fuzz"))
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", "-O", target])
            .arg(&corpus)
            .arg(seeds.join(target))
            .arg("--")
            .arg(format!("-max_total_time={}", args.seconds))
            .arg(format!("-artifact_prefix={}/", found.display()))
            .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"]);
        if let Err(e) = run(&mut cargo) {
            eprintln!("fuzz: {target}: {e:#}");
            findings.push(target);
        }
    }
    if !findings.is_empty() {
        bail!(
            "fuzzing found inputs that fail {} (saved under target/fuzz-findings/; replay one with \
             `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O TARGET FILE`)",
            findings.join(", ")
        );
    }
    println!("fuzz: no finding");
    Ok(())
}

/// Writes the generators' frames into `dir/<target>` (the differential test's
/// `write_fuzz_corpus`, in each target's input format).
fn seed(dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    run(Command::new("cargo")
        .current_dir(workspace_root())
        .env("SYNDETECTOR_FUZZ_CORPUS", dir)
        .args(["test", "-p", "detector-user", "--test", "differential", "--"])
        .args(["--ignored", "--exact", "corpus::write_fuzz_corpus"]))
    .context("seeding the fuzz corpus from the differential test's generators")
}

/// The differential test with `DIFFERENTIAL_CASES` sequences (the default test run has
/// 150): model and kernel over more than 100k frames.
fn differential() -> Result<()> {
    build_ebpf::main(&build_ebpf::BuildEbpfArgs { release: false })?;
    run(Command::new("cargo")
        .current_dir(workspace_root())
        .env("SYNDETECTOR_DIFF_CASES", DIFFERENTIAL_CASES.to_string())
        .args(["test", "-p", "detector-user", "--test", "differential", "--"])
        .args(["--exact", "kernel_and_model_agree_on_generated_sequences", "--nocapture"]))
    .context("the differential test")
}
