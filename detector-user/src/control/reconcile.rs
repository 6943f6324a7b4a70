//! Level-triggered reconciliation: every poll compares what the agent wants (the cookie
//! sysctls, the program's config slot, any other desired state) with what is actually
//! applied, read back from the host, and applies the difference. Nothing here acts on a
//! transition, so a write that failed, or a value someone else changed, is put right on a
//! later poll. A failing step is logged, counted and retried with a backoff (the next
//! poll, then after 0.5, 1.5, 3.5 s, then every 4 s).
//!
//! Order: cookies on → sysctls first, then the program's flags (the helper must be armed
//! before XDP asks it); cookies off → flags first, then the sysctls. While the sysctls
//! are not applied, the program gets its flags without the cookie bits: it never answers
//! with cookies the kernel would refuse.

use std::time::{Duration, Instant};

use detector_common::config::{
    Config as KernelConfig, FLAG_COOKIES, FLAG_COOKIE_ECN, FLAG_COOKIE_TIMESTAMPS,
};
use tracing::warn;

use crate::{
    error::SysctlError,
    metrics::{Metrics, WHAT_PROGRAM_CONFIG, WHAT_SYSCTLS, WHAT_WINDOW_SCALE},
    sysctl,
};

pub const SYNCOOKIES: &str = "net.ipv4.tcp_syncookies";
pub const TIMESTAMPS: &str = "net.ipv4.tcp_timestamps";
const COOKIE_FLAGS: u32 = FLAG_COOKIES | FLAG_COOKIE_TIMESTAMPS | FLAG_COOKIE_ECN;
const MAX_BACKOFF: Duration = Duration::from_secs(4);

/// The host's sysctls (`sysctl::Sysctls` in production).
pub trait SysctlAccess {
    fn read(&self, key: &str) -> Result<String, SysctlError>;
    /// Sets `key`, recording (durably) its original value before the first change.
    fn set(&mut self, key: &str, value: &str) -> Result<(), SysctlError>;
    /// Puts `key` back to its original value if this agent changed it.
    fn restore(&mut self, key: &str) -> Result<(), SysctlError>;
    /// Whether this agent changed `key` and has not restored it yet.
    fn changed(&self, key: &str) -> bool;
}

/// The program's `CONFIG` slot.
pub trait ConfigSlot {
    fn read(&self) -> Result<KernelConfig, String>;
    fn write(&mut self, cfg: &KernelConfig) -> Result<(), String>;
}

pub trait Clock {
    fn now(&self) -> Instant;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Other desired state to converge every poll (e.g. policy maps), in the same loop, with
/// the same backoff, error counter and `syndetector_reconciled{what}` gauge.
pub trait Reconciler: Send {
    /// The metric label: a fixed, bounded name.
    fn what(&self) -> &'static str;
    /// Compares desired with applied and applies the difference.
    fn reconcile(&mut self) -> Result<(), String>;
    /// `config::FLAG_*` bits this state needs in the program's config.
    fn program_flags(&self) -> u32 {
        0
    }
    /// A reload (SIGHUP, `syndetector reload`) brings a new configuration: take what this
    /// step reads from it, all or nothing (an error refuses the whole reload).
    fn reload(&mut self, _cfg: &crate::config::Config) -> Result<(), String> {
        Ok(())
    }
}

/// What the agent wants applied now.
#[derive(Clone, Copy, Debug)]
pub struct Desired {
    /// Cookie answering (mode and attack state): the sysctls at 2, the cookie flags.
    pub cookies: bool,
    /// With cookies: `tcp_timestamps = 2` too.
    pub cookie_timestamps: bool,
    /// The program config, flags included; `synack_wscale` is filled in here.
    pub program: KernelConfig,
}

/// What is applied after a step, as read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The program answers with cookies and the kernel will accept them.
    pub cookies_active: bool,
    /// Every step converged.
    pub converged: bool,
}

#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    next: Option<Instant>,
}

impl Backoff {
    fn may_try(&self, now: Instant) -> bool {
        self.next.is_none_or(|next| now >= next)
    }

    fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        // 500 ms × (2^(n-1) - 1): 0, 0.5, 1.5, 3.5, then 4 s: the next poll first, then
        // at least every MAX_BACKOFF.
        let steps = (1u64 << (self.failures - 1).min(8)) - 1;
        self.next = Some(now + Duration::from_millis(500 * steps).min(MAX_BACKOFF));
    }

    fn succeeded(&mut self) {
        *self = Self::default();
    }
}

pub struct Reconcile {
    backoff: [Backoff; 3],
    others: Vec<(Box<dyn Reconciler>, Backoff)>,
    /// The last window scale read from the host, kept while the sysctls cannot be read.
    wscale: Option<u8>,
}

impl Reconcile {
    pub fn new(others: Vec<Box<dyn Reconciler>>) -> Self {
        Self {
            backoff: Default::default(),
            others: others.into_iter().map(|r| (r, Backoff::default())).collect(),
            wscale: None,
        }
    }

    /// Hands a reloaded configuration to the other steps; the first error stops it.
    pub fn reload_others(&mut self, cfg: &crate::config::Config) -> Result<(), String> {
        self.others.iter_mut().try_for_each(|(r, _)| r.reload(cfg))
    }

    /// The program-config flags the other steps need.
    pub fn extra_flags(&self) -> u32 {
        self.others.iter().fold(0, |flags, (r, _)| flags | r.program_flags())
    }

    /// One pass: reads back, applies differences, records the outcome in the metrics.
    pub fn step(
        &mut self,
        desired: &Desired,
        sys: &mut dyn SysctlAccess,
        slot: &mut dyn ConfigSlot,
        clock: &dyn Clock,
        m: &Metrics,
    ) -> Applied {
        let now = clock.now();
        let mut program = desired.program;
        let wscale_ok = self.window_scale(sys, now, m);
        if let Some(w) = self.wscale {
            program.synack_wscale = w;
        }
        let (sysctls_ok, program_ok) = if desired.cookies {
            let sysctls_ok = self.sysctls(desired, sys, now, m, true);
            if !sysctls_ok {
                program.flags &= !COOKIE_FLAGS;
            }
            (sysctls_ok, self.program(&program, slot, now, m))
        } else {
            let program_ok = self.program(&program, slot, now, m);
            // Flags first: while the slot may still say "cookies", the helper stays armed.
            let sysctls_ok = self.sysctls(desired, sys, now, m, program_ok);
            (sysctls_ok, program_ok)
        };
        let mut others_ok = true;
        for (r, backoff) in &mut self.others {
            let ok = attempt(r.what(), backoff, now, m, || Ok(false), || r.reconcile());
            others_ok &= ok;
        }
        let slot_cookies = slot.read().is_ok_and(|c| c.has(FLAG_COOKIES));
        let armed = sys.read(SYNCOOKIES).is_ok_and(|v| v == "2");
        Applied {
            cookies_active: slot_cookies && armed,
            converged: wscale_ok && sysctls_ok && program_ok && others_ok,
        }
    }

    fn window_scale(&mut self, sys: &dyn SysctlAccess, now: Instant, m: &Metrics) -> bool {
        let mut found = None;
        let ok = attempt(
            WHAT_WINDOW_SCALE,
            &mut self.backoff[2],
            now,
            m,
            || Ok(false),
            || {
                let buffer = sysctl::max_receive_buffer(&|key| sys.read(key)).map_err(|e| e.to_string())?;
                found = Some(sysctl::window_scale(buffer));
                Ok(())
            },
        );
        if found.is_some() {
            self.wscale = found;
        }
        ok
    }

    /// The cookie sysctls: 2 while cookies are wanted (timestamps only if configured),
    /// their originals otherwise.
    /// `may_apply` false: only read back (a step it waits on has not converged).
    fn sysctls(
        &mut self,
        d: &Desired,
        sys: &mut dyn SysctlAccess,
        now: Instant,
        m: &Metrics,
        may_apply: bool,
    ) -> bool {
        let wants = |key: &str| match key {
            SYNCOOKIES => d.cookies,
            _ => d.cookies && d.cookie_timestamps,
        };
        let applied = |sys: &dyn SysctlAccess| {
            [SYNCOOKIES, TIMESTAMPS].iter().all(|key| {
                if wants(key) {
                    sys.read(key).is_ok_and(|v| v == "2")
                } else {
                    !sys.changed(key)
                }
            })
        };
        let already = applied(sys);
        if !may_apply {
            record(m, WHAT_SYSCTLS, already);
            return already;
        }
        attempt(
            WHAT_SYSCTLS,
            &mut self.backoff[0],
            now,
            m,
            || Ok(already),
            || {
                for key in [SYNCOOKIES, TIMESTAMPS] {
                    if wants(key) {
                        sys.set(key, "2").map_err(|e| e.to_string())?;
                    } else {
                        sys.restore(key).map_err(|e| e.to_string())?;
                    }
                }
                if applied(sys) {
                    Ok(())
                } else {
                    Err("written, but the value read back differs".into())
                }
            },
        )
    }

    fn program(
        &mut self,
        program: &KernelConfig,
        slot: &mut dyn ConfigSlot,
        now: Instant,
        m: &Metrics,
    ) -> bool {
        let already = slot.read().map(|c| c == *program);
        attempt(WHAT_PROGRAM_CONFIG, &mut self.backoff[1], now, m, || already, || slot.write(program))
    }
}

/// Runs one step: `check` says whether it is already applied (read back); if not and the
/// backoff allows, `apply`. Records the outcome; returns whether it is applied.
fn attempt(
    what: &'static str,
    backoff: &mut Backoff,
    now: Instant,
    m: &Metrics,
    check: impl FnOnce() -> Result<bool, String>,
    apply: impl FnOnce() -> Result<(), String>,
) -> bool {
    if check().unwrap_or(false) {
        backoff.succeeded();
        record(m, what, true);
        return true;
    }
    if !backoff.may_try(now) {
        record(m, what, false);
        return false;
    }
    match apply() {
        Ok(()) => {
            backoff.succeeded();
            record(m, what, true);
            true
        }
        Err(e) => {
            backoff.failed(now);
            m.reconcile_errors.with_label_values(&[what]).inc();
            warn!(event = "reconcile_failed", what, failures = backoff.failures, error = %e, "could not apply the desired state; will retry");
            record(m, what, false);
            false
        }
    }
}

fn record(m: &Metrics, what: &str, ok: bool) {
    m.reconciled.with_label_values(&[what]).set(i64::from(ok));
}

impl SysctlAccess for sysctl::Sysctls {
    fn read(&self, key: &str) -> Result<String, SysctlError> {
        sysctl::Sysctls::read(self, key)
    }
    fn set(&mut self, key: &str, value: &str) -> Result<(), SysctlError> {
        sysctl::Sysctls::set(self, key, value)
    }
    fn restore(&mut self, key: &str) -> Result<(), SysctlError> {
        sysctl::Sysctls::restore(self, key)
    }
    fn changed(&self, key: &str) -> bool {
        sysctl::Sysctls::changed(self, key)
    }
}
