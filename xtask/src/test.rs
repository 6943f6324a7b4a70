//! `cargo xtask test`: the one test command (README and CI). Builds the XDP object, runs
//! every test of the workspace (unit, BPF_PROG_TEST_RUN, network-namespace end-to-end),
//! then checks the dashboards and alert rules with promtool, and the Debian package
//! (`dist::check`).

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{build_ebpf, dist, run, workspace_root};

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Test threads per test binary (the lab tests make namespaces; 2 cores are plenty busy).
    #[arg(long, default_value_t = 2)]
    pub test_threads: usize,
    /// Passed to the test binaries, e.g. a filter: `cargo xtask test -- e2e`.
    #[arg(last = true)]
    pub rest: Vec<String>,
}

pub fn main(args: &TestArgs) -> Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the kernel tests need root (BPF_PROG_TEST_RUN, XDP attach, network namespaces): \
             run `sudo -E cargo xtask test`"
        );
    }
    build_ebpf::main(&build_ebpf::BuildEbpfArgs { release: false })?;
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(workspace_root())
        .args(["test", "--workspace", "--no-fail-fast", "--", "--test-threads"])
        .arg(args.test_threads.to_string())
        .args(&args.rest);
    let tests = run(&mut cargo).context("cargo test");
    let dashboards = if args.rest.is_empty() {
        run(Command::new("bash")
            .arg(workspace_root().join("dashboards/check.sh"))
            .current_dir(workspace_root()))
        .context("dashboards/check.sh (promtool)")
    } else {
        Ok(())
    };
    let package = if args.rest.is_empty() { dist::check().context("the Debian package") } else { Ok(()) };
    tests?;
    dashboards?;
    package
}
