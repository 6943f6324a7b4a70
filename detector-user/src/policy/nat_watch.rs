//! Keeps `nat::NatFindings` current: reads the ruleset with `nft -j list ruleset` at start
//! and again whenever the kernel announces a ruleset change on NETLINK_NETFILTER (group
//! NFNLGRP_NFTABLES), debounced; no polling.

use std::{
    io::ErrorKind,
    os::fd::AsRawFd,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{
    error::{NatError, NetlinkError},
    policy::nat::{parse_ruleset, NatFindings},
};

/// `NFNLGRP_NFTABLES` from linux/netfilter/nfnetlink.h: every nftables ruleset change.
pub const NFNLGRP_NFTABLES: u32 = 7;
/// Quiet time after an event before the ruleset is read (one transaction sends many).
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// Longest wait for quiet under a continuous stream of changes.
const DEBOUNCE_CAP: Duration = Duration::from_secs(2);

/// Runs `nft -j list ruleset` in this thread's network namespace and classifies it.
pub fn read_ruleset() -> Result<NatFindings, NatError> {
    let out = match Command::new("nft").args(["-j", "list", "ruleset"]).output() {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(NatError::NoNft),
        Err(e) => return Err(NatError::Run(e)),
    };
    if !out.status.success() {
        return Err(NatError::Failed(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    let mut found = parse_ruleset(&String::from_utf8_lossy(&out.stdout))?;
    found.invisible = invisible_nat(Path::new(PROC_NET));
    Ok(found)
}

/// This thread's network namespace's /proc/net (/proc/net follows the main thread's).
const PROC_NET: &str = "/proc/thread-self/net";

/// NAT that `nft` cannot show, as far as /proc tells: iptables-legacy nat tables (their
/// rules live outside nf_tables) and IPVS virtual services (kube-proxy IPVS mode).
pub fn invisible_nat(proc_net: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for (file, tool) in [("ip_tables_names", "iptables-legacy"), ("ip6_tables_names", "ip6tables-legacy")] {
        let names = std::fs::read_to_string(proc_net.join(file)).unwrap_or_default();
        if names.lines().any(|l| l.trim() == "nat") {
            out.push(format!("a {tool} nat table exists: its DNAT/REDIRECT rules are not visible to nft"));
        }
    }
    let ipvs = std::fs::read_to_string(proc_net.join("ip_vs")).unwrap_or_default();
    let services = ipvs.lines().filter(|l| l.starts_with("TCP ") || l.starts_with("FWM ")).count();
    if services > 0 {
        out.push(format!("{services} IPVS virtual services exist: their addresses and ports are not read"));
    }
    out
}

/// What to publish when the ruleset cannot be read: nothing is known, so every port goes
/// to the kernel (except when nft is simply absent: then the operator's lists rule).
fn on_read_error(e: &NatError) -> NatFindings {
    match e {
        NatError::NoNft => {
            warn!(
                "nft is not installed: DNAT/redirect detection is off; list published ports in \
                 policy.kernel_ports and policy.kernel_destinations"
            );
            NatFindings { invisible: invisible_nat(Path::new(PROC_NET)), ..NatFindings::default() }
        }
        other => {
            warn!(error = %other, "cannot read the nftables ruleset: every port is left to the kernel");
            NatFindings {
                all_ports: true,
                unclassified: vec![format!("ruleset unreadable: {other}")],
                ..NatFindings::default()
            }
        }
    }
}

/// Subscribes to ruleset changes, reads the ruleset once, and keeps the returned channel
/// current from a dedicated thread (in the caller's network namespace). The thread stops
/// at the first event after every receiver is gone.
pub fn spawn() -> Result<watch::Receiver<NatFindings>, NetlinkError> {
    let io = |what| move |source| NetlinkError::Io { what, source };
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(io("opening a NETLINK_NETFILTER socket"))?;
    socket.bind_auto().map_err(io("binding the netfilter socket"))?;
    // Before the first read, so that no change between the read and the subscription is lost.
    socket
        .add_membership(NFNLGRP_NFTABLES)
        .map_err(|source| NetlinkError::Refused { what: "joining NFNLGRP_NFTABLES", source })?;
    let first = read_ruleset();
    let nft_missing = matches!(first, Err(NatError::NoNft));
    let (tx, rx) = watch::channel(first.unwrap_or_else(|e| on_read_error(&e)));
    if nft_missing {
        return Ok(rx); // nothing to re-read with; the warning was given once
    }
    info!(rules = rx.borrow().nat_rules, "watching the nftables ruleset for DNAT/redirect/tproxy rules");
    std::thread::Builder::new()
        .name("nat-watch".into())
        .spawn(move || watch_loop(&socket, &tx))
        .map_err(io("starting the nat-watch thread"))?;
    Ok(rx)
}

fn watch_loop(socket: &Socket, tx: &watch::Sender<NatFindings>) {
    let mut buf = vec![0u8; 64 * 1024];
    while !tx.is_closed() {
        match socket.recv(&mut &mut buf[..], 0) {
            // ENOBUFS: events were lost; a fresh read covers them all.
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!(error = %e, "the nftables event socket failed: DNAT detection stops following changes");
                return;
            }
        }
        drain_until_quiet(socket, &mut buf);
        let findings = read_ruleset().unwrap_or_else(|e| on_read_error(&e));
        debug!(rules = findings.nat_rules, "nftables ruleset re-read");
        tx.send_if_modified(|old| {
            let changed = *old != findings;
            if changed {
                *old = findings;
            }
            changed
        });
    }
}

/// Reads events until none arrived for `DEBOUNCE` (at most `DEBOUNCE_CAP` in all).
fn drain_until_quiet(socket: &Socket, buf: &mut [u8]) {
    let cap = Instant::now() + DEBOUNCE_CAP;
    loop {
        let wait = DEBOUNCE.min(cap.saturating_duration_since(Instant::now()));
        if wait.is_zero() || !readable(socket, wait) {
            return;
        }
        let _ = socket.recv(&mut &mut buf[..], libc::MSG_DONTWAIT);
    }
}

/// Whether the socket becomes readable within `wait`.
pub(crate) fn readable(socket: &Socket, wait: Duration) -> bool {
    let mut pfd = libc::pollfd { fd: socket.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one pollfd that lives across the call.
    unsafe { libc::poll(&raw mut pfd, 1, ms) > 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_netns::TestNs;

    #[test]
    fn follows_rules_added_and_removed_in_a_test_namespace() {
        let ns = TestNs::new("nat");
        let rx = ns.run(|| spawn().expect("watcher"));
        assert_eq!(*rx.borrow(), NatFindings::default(), "a fresh namespace has no rules");
        ns.nft(concat!(
            "table ip sdtest {\n",
            "  chain pre {\n",
            "    type nat hook prerouting priority dstnat;\n",
            "    tcp dport 8088 dnat to 198.18.1.2:80\n",
            "  }\n",
            "}\n",
        ));
        let found = wait_for(&rx, |f| f.kernel_ports.contains(&8088));
        assert!(found, "the watcher did not see the new DNAT rule");
        ns.nft("delete table ip sdtest");
        assert!(wait_for(&rx, |f| f.kernel_ports.is_empty()), "the watcher did not see the table go");
    }

    #[test]
    fn legacy_nat_tables_and_ipvs_services_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(invisible_nat(tmp.path()).is_empty(), "no files: nothing known");
        std::fs::write(tmp.path().join("ip_tables_names"), "filter\nnat\n").unwrap();
        std::fs::write(tmp.path().join("ip6_tables_names"), "filter\n").unwrap();
        std::fs::write(
            tmp.path().join("ip_vs"),
            "IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n  \
             -> RemoteAddress:Port Forward Weight ActiveConn InActConn\nTCP  C6120001:0050 rr\n  \
             -> C6120102:0050      Masq    1      0          0\n",
        )
        .unwrap();
        let found = invisible_nat(tmp.path());
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("iptables-legacy") && found[1].contains("1 IPVS"), "{found:?}");
    }

    fn wait_for(rx: &watch::Receiver<NatFindings>, ok: impl Fn(&NatFindings) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if ok(&rx.borrow()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}
