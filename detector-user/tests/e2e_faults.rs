//! Faults at start-up and crashes (root, lab namespaces), judged by the host afterwards:
//! - a read-only sysctl directory, a read-only state directory and a read-only bpffs for
//!   the pins are each a clear error naming the place, and the host is left unchanged;
//! - the agent SIGKILLed at many moments of its start-up (with and without pins) and of a
//!   mitigation (an auto-mode agent switching cookies on under a flood): after every kill
//!   the host is consistent (each managed sysctl is at its original value or the state file
//!   records that original; an XDP attachment exists only with a pin to own it), and the
//!   next start and stop (or `syndetector detach`) put everything back.
//!
//! The other faults (maps full, a refused sysctl, SIGHUP storms) are in
//! e2e_faults_load.rs; an interface deleted and re-created while the agent runs is
//! e2e_attachments.rs.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use xtask::lab::{Agent, Flood, FloodSources, Lab};
use xtask::objects::test_programs;

const AGENT: &str = env!("CARGO_BIN_EXE_syndetector");
const SYNCOOKIES: &str = "net.ipv4.tcp_syncookies";
const TIMESTAMPS: &str = "net.ipv4.tcp_timestamps";

/// A mount the test made under the lab's scratch directory, unmounted on drop (before the
/// lab removes the directory: a bind mount of /proc/sys must never be recursed into).
struct Mount(PathBuf);

impl Mount {
    /// A read-only bind mount of `source` at `target`.
    fn read_only_bind(source: &Path, target: &Path) -> Self {
        std::fs::create_dir_all(target).unwrap();
        sh(Command::new("mount").arg("--bind").arg(source).arg(target));
        let mount = Self(target.to_owned());
        sh(Command::new("mount").args(["-o", "remount,bind,ro"]).arg(target));
        mount
    }

    /// A fresh bpffs at `target`, remounted read-only.
    fn read_only_bpffs(target: &Path) -> Self {
        std::fs::create_dir_all(target).unwrap();
        sh(Command::new("mount").args(["-t", "bpf", "-o", "mode=0700", "sd-faults-bpffs"]).arg(target));
        let mount = Self(target.to_owned());
        sh(Command::new("mount").args(["-o", "remount,ro"]).arg(target));
        mount
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `syndetector run` in the server namespace, to completion (20 s at most); exit code and
/// stderr.
fn run_to_exit(lab: &Lab, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new("timeout")
        .args(["20", "ip", "netns", "exec", &lab.server_ns, AGENT, "run", "--iface", &lab.server_if])
        .args(["--metrics-addr", "127.0.0.1:9787"])
        .args(args)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn xdp_attached(lab: &Lab) -> bool {
    lab.server_link_details().unwrap().contains("prog/xdp")
}

#[test]
fn read_only_places_are_clear_errors_that_change_nothing() {
    let lab = Lab::new().expect("lab");
    lab.sysctl(&lab.server_ns, SYNCOOKIES, "0").unwrap();
    let scratch = lab.scratch().to_owned();
    let state = scratch.join("state");
    let state_arg = state.to_str().unwrap().to_owned();

    // /proc/sys read-only, as in a container that did not mount it writable.
    let sysctl_dir = scratch.join("procsys-ro");
    let _procsys = Mount::read_only_bind(Path::new("/proc/sys"), &sysctl_dir);
    let config = scratch.join("ro-sysctl.toml");
    std::fs::write(&config, format!("sysctl_dir = \"{}\"\n", sysctl_dir.display())).unwrap();
    let config_arg = config.to_str().unwrap();

    // A state directory on a read-only mount (an empty, root-owned 0700 directory).
    let empty = scratch.join("state-src");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::set_permissions(&empty, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let state_ro = scratch.join("state-ro");
    let _state = Mount::read_only_bind(&empty, &state_ro);

    // A bpffs mounted read-only where the pins go.
    let bpffs = scratch.join("bpffs-ro");
    let _bpffs = Mount::read_only_bpffs(&bpffs);
    let pin_dir = bpffs.join("syndetector");

    let cases: [(&str, Vec<&str>, &str); 3] = [
        (
            "read-only sysctl_dir",
            vec!["--mode", "cookie", "--state-dir", &state_arg, "--config", config_arg],
            sysctl_dir.to_str().unwrap(),
        ),
        (
            "read-only state_dir",
            vec!["--mode", "cookie", "--state-dir", state_ro.to_str().unwrap()],
            state_ro.to_str().unwrap(),
        ),
        (
            "read-only bpffs for the pins",
            vec!["--mode", "cookie", "--state-dir", &state_arg, "--pin-dir", pin_dir.to_str().unwrap()],
            pin_dir.to_str().unwrap(),
        ),
    ];
    for (what, args, named) in cases {
        let (code, stderr) = run_to_exit(&lab, &args);
        println!("{what}: exit {code:?}\n{stderr}");
        assert!(code.is_some_and(|c| c != 0 && c != 124), "{what}: the agent must refuse and exit: {code:?}");
        assert!(stderr.contains(named), "{what}: the error names {named}:\n{stderr}");
        assert!(stderr.to_lowercase().contains("read-only"), "{what}: the error says why:\n{stderr}");
        assert!(!stderr.contains("CAP_NET_ADMIN"), "{what}: no capability is missing here:\n{stderr}");
        assert_eq!(lab.sysctl_get(&lab.server_ns, SYNCOOKIES).unwrap(), "0", "{what}: sysctl unchanged");
        assert!(!xdp_attached(&lab), "{what}: nothing attached");
    }
}

/// What a kill left, so a test can show its kills fell after the steps it claims to cover.
#[derive(Default)]
struct Left {
    /// A sysctl still changed (its original in the state file).
    changed: bool,
    /// An XDP attachment owned by a pin.
    pinned: bool,
}

/// What a kill may leave: each managed sysctl at its original value, or changed with the
/// state file recording the original; and no XDP attachment unless a pin owns it.
fn assert_consistent(lab: &Lab, originals: &[(&str, String)], pin_dir: Option<&Path>, when: &str) -> Left {
    let mut left = Left::default();
    let state_file = lab.scratch().join("state/sysctl-state.toml");
    let recorded = std::fs::read_to_string(&state_file).unwrap_or_default();
    for (key, original) in originals {
        let now = lab.sysctl_get(&lab.server_ns, key).unwrap();
        if &now != original {
            left.changed = true;
            assert!(
                recorded.contains(&format!("\"{key}\" = \"{original}\"")),
                "{when}: {key} is {now} (was {original}) and the state file does not record it:\n{recorded}"
            );
        }
    }
    // The kernel drops an unpinned link when its last descriptor closes; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    while xdp_attached(lab) {
        let pinned = pin_dir.is_some_and(|d| std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_some()));
        if pinned {
            left.pinned = true;
            return left;
        }
        assert!(Instant::now() < deadline, "{when}: an XDP attachment without a pin or a running agent");
        thread::sleep(Duration::from_millis(50));
    }
    left
}

fn originals(lab: &Lab) -> Vec<(&'static str, String)> {
    [SYNCOOKIES, TIMESTAMPS].map(|k| (k, lab.sysctl_get(&lab.server_ns, k).unwrap())).to_vec()
}

fn kills_during_start_up(pinned: bool) {
    let mut lab = Lab::new().expect("lab");
    lab.sysctl(&lab.server_ns.clone(), SYNCOOKIES, "0").unwrap();
    let pin_dir = pinned.then(|| lab.mount_bpffs().expect("a bpffs for the lab").join("syndetector"));
    let originals = originals(&lab);
    let state_dir = lab.scratch().join("state");
    // The state directory `Agent::start` gives the agent, given to the killed runs too.
    let mut args: Vec<String> = ["--mode", "cookie", "--poll-interval-ms", "100"].map(str::to_owned).to_vec();
    if let Some(dir) = &pin_dir {
        args.extend(["--pin-dir".to_owned(), dir.display().to_string()]);
    }
    // From before the binary has run to after it serves: every step of start-up (config,
    // lock, state file recovery, load, pin, attach, sysctls) falls between two of these.
    let (mut changed, mut pinned_left) = (0, 0);
    let delays_ms = [0, 5, 10, 20, 30, 40, 50, 75, 100, 125, 150, 200, 250, 300, 400, 500, 700, 1000, 1500];
    for ms in delays_ms {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &lab.server_ns, AGENT, "run", "--iface", &lab.server_if])
            .args(["--metrics-addr", "127.0.0.1:9787", "--state-dir"])
            .arg(&state_dir)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        thread::sleep(Duration::from_millis(ms));
        child.kill().unwrap();
        child.wait().unwrap();
        let left = assert_consistent(&lab, &originals, pin_dir.as_deref(), &format!("killed after {ms} ms"));
        changed += u32::from(left.changed);
        pinned_left += u32::from(left.pinned);
    }
    println!("{} kills: {changed} left a sysctl changed, {pinned_left} a pinned attachment", delays_ms.len());
    assert!(changed > 0, "no kill fell after the sysctls were written: the test proves less than it says");
    assert_eq!(
        pinned_left > 0,
        pinned,
        "kills after the attach leave a pinned attachment exactly when pinning"
    );
    // The next start repairs whatever the kills left and runs; its stop restores the host.
    let mut agent =
        Agent::start(&lab, Path::new(AGENT), &args.iter().map(String::as_str).collect::<Vec<_>>())
            .expect("the agent starts after the kills");
    assert_eq!(lab.sysctl_get(&lab.server_ns, SYNCOOKIES).unwrap(), "2", "cookie mode owns the sysctl");
    assert!(xdp_attached(&lab));
    assert!(agent.stop().unwrap().success(), "{}", agent.log_text());
    if let Some(dir) = &pin_dir {
        // on_stop = keep: the pinned program protects on until `syndetector detach`.
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.server_ns, AGENT, "detach", "--pin-dir"])
            .arg(dir)
            .arg("--state-dir")
            .arg(&state_dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "detach: {}", String::from_utf8_lossy(&out.stderr));
    }
    for (key, original) in &originals {
        assert_eq!(&lab.sysctl_get(&lab.server_ns, key).unwrap(), original, "{key} restored at the end");
    }
    assert!(!xdp_attached(&lab), "nothing attached at the end");
    assert!(!state_dir.join("sysctl-state.toml").exists(), "no state file left");
}

#[test]
fn killed_at_every_moment_of_start_up_without_pins_the_next_start_repairs_the_host() {
    kills_during_start_up(false);
}

#[test]
fn killed_at_every_moment_of_start_up_with_pins_the_pins_own_what_stays() {
    kills_during_start_up(true);
}

#[test]
fn killed_while_switching_cookies_on_under_a_flood_the_next_start_repairs_the_host() {
    let mut lab = Lab::new().expect("lab");
    lab.attach_client_xdp(&test_programs(false)).expect("dummy XDP on the client veth");
    lab.sysctl(&lab.server_ns.clone(), SYNCOOKIES, "0").unwrap();
    lab.start_server(8080, 64).unwrap();
    let originals = originals(&lab);
    let args =
        ["--mode", "auto", "--poll-interval-ms", "100", "--enter-syn-rate", "500", "--exit-syn-rate", "100"];
    let flood = Flood {
        v6: false,
        sources: FloodSources::Random,
        port: 8080,
        count: 3_000,
        pps: 2_000,
        limit: Duration::from_secs(2),
    };
    let mut switched = 0;
    // Detection needs a poll or two of flood: the kills fall before, during and after the
    // moment cookies switch on and the sysctls are written.
    for ms in [50, 150, 250, 350, 450, 600, 800, 1000, 1300] {
        let mut agent =
            Agent::start_with(&lab, Path::new(AGENT), &args, &[], Some("serving /metrics")).unwrap();
        thread::scope(|scope| {
            let f = scope.spawn(|| flood.run(&lab));
            thread::sleep(Duration::from_millis(ms));
            if lab.sysctl_get(&lab.server_ns, SYNCOOKIES).unwrap() == "2" {
                switched += 1;
            }
            agent.crash().unwrap();
            f.join().unwrap().unwrap();
        });
        assert_consistent(&lab, &originals, None, &format!("killed {ms} ms into the flood"));
    }
    assert!(switched > 0, "no kill fell after cookies switched on: the test proves less than it says");
    let mut agent = Agent::start_with(&lab, Path::new(AGENT), &args, &[], Some("serving /metrics")).unwrap();
    for (key, original) in &originals {
        assert_eq!(
            &lab.sysctl_get(&lab.server_ns, key).unwrap(),
            original,
            "{key} restored by the next start"
        );
    }
    assert!(agent.stop().unwrap().success(), "{}", agent.log_text());
    assert!(!xdp_attached(&lab));
}
