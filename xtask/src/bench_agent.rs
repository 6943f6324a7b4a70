//! The agent's part of `cargo xtask bench`: poll time and `/metrics` scrape time with a full
//! per-source map. Builds the release agent (embedding the release XDP object built just
//! before) and runs its hidden `bench-poll` command, which loads the program without
//! attaching it, fills the map with BPF map updates, and times polls and concurrent scrapes.
//! Targets: scrape < 5 ms; poll < half the poll interval (1 s by default).

use std::process::Command;

use anyhow::{Context, Result};

use crate::{run, workspace_root};

pub fn main(sources: u32) -> Result<()> {
    run(Command::new("cargo").current_dir(workspace_root()).args([
        "build",
        "--release",
        "-p",
        "detector-user",
    ]))
    .context("building the agent")?;
    let agent = workspace_root().join("target/release/syndetector");
    // The bench runs in a private network namespace, whose loopback starts down.
    run(Command::new("ip").args(["link", "set", "dev", "lo", "up"]))?;
    println!("\nagent: poll and scrape with {sources} entries in the per-source map");
    run(Command::new(agent).args(["bench-poll", "--sources", &sources.to_string()]))
}
