//! One agent per state directory and interface: a second `syndetector run` with the same
//! state directory is refused, naming the first one's PID, and the first goes on as if
//! nothing happened (its state file, the sysctls it set, its metrics). The start order:
//! signals that come during the program load do not kill the agent; an unusable state
//! directory (exit 64), a corrupt state file or a busy metrics port stop the start before
//! any sysctl is touched and before the program load.

#![allow(clippy::float_cmp, reason = "metric values compared here are exact counts")]

use std::{
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use xtask::lab::{Agent, Lab};

const AGENT: &str = env!("CARGO_BIN_EXE_syndetector");

fn sysctl_in(lab: &Lab, key: &str) -> String {
    lab.sysctl_get(&lab.server_ns, key).unwrap()
}

/// `syndetector run` in the server namespace with the lab's state directory, not waited
/// for; its log goes to `log`.
fn spawn_agent(lab: &Lab, port: u16, log: &Path, extra: &[&str]) -> std::process::Child {
    Command::new("ip")
        .args(["netns", "exec", &lab.server_ns, AGENT, "run", "--iface", &lab.server_if])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .arg("--state-dir")
        .arg(lab.scratch().join("state"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

#[test]
fn a_second_agent_on_the_same_state_dir_is_refused_and_the_first_is_unaffected() {
    let lab = Lab::new().expect("lab");
    lab.sysctl(&lab.server_ns, "net.ipv4.tcp_syncookies", "0").unwrap();
    let first = Agent::start(&lab, Path::new(AGENT), &["--mode", "cookie"]).unwrap();
    let state_file = lab.scratch().join("state/sysctl-state.toml");
    let state_before = std::fs::read_to_string(&state_file).expect("cookie mode records the originals");
    assert_eq!(sysctl_in(&lab, "net.ipv4.tcp_syncookies"), "2");

    let log = lab.scratch().join("second.log");
    let status = spawn_agent(&lab, 9788, &log, &["--mode", "drop"]).wait().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "the second agent must be refused:\n{stderr}");
    let pid = first_pid(&lab);
    assert!(
        stderr.contains(&format!("pid {pid}")),
        "the refusal names the first agent (pid {pid}):\n{stderr}"
    );

    assert_eq!(std::fs::read_to_string(&state_file).unwrap(), state_before, "state file untouched");
    assert_eq!(sysctl_in(&lab, "net.ipv4.tcp_syncookies"), "2", "sysctls untouched");
    let s = first.scrape().expect("the first agent still serves metrics");
    assert_eq!(s.value("syndetector_cookies_active").unwrap(), 1.0);
    drop(first);
}

/// The PID in the running agent's lock file, as the refusal should name it.
fn first_pid(lab: &Lab) -> String {
    let out = Command::new("pgrep")
        .args(["-f", "--", &format!("--state-dir {}", lab.scratch().join("state").display())])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("?").trim().to_owned()
}

/// Start-up takes a fraction of a second now (the program loads in about 0.07 s), so one
/// fixed delay cannot aim a signal at it: the signal goes out after 0, 15, 30, ... ms until
/// one lands inside start-up. Every attempt must end well whatever it hit: a signal before
/// the handlers exist kills the agent with nothing changed yet; one during start-up or
/// after is handled.
const AIM_DELAYS_MS: std::ops::RangeInclusive<u64> = 0..=600;

/// What one attempt's log says about where the signal landed.
fn landed_in_start_up(log: &str, signal: &str) -> bool {
    match (log.find(&format!("{signal}:")), log.find("XDP program attached")) {
        (Some(sig), Some(attached)) => sig < attached,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

#[test]
fn sighup_during_the_program_load_does_not_kill_the_agent_and_sigterm_stops_it_cleanly() {
    use std::os::unix::process::ExitStatusExt;
    let lab = Lab::new().expect("lab");
    lab.sysctl(&lab.server_ns, "net.ipv4.tcp_syncookies", "0").unwrap();
    let log = lab.scratch().join("agent.log");
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let unchanged = |why: &str| {
        assert_eq!(sysctl_in(&lab, "net.ipv4.tcp_syncookies"), "0", "{why}:\n{}", text());
        assert!(!lab.scratch().join("state/sysctl-state.toml").exists(), "{why}:\n{}", text());
    };

    // SIGHUP during start-up: the agent comes up and serves metrics.
    let mut hit = false;
    for delay in AIM_DELAYS_MS.step_by(15) {
        let mut child = spawn_agent(&lab, 9789, &log, &["--mode", "cookie"]);
        thread::sleep(Duration::from_millis(delay));
        // SAFETY: signalling our own child (`ip netns exec` execs the agent).
        unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGHUP) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                // Only before the handlers exist may a SIGHUP end it, changing nothing.
                assert_eq!(status.signal(), Some(libc::SIGHUP), "the agent died: {status}\n{}", text());
                assert!(!text().contains("SIGHUP:"), "a handled SIGHUP killed the agent:\n{}", text());
                unchanged("killed by a SIGHUP before its handlers existed");
                break;
            }
            if xtask::lab::Scrape::fetch(&lab.server_ns, "127.0.0.1:9789".parse().unwrap()).is_ok() {
                hit |= landed_in_start_up(&text(), "SIGHUP");
                // SAFETY: as above.
                unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
                assert!(child.wait().unwrap().success(), "{}", text());
                unchanged("stopped after a SIGHUP");
                break;
            }
            assert!(Instant::now() < deadline, "no metrics within 20 s:\n{}", text());
            thread::sleep(Duration::from_millis(20));
        }
        if hit {
            break;
        }
    }
    assert!(hit, "no SIGHUP landed inside start-up at any delay of {AIM_DELAYS_MS:?} ms");

    // SIGTERM during start-up: a clean stop, nothing left changed.
    let mut hit = false;
    for delay in AIM_DELAYS_MS.step_by(15) {
        let mut child = spawn_agent(&lab, 9789, &log, &["--mode", "cookie"]);
        thread::sleep(Duration::from_millis(delay));
        // SAFETY: as above.
        unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
        let status = child.wait().unwrap();
        if status.signal() == Some(libc::SIGTERM) {
            unchanged("killed by a SIGTERM before its handlers existed");
            continue;
        }
        assert!(status.success(), "{}", text());
        unchanged("stopped by a SIGTERM");
        if text().contains("SIGTERM during start-up") {
            hit = true;
            break;
        }
    }
    assert!(hit, "no SIGTERM landed inside start-up at any delay of {AIM_DELAYS_MS:?} ms");
}

/// Waits (20 s at most) for an agent that should refuse to start.
fn wait_exit(child: &mut std::process::Child, log: &Path) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the agent started instead of refusing:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_busy_metrics_port_fails_before_the_load_and_before_any_sysctl_is_touched() {
    let mut lab = Lab::new().expect("lab");
    // A crashed run's state file: recovering it would set tcp_syncookies back to 0.
    lab.sysctl(&lab.server_ns, "net.ipv4.tcp_syncookies", "2").unwrap();
    let state_dir = lab.scratch().join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let text = "[original]\n\"net.ipv4.tcp_syncookies\" = \"0\"\n";
    std::fs::write(state_dir.join("sysctl-state.toml"), text).unwrap();
    lab.start_server(9791, 16).unwrap();

    let log = lab.scratch().join("agent.log");
    let mut child = spawn_agent(&lab, 9791, &log, &["--mode", "drop"]);
    let started = Instant::now();
    let status = wait_exit(&mut child, &log);
    let text_log = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{text_log}");
    assert!(text_log.contains("listening on 127.0.0.1:9791"), "{text_log}");
    assert!(started.elapsed() < Duration::from_secs(2), "refused only after the program load:\n{text_log}");
    assert_eq!(sysctl_in(&lab, "net.ipv4.tcp_syncookies"), "2", "no sysctl touched");
    assert_eq!(std::fs::read_to_string(state_dir.join("sysctl-state.toml")).unwrap(), text);
}

#[test]
fn an_unwritable_state_dir_is_refused_at_start_with_exit_64() {
    let lab = Lab::new().expect("lab");
    lab.sysctl(&lab.server_ns, "net.ipv4.tcp_syncookies", "0").unwrap();
    // A plain file where the state directory should be.
    std::fs::write(lab.scratch().join("state"), "").unwrap();
    let log = lab.scratch().join("agent.log");
    let mut child = spawn_agent(&lab, 9792, &log, &["--mode", "cookie"]);
    let status = wait_exit(&mut child, &log);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(64), "{text}");
    assert!(text.contains("state directory"), "{text}");
    assert_eq!(sysctl_in(&lab, "net.ipv4.tcp_syncookies"), "0");
}

#[test]
fn a_corrupt_state_file_stops_the_start_with_what_to_do_and_touches_nothing() {
    let lab = Lab::new().expect("lab");
    lab.sysctl(&lab.server_ns, "net.ipv4.tcp_syncookies", "2").unwrap();
    let state_dir = lab.scratch().join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    std::fs::write(state_dir.join("sysctl-state.toml"), b"\xff\xfe garbage").unwrap();
    let log = lab.scratch().join("agent.log");
    let mut child = spawn_agent(&lab, 9793, &log, &["--mode", "drop"]);
    let status = wait_exit(&mut child, &log);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("is corrupt")
            && text.contains("restore net.ipv4.tcp_syncookies")
            && text.contains("by hand"),
        "{text}"
    );
    assert_eq!(sysctl_in(&lab, "net.ipv4.tcp_syncookies"), "2", "nothing touched");
    assert_eq!(std::fs::read(state_dir.join("sysctl-state.toml")).unwrap(), b"\xff\xfe garbage");
}

#[test]
fn a_second_agent_in_the_same_namespace_is_refused_even_with_another_state_dir() {
    let lab = Lab::new().expect("lab");
    lab.sysctl(&lab.server_ns, "net.ipv4.tcp_syncookies", "0").unwrap();
    let first = Agent::start(&lab, Path::new(AGENT), &["--mode", "cookie"]).unwrap();
    let log = lab.scratch().join("second.log");
    let mut second = Command::new("ip")
        .args(["netns", "exec", &lab.server_ns, AGENT, "run", "--iface", &lab.server_if])
        .args(["--metrics-addr", "127.0.0.1:9794", "--mode", "cookie", "--state-dir"])
        .arg(lab.scratch().join("other-state"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = wait_exit(&mut second, &log);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{text}");
    let pid = first_pid(&lab);
    assert!(text.contains("network namespace") && text.contains(&format!("pid {pid}")), "{text}");
    assert!(started.elapsed() < Duration::from_secs(2), "refused only after the program load:\n{text}");
    assert_eq!(sysctl_in(&lab, "net.ipv4.tcp_syncookies"), "2");
    assert_eq!(first.scrape().unwrap().value("syndetector_cookies_active").unwrap(), 1.0);
}
