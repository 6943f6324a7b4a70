//! Faults under load (root, lab namespaces):
//! - maps far too small for a random-source flood: the program fails open (legit traffic
//!   unharmed, every packet still counted), the agent shows the fill in its metrics and
//!   logs that the map is full;
//! - a sysctl write refused while under attack: the agent records a sysctl's original in
//!   its state file before changing it, so a full state file system refuses the change;
//!   the metrics show desired ≠ applied, the agent retries, and it converges once space
//!   is freed (a read-only remount cannot be had after start: the agent holds the sysctl
//!   files and its next state tmp file open for writing, so the kernel answers EBUSY);
//! - a SIGHUP storm (100 reloads in about 10 s, valid and invalid files alternating) under
//!   a flood: the agent lives, the running thresholds are always those of one valid file
//!   (never a mix, never an invalid one), and legit requests all succeed.
#![allow(clippy::float_cmp, reason = "thresholds are compared to the exact values configured")]

use std::{
    io::Write,
    net::SocketAddr,
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex, PoisonError,
    },
    thread,
    time::{Duration, Instant},
};

use xtask::lab::{http_get, in_netns, Agent, ClientReport, Flood, FloodSources, Lab, SERVER_V4};
use xtask::objects::test_programs;

const AGENT: &str = env!("CARGO_BIN_EXE_syndetector");
const PORT: u16 = 8080;
/// Each test floods and counts every legit failure: one at a time on 2 CPUs (cargo runs a
/// binary's tests in parallel).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The lab with its server (kernel cookies at the host default, 1). Hold `ONE_AT_A_TIME`.
fn lab() -> Lab {
    let mut lab = Lab::new().expect("lab");
    lab.attach_client_xdp(&test_programs(false)).expect("dummy XDP on the client veth");
    lab.start_server(PORT, 128).unwrap();
    lab
}

/// Legit requests, 20 a second, until `stop` is set.
fn legit_until(lab: &Lab, stop: &AtomicBool) -> ClientReport {
    let addr = SocketAddr::from((SERVER_V4, PORT));
    in_netns(&lab.client_ns, || {
        let mut report = ClientReport::default();
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            match http_get(addr, "/data", Duration::from_secs(3)) {
                Ok(_) => report.ok += 1,
                Err(e) => {
                    report.failed += 1;
                    report.first_error.get_or_insert_with(|| format!("{e:#}"));
                }
            }
            thread::sleep(Duration::from_millis(50).saturating_sub(t.elapsed()));
        }
        report
    })
    .unwrap()
}

fn random_flood(pps: u64, secs: u64) -> Flood {
    Flood {
        v6: false,
        sources: FloodSources::Random,
        port: PORT,
        count: pps * secs,
        pps,
        limit: Duration::from_secs(secs),
    }
}

#[test]
fn maps_too_small_for_the_flood_fail_open_and_are_reported() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let lab = lab();
    let config = lab.scratch().join("tiny-maps.toml");
    // The smallest sizes the configuration accepts; the flood brings ~9000 sources.
    std::fs::write(&config, "[maps]\nsources = 1024\npending = 1024\n").unwrap();
    let args = ["--config", config.to_str().unwrap(), "--mode", "drop", "--poll-interval-ms", "200"];
    let mut agent = Agent::start(&lab, Path::new(AGENT), &args).unwrap();
    let stop = AtomicBool::new(false);
    let (flood, legit, fullest) = thread::scope(|scope| {
        let flood = scope.spawn(|| random_flood(3_000, 3).run(&lab));
        let legit = scope.spawn(|| legit_until(&lab, &stop));
        let mut fullest = (0.0_f64, 0.0_f64);
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            thread::sleep(Duration::from_millis(300));
            let s = agent.scrape().unwrap();
            let fill = |m: &str| s.value(&format!("syndetector_map_fill_ratio{{map=\"{m}\"}}")).unwrap();
            fullest = (fullest.0.max(fill("sources")), fullest.1.max(fill("pending")));
        }
        let flood = flood.join().unwrap().unwrap();
        stop.store(true, Ordering::Relaxed);
        (flood, legit.join().unwrap(), fullest)
    });
    thread::sleep(Duration::from_millis(500));
    let s = agent.scrape().unwrap();
    let log = agent.log_text();
    let counted: f64 = s
        .text
        .lines()
        .filter(|l| l.starts_with("syndetector_packets_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    println!(
        "flood sent {}; fullest sources {:.3}, pending {:.3}; packets counted {counted}; map_error {}; legit {legit}",
        flood.sent,
        fullest.0,
        fullest.1,
        s.value("syndetector_packets_total{reason=\"map_error\",verdict=\"pass\"}").unwrap()
    );
    assert_eq!(s.value("syndetector_map_capacity{map=\"sources\"}").unwrap(), 1024.0);
    // "Full" for an LRU map on 2 CPUs: it evicts once at most 2 × 128 free entries are left
    // in the CPUs' caches (control::nearly_full), so it may never show more than 75 %.
    assert!(fullest.0 >= 0.75, "the flood filled the sources map (fullest {:.3})", fullest.0);
    assert!(s.value("syndetector_map_entries{map=\"sources\"}").unwrap() <= 1024.0);
    assert!(log.contains("map full"), "the agent logs it:\n{log}");
    let sent = u32::try_from(flood.sent).unwrap();
    assert!(counted >= f64::from(sent), "every flood packet was counted ({counted} < {sent})");
    assert!(legit.total() >= 40, "too few legit requests to judge: {legit}");
    assert_eq!(legit.failed, 0, "legit traffic unharmed while the maps overflow: {legit}");
    // Idle entries stay in the LRU maps until evicted, but they are history: once every
    // flood handshake has expired (at most 4/3 of the 3 s timeout) the fill counts only
    // live entries, and the warning clears (`detector_common::expiry`).
    thread::sleep(Duration::from_secs(5));
    let s = agent.scrape().unwrap();
    let fill = |m: &str| s.value(&format!("syndetector_map_fill_ratio{{map=\"{m}\"}}")).unwrap();
    println!("5 s after the flood: fill sources {:.3}, pending {:.3}", fill("sources"), fill("pending"));
    assert!(fill("sources") < 0.05 && fill("pending") < 0.05, "only live entries count");
    let log = agent.log_text();
    assert!(log.contains("map no longer full"), "the agent logs the end of it:\n{log}");
    assert!(agent.stop().unwrap().success(), "{log}");
}

/// Two valid files that differ in two reloadable thresholds, so a mix of them would show.
const VALID: [(&str, f64, f64); 2] = [
    ("mode = \"auto\"\npoll_interval_ms = 200\n[thresholds]\nsyn_rate_limit = 300\n[detection]\nenter_syn_rate = 1000.0\nexit_syn_rate = 200.0\n", 300.0, 1000.0),
    ("mode = \"auto\"\npoll_interval_ms = 200\n[thresholds]\nsyn_rate_limit = 700\n[detection]\nenter_syn_rate = 1500.0\nexit_syn_rate = 300.0\n", 700.0, 1500.0),
];

/// Refused for a bad value, bad syntax, and a restart-only key (all or nothing).
const INVALID: [&str; 3] = [
    "mode = \"auto\"\n[thresholds]\nsyn_rate_limit = 50\n[detection]\nenter_syn_rate = 100.0\nexit_syn_rate = 200.0\n",
    "mode = \"auto\"\n[thresholds\nsyn_rate_limit = 1\n",
    "mode = \"auto\"\n[thresholds]\nsyn_rate_limit = 90\n[maps]\nsources = 2048\n",
];

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_sighup_storm_under_a_flood_keeps_one_valid_configuration_running() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let lab = lab();
    let config = lab.scratch().join("storm.toml");
    write_atomically(&config, VALID[0].0);
    let mut agent = Agent::start(&lab, Path::new(AGENT), &["--config", config.to_str().unwrap()]).unwrap();
    let stop = AtomicBool::new(false);
    let (legit, seen) = thread::scope(|scope| {
        let flood = scope.spawn(|| random_flood(3_000, 12).run(&lab));
        let legit = scope.spawn(|| legit_until(&lab, &stop));
        let mut seen = [0_u32; 2];
        for i in 0..100 {
            let text = if i % 2 == 0 { VALID[(i / 2) % 2].0 } else { INVALID[(i / 2) % 3] };
            write_atomically(&config, text);
            agent.signal(libc::SIGHUP).unwrap();
            thread::sleep(Duration::from_millis(100));
            if i % 5 == 4 {
                let s = agent.scrape().expect("the agent serves metrics through the storm");
                let source = s.value("syndetector_threshold{name=\"source_syn_rate\"}").unwrap();
                let enter = s.value("syndetector_threshold{name=\"enter_syn_rate\"}").unwrap();
                let which = VALID.iter().position(|v| (v.1, v.2) == (source, enter));
                let which = which.unwrap_or_else(|| {
                    panic!("after reload {i}: source_syn_rate {source}, enter_syn_rate {enter}: not one valid file")
                });
                seen[which] += 1;
            }
        }
        flood.join().unwrap().unwrap();
        stop.store(true, Ordering::Relaxed);
        (legit.join().unwrap(), seen)
    });
    assert!(agent.exited().is_none(), "the agent died in the storm:\n{}", agent.log_text());
    let s = agent.scrape().unwrap();
    let ok = s.value("syndetector_config_reloads_total{result=\"success\"}").unwrap();
    let failed = s.value("syndetector_config_reloads_total{result=\"failure\"}").unwrap();
    println!("reloads: {ok} applied, {failed} refused (signals may coalesce); seen {seen:?}; legit {legit}");
    assert!(ok >= 1.0 && failed >= 1.0 && ok + failed <= 100.0, "reloads {ok} ok, {failed} refused");
    assert!(seen[0] > 0 && seen[1] > 0, "both valid files took effect at some point: {seen:?}");
    // Settles on the last file written.
    write_atomically(&config, VALID[1].0);
    agent.signal(libc::SIGHUP).unwrap();
    thread::sleep(Duration::from_secs(1));
    let s = agent.scrape().unwrap();
    assert_eq!(s.value("syndetector_threshold{name=\"source_syn_rate\"}").unwrap(), VALID[1].1);
    assert!(legit.total() >= 100, "too few legit requests to judge: {legit}");
    assert_eq!(legit.failed, 0, "legit traffic unaffected by the storm: {legit}");
    assert!(agent.stop().unwrap().success(), "{}", agent.log_text());
}

/// A small tmpfs mounted at the lab's state directory, unmounted on drop.
struct SmallTmpfs(std::path::PathBuf);

impl SmallTmpfs {
    fn mount(at: &Path) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "sd-faults-state"])
            .arg(at)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs at {}", at.display());
        Self(at.to_owned())
    }

    /// Writes a filler file until the file system is full.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap();
        while f.write_all(&[0u8; 4096]).is_ok() {}
    }

    fn free(&self) {
        std::fs::remove_file(self.0.join("filler")).unwrap();
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn wait_for(agent: &Agent, what: &str, limit: Duration, ok: impl Fn(&xtask::lab::Scrape) -> bool) {
    let end = Instant::now() + limit;
    loop {
        if ok(&agent.scrape().unwrap()) {
            return;
        }
        assert!(Instant::now() < end, "{what} within {limit:?}:\n{}", agent.log_text());
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_refused_sysctl_under_attack_shows_and_is_retried_until_it_converges() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let lab = lab();
    lab.sysctl(&lab.server_ns, "net.ipv4.tcp_syncookies", "0").unwrap();
    let state = SmallTmpfs::mount(&lab.scratch().join("state"));
    let args =
        ["--mode", "auto", "--poll-interval-ms", "200", "--enter-syn-rate", "500", "--exit-syn-rate", "100"];
    let mut agent = Agent::start(&lab, Path::new(AGENT), &args).unwrap();
    state.fill();
    let syncookies = || lab.sysctl_get(&lab.server_ns, "net.ipv4.tcp_syncookies").unwrap();
    let sysctls_ok = "syndetector_reconciled{what=\"sysctls\"}";
    let sysctl_errors = "syndetector_reconcile_errors_total{what=\"sysctls\"}";
    thread::scope(|scope| {
        let flood = scope.spawn(|| random_flood(2_000, 10).run(&lab));
        wait_for(&agent, "under attack", Duration::from_secs(4), |s| {
            s.get("syndetector_under_attack") == Some(1.0)
        });
        wait_for(&agent, "two refused attempts", Duration::from_secs(4), |s| {
            s.get(sysctl_errors).is_some_and(|e| e >= 2.0)
        });
        let s = agent.scrape().unwrap();
        assert_eq!(s.value(sysctls_ok).unwrap(), 0.0, "desired ≠ applied shows");
        assert_eq!(syncookies(), "0", "nothing changed without its original recorded");
        let log = agent.log_text();
        assert!(log.contains("No space left on device"), "the refusal is logged with its cause:\n{log}");
        state.free();
        // The backoff is at most 4 s.
        wait_for(&agent, "converged once space is free", Duration::from_secs(6), |s| {
            s.get(sysctls_ok) == Some(1.0)
        });
        assert_eq!(syncookies(), "2", "applied once the original could be recorded");
        let recorded = std::fs::read_to_string(lab.scratch().join("state/sysctl-state.toml")).unwrap();
        assert!(recorded.contains("\"net.ipv4.tcp_syncookies\" = \"0\""), "{recorded}");
        flood.join().unwrap().unwrap();
    });
    assert!(agent.stop().unwrap().success(), "{}", agent.log_text());
    assert_eq!(syncookies(), "0", "restored at stop");
}
