//! Real hosts are not one listener: three namespaces, client — middle host — backend.
//!
//! The middle host is where the agent runs (its client-facing veth is the lab's
//! `server_if`). It forwards (IPv4 and IPv6, inside its namespace only) and is either a
//! router that the client uses to reach the backend's own address, or a host that
//! publishes a port by DNAT to the backend (an nftables table the lab creates in the middle
//! namespace), the way container runtimes do. The backend answers the client through the
//! middle host: it has a route to the client's prefix via the middle host, no default route.
//!
//! ```text
//! client 198.18.0.2 ── 198.18.0.1 middle 198.18.1.1 ── 198.18.1.2 backend
//!        2001:2::2  ── 2001:2::1         2001:2:0:1::1 ── 2001:2:0:1::2
//! ```

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{in_netns, ip, run, Lab, CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6};

/// The middle host's address on the backend link; the backend ends in `.2` / `::2`.
pub const MIDDLE_BACK_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const BACKEND_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const MIDDLE_BACK_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 1);
pub const BACKEND_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 2);
/// The nftables tables the lab creates in the middle namespace (one `ip`, one `ip6`).
pub const NFT_TABLE: &str = "syndetector_lab";

pub struct ThreeHosts {
    /// Client and middle host: `lab.client_ns`, and `lab.server_ns` where the agent runs
    /// on `lab.server_if`.
    pub lab: Lab,
    pub backend_ns: String,
    /// The middle host's veth toward the backend, and the backend's end.
    pub middle_back_if: String,
    pub backend_if: String,
    /// The HTTP servers started here; killed on drop.
    children: Vec<Child>,
}

impl ThreeHosts {
    /// Client, middle host and backend namespaces, addressed and up, `baseline_pass` from
    /// `test_object` (`objects::test_programs`) on the client's veth (so XDP_TX from the middle host reaches it), forwarding
    /// on in the middle namespace, and the backend's return routes via the middle host.
    pub fn new(test_object: &Path) -> Result<Self> {
        let mut lab = Lab::new()?;
        lab.attach_client_xdp(test_object).context("baseline_pass on the client veth")?;
        let suffix = lab.server_ns.strip_prefix("sd-srv-").context("the lab's namespace naming")?.to_owned();
        let hosts = Self {
            lab,
            backend_ns: format!("sd-bk-{suffix}"),
            middle_back_if: format!("sdm{suffix}"),
            backend_if: format!("sdb{suffix}"),
            children: Vec::new(),
        };
        hosts.build().context("building the backend namespace")?;
        Ok(hosts)
    }

    fn build(&self) -> Result<()> {
        let (m, b, mi, bi) = (self.middle_ns(), &self.backend_ns, &self.middle_back_if, &self.backend_if);
        ip(&["netns", "add", b])?;
        ip(&["link", "add", mi, "netns", m, "type", "veth", "peer", "name", bi, "netns", b])?;
        ip(&["-n", b, "link", "set", "lo", "up"])?;
        for (ns, dev, v4, v6) in [(m, mi, MIDDLE_BACK_V4, MIDDLE_BACK_V6), (b, bi, BACKEND_V4, BACKEND_V6)] {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev])?;
            ip(&["-n", ns, "addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        // Replies to the client go back through the middle host: a route to the client's
        // prefix only, never a default route.
        ip(&[
            "-n",
            b,
            "route",
            "add",
            &format!("{}/24", net_v4(CLIENT_V4)),
            "via",
            &MIDDLE_BACK_V4.to_string(),
        ])?;
        ip(&[
            "-n",
            b,
            "-6",
            "route",
            "add",
            &format!("{}/64", net_v6(CLIENT_V6)),
            "via",
            &MIDDLE_BACK_V6.to_string(),
        ])?;
        self.lab.sysctl(m, "net.ipv4.ip_forward", "1")?;
        self.lab.sysctl(m, "net.ipv6.conf.all.forwarding", "1")?;
        Ok(())
    }

    /// The namespace where the agent runs: the router, or the host that publishes by DNAT.
    pub fn middle_ns(&self) -> &str {
        &self.lab.server_ns
    }

    /// The middle host as the client's router: routes to the backend's prefix via it.
    pub fn route_client_to_backend(&self) -> Result<()> {
        let c = &self.lab.client_ns;
        ip(&["-n", c, "route", "add", &format!("{}/24", net_v4(BACKEND_V4)), "via", &SERVER_V4.to_string()])?;
        ip(&[
            "-n",
            c,
            "-6",
            "route",
            "add",
            &format!("{}/64", net_v6(BACKEND_V6)),
            "via",
            &SERVER_V6.to_string(),
        ])
    }

    /// Publishes `port` of the middle host by DNAT to the backend, IPv4 and IPv6, in
    /// prerouting nat chains of tables the lab creates (`NFT_TABLE`) in the middle
    /// namespace: `tcp dport P dnat to BACKEND:P`.
    pub fn dnat_to_backend(&self, port: u16) -> Result<()> {
        let rules = format!(
            "table ip {NFT_TABLE} {{\n\
             \tchain prerouting {{\n\
             \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\ttcp dport {port} dnat to {BACKEND_V4}:{port}\n\
             \t}}\n\
             }}\n\
             table ip6 {NFT_TABLE} {{\n\
             \tchain prerouting {{\n\
             \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\ttcp dport {port} dnat to [{BACKEND_V6}]:{port}\n\
             \t}}\n\
             }}\n"
        );
        let file = self.lab.scratch().join("dnat.nft");
        std::fs::write(&file, rules)?;
        run(Command::new("ip").args(["netns", "exec", self.middle_ns(), "nft", "-f"]).arg(&file))
            .context("installing the DNAT rules (is nftables installed? `cargo xtask setup`)")
    }

    /// `nft list ruleset` in the middle namespace, for failure messages.
    pub fn middle_ruleset(&self) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", self.middle_ns(), "nft", "list", "ruleset"])
            .output()?;
        if !out.status.success() {
            bail!("nft list ruleset: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The lab's HTTP server in the backend namespace (dual-stack, `[::]:port`), serving
    /// `/data` with `body_size` bytes so that a client can tell who answered; waits until
    /// the middle host can connect to it.
    pub fn start_backend_server(&mut self, port: u16, body_size: usize) -> Result<()> {
        let ns = self.backend_ns.clone();
        self.spawn_server(&ns, port, body_size)?;
        wait_listening(self.middle_ns(), SocketAddr::from((BACKEND_V4, port)))
    }

    /// The lab's HTTP server in the middle namespace: a wildcard listener on `[::]:port`
    /// (dual-stack), serving `/data` with `body_size` bytes; waits until the client can
    /// connect to the middle host's address (so start it before `dnat_to_backend`).
    pub fn start_middle_listener(&mut self, port: u16, body_size: usize) -> Result<()> {
        let ns = self.middle_ns().to_owned();
        self.spawn_server(&ns, port, body_size)?;
        wait_listening(&self.lab.client_ns, SocketAddr::from((SERVER_V4, port)))
    }

    fn spawn_server(&mut self, ns: &str, port: u16, body_size: usize) -> Result<()> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("lab/server.py");
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "/usr/bin/python3"])
            .arg(&script)
            .args(["--port", &port.to_string(), "--size", &body_size.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting the lab server (python3) in {ns}"))?;
        self.children.push(child);
        Ok(())
    }

    /// The backend's address, IPv4 or IPv6.
    pub fn backend_addr(v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(BACKEND_V6)
        } else {
            IpAddr::V4(BACKEND_V4)
        }
    }

    /// The middle host's address on the client's link, IPv4 or IPv6.
    pub fn middle_addr(v6: bool) -> IpAddr {
        Lab::server_addr(v6)
    }
}

impl Drop for ThreeHosts {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deleting the backend's namespace deletes its veth, and the pair with it; the lab
        // (dropped next) deletes its own namespaces.
        match Command::new("ip").args(["netns", "del", &self.backend_ns]).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "lab clean-up: ip netns del {}: {}",
                self.backend_ns,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("lab clean-up: ip netns del {}: {e}", self.backend_ns),
        }
    }
}

/// Waits (10 s at most) until `addr` accepts a connection made from `from_ns`.
fn wait_listening(from_ns: &str, addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let up = in_netns(from_ns, move || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })?;
        if up {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing listened on {addr} (seen from {from_ns}) within 10 s")
}

fn net_v4(a: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(a) & !0xff)
}

fn net_v6(a: Ipv6Addr) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(a) & !u128::from(u64::MAX))
}
