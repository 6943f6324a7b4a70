//! `cargo xtask dist`: the Debian package (cargo-deb, metadata in detector-user/Cargo.toml,
//! unit and maintainer scripts in detector-user/debian/), and its check, run by
//! `cargo xtask test`: contents, conffiles and depends (`dpkg-deb`), the unit
//! (`systemd-analyze verify`), and the packaged binary started the way the unit starts
//! it: a non-root user with only the unit's capabilities, in a lab namespace, where it
//! must attach, serve /metrics and switch cookies on; and refused with any one of those
//! capabilities taken away.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use xtask::lab::{Lab, Scrape};

use crate::{build, build_ebpf::BuildEbpfArgs, run, workspace_root};

#[derive(Debug, clap::Args)]
pub struct DistArgs {
    /// Also check the package (root): what `cargo xtask test` runs after the cargo tests.
    #[arg(long)]
    pub check: bool,
}

/// Files the package must hold, with their modes.
const FILES: &[(&str, &str)] = &[
    ("./usr/bin/syndetector", "-rwxr-xr-x"),
    ("./lib/systemd/system/syndetector.service", "-rw-r--r--"),
    ("./etc/syndetector/syndetector.toml", "-rw-r--r--"),
    ("./usr/share/syndetector/dashboards/syndetector.json", "-rw-r--r--"),
    ("./usr/share/syndetector/dashboards/provisioning/dashboards.yaml", "-rw-r--r--"),
    ("./usr/share/syndetector/alerts/alerts.yml", "-rw-r--r--"),
];
const CONFFILE: &str = "/etc/syndetector/syndetector.toml";
const UNIT: &str = "lib/systemd/system/syndetector.service";
/// The capabilities the unit must grant, as setpriv names them.
const CAPS: &[&str] = &["bpf", "net_admin", "perfmon"];
/// The agent runs as this uid/gid in the check: no passwd entry, no supplementary groups,
/// like the package's system user.
const TEST_UID: u32 = 64_917;
/// The lab server's port and how many real connections go through the packaged agent's
/// cookies.
const COOKIE_PORT: u16 = 8080;
const COOKIE_REQUESTS: u32 = 10;

/// Builds the release binary (embedding the release XDP object) and the package; returns
/// the package's path.
pub fn main() -> Result<PathBuf> {
    build(&BuildEbpfArgs { release: true })?;
    let out = Command::new("cargo")
        .current_dir(workspace_root())
        .args(["deb", "-p", "detector-user", "--no-build"])
        .stderr(Stdio::inherit())
        .output()
        .context("starting cargo deb (run `cargo xtask setup`)")?;
    ensure!(out.status.success(), "cargo deb failed ({})", out.status);
    let deb = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap_or_default());
    ensure!(deb.extension().is_some_and(|e| e == "deb"), "cargo deb printed no package path");
    println!("dist: {}", deb.display());
    Ok(deb)
}

/// Builds the package and checks it (needs root: namespaces, XDP).
pub fn check() -> Result<()> {
    let deb = main()?;
    let listing = stdout(Command::new("dpkg-deb").arg("-c").arg(&deb))?;
    for (path, mode) in FILES {
        ensure!(
            listing.lines().any(|l| l.starts_with(mode) && l.ends_with(path)),
            "{path} ({mode}) is not in the package:\n{listing}"
        );
    }
    let conffiles = stdout(Command::new("dpkg-deb").arg("-I").arg(&deb).arg("conffiles"))?;
    ensure!(conffiles.lines().any(|l| l.trim() == CONFFILE), "conffiles: {conffiles:?}");
    let depends = stdout(Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg("Depends"))?;
    for needed in ["libc6", "adduser", "procps"] {
        ensure!(depends.contains(needed), "Depends lacks {needed}: {depends}");
    }
    let postinst = stdout(Command::new("dpkg-deb").arg("-I").arg(&deb).arg("postinst"))?;
    ensure!(postinst.contains("adduser --system"), "postinst does not create the user");
    println!("dist: contents, conffiles ({CONFFILE}), Depends ({}) as expected", depends.trim());

    let mut lab = Lab::new()?;
    // A real server and the client end able to receive XDP_TX frames: the packaged agent
    // must answer real SYNs with cookies, not only switch cookies on.
    lab.attach_client_xdp(&xtask::objects::test_programs(true))?;
    lab.start_server(COOKIE_PORT, 128)?;
    let root = lab.scratch().join("pkg");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let unit = std::fs::read_to_string(root.join(UNIT))?;
    verify_unit(&unit, &root, lab.scratch())?;
    check_unit_capabilities(&unit)?;

    let all: Vec<&str> = CAPS.to_vec();
    let agent = start(&lab, &root, &unit, &all)?;
    check_running(&lab, agent)?;
    println!(
        "dist: as uid {TEST_UID} with {}: attached, link pinned, control socket 0600, /metrics served, {COOKIE_REQUESTS} connections through XDP cookies, SIGHUP reloads",
        all.join(" ")
    );
    for missing in CAPS {
        let some: Vec<&str> = CAPS.iter().copied().filter(|c| c != missing).collect();
        let log = check_refused(&lab, start(&lab, &root, &unit, &some)?)?;
        println!("dist: without {missing}: refused: {}", log.lines().last().unwrap_or_default());
    }
    Ok(())
}

/// `systemd-analyze verify` of the packaged unit, pointed at the extracted binary; any
/// complaint (an unknown key is only a warning to systemd) fails.
fn verify_unit(unit: &str, root: &Path, scratch: &Path) -> Result<()> {
    let dir = scratch.join("unit");
    std::fs::create_dir_all(&dir)?;
    let binary = root.join("usr/bin/syndetector");
    let rewritten =
        unit.replace("ExecStart=/usr/bin/syndetector", &format!("ExecStart={}", binary.display()));
    ensure!(rewritten != unit, "the unit's ExecStart is not /usr/bin/syndetector");
    let path = dir.join("syndetector.service");
    std::fs::write(&path, rewritten)?;
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().context("systemd-analyze")?;
    let complaints = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify ({}): {complaints}",
        out.status
    );
    println!("dist: systemd-analyze verify: clean");
    Ok(())
}

/// The unit's one-line value of `key`.
fn unit_value<'a>(unit: &'a str, key: &str) -> Result<&'a str> {
    unit.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .with_context(|| format!("the unit has no {key}="))
}

fn check_unit_capabilities(unit: &str) -> Result<()> {
    let expected: Vec<String> = CAPS.iter().map(|c| format!("CAP_{}", c.to_uppercase())).collect();
    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        let mut caps: Vec<&str> = unit_value(unit, key)?.split_whitespace().collect();
        caps.sort_unstable();
        ensure!(caps == expected, "{key}={caps:?}, expected {expected:?}");
    }
    for (key, value) in
        [("User", "syndetector"), ("RuntimeDirectory", "syndetector"), ("Restart", "on-failure")]
    {
        ensure!(unit_value(unit, key)? == value, "{key} is not {value}");
    }
    ensure!(unit_value(unit, "ExecReload")?.contains("-HUP $MAINPID"), "ExecReload does not send SIGHUP");
    Ok(())
}

/// Starts the unit's ExecStart (binary and config from the extracted package) in the
/// lab's server namespace, as `TEST_UID` with only `caps` (ambient, inheritable, bounding),
/// in cookie mode on the lab's interface. /run is a fresh tmpfs in the agent's own mount
/// namespace holding /run/syndetector (0700, owned by the agent), as systemd's
/// RuntimeDirectory= makes it; the host's /run is untouched.
fn start(lab: &Lab, root: &Path, unit: &str, caps: &[&str]) -> Result<Child> {
    let exec: Vec<String> = unit_value(unit, "ExecStart")?
        .split_whitespace()
        // The package's own files (binary, configuration) from the extracted package; other
        // paths (the pin directory) as they are.
        .map(|a| {
            let packaged = root.join(a.trim_start_matches('/'));
            if a.starts_with('/') && packaged.exists() {
                packaged.display().to_string()
            } else {
                a.to_owned()
            }
        })
        .collect();
    let caps = caps.iter().fold(String::new(), |s, c| s + ",+" + c);
    let setpriv = format!(
        "setpriv --reuid={TEST_UID} --regid={TEST_UID} --clear-groups --no-new-privs \
         --inh-caps=-all{caps} --ambient-caps=-all{caps} --bounding-set=-all{caps}"
    );
    // The unit's pin directory, /run/syndetector-pins, is a bind mount of a directory on
    // the host's bpffs that ExecStartPre made for the agent's user: here a bpffs of its
    // own in the agent's mount namespace, gone with it. The stop detaches (`--on-stop
    // detach`) so that the check can see the sysctls restored; the keep-on-stop default
    // is e2e_restart's subject.
    let script = format!(
        "set -e; mount -t tmpfs -o mode=0755 syndetector-run /run; \
         mkdir -m 0700 /run/syndetector; chown {TEST_UID}:{TEST_UID} /run/syndetector; \
         mkdir -m 0700 /run/syndetector-pins; mount -t bpf -o mode=0700 syndetector-pins /run/syndetector-pins; \
         chown {TEST_UID}:{TEST_UID} /run/syndetector-pins; \
         exec {setpriv} {} --iface {} --mode cookie --metrics-addr 127.0.0.1:9787 --on-stop detach",
        exec.join(" "),
        lab.server_if
    );
    let log = std::fs::File::create(log_path(lab))?;
    Command::new("ip")
        .args(["netns", "exec", &lab.server_ns, "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting the packaged agent")
}

fn log_path(lab: &Lab) -> PathBuf {
    lab.scratch().join("packaged-agent.log")
}

fn check_running(lab: &Lab, mut agent: Child) -> Result<()> {
    let log = || std::fs::read_to_string(log_path(lab)).unwrap_or_default();
    let addr = "127.0.0.1:9787".parse()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let scrape = loop {
        if let Ok(s) = Scrape::fetch(&lab.server_ns, addr) {
            if s.get("syndetector_cookies_active") == Some(1.0) {
                break s;
            }
        }
        if let Some(status) = agent.try_wait()? {
            bail!("the packaged agent exited ({status}) during start-up:\n{}", log());
        }
        if Instant::now() > deadline {
            let _ = agent.kill();
            bail!("no metrics with cookies_active 1 within 20 s:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let attached =
        format!("syndetector_interface_attached{{interface=\"{}\",mode=\"driver\"}}", lab.server_if);
    let result = (|| {
        ensure!(scrape.get(&attached) == Some(1.0), "{attached} is not 1:\n{}", scrape.text);
        // Its pins and its control socket, seen through its own mount namespace.
        let root = PathBuf::from(format!("/proc/{}/root/run", agent.id()));
        for (path, what) in [
            (root.join("syndetector-pins").join(&lab.server_if).join("link"), "the link pin"),
            (root.join("syndetector/control.sock"), "the control socket"),
        ] {
            let meta =
                std::fs::symlink_metadata(&path).with_context(|| format!("{what} {}", path.display()))?;
            ensure!(meta.uid() == TEST_UID, "{what} is owned by uid {}, not {TEST_UID}", meta.uid());
            ensure!(meta.mode() & 0o777 == 0o600, "{what} is mode {:o}, not 0600", meta.mode() & 0o7777);
        }
        let cookies = lab.sysctl_get(&lab.server_ns, "net.ipv4.tcp_syncookies")?;
        ensure!(cookies == "2", "tcp_syncookies is {cookies}, not 2");
        // Real connections, answered from XDP with cookies the kernel accepts.
        let sent = |s: &Scrape| s.get("syndetector_cookies_sent_total").unwrap_or(0.0);
        let before = sent(&Scrape::fetch(&lab.server_ns, addr)?);
        let target = std::net::SocketAddr::from((xtask::lab::SERVER_V4, COOKIE_PORT));
        let report = xtask::lab::in_netns(&lab.client_ns, move || {
            xtask::lab::ClientReport::run(target, "/data", COOKIE_REQUESTS, Duration::from_secs(3))
        })?;
        ensure!(report.ok == COOKIE_REQUESTS, "legit requests through cookies: {report}");
        // The agent's counters follow its polls (1 s by default).
        std::thread::sleep(Duration::from_millis(1_500));
        let answered = sent(&Scrape::fetch(&lab.server_ns, addr)?) - before;
        ensure!(
            answered >= f64::from(COOKIE_REQUESTS),
            "only {answered} of {COOKIE_REQUESTS} SYNs answered with cookies from XDP"
        );
        // What ExecReload does: the agent, non-root, rereads its configuration.
        // SAFETY: signalling our own child (ip, sh and setpriv exec, so it is the agent).
        unsafe { libc::kill(libc::pid_t::try_from(agent.id())?, libc::SIGHUP) };
        let reloaded = "syndetector_config_reloads_total{result=\"success\"}";
        let deadline = Instant::now() + Duration::from_secs(10);
        while Scrape::fetch(&lab.server_ns, addr)?.get(reloaded) != Some(1.0) {
            ensure!(Instant::now() < deadline, "{reloaded} is not 1 10 s after SIGHUP");
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    })();
    // SAFETY: signalling our own child (ip, sh and setpriv exec, so it is the agent).
    unsafe { libc::kill(libc::pid_t::try_from(agent.id())?, libc::SIGTERM) };
    let status = wait(&mut agent, Duration::from_secs(10))?;
    result.with_context(log)?;
    ensure!(status.success(), "the packaged agent exited with {status} on SIGTERM:\n{}", log());
    let cookies = lab.sysctl_get(&lab.server_ns, "net.ipv4.tcp_syncookies")?;
    ensure!(cookies == "1", "tcp_syncookies is {cookies} after the stop, not restored to 1");
    Ok(())
}

/// The agent must exit non-zero by itself, leaving the sysctl alone; returns its log.
fn check_refused(lab: &Lab, mut agent: Child) -> Result<String> {
    let status = wait(&mut agent, Duration::from_secs(20))?;
    let log = std::fs::read_to_string(log_path(lab)).unwrap_or_default();
    ensure!(!status.success(), "the agent started without a capability:\n{log}");
    let cookies = lab.sysctl_get(&lab.server_ns, "net.ipv4.tcp_syncookies")?;
    ensure!(cookies == "1", "tcp_syncookies is {cookies} after a refused start");
    Ok(log)
}

fn wait(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the packaged agent did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stdout(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {}", cmd.get_program().display()))?;
    ensure!(out.status.success(), "{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
