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

/// Stand-ins for paths a file cannot hold, made for each run: a symlink to a directory, a
/// directory owned by another user, a world-writable one, a regular file, a list file with
/// a bad line.
struct BadPaths {
    dir: tempfile::TempDir,
}

impl BadPaths {
    fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        std::fs::create_dir(p("real")).unwrap();
        std::fs::set_permissions(p("real"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(p("real"), p("link")).unwrap();
        for name in ["other", "open"] {
            std::fs::create_dir(p(name)).unwrap();
        }
        std::fs::set_permissions(p("other"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(p("other"), Some(65_534), Some(65_534)).unwrap();
        std::fs::set_permissions(p("open"), std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(p("file"), "").unwrap();
        std::fs::write(p("bad-list"), "# allowed\n198.18.0.0/15\n198.18.0.0/33\n").unwrap();
        Self { dir }
    }

    fn fill_in(&self, text: &str) -> String {
        let p = |name: &str| self.dir.path().join(name).to_str().unwrap().to_owned();
        text.replace("@SYMLINK@", &p("link"))
            .replace("@OTHER_OWNER@", &p("other"))
            .replace("@WORLD_WRITABLE@", &p("open"))
            .replace("@FILE@", &p("file"))
            .replace("@BAD_LIST@", &p("bad-list"))
    }

    /// Every path under the stand-ins' directory, with its mode, owner and size: any
    /// file or lock the agent left behind shows as a difference.
    fn snapshot(&self) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        let mut todo = vec![self.dir.path().to_owned()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let m = std::fs::symlink_metadata(e.path()).unwrap();
                out.push(format!("{} {:o} {} {}", e.path().display(), m.mode(), m.uid(), m.size()));
                if m.is_dir() {
                    todo.push(e.path());
                }
            }
        }
        out.sort();
        out
    }
}

/// Deletes the named network namespace when dropped.
struct RemoveNetns(String);

impl Drop for RemoveNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// tests/bad-configs/: each file names the key its refusal must mention (`# refused:`),
/// and `# only-at-run` marks what `check-config` cannot see without creating directories.
/// Each is refused by `check-config` and by `run` (in a namespace of its own, so a file that
/// were wrongly accepted would attach to that namespace's loopback, not the host's), with
/// exit 64 and a message naming the key; and `run` changes nothing: no program attached,
/// the sysctls as they were, nothing written next to the stand-in paths.
#[test]
fn every_file_of_the_bad_configuration_corpus_is_refused_naming_its_key_and_changes_nothing() {
    let netns = format!("sd-corpus-{}", std::process::id());
    let ok = Command::new("ip").args(["netns", "add", &netns]).status().expect("ip netns add");
    assert!(ok.success(), "ip netns add {netns} (needs root)");
    let _remove = RemoveNetns(netns.clone());
    let sysctls = || {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &netns,
                "sysctl",
                "-n",
                "net.ipv4.tcp_syncookies",
                "net.ipv4.tcp_timestamps",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before_sysctls = sysctls();
    // The namespace's loopback is what a wrongly accepted file would attach to. (The host's
    // list of loaded programs is no witness here: other tests and agents load their own.)
    let xdp_on_lo = || {
        let out = Command::new("ip").args(["-n", &netns, "-d", "link", "show", "lo"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).contains("xdp")
    };
    let paths = BadPaths::new();
    let before_paths = paths.snapshot();

    let corpus = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bad-configs"));
    let mut files: Vec<_> = std::fs::read_dir(corpus).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 40, "the corpus shrank: {} files", files.len());
    let mut checked = 0;
    for file in &files {
        let raw = std::fs::read(file).unwrap();
        let text = String::from_utf8_lossy(&raw);
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("# refused: "))
            .unwrap_or_else(|| panic!("{}: no `# refused: KEY` line", file.display()));
        let only_at_run = text.lines().any(|l| l.trim() == "# only-at-run");
        let config = tempfile::NamedTempFile::new().unwrap();
        let filled = if text.contains('@') { paths.fill_in(&text).into_bytes() } else { raw.clone() };
        std::fs::write(config.path(), filled).unwrap();
        let path = config.path().to_str().unwrap();

        // --iface would override the file's own interfaces, which some files are about.
        let iface: &[&str] = if text.contains("\ninterfaces") { &[] } else { &["--iface", "lo"] };
        let check = agent(&[&["check-config", "--config", path], iface].concat());
        if only_at_run {
            assert!(
                check.status.success(),
                "{}: check-config now refuses it: drop # only-at-run",
                file.display()
            );
        } else {
            assert_eq!(check.status.code(), Some(64), "check-config {}: {}", file.display(), stderr(&check));
            assert!(
                stderr(&check).contains(key),
                "check-config {}: must name {key}: {}",
                file.display(),
                stderr(&check)
            );
        }
        let run = Command::new("ip")
            .args(["netns", "exec", &netns, AGENT, "run", "--config", path])
            .args(iface)
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(64), "run {}: {}", file.display(), stderr(&run));
        assert!(stderr(&run).contains(key), "run {}: must name {key}: {}", file.display(), stderr(&run));
        checked += 1;
    }
    assert_eq!(sysctls(), before_sysctls, "a refused configuration changed a sysctl");
    assert!(!xdp_on_lo(), "a refused configuration attached a program");
    assert_eq!(paths.snapshot(), before_paths, "a refused configuration wrote next to a stand-in path");
    assert!(!std::path::Path::new("/proc/syndetector-state").exists());
    println!("bad-configuration corpus: {checked} files refused by check-config and run");
}
