//! `cargo xtask lint`: rustfmt and clippy (pedantic, warnings denied) on the host crates,
//! and clippy on the eBPF crate where the nightly route (which ships clippy) is present.

use std::process::Command;

use anyhow::Result;

use crate::{run, toolchain, workspace_root};

pub fn main() -> Result<()> {
    let root = workspace_root();
    run(Command::new("cargo").current_dir(&root).args(["fmt", "--all", "--check"]))?;
    run(Command::new("cargo").current_dir(&root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    if toolchain::nightly_has_rust_src() {
        // Both objects' code: the test-only programs, and the shipped build on its own
        // (code only they used would be dead there).
        for features in [&[][..], &["--features", xtask::objects::TEST_FEATURE][..]] {
            let mut cmd = toolchain::ebpf_cargo(toolchain::Route::Nightly);
            cmd.current_dir(root.join("detector-ebpf"))
                .args(["clippy", "--target", "bpfel-unknown-none", "-Z", "build-std=core"])
                .args(features)
                .args(["--", "-D", "warnings"]);
            run(&mut cmd)?;
        }
    } else {
        println!("lint: Debian's rustc-web ships no clippy: the eBPF crate is not linted here");
    }
    Ok(())
}
