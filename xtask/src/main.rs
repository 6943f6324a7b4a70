//! `cargo xtask`: build, test, run and measure the project. One module per command.

mod bench;
mod bench_agent;
mod bench_cases;
mod bench_compare;
mod bench_flood;
mod bench_pin;
mod bench_report;
mod bench_rounds;
mod bench_samples;
mod bench_selftest;
mod bench_verifier;
mod build_ebpf;
mod dist;
mod fuzz;
mod lint;
mod setup;
mod test;
mod toolchain;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Project tasks for syndetector")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install (idempotently) what a fresh Debian 12 machine needs to build and test.
    Setup,
    /// Build the XDP object.
    BuildEbpf(build_ebpf::BuildEbpfArgs),
    /// Build the XDP object and the agent that embeds it.
    Build(build_ebpf::BuildEbpfArgs),
    /// The Debian package (cargo-deb): release binary, systemd unit, config, dashboards.
    Dist(dist::DistArgs),
    /// Run every test (needs root): the README's and CI's test command.
    Test(test::TestArgs),
    /// rustfmt and clippy.
    Lint,
    /// Coverage-guided fuzzing (cargo-fuzz), or the long differential run (--differential).
    Fuzz(fuzz::FuzzArgs),
    /// Nanoseconds per packet for each path, with ratios to baseline programs (root).
    Bench(bench::BenchArgs),
    /// The agent in auto mode against a changing flood for N minutes: RSS, fds, map fill
    /// and legit success sampled; non-zero exit on a broken bound (root).
    Soak(xtask::soak::SoakArgs),
    /// The demo in a lab of network namespaces, or the agent on a real interface (--iface).
    Run(xtask::demo::DemoArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Task::Setup => setup::main(),
        Task::BuildEbpf(args) => build_ebpf::main(&args).map(drop),
        Task::Build(args) => build(&args).map(drop),
        Task::Dist(args) => {
            if args.check {
                dist::check()
            } else {
                dist::main().map(drop)
            }
        }
        Task::Test(args) => test::main(&args),
        Task::Lint => lint::main(),
        Task::Fuzz(args) => fuzz::main(&args),
        Task::Bench(args) => build_ebpf::main(&build_ebpf::BuildEbpfArgs { release: true })
            .and_then(|object| bench::main(&args, &object)),
        Task::Soak(args) => build(&build_ebpf::BuildEbpfArgs { release: false })
            .and_then(|agent| xtask::soak::main(&args, &agent, &xtask::objects::test_programs(false))),
        Task::Run(args) => build(&build_ebpf::BuildEbpfArgs { release: false })
            .and_then(|agent| xtask::demo::main(&args, &agent, &xtask::objects::test_programs(false))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Builds both halves; returns the agent binary.
fn build(args: &build_ebpf::BuildEbpfArgs) -> Result<PathBuf> {
    build_ebpf::main(args)?;
    let mut cargo = Command::new("cargo");
    cargo.current_dir(workspace_root()).args(["build", "-p", "detector-user"]);
    if args.release {
        cargo.arg("--release");
    }
    run(&mut cargo)?;
    let agent = workspace_root()
        .join("target")
        .join(if args.release { "release" } else { "debug" })
        .join("syndetector");
    println!("build: {}", agent.display());
    Ok(agent)
}

/// Runs a command, echoing it; fails unless it exits 0.
fn run(cmd: &mut Command) -> Result<()> {
    println!("$ {}", format_command(cmd));
    let status = cmd.status().with_context(|| format!("starting {}", cmd.get_program().to_string_lossy()))?;
    if !status.success() {
        bail!("`{}` failed ({status})", format_command(cmd));
    }
    Ok(())
}

fn format_command(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the workspace").to_owned()
}
