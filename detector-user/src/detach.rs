//! `syndetector detach [--iface IF]`: what "remove for good" means (package removal, an
//! operator who wants the host back): the link pins of the interfaces are removed, which
//! detaches the program there; once no interface is left, the maps and the pin directory
//! go too and the sysctls a stopped agent left for its program are restored from the state
//! file. Refused while an agent holds the state directory: a running agent would re-attach
//! on its next link event and keep changing sysctls; stop it first (docs/operations.md).
//! Run it in the agent's network namespace: the sysctls are that namespace's.

use std::{path::PathBuf, process::ExitCode};

use crate::{
    config::DEFAULT_PIN_DIR,
    error::StateError,
    lock::{self, StateDir},
    pins,
    sysctl::{self, Sysctls},
};

#[derive(clap::Args)]
pub struct DetachArgs {
    /// Only this interface (repeatable); default: every pinned one.
    #[arg(long = "iface", value_name = "IF")]
    pub interfaces: Vec<String>,
    /// The agent's state directory (`state_dir`), where the sysctl originals are recorded.
    #[arg(long, value_name = "DIR", default_value = "/run/syndetector")]
    pub state_dir: PathBuf,
    /// The agent's pin directory (`pin_dir`).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Where the sysctls are (`sysctl_dir`; in a container, the host's writable mount).
    #[arg(long, value_name = "DIR", default_value = "/proc/sys")]
    pub sysctl_dir: PathBuf,
}

pub fn main(args: &DetachArgs) -> ExitCode {
    match detach(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("syndetector detach: {e}");
            ExitCode::FAILURE
        }
    }
}

fn detach(args: &DetachArgs) -> Result<(), String> {
    let state_dir = if args.state_dir.exists() {
        Some(StateDir::open(&args.state_dir, false).map_err(|e| e.to_string())?)
    } else {
        None
    };
    // Held until the end: no agent can start on this state directory meanwhile.
    let _lock = match &state_dir {
        Some(dir) => Some(lock::lock(dir, lock::DIR_LOCK, "the state directory").map_err(|e| match e {
            StateError::Locked { holder, .. } => format!(
                "an agent ({holder}) is running with state directory {}: stop it first (an agent \
                 with on_stop = \"detach\" removes everything itself)",
                args.state_dir.display()
            ),
            e => e.to_string(),
        })?),
        None => None,
    };
    let removed = pins::remove(&args.pin_dir, &args.interfaces).map_err(|e| e.to_string())?;
    for iface in &removed.links {
        println!("detached from {iface} (link pin removed)");
    }
    if !removed.all {
        println!(
            "other interfaces stay pinned under {}: maps and sysctls are left for them",
            args.pin_dir.display()
        );
        return Ok(());
    }
    println!("nothing pinned under {} any more", args.pin_dir.display());
    let Some(dir) = state_dir else {
        println!("no state directory {}: no sysctl to restore", args.state_dir.display());
        return Ok(());
    };
    let mut sysctls =
        Sysctls::prepare(&args.sysctl_dir, dir, sysctl::STATE_FILE).map_err(|e| e.to_string())?;
    let recovered = sysctls.recover().map_err(|e| e.to_string())?;
    if recovered.is_empty() {
        println!("no sysctl recorded as changed");
    }
    for r in recovered {
        println!("restored {} = {}", r.key, r.value);
    }
    Ok(())
}
