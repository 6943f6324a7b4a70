//! The reconcile step against fakes of the host: sysctls, the config slot, the clock.

use std::{
    cell::Cell,
    collections::HashMap,
    time::{Duration, Instant},
};

use detector_common::config::{Config as KernelConfig, FLAG_COOKIES, FLAG_COOKIE_TIMESTAMPS, FLAG_ENFORCE};

use super::reconcile::{Clock, ConfigSlot, Desired, Reconcile, SysctlAccess, SYNCOOKIES, TIMESTAMPS};
use crate::{error::SysctlError, metrics::Metrics, mode::Mode, sysctl::Sysctls};

#[derive(Default)]
struct FakeSysctls {
    values: HashMap<String, String>,
    original: HashMap<String, String>,
    /// Writes that fail from now on (counted down).
    failing_writes: u32,
}

impl FakeSysctls {
    fn host() -> Self {
        let mut values = HashMap::new();
        for (k, v) in [(SYNCOOKIES, "1"), (TIMESTAMPS, "1"), ("net.ipv4.tcp_rmem", "4096 131072 6291456")] {
            values.insert(k.to_owned(), v.to_owned());
        }
        Self { values, ..Self::default() }
    }

    fn get(&self, key: &str) -> &str {
        &self.values[key]
    }

    fn write(&mut self, key: &str, value: &str) -> Result<(), SysctlError> {
        if self.failing_writes > 0 {
            self.failing_writes -= 1;
            return Err(SysctlError::Io(key.into(), std::io::Error::other("EPERM (fake)")));
        }
        self.values.insert(key.to_owned(), value.to_owned());
        Ok(())
    }
}

impl SysctlAccess for FakeSysctls {
    fn read(&self, key: &str) -> Result<String, SysctlError> {
        self.values
            .get(key)
            .cloned()
            .ok_or_else(|| SysctlError::Io(key.into(), std::io::ErrorKind::NotFound.into()))
    }
    fn set(&mut self, key: &str, value: &str) -> Result<(), SysctlError> {
        let current = self.read(key)?;
        if current == value {
            return Ok(());
        }
        self.original.entry(key.to_owned()).or_insert(current);
        self.write(key, value)
    }
    fn restore(&mut self, key: &str) -> Result<(), SysctlError> {
        if let Some(v) = self.original.get(key).cloned() {
            self.write(key, &v)?;
            self.original.remove(key);
        }
        Ok(())
    }
    fn changed(&self, key: &str) -> bool {
        self.original.contains_key(key)
    }
}

#[derive(Default)]
struct FakeSlot {
    cfg: Option<KernelConfig>,
    failing_writes: u32,
}

impl ConfigSlot for FakeSlot {
    fn read(&self) -> Result<KernelConfig, String> {
        self.cfg.ok_or_else(|| "empty".into())
    }
    fn write(&mut self, cfg: &KernelConfig) -> Result<(), String> {
        if self.failing_writes > 0 {
            self.failing_writes -= 1;
            return Err("EBUSY (fake)".into());
        }
        self.cfg = Some(*cfg);
        Ok(())
    }
}

struct FakeClock(Cell<Instant>);

impl FakeClock {
    fn advance(&self, d: Duration) {
        self.0.set(self.0.get() + d);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.0.get()
    }
}

fn desired(mode: Mode, under_attack: bool, timestamps: bool) -> Desired {
    let mut program = KernelConfig::new(200, 100, 60_000_000_000, 3_000_000_000);
    program.sketch_width = 1024;
    program.flags = mode.flags(under_attack, timestamps, false);
    Desired { cookies: mode.cookies_active(under_attack), cookie_timestamps: timestamps, program }
}

struct Rig {
    r: Reconcile,
    sys: FakeSysctls,
    slot: FakeSlot,
    clock: FakeClock,
    m: Metrics,
}

impl Rig {
    fn new() -> Self {
        Self {
            r: Reconcile::new(Vec::new()),
            sys: FakeSysctls::host(),
            slot: FakeSlot::default(),
            clock: FakeClock(Cell::new(Instant::now())),
            m: Metrics::new(),
        }
    }

    fn poll(&mut self, d: &Desired) -> super::reconcile::Applied {
        self.clock.advance(Duration::from_secs(1));
        self.r.step(d, &mut self.sys, &mut self.slot, &self.clock, &self.m)
    }

    fn reconciled(&self, what: &str) -> i64 {
        self.m.reconciled.with_label_values(&[what]).get()
    }

    fn errors(&self, what: &str) -> u64 {
        self.m.reconcile_errors.with_label_values(&[what]).get()
    }
}

#[test]
fn a_failed_sysctl_write_is_retried_on_the_next_poll_and_converges() {
    let mut rig = Rig::new();
    rig.sys.failing_writes = 1;
    let d = desired(Mode::Cookie, false, false);
    let first = rig.poll(&d);
    assert!(!first.cookies_active && !first.converged);
    assert_eq!((rig.reconciled("sysctls"), rig.errors("sysctls")), (0, 1));
    assert_eq!(rig.slot.cfg.unwrap().flags, FLAG_ENFORCE, "no cookie flags while the sysctl is not applied");
    let second = rig.poll(&d);
    assert!(second.cookies_active && second.converged);
    assert_eq!(rig.sys.get(SYNCOOKIES), "2");
    assert_eq!(rig.slot.cfg.unwrap().flags, FLAG_ENFORCE | FLAG_COOKIES);
    assert_eq!(rig.reconciled("sysctls"), 1);
}

#[test]
fn cookies_are_not_reported_active_while_the_sysctl_is_not_applied() {
    let mut rig = Rig::new();
    rig.sys.failing_writes = u32::MAX;
    let d = desired(Mode::Auto, true, true);
    for _ in 0..10 {
        assert!(!rig.poll(&d).cookies_active);
    }
    assert!(rig.slot.cfg.is_some_and(|c| !c.has(FLAG_COOKIES)));
    // Backed off: far fewer attempts than polls, but retried at least every 4 s.
    let errors = rig.errors("sysctls");
    assert!((3..=6).contains(&errors), "{errors} attempts in 10 s");
}

#[test]
fn timestamps_are_set_even_if_syncookies_was_already_2() {
    let mut rig = Rig::new();
    rig.sys.values.insert(SYNCOOKIES.into(), "2".into());
    let applied = rig.poll(&desired(Mode::Cookie, false, true));
    assert!(applied.converged && applied.cookies_active);
    assert_eq!(rig.sys.get(TIMESTAMPS), "2");
    assert!(rig.slot.cfg.unwrap().has(FLAG_COOKIE_TIMESTAMPS));
    // Someone puts it back behind our back: the next poll sets it again.
    rig.sys.values.insert(TIMESTAMPS.into(), "1".into());
    assert!(rig.poll(&desired(Mode::Cookie, false, true)).converged);
    assert_eq!(rig.sys.get(TIMESTAMPS), "2");
}

#[test]
fn cookies_off_clears_the_flags_before_restoring_the_sysctls() {
    let mut rig = Rig::new();
    rig.poll(&desired(Mode::Auto, true, true));
    assert_eq!((rig.sys.get(SYNCOOKIES), rig.sys.get(TIMESTAMPS)), ("2", "2"));
    rig.slot.failing_writes = 1;
    let calm = desired(Mode::Auto, false, true);
    let applied = rig.poll(&calm);
    assert!(applied.cookies_active, "the slot still says cookies, so the sysctls stay armed");
    assert_eq!(rig.sys.get(SYNCOOKIES), "2");
    let applied = rig.poll(&calm);
    assert!(!applied.cookies_active && applied.converged);
    assert_eq!((rig.sys.get(SYNCOOKIES), rig.sys.get(TIMESTAMPS)), ("1", "1"));
    assert_eq!(rig.slot.cfg.unwrap().flags, FLAG_ENFORCE);
}

#[test]
fn the_window_scale_follows_the_sysctls() {
    let mut rig = Rig::new();
    let d = desired(Mode::Auto, false, true);
    rig.poll(&d);
    assert_eq!(rig.slot.cfg.unwrap().synack_wscale, 7);
    rig.sys.values.insert("net.core.rmem_max".into(), "33554432".into());
    rig.poll(&d);
    assert_eq!(rig.slot.cfg.unwrap().synack_wscale, 10);
}

#[test]
fn a_program_config_changed_behind_our_back_is_written_again() {
    let mut rig = Rig::new();
    let d = desired(Mode::Drop, false, false);
    rig.poll(&d);
    rig.slot.cfg = Some(KernelConfig::new(1, 1, 1, 3));
    assert!(rig.poll(&d).converged);
    assert_eq!(rig.slot.cfg.unwrap().syn_rate_limit, 200);
}

#[test]
fn a_failed_state_file_write_leaves_cookies_off_and_is_retried() {
    let proc = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(proc.path().join("net/ipv4")).unwrap();
    for (key, value) in
        [("tcp_syncookies", "1"), ("tcp_timestamps", "1"), ("tcp_rmem", "4096 131072 6291456")]
    {
        std::fs::write(proc.path().join("net/ipv4").join(key), value).unwrap();
    }
    // The state file cannot be written: a directory stands in its way (the state
    // directory itself is checked at open).
    let blocker = proc.path().join("run/state.toml");
    let (mut sys, _) = Sysctls::open(proc.path(), &blocker).unwrap();
    std::fs::create_dir(&blocker).unwrap();
    let (mut slot, clock, m) = (FakeSlot::default(), FakeClock(Cell::new(Instant::now())), Metrics::new());
    let mut r = Reconcile::new(Vec::new());
    let d = desired(Mode::Cookie, false, false);
    let applied = r.step(&d, &mut sys, &mut slot, &clock, &m);
    assert!(!applied.cookies_active);
    assert!(!slot.cfg.unwrap().has(FLAG_COOKIES));
    let read = |k: &str| std::fs::read_to_string(proc.path().join("net/ipv4").join(k)).unwrap();
    assert_eq!(read("tcp_syncookies").trim(), "1", "never changed before its original is on disk");
    std::fs::remove_dir(&blocker).unwrap();
    clock.advance(Duration::from_secs(1));
    let applied = r.step(&d, &mut sys, &mut slot, &clock, &m);
    assert!(applied.cookies_active && applied.converged);
    assert_eq!(read("tcp_syncookies").trim(), "2");
    assert!(sys.restore_all().complete());
    assert_eq!(read("tcp_syncookies").trim(), "1");
}

#[test]
fn other_reconcilers_are_retried_and_exported_under_their_own_label() {
    struct Flaky(u32);
    impl super::reconcile::Reconciler for Flaky {
        fn what(&self) -> &'static str {
            "policy"
        }
        fn reconcile(&mut self) -> Result<(), String> {
            self.0 = self.0.saturating_sub(1);
            if self.0 > 0 {
                Err("not yet".into())
            } else {
                Ok(())
            }
        }
    }
    let mut rig = Rig::new();
    rig.r = Reconcile::new(vec![Box::new(Flaky(2))]);
    let d = desired(Mode::Drop, false, false);
    assert!(!rig.poll(&d).converged);
    assert_eq!((rig.reconciled("policy"), rig.errors("policy")), (0, 1));
    assert!(rig.poll(&d).converged);
    assert_eq!(rig.reconciled("policy"), 1);
}

/// A reload switching `cookies.timestamps` while cookies are on: the next reconcile sets
/// (or restores) `tcp_timestamps`, without cookies going off in between.
#[test]
fn a_reload_switching_cookie_timestamps_sets_and_restores_tcp_timestamps() {
    let mut rig = Rig::new();
    let applied = rig.poll(&desired(Mode::Cookie, false, false));
    assert!(applied.converged && applied.cookies_active);
    assert_eq!((rig.sys.get(SYNCOOKIES), rig.sys.get(TIMESTAMPS)), ("2", "1"));
    assert!(!rig.slot.cfg.unwrap().has(FLAG_COOKIE_TIMESTAMPS));

    let applied = rig.poll(&desired(Mode::Cookie, false, true));
    assert!(applied.converged && applied.cookies_active);
    assert_eq!(rig.sys.get(TIMESTAMPS), "2", "cookies carry timestamps only if the kernel checks them");
    assert!(rig.slot.cfg.unwrap().has(FLAG_COOKIE_TIMESTAMPS));

    let applied = rig.poll(&desired(Mode::Cookie, false, false));
    assert!(applied.converged && applied.cookies_active);
    assert_eq!((rig.sys.get(SYNCOOKIES), rig.sys.get(TIMESTAMPS)), ("2", "1"), "the original is back");
    assert!(!rig.sys.changed(TIMESTAMPS));
    assert!(!rig.slot.cfg.unwrap().has(FLAG_COOKIE_TIMESTAMPS));
}

#[test]
fn an_lru_map_is_nearly_full_once_the_per_cpu_free_caches_could_be_all_that_is_left() {
    use super::nearly_full;
    // 1024 entries, 2 CPUs: up to 256 free entries may sit in the CPUs' caches.
    assert!(!nearly_full(767, 1024, 2));
    assert!(nearly_full(768, 1024, 2));
    // A large map: 95 %.
    assert!(!nearly_full(62_258, 65_536, 2));
    assert!(nearly_full(62_260, 65_536, 2));
    // Many CPUs never make a map "full" below half.
    assert!(!nearly_full(511, 1024, 64));
    assert!(nearly_full(512, 1024, 64));
}
