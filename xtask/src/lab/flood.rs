//! SYN floods from trafgen (netsniff-ng) on the client's veth: spoofed sources inside the
//! lab's attack ranges only, every flood bounded by a packet count and a time limit.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{Lab, ATTACK_V4, ATTACK_V6, SERVER_V4, SERVER_V6};

#[derive(Clone, Copy, Debug)]
pub enum FloodSources {
    /// One spoofed source: the host part (low 15 bits) inside the attack range.
    Single(u16),
    /// A fresh random source per packet across the attack range (32k IPv4 addresses,
    /// 2^64 IPv6 ones).
    Random,
}

#[derive(Clone, Copy, Debug)]
pub struct Flood {
    pub v6: bool,
    pub sources: FloodSources,
    pub port: u16,
    pub count: u64,
    pub pps: u64,
    /// Stops after this even if `count` was not reached.
    pub limit: Duration,
}

/// What trafgen did.
#[derive(Debug)]
pub struct FloodReport {
    pub sent: u64,
    pub elapsed: Duration,
}

impl Flood {
    /// The spoofed IPv4 source of a `Single` flood.
    pub fn single_v4(host: u16) -> Ipv4Addr {
        let base = u32::from(ATTACK_V4.0);
        Ipv4Addr::from(base | u32::from(host & 0x7fff))
    }

    /// Runs the flood to completion (bounded) from the client namespace.
    pub fn run(&self, lab: &Lab) -> Result<FloodReport> {
        self.run_segments(lab, false)
    }

    /// The same flood of ACKs with random sequence and acknowledgment numbers: forged
    /// cookie ACKs (the kernel checks each one as a cookie while cookies are on).
    pub fn run_acks(&self, lab: &Lab) -> Result<FloodReport> {
        self.run_segments(lab, true)
    }

    fn run_segments(&self, lab: &Lab, acks: bool) -> Result<FloodReport> {
        let dst_mac = mac(&lab.server_ns, &lab.server_if)?;
        let src_mac = mac(&lab.client_ns, &lab.client_if)?;
        let conf = lab.scratch().join(format!("flood-{}.cfg", if self.v6 { 6 } else { 4 }));
        std::fs::write(&conf, self.trafgen_config(dst_mac, src_mac, acks))?;
        let started = Instant::now();
        let out = Command::new("timeout")
            .arg(format!("{}", self.limit.as_secs().max(1)))
            .args(["ip", "netns", "exec", &lab.client_ns, "trafgen", "--dev", &lab.client_if, "--conf"])
            .arg(&conf)
            .args(["-n", &self.count.to_string(), "-b", &format!("{}pps", self.pps)])
            // One process; do not tune socket memory or IRQ affinity (host settings).
            .args(["-P", "1", "--no-sock-mem", "--notouch-irq", "-C"])
            .output()
            .context("running trafgen (package netsniff-ng)")?;
        let elapsed = started.elapsed();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        // trafgen prints "N packets outgoing"; a time-limited run is killed by timeout (124).
        let sent = text
            .lines()
            .find_map(|l| l.trim().strip_suffix("packets outgoing").and_then(|n| n.trim().parse().ok()));
        match (out.status.code(), sent) {
            (Some(0), Some(sent)) => Ok(FloodReport { sent, elapsed }),
            (Some(124), _) => Ok(FloodReport { sent: sent.unwrap_or(0), elapsed }),
            _ => bail!("trafgen failed ({}): {text}", out.status),
        }
    }

    fn trafgen_config(&self, dst_mac: [u8; 6], src_mac: [u8; 6], acks: bool) -> String {
        let bytes = |b: &[u8]| b.iter().map(|x| format!("{x:#04x}")).collect::<Vec<_>>().join(", ");
        let eth_type = if self.v6 { "c16(0x86dd)" } else { "c16(0x0800)" };
        let ip = if self.v6 {
            let src = match self.sources {
                FloodSources::Single(host) => bytes(&attack_v6(u64::from(host)).octets()),
                // 2001:2:0:8000::/64 with a random interface identifier.
                FloodSources::Random => format!("{}, drnd(8)", bytes(&ATTACK_V6.0.octets()[..8])),
            };
            format!("0x60, 0, 0, 0, c16(24), 6, 64, {src}, {}", bytes(&SERVER_V6.octets()))
        } else {
            let src = match self.sources {
                FloodSources::Single(host) => bytes(&Self::single_v4(host).octets()),
                // 198.18.128.0/17: third octet 128..=255, fourth random.
                FloodSources::Random => "198, 18, dinc(128, 255), drnd(1)".to_owned(),
            };
            format!(
                "0x45, 0, c16(44), drnd(2), c16(0x4000), 64, 6, csumip(14, 33), {src}, {}",
                bytes(&SERVER_V4.octets())
            )
        };
        let csum = if self.v6 { "csumtcp6(14, 54)" } else { "csumtcp(14, 34)" };
        // Acknowledgment number and flags: 0 and SYN, or random and ACK.
        let (ack, flags) = if acks { ("drnd(4)", "0x10") } else { ("c32(0)", "0x02") };
        format!(
            // TCP with an MSS option (data offset 6), as most SYN flood tools send.
            "{{\n  {}, {}, {eth_type},\n  {ip},\n  drnd(2), c16({}), drnd(4), {ack}, 0x60, {flags}, c16(64240), {csum}, c16(0),\n  0x02, 0x04, 0x05, 0xb4\n}}\n",
            bytes(&dst_mac),
            bytes(&src_mac),
            self.port
        )
    }
}

fn attack_v6(host: u64) -> Ipv6Addr {
    let base = u128::from(ATTACK_V6.0);
    Ipv6Addr::from(base | u128::from(host))
}

fn mac(ns: &str, iface: &str) -> Result<[u8; 6]> {
    let text = super::run_stdout(Command::new("ip").args(["-n", ns, "-br", "link", "show", "dev", iface]))?;
    let field = text.split_whitespace().nth(2).with_context(|| format!("no MAC for {iface}: {text}"))?;
    let parts: Vec<u8> = field
        .split(':')
        .map(|part| u8::from_str_radix(part, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC {field}"))?;
    <[u8; 6]>::try_from(parts.as_slice()).with_context(|| format!("bad MAC {field}"))
}
