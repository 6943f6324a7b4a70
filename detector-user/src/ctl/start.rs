//! The agent's side of live control at start-up, in the order `main` needs it: the lists
//! and the socket before the program is loaded (a bad lists file or a busy socket stops
//! the start with the host untouched), the reconcile step once the tries exist, the
//! server once the control thread runs.

use std::sync::{mpsc, Arc, Mutex};

use anyhow::{Context, Result};
use aya::Ebpf;
use tokio::{net::UnixListener, task::JoinHandle};

use super::{handler::Handler, socket};
use crate::{
    config::Config,
    control::Command,
    lists::{files, step::ListStep, Lists},
    lock::StateDir,
    metrics::Metrics,
};

/// What is ready before the program is loaded.
pub struct Ready {
    lists: Arc<Mutex<Lists>>,
    listener: UnixListener,
    /// Removes the socket file when the agent ends.
    pub file: socket::SocketFile,
    state_dir: std::path::PathBuf,
}

/// The lists (the configured files, then what the control socket changed, from the state
/// directory) and the bound control socket. A lists state file that cannot be trusted
/// stops the start: running without the operator's deny entries would be silent.
pub fn prepare(cfg: &Config) -> Result<Ready> {
    let l = &cfg.file.lists;
    let files = files::load(&l.allow_files, &l.deny_files)?;
    let dir = StateDir::open(&cfg.file.state_dir, false)?;
    let runtime = files::read_state(&dir).context("the lists state file (fix or remove it)")?;
    let (listener, file) = socket::bind(&cfg.control_socket()).context("the control socket")?;
    Ok(Ready {
        lists: Arc::new(Mutex::new(Lists { files, runtime })),
        listener,
        file,
        state_dir: cfg.file.state_dir.clone(),
    })
}

impl Ready {
    /// The reconcile step over the object's `ALLOW` and `DENY` tries.
    pub fn list_step(&self, ebpf: &mut Ebpf, metrics: Arc<Metrics>) -> Result<ListStep> {
        let dir = StateDir::open(&self.state_dir, false)?;
        Ok(ListStep::new(crate::lists::step::take_tries(ebpf)?, self.lists.clone(), dir, metrics))
    }

    /// Starts serving the socket; abort the task to stop.
    pub fn serve(
        self,
        commands: mpsc::Sender<Command>,
        metrics: Arc<Metrics>,
        interfaces: Vec<String>,
    ) -> Result<(JoinHandle<()>, socket::SocketFile)> {
        let dir = StateDir::open(&self.state_dir, false)?;
        let handler = Handler { lists: self.lists, dir, commands, metrics, interfaces };
        Ok((tokio::spawn(socket::serve(self.listener, Arc::new(handler))), self.file))
    }
}
