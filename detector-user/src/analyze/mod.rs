//! `syndetector analyze CAPTURE`: replays a pcap/pcapng capture through the XDP program's
//! parser and per-source tracking, and the agent's attack detection, offline.
//!
//! `reader` turns the file into Ethernet frames, `model` is the pure replay (reusable by
//! differential tests), `report` prints it.

pub mod model;
pub mod reader;
pub mod report;

use std::{path::PathBuf, process::ExitCode};

use clap::Args;

use crate::config::{Config, LimitArgs, RunArgs};

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// A pcap or pcapng file (Ethernet, Linux cooked SLL/SLL2 or raw IP).
    #[arg(value_name = "CAPTURE")]
    pub capture: PathBuf,
    /// One JSON object: {"summary": {...}, "sources": [...]}.
    #[arg(long)]
    pub json: bool,
    /// Sources in the text table, most SYNs first.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    /// TOML configuration file (as for `run`; only the thresholds and timings matter).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

impl AnalyzeArgs {
    fn run_args(&self) -> RunArgs {
        RunArgs { config: self.config.clone(), limits: self.limits.clone(), ..RunArgs::default() }
    }
}

/// Exit 0 with the report, 64 for a bad configuration, 1 for a capture that cannot be read.
pub fn main(args: &AnalyzeArgs) -> ExitCode {
    let cfg = match Config::load_offline(&args.run_args()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("syndetector: invalid configuration: {e}");
            return ExitCode::from(64);
        }
    };
    let mut kernel = cfg.kernel_config();
    // What the program would run with (sketch admission), whatever the mode.
    kernel.flags |= cfg.config_flags();
    let detection = cfg.detection();
    let mut replay = model::Model::new(kernel, detection);
    let info = match reader::read_into(&args.capture, &mut replay) {
        Ok(info) => info,
        Err(e) => {
            eprintln!("syndetector analyze: {e}");
            return ExitCode::FAILURE;
        }
    };
    let analysis = replay.finish();
    if args.json {
        match serde_json::to_string_pretty(&report::json(&analysis, &info)) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("syndetector analyze: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", report::text(&analysis, &info, &kernel, &detection, args.top));
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests;
