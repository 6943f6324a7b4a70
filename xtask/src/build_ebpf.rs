//! `cargo xtask build-ebpf [--release]`: builds the XDP object for bpfel-unknown-none.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::{run, toolchain, workspace_root};

#[derive(Debug, Default, clap::Args)]
pub struct BuildEbpfArgs {
    /// Build the release profile (the dev profile is optimised too: the verifier needs it).
    #[arg(long)]
    pub release: bool,
}

/// Where the object lands for a profile.
pub fn object_path(release: bool) -> PathBuf {
    workspace_root()
        .join("detector-ebpf/target/bpfel-unknown-none")
        .join(if release { "release" } else { "debug" })
        .join("detector-ebpf")
}

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
    let mut cmd = toolchain::ebpf_cargo(route);
    cmd.current_dir(workspace_root().join("detector-ebpf")).args([
        "build",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
    ]);
    if args.release {
        cmd.arg("--release");
    }
    run(&mut cmd).context("building the eBPF crate")?;
    let object = object_path(args.release);
    let size =
        std::fs::metadata(&object).with_context(|| format!("no object at {}", object.display()))?.len();
    println!("build-ebpf: {} ({size} bytes)", object.display());
    Ok(object)
}
