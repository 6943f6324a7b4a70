//! What the agent changes on the host comes back when nothing is pinned (`pin_dir` not on
//! bpffs: here, since `ip netns exec` gives the agent a /sys without one): after a crash
//! (SIGKILL) the next start restores the sysctls the crashed run had set, the kernel has
//! already dropped the XDP attachment with the process, and SIGHUP reloads are reported in
//! the metrics. With pins the program outlives the crash instead: e2e_restart.rs.

#![allow(clippy::float_cmp, reason = "metric values compared here are exact counts")]

use std::{path::Path, thread, time::Duration};

use xtask::lab::{Agent, Lab};

const AGENT: &str = env!("CARGO_BIN_EXE_syndetector");

fn sysctl_in(lab: &Lab, key: &str) -> String {
    lab.sysctl_get(&lab.server_ns, key).unwrap()
}

#[test]
fn a_crashed_run_is_repaired_by_the_next_start_and_sighup_reloads() {
    let lab = Lab::new().expect("lab");
    lab.sysctl(&lab.server_ns, "net.ipv4.tcp_syncookies", "0").unwrap();
    let timestamps = sysctl_in(&lab, "net.ipv4.tcp_timestamps");

    // Cookie mode sets both sysctls at once; then the agent dies without cleaning up.
    let mut agent = Agent::start(&lab, Path::new(AGENT), &["--mode", "cookie"]).unwrap();
    assert_eq!(sysctl_in(&lab, "net.ipv4.tcp_syncookies"), "2");
    assert_eq!(sysctl_in(&lab, "net.ipv4.tcp_timestamps"), "2");
    assert!(agent.log_text().contains("nothing is pinned"), "the fallback is said: {}", agent.log_text());
    agent.crash().unwrap();
    assert_eq!(sysctl_in(&lab, "net.ipv4.tcp_syncookies"), "2", "a crash leaves them changed");
    thread::sleep(Duration::from_millis(200));
    let link = lab.server_link_details().unwrap();
    assert!(!link.contains("prog/xdp"), "the XDP link went with the process:\n{link}");

    // The next start (same state directory) puts the originals back before anything else.
    let mut agent = Agent::start(&lab, Path::new(AGENT), &["--mode", "drop"]).unwrap();
    assert!(
        agent.log_text().contains("restored a sysctl left changed by a previous run"),
        "{}",
        agent.log_text()
    );
    assert_eq!(sysctl_in(&lab, "net.ipv4.tcp_syncookies"), "0");
    assert_eq!(sysctl_in(&lab, "net.ipv4.tcp_timestamps"), timestamps);

    // SIGHUP re-reads the configuration (the same flags here): a successful reload.
    agent.signal(libc::SIGHUP).unwrap();
    thread::sleep(Duration::from_millis(1500));
    let s = agent.scrape().unwrap();
    assert_eq!(s.value("syndetector_config_reloads_total{result=\"success\"}").unwrap(), 1.0);
    assert_eq!(s.value("syndetector_config_reloads_total{result=\"failure\"}").unwrap(), 0.0);
    assert!(agent.log_text().contains("configuration reloaded"));
    assert!(agent.stop().unwrap().success());
}

#[test]
fn a_stop_that_cannot_update_the_state_file_says_so_and_exits_non_zero() {
    let lab = Lab::new().expect("lab");
    lab.sysctl(&lab.server_ns, "net.ipv4.tcp_syncookies", "0").unwrap();
    let mut agent = Agent::start(&lab, Path::new(AGENT), &["--mode", "cookie"]).unwrap();
    let state = lab.scratch().join("state/sysctl-state.toml");
    assert!(state.exists(), "cookie mode records the originals");
    // A non-empty directory where the state file is: it can be neither replaced nor removed.
    std::fs::remove_file(&state).unwrap();
    std::fs::create_dir_all(state.join("x")).unwrap();
    let status = agent.stop().unwrap();
    let log = agent.log_text();
    assert!(!status.success(), "a stop that could not finish the restore must not exit 0:\n{log}");
    assert!(log.contains("state file could not be updated"), "{log}");
    assert!(!log.contains("every sysctl the agent changed restored"), "{log}");
    assert!(!log.contains("attachments and sysctls restored"), "{log}");
    assert_eq!(sysctl_in(&lab, "net.ipv4.tcp_syncookies"), "0", "the values themselves are back");
}
