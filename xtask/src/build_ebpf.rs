//! `cargo xtask build-ebpf [--release]`: builds the XDP objects for bpfel-unknown-none:
//! the shipped one (`syndetector` alone) and the test one (with the `test-programs`
//! feature: the bench's baselines and the fixtures' cookie probe). `xtask::objects` says
//! where each lands.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use xtask::objects;

use crate::{run, toolchain, workspace_root};

#[derive(Debug, Default, clap::Args)]
pub struct BuildEbpfArgs {
    /// Build the release profile (the dev profile is optimised too: the verifier needs it).
    #[arg(long)]
    pub release: bool,
}

/// Builds both objects; returns the shipped one's path.
pub fn main(args: &BuildEbpfArgs) -> Result<PathBuf> {
    let Some(route) = toolchain::detect() else {
        bail!(
            "no toolchain can build the eBPF crate: no rustup nightly with rust-src and no Debian \
             rustc-web/rust-web-src. Run `cargo xtask setup` first."
        );
    };
    if toolchain::bpf_linker_version().is_none() {
        bail!("bpf-linker is not on PATH (~/.cargo/bin). Run `cargo xtask setup` first.");
    }
    println!("build-ebpf: using {}", route.describe());
    // Both builds share one target directory, so core, aya-ebpf and detector-common are
    // compiled once and only the crate itself twice (cargo keeps both in deps/). Cargo
    // leaves either result at the same output path, so the test build runs first and is
    // copied away, and the shipped build runs last: the path the agent embeds always
    // holds the shipped object.
    cargo_build(route, args.release, true).context("building the eBPF crate with test-programs")?;
    let test_object = objects::test_programs(args.release);
    std::fs::copy(objects::shipped(args.release), &test_object)
        .with_context(|| format!("copying the test object to {}", test_object.display()))?;
    cargo_build(route, args.release, false).context("building the eBPF crate")?;
    let object = objects::shipped(args.release);
    for (what, path) in [("shipped", &object), ("test", &test_object)] {
        let size = std::fs::metadata(path).with_context(|| format!("no object at {}", path.display()))?.len();
        println!("build-ebpf: {what} object {} ({size} bytes)", path.display());
    }
    Ok(object)
}

fn cargo_build(route: toolchain::Route, release: bool, test_programs: bool) -> Result<()> {
    let mut cmd = toolchain::ebpf_cargo(route);
    cmd.current_dir(workspace_root().join("detector-ebpf")).args([
        "build",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
    ]);
    if release {
        cmd.arg("--release");
    }
    if test_programs {
        cmd.args(["--features", objects::TEST_FEATURE]);
    }
    run(&mut cmd)
}
