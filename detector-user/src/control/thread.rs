//! The control thread: polls on a fixed interval, takes reload and stop commands from the
//! signal handlers, and on stop puts the program and the host back.

use std::{
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use tracing::warn;

use super::{Controller, ShutdownReport};
use crate::config::Config;

/// What the signal handlers ask of the control thread.
pub enum Command {
    /// Re-read the configuration (SIGHUP).
    Reload,
    /// Switch the program to pass-through, restore the sysctls, and end the thread.
    Stop,
    /// Desired state changed outside the poll (the cookie policy): reconcile now.
    Wake,
}

/// Loads the configuration again for a reload.
pub type ConfigSource = Box<dyn Fn() -> Result<Config, String> + Send>;

impl Controller {
    /// Polls every `every` on a thread of its own until `Stop` (or the sender is gone),
    /// then switches the program to pass-through and restores the sysctls; the thread's
    /// result says what was restored.
    pub fn spawn(
        mut self,
        every: Duration,
        load: ConfigSource,
    ) -> (mpsc::Sender<Command>, thread::JoinHandle<ShutdownReport>) {
        let (tx, rx) = mpsc::channel();
        let handle = thread::Builder::new()
            .name("syndetector-control".into())
            .spawn(move || {
                let mut next = Instant::now();
                loop {
                    match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
                        Ok(Command::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        Ok(Command::Wake) => self.reconcile(),
                        Ok(Command::Reload) => {
                            let outcome = load().and_then(|cfg| self.reload(cfg));
                            self.reloaded(outcome);
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            if let Err(e) = self.poll() {
                                self.metrics.poll_errors.inc();
                                warn!(error = %e, "poll failed");
                            }
                            // A poll longer than the interval delays the next one.
                            next = (next + every).max(Instant::now());
                        }
                    }
                }
                self.shutdown()
            })
            .expect("spawning the control thread");
        (tx, handle)
    }
}
