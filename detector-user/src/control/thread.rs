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
use crate::maps::monotonic_ns;

/// What the signal handlers ask of the control thread.
pub enum Command {
    /// Re-read the configuration (SIGHUP).
    Reload,
    /// Switch the program to pass-through, restore the sysctls, and end the thread.
    Stop,
    /// Leave the program's config and the sysctls as they are and end the thread: a pinned
    /// program keeps protecting until the next start adopts it.
    HandOver,
    /// Desired state changed outside the poll (the cookie policy, the lists): reconcile now.
    Wake,
    /// `syndetector mode X` (control socket): override the configured mode until a reload.
    SetMode(crate::mode::Mode),
    /// `syndetector reload` (control socket): as `Reload`, and the outcome is sent back.
    ReloadReply(mpsc::Sender<Result<Vec<&'static str>, String>>),
    /// `syndetector unblock ADDR`: end the program's own block of this source (mapped
    /// address); answers whether there was one.
    ReleaseSource([u8; 16], mpsc::Sender<Result<bool, String>>),
}

/// Loads the configuration again for a reload.
pub type ConfigSource = Box<dyn Fn() -> Result<Config, String> + Send>;

impl Controller {
    /// Polls every `every` on a thread of its own until `Stop` (or the sender is gone),
    /// then switches the program to pass-through and restores the sysctls; the thread's
    /// result says what was restored. A reload that changes `poll_interval_ms` changes the
    /// interval from then on.
    pub fn spawn(
        mut self,
        every: Duration,
        load: ConfigSource,
    ) -> (mpsc::Sender<Command>, thread::JoinHandle<ShutdownReport>) {
        let (tx, rx) = mpsc::channel();
        let handle = thread::Builder::new()
            .name("syndetector-control".into())
            .spawn(move || {
                let mut schedule = Schedule::new(every, Instant::now());
                let mut hand_over = false;
                loop {
                    match rx.recv_timeout(schedule.next.saturating_duration_since(Instant::now())) {
                        Ok(Command::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        Ok(Command::HandOver) => {
                            hand_over = true;
                            break;
                        }
                        Ok(Command::Wake) => self.reconcile(),
                        Ok(Command::SetMode(mode)) => self.set_mode(mode),
                        Ok(Command::ReleaseSource(addr, reply)) => {
                            let key = detector_common::state::SourceKey { addr };
                            let released =
                                self.maps.release_source(&key, monotonic_ns()).map_err(|e| e.to_string());
                            let _ = reply.send(released);
                        }
                        Ok(cmd @ (Command::Reload | Command::ReloadReply(_))) => {
                            let outcome = load().and_then(|cfg| self.reload(cfg));
                            if outcome.is_ok() {
                                schedule.set_interval(self.cfg.poll_interval(), Instant::now());
                            }
                            if let Command::ReloadReply(reply) = cmd {
                                let _ = reply.send(outcome.clone());
                            }
                            self.reloaded(outcome);
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            if let Err(e) = self.poll() {
                                self.metrics.poll_errors.inc();
                                warn!(error = %e, "poll failed");
                            }
                            schedule.polled(Instant::now());
                        }
                    }
                }
                if hand_over {
                    self.hand_over()
                } else {
                    self.shutdown()
                }
            })
            .expect("spawning the control thread");
        (tx, handle)
    }
}

/// When the next poll is due.
#[derive(Debug)]
struct Schedule {
    every: Duration,
    next: Instant,
}

impl Schedule {
    /// The first poll at once.
    fn new(every: Duration, now: Instant) -> Self {
        Self { every, next: now }
    }

    /// After a poll that ended at `now`: one interval after the previous due time (a poll
    /// longer than the interval delays the next one).
    fn polled(&mut self, now: Instant) {
        self.next = (self.next + self.every).max(now);
    }

    /// A reload changed the interval: the next poll is due one new interval after the last
    /// one, or now if that has passed (a shorter interval need not wait out the old one).
    fn set_interval(&mut self, every: Duration, now: Instant) {
        let last = self.next.checked_sub(self.every).unwrap_or(self.next);
        self.every = every;
        self.next = (last + every).max(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reloaded_interval_applies_from_the_next_poll() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let mut s = Schedule::new(secs(60), t0);
        assert_eq!(s.next, t0);
        s.polled(t0);
        assert_eq!(s.next, t0 + secs(60));
        // Reload 5 s later to 1 s: due at once (1 s after the last poll has passed)...
        s.set_interval(Duration::from_secs(1), t0 + secs(5));
        assert_eq!(s.next, t0 + secs(5));
        s.polled(t0 + secs(5));
        // ... then every second.
        assert_eq!(s.next, t0 + secs(6));
        // Back to 10 s, half a second after a poll: due 10 s after that poll.
        s.polled(t0 + secs(6));
        s.set_interval(secs(10), t0 + Duration::from_millis(6_500));
        assert_eq!(s.next, t0 + secs(16));
    }
}
