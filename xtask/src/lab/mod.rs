//! Network-namespace lab: a server and a client namespace joined by a veth pair, a real
//! TCP server, real clients, floods from trafgen, the agent, and clean-up on drop.
//!
//! Rules (docs/lab.md): addresses only from `198.18.0.0/15` and `2001:2::/48`,
//! no default route, names with a per-run suffix, every flood bounded in count and time,
//! sysctls changed only inside the lab's namespaces, everything removed on drop.

mod agent;
mod client;
mod flood;
mod metrics;
mod netns;
mod topology;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::{programs::Xdp, Ebpf};

pub use agent::Agent;
pub use client::{http_get, ClientReport};
pub use flood::{Flood, FloodSources};
pub use metrics::Scrape;
pub use netns::in_netns;
pub use topology::{ThreeHosts, BACKEND_V4, BACKEND_V6, MIDDLE_BACK_V4, MIDDLE_BACK_V6, NFT_TABLE};

/// The server's addresses; the client's end in `.2` / `::2`.
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);
/// Spoofed flood sources live here; the server routes it back to the client side so
/// that SYN-ACKs to them go somewhere (and are dropped there, as on a real network).
pub const ATTACK_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 128, 0), 17);
pub const ATTACK_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2001, 2, 0, 0x8000, 0, 0, 0, 0), 64);

static RUNS: AtomicU32 = AtomicU32::new(0);

pub struct Lab {
    pub server_ns: String,
    pub client_ns: String,
    pub server_if: String,
    pub client_if: String,
    children: Vec<Child>,
    /// The trivial XDP program on the client's veth: native `XDP_TX` on a veth is delivered
    /// only when the peer has an XDP program (docs/lab.md).
    client_xdp: Option<Ebpf>,
    scratch: PathBuf,
    /// A bpffs of this lab's own (`mount_bpffs`), unmounted on drop with every pin in it.
    bpffs: Option<PathBuf>,
}

impl Lab {
    /// Creates both namespaces and the veth between them, addressed and up.
    pub fn new() -> Result<Self> {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            bail!("the lab makes network namespaces and attaches XDP programs: it needs root");
        }
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_micros());
        // Interface names are at most 15 bytes: "sds" + 12.
        let suffix = format!("{:x}{n:x}{:x}", std::process::id(), stamp % 0xfff);
        let suffix: String = suffix.chars().take(11).collect();
        let mut lab = Self {
            server_ns: format!("sd-srv-{suffix}"),
            client_ns: format!("sd-cli-{suffix}"),
            server_if: format!("sds{suffix}"),
            client_if: format!("sdc{suffix}"),
            children: Vec::new(),
            client_xdp: None,
            scratch: std::env::temp_dir().join(format!("sd-lab-{suffix}")),
            bpffs: None,
        };
        lab.build().context("building the lab")?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.scratch)?;
        let (s, c, si, ci) = (&self.server_ns, &self.client_ns, &self.server_if, &self.client_if);
        ip(&["netns", "add", s])?;
        ip(&["netns", "add", c])?;
        ip(&["link", "add", si, "netns", s, "type", "veth", "peer", "name", ci, "netns", c])?;
        for (ns, dev, v4, v6) in [(s, si, SERVER_V4, SERVER_V6), (c, ci, CLIENT_V4, CLIENT_V6)] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev])?;
            ip(&["-n", ns, "addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        // Replies to spoofed sources leave towards the client side (on-link), like a
        // server's default route would send them; no default route exists anywhere.
        ip(&["-n", s, "route", "add", &format!("{}/{}", ATTACK_V4.0, ATTACK_V4.1), "dev", si])?;
        ip(&["-n", s, "-6", "route", "add", &format!("{}/{}", ATTACK_V6.0, ATTACK_V6.1), "dev", si])?;
        // SYN-ACKs to spoofed sources reach the client namespace, which does not own those
        // addresses and does not forward: its stack drops them, no RST comes back.
        Ok(())
    }

    /// Loads `baseline_pass` from the test object (`objects::test_programs`: the shipped
    /// one has no such program) onto the client veth (see `client_xdp`).
    pub fn attach_client_xdp(&mut self, test_object: &Path) -> Result<()> {
        let bytes = std::fs::read(test_object).with_context(|| {
            format!("reading the test object {} (`cargo xtask build-ebpf`)", test_object.display())
        })?;
        let iface = self.client_if.clone();
        let ebpf = in_netns(&self.client_ns, move || -> Result<Ebpf> {
            let mut ebpf = Ebpf::load(&bytes)?;
            let prog: &mut Xdp = ebpf
                .program_mut("baseline_pass")
                .context("no baseline_pass: not the test object")?
                .try_into()?;
            prog.load()?;
            prog.attach(&iface, aya::programs::XdpMode::Driver)?;
            Ok(ebpf)
        })??;
        self.client_xdp = Some(ebpf);
        Ok(())
    }

    /// Mounts a BPF file system of the lab's own in its scratch directory, for the agent's
    /// `--pin-dir`: pins outlive processes and network namespaces, so they go in a bpffs
    /// that the lab unmounts on drop (which removes them all), never in the host's
    /// /sys/fs/bpf. (`ip netns exec` gives the agent a fresh /sys without any bpffs, but
    /// a mount made here before it starts is visible to it.)
    pub fn mount_bpffs(&mut self) -> Result<PathBuf> {
        let dir = self.scratch.join("bpffs");
        std::fs::create_dir_all(&dir)?;
        run(Command::new("mount").args(["-t", "bpf", "-o", "mode=0700", "sd-lab-bpffs"]).arg(&dir))?;
        self.bpffs = Some(dir.clone());
        Ok(dir)
    }

    /// A sysctl inside one of the lab's namespaces (never the host's).
    pub fn sysctl(&self, ns: &str, key: &str, value: &str) -> Result<()> {
        run(Command::new("ip").args(["netns", "exec", ns, "sysctl", "-qw", &format!("{key}={value}")]))
    }

    /// Starts the lab's HTTP server in the server namespace and waits until it listens.
    pub fn start_server(&mut self, port: u16, backlog: u32) -> Result<()> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("lab/server.py");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.server_ns, "/usr/bin/python3"])
            .arg(&script)
            .args(["--port", &port.to_string(), "--backlog", &backlog.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .context("starting the lab server (python3)")?;
        self.children.push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = std::net::SocketAddr::from((SERVER_V4, port));
        while Instant::now() < deadline {
            let up = in_netns(&self.client_ns, move || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })?;
            if up {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("the lab server did not listen on port {port} within 10 s")
    }

    /// Spawns a process in a namespace; it is killed when the lab is dropped.
    pub fn spawn(&mut self, ns: &str, cmd: &mut Command) -> Result<u32> {
        let mut full = Command::new("ip");
        full.args(["netns", "exec", ns]).arg(cmd.get_program()).args(cmd.get_args());
        let child =
            full.spawn().with_context(|| format!("spawning {} in {ns}", cmd.get_program().display()))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// The kernel's TCP counters in a namespace (/proc/net/netstat and snmp there).
    pub fn nstat(&self, ns: &str) -> Result<std::collections::HashMap<String, u64>> {
        in_netns(ns, || {
            let mut counters = std::collections::HashMap::new();
            for file in ["/proc/thread-self/net/netstat", "/proc/thread-self/net/snmp"] {
                detector_common::procnet::parse(&std::fs::read_to_string(file)?, &mut counters);
            }
            // Keyed as nstat names them: TcpExtSyncookiesRecv.
            Ok(counters.into_iter().map(|((section, field), v)| (format!("{section}{field}"), v)).collect())
        })?
    }

    /// `ip -d link show` of the server's veth: says whether an XDP program is attached.
    /// An error if `ip` fails (no such namespace or interface): an empty answer must not
    /// read as "nothing attached".
    pub fn server_link_details(&self) -> Result<String> {
        let text = run_stdout(Command::new("ip").args([
            "-n",
            &self.server_ns,
            "-d",
            "link",
            "show",
            &self.server_if,
        ]))?;
        if !text.contains(self.server_if.as_str()) {
            bail!("`ip -d link show {}` did not describe it: {text:?}", self.server_if);
        }
        Ok(text)
    }

    /// A sysctl's value inside one of the lab's namespaces; an error if it cannot be read.
    pub fn sysctl_get(&self, ns: &str, key: &str) -> Result<String> {
        let value = run_stdout(Command::new("ip").args(["netns", "exec", ns, "sysctl", "-n", key]))?;
        Ok(value.trim().to_owned())
    }

    pub fn scratch(&self) -> &Path {
        &self.scratch
    }

    pub fn server_addr(v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(SERVER_V6)
        } else {
            IpAddr::V4(SERVER_V4)
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.client_xdp = None;
        // Deleting a namespace deletes its veth end, and the pair with it.
        for ns in [&self.server_ns, &self.client_ns] {
            remove_netns_lock(ns);
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if let Some(dir) = self.bpffs.take() {
            let _ = Command::new("umount").arg(&dir).status();
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// Where the agent keeps one lock file per network namespace, named by the namespace's
/// inode (detector-user/src/lock.rs `NETNS_LOCK_DIR`, `netns_lock_name`).
const AGENT_NETNS_LOCKS: &str = "/run/syndetector/netns";

/// Removes the agent's lock file for namespace `ns`: an agent stopped cleanly removes it
/// itself, one killed (as tests do) leaves it, and the namespace is going away.
pub(crate) fn remove_netns_lock(ns: &str) {
    use std::os::unix::fs::MetadataExt;
    if let Ok(meta) = std::fs::metadata(format!("/run/netns/{ns}")) {
        let _ = std::fs::remove_file(Path::new(AGENT_NETNS_LOCKS).join(format!("net-{}.lock", meta.ino())));
    }
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args))
}

fn run(cmd: &mut Command) -> Result<()> {
    run_stdout(cmd).map(drop)
}

/// Runs `cmd` to completion; its stdout, or an error naming the command, its exit status
/// and its stderr if it did not exit with 0.
pub(crate) fn run_stdout(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {}", cmd.get_program().display()))?;
    if !out.status.success() {
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        bail!(
            "{} {} failed ({}): {}",
            cmd.get_program().display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_command_is_an_error_not_empty_output() {
        let e = run_stdout(Command::new("ip").args(["-n", "sd-no-such-netns", "link", "show"])).unwrap_err();
        assert!(e.to_string().contains("failed"), "{e:#}");
        let e = run_stdout(&mut Command::new("false")).unwrap_err();
        assert!(e.to_string().contains("exit status: 1"), "{e:#}");
        assert_eq!(run_stdout(Command::new("echo").arg("ok")).unwrap(), "ok\n");
    }

    /// Needs root (makes namespaces), like the lab itself.
    #[test]
    fn link_details_and_sysctls_of_a_vanished_namespace_are_errors() {
        let lab = Lab::new().expect("lab (run as root)");
        assert!(lab.server_link_details().unwrap().contains("veth"));
        assert_eq!(lab.sysctl_get(&lab.server_ns, "net.ipv4.tcp_syncookies").unwrap(), "1");
        ip(&["netns", "del", &lab.server_ns]).unwrap();
        let e = lab.server_link_details().unwrap_err();
        println!("{e:#}");
        assert!(lab.sysctl_get(&lab.server_ns, "net.ipv4.tcp_syncookies").is_err());
        assert!(lab.sysctl_get(&lab.client_ns, "net.ipv4.no_such_key").is_err());
    }
}
