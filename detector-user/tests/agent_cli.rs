//! The agent binary refuses bad configuration before touching anything: exit status 64,
//! a message naming the key, no program loaded or attached, no sysctl changed.

use std::process::{Command, Output};

const AGENT: &str = env!("CARGO_BIN_EXE_syndetector");

fn agent(args: &[&str]) -> Output {
    Command::new(AGENT).args(args).output().expect("running syndetector")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

/// BPF programs currently loaded, by id (to prove nothing was loaded). Without a working
/// `bpftool` (missing, or not root) that cannot be proved: the test fails saying so.
fn loaded_program_ids() -> Vec<String> {
    let out = Command::new("bpftool").args(["prog", "list"]).output().unwrap_or_else(|e| {
        panic!("bpftool is needed to prove that nothing was loaded ({e}): install it (`cargo xtask setup`)")
    });
    assert!(
        out.status.success(),
        "`bpftool prog list` failed ({}; it needs root): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" name syndetector "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn bad_configuration_exits_64_naming_the_key_and_changes_nothing() {
    let syncookies = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_syncookies").unwrap();
    let programs = loaded_program_ids();
    let unknown = config_file("interfaces = [\"lo\"]\n[thresholds]\nsyn_rate = 5\n");
    let bad_value = config_file("interfaces = [\"lo\"]\n[maps]\nsketch_width = 1000\n");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["run", "--config", unknown.path().to_str().unwrap()], "syn_rate"),
        (vec!["run", "--config", bad_value.path().to_str().unwrap()], "maps.sketch_width"),
        (vec!["run", "--iface", "sd-no-such-if0"], "interfaces"),
        (vec!["run", "--iface", "lo", "--block-ttl", "0"], "thresholds.block_ttl_secs"),
        (
            vec!["run", "--iface", "lo", "--enter-syn-rate", "10", "--exit-syn-rate", "20"],
            "detection.exit_syn_rate",
        ),
        (vec!["run", "--config", "/nonexistent/syndetector.toml"], "/nonexistent/syndetector.toml"),
        (vec!["check-config", "--iface", "lo", "--poll-interval-ms", "1"], "poll_interval_ms"),
        // Exit thresholds of 0: nothing is below 0, attack mode would never end.
        (vec!["check-config", "--iface", "lo", "--exit-half-open", "0"], "detection.exit_half_open"),
        (vec!["check-config", "--iface", "lo", "--exit-syn-rate", "0"], "detection.exit_syn_rate"),
        (vec!["check-config", "--iface", "lo", "--exit-syn-rate", "0.5"], "detection.exit_syn_rate"),
        (
            vec!["check-config", "--iface", "lo", "--enter-syn-rate", "0.5", "--exit-syn-rate", "0.5"],
            "detection.enter_syn_rate",
        ),
        (vec!["run", "--iface", "lo", "--exit-half-open", "0"], "detection.exit_half_open"),
    ];
    for (args, key) in &cases {
        let out = agent(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(key), "{args:?}: the message must name {key}: {}", stderr(&out));
    }
    assert_eq!(std::fs::read_to_string("/proc/sys/net/ipv4/tcp_syncookies").unwrap(), syncookies);
    assert_eq!(loaded_program_ids(), programs, "nothing loaded");
}

#[test]
fn check_config_accepts_the_example_file() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/syndetector.example.toml");
    let out = agent(&["check-config", "--config", example, "--iface", "lo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for map in ["SOURCES", "PENDING", "SKETCH", "total"] {
        assert!(stdout.contains(map), "check-config prints the kernel memory per map and in total: {stdout}");
    }
}

#[test]
fn unknown_flags_are_usage_errors() {
    let out = agent(&["run", "--iface", "lo", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    assert!(stderr(&out).contains("--no-such-flag"));
}

#[test]
fn status_shows_the_state_file_and_exits_1_when_it_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let arg = state.to_str().unwrap();

    let out = agent(&["status", "--state-dir", arg]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains("state file: absent") && text.contains("net.ipv4.tcp_syncookies = "), "{text}");

    std::fs::write(state.join("sysctl-state.toml"), "[original]\n\"net.ipv4.tcp_syncookies\" = \"1\"\n")
        .unwrap();
    let out = agent(&["status", "--state-dir", arg]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains("records the originals of 1") && text.contains("lock: free"), "{text}");

    std::fs::write(state.join("sysctl-state.toml"), b"\xff\xfe").unwrap();
    let out = agent(&["status", "--state-dir", arg]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(text.contains("CORRUPT") && text.contains("not UTF-8"), "{text}");
}
