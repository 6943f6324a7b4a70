//! `syndetector status`: what the state directory says, read only. The sysctl state file
//! (absent, the originals it records, or corrupt and why), which agent holds the lock, and
//! the two sysctls the agent changes as they are now, and what is pinned under the pin
//! directory (per interface: link and program id, whether the program is attached there;
//! the maps' layout version), with or without an agent running. Exit 1 when the state file is
//! corrupt (someone must restore the sysctls by hand), 2 when the directory is unusable.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use crate::{
    config::DEFAULT_PIN_DIR,
    error::StateError,
    lock::{self, StateDir},
    sysctl::{self, StateFile, MANAGED},
};

#[derive(clap::Args)]
pub struct StatusArgs {
    /// The agent's state directory (`state_dir` in the configuration).
    #[arg(long, value_name = "DIR", default_value = "/run/syndetector")]
    pub state_dir: PathBuf,
    /// The agent's pin directory (`pin_dir` in the configuration).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// The agent's control socket: its live answer is shown too, when it answers.
    #[arg(long, value_name = "PATH", default_value = crate::ctl::client::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

pub fn main(args: &StatusArgs) -> ExitCode {
    crate::ctl::client::print_live_status(&args.socket);
    print_pins(&args.pin_dir);
    let dir = &args.state_dir;
    println!("state directory: {}", dir.display());
    let state_dir = match StateDir::open(dir, false) {
        Ok(d) => d,
        Err(StateError::Dir { problem, .. }) if !dir.exists() => {
            println!("  absent ({problem}): no agent has changed anything");
            print_sysctls(Path::new("/proc/sys"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            println!("  unusable: {e}");
            print_sysctls(Path::new("/proc/sys"));
            return ExitCode::from(2);
        }
    };
    let lock_path = dir.join(lock::DIR_LOCK);
    match lock::holder(&lock_path) {
        Ok(Some(pid)) => println!("lock: held by syndetector pid {pid}"),
        Ok(None) => println!("lock: free (no agent running with this state directory)"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => println!("lock: free (no lock file)"),
        Err(e) => println!("lock: unknown ({}: {e})", lock_path.display()),
    }
    if let Ok(name) = lock::netns_lock_name() {
        match lock::holder(&Path::new(lock::NETNS_LOCK_DIR).join(name)) {
            Ok(Some(pid)) => println!("this network namespace: in use by syndetector pid {pid}"),
            Ok(None) | Err(_) => println!("this network namespace: no agent"),
        }
    }
    let corrupt = match sysctl::read_state(&state_dir, sysctl::STATE_FILE) {
        Ok(StateFile::Absent) => {
            println!("state file: absent (no sysctl is recorded as changed)");
            false
        }
        Ok(StateFile::Records(records)) => {
            println!("state file: records the originals of {} sysctl(s):", records.len());
            for (key, value) in records {
                println!("  {key} = {value}");
            }
            false
        }
        Err(e) => {
            println!("state file: CORRUPT: {e}");
            true
        }
    };
    print_sysctls(Path::new("/proc/sys"));
    if corrupt {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn print_sysctls(root: &Path) {
    println!("sysctls now:");
    for (key, _) in &MANAGED {
        let path = root.join(key.replace('.', "/"));
        match std::fs::read_to_string(&path) {
            Ok(v) => println!("  {key} = {}", v.trim()),
            Err(e) => println!("  {key}: {e}"),
        }
    }
}

fn print_pins(root: &Path) {
    println!("pin directory: {}", root.display());
    if std::fs::symlink_metadata(root).is_err() {
        println!("  absent: nothing pinned");
        return;
    }
    let (links, layouts) = crate::pins::inspect(root);
    if layouts.is_empty() {
        println!("  maps: none pinned");
    }
    for layout in layouts {
        println!("  maps: {layout} (this binary's layout: v{})", detector_common::names::LAYOUT_VERSION);
        for line in crate::pins::describe_maps(&root.join(&layout)) {
            println!("    {line}");
        }
    }
    for link in links {
        match link.ids {
            Ok((link_id, prog_id)) => {
                let attached = match crate::loader::xdp_program_id(&link.iface) {
                    Ok(Some(id)) if id == prog_id => "attached".to_owned(),
                    Ok(Some(id)) => format!("NOT attached (program {id} is)"),
                    Ok(None) => "NOT attached".to_owned(),
                    Err(e) => format!("not in this network namespace ({e})"),
                };
                println!("  {}: link {link_id} pinned, program {prog_id}, {attached}", link.iface);
            }
            Err(e) => println!("  {}: link pin unreadable: {e}", link.iface),
        }
    }
}
