//! Signals: installed first thing, so a SIGHUP or SIGTERM during start-up is handled (not
//! fatal), and kept away from the thread that runs the verifier.

use anyhow::{Context, Result};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};
use tracing::info;

use crate::control::Command as ControlCommand;

/// Runs `f` with SIGHUP, SIGINT and SIGTERM blocked on this thread: they are handled on
/// the runtime's workers instead. A signal arriving in the verifier makes BPF_PROG_LOAD
/// fail with EAGAIN, and aya then loads again with verifier logs on, which takes ten
/// times as long (40 s instead of 4 here).
pub fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use; the masks
    // only concern this thread and are put back below.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGTERM] {
            libc::sigaddset(&raw mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, &raw mut old);
        let result = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &raw const old, std::ptr::null_mut());
        result
    }
}

/// The signal handlers, installed first thing: SIGINT/SIGTERM ask to stop (at any time,
/// start-up included), SIGHUPs are queued until the control thread can reload.
pub struct Signals {
    stop: watch::Receiver<Option<&'static str>>,
    hups: mpsc::UnboundedReceiver<()>,
}

impl Signals {
    pub fn install() -> Result<Self> {
        let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let (stop_tx, stop) = watch::channel(None);
        let (hup_tx, hups) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = sigint.recv() => { let _ = stop_tx.send(Some("SIGINT")); }
                    _ = sigterm.recv() => { let _ = stop_tx.send(Some("SIGTERM")); }
                    _ = sighup.recv() => {
                        info!("SIGHUP: reloading the configuration (once running)");
                        let _ = hup_tx.send(());
                    }
                }
            }
        });
        Ok(Self { stop, hups })
    }

    /// SIGINT or SIGTERM came.
    pub fn stop_requested(&self) -> Option<&'static str> {
        *self.stop.borrow()
    }

    /// Until SIGINT or SIGTERM (or the control thread is gone); each SIGHUP asks the
    /// control thread to reload the configuration.
    pub async fn wait(&mut self, commands: &std::sync::mpsc::Sender<ControlCommand>) {
        loop {
            if let Some(name) = self.stop_requested() {
                info!("{name}: stopping");
                return;
            }
            tokio::select! {
                changed = self.stop.changed() => if changed.is_err() { return },
                Some(()) = self.hups.recv() => {
                    if commands.send(ControlCommand::Reload).is_err() {
                        return;
                    }
                }
            }
        }
    }
}
