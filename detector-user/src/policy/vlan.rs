//! NIC VLAN offload check per attached interface: when the NIC strips 802.1Q tags before
//! XDP (rx VLAN offload) and VLAN devices sit on top of the interface, an untagged SYN may
//! have lost its tag and an XDP_TX reply would leave untagged: `IFACE_VLAN_STRIPPED`.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use detector_common::policy::{IfacePolicy, IFACE_VLAN_STRIPPED};
use tracing::{info, warn};

/// SIOCETHTOOL from linux/sockios.h.
const SIOCETHTOOL: libc::c_ulong = 0x8946;
/// ETHTOOL_GFLAGS from linux/ethtool.h: the legacy offload flags word.
const ETHTOOL_GFLAGS: u32 = 0x25;
/// ETH_FLAG_RXVLAN: rx VLAN (CTAG) offload, i.e. NETIF_F_HW_VLAN_CTAG_RX.
pub const ETH_FLAG_RXVLAN: u32 = 1 << 8;

/// What was found about one interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VlanFacts {
    pub rx_vlan_offload: bool,
    /// VLAN devices stacked on it, directly or through a bond/bridge/macvlan.
    pub vlan_uppers: Vec<String>,
}

/// The decision and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VlanVerdict {
    /// No rx VLAN offload: tagged frames reach XDP tagged (and are not answered).
    NoOffload,
    /// Offload on but no VLAN device on top: an untagged frame was untagged on the wire.
    OffloadWithoutVlans,
    /// Offload on and VLANs on top: tags are lost before XDP.
    Stripped,
}

/// The pure decision for one interface.
pub fn decide(facts: &VlanFacts) -> (IfacePolicy, VlanVerdict) {
    match (facts.rx_vlan_offload, facts.vlan_uppers.is_empty()) {
        (false, _) => (IfacePolicy::default(), VlanVerdict::NoOffload),
        (true, true) => (IfacePolicy::default(), VlanVerdict::OffloadWithoutVlans),
        (true, false) => (IfacePolicy { flags: IFACE_VLAN_STRIPPED }, VlanVerdict::Stripped),
    }
}

/// Whether the NIC strips VLAN tags on receive (ETHTOOL_GFLAGS on an AF_INET socket, in
/// the calling thread's network namespace).
pub fn rx_vlan_offload(ifname: &str) -> io::Result<bool> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    /// `struct ifreq`: the name, then a union whose `ifru_data` pointer we use (40 bytes).
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    let bytes = ifname.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {ifname:?}")));
    }
    let mut value = EthtoolValue { cmd: ETHTOOL_GFLAGS, data: 0 };
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: &raw mut value, _pad: [0; 16] };
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: plain socket call; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: req and value live across the call; SIOCETHTOOL reads req and writes value.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &raw mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data & ETH_FLAG_RXVLAN != 0)
}

/// VLAN devices above `ifname`, following `upper_*` links up to a few levels (a VLAN on
/// a bond on the NIC counts too). `sys_class_net` is normally /sys/class/net.
pub fn vlan_uppers(sys_class_net: &Path, ifname: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut frontier = vec![ifname.to_owned()];
    for _ in 0..4 {
        let mut next = Vec::new();
        for dev in &frontier {
            let Ok(entries) = std::fs::read_dir(sys_class_net.join(dev)) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(upper) = name.strip_prefix("upper_") else { continue };
                let uevent =
                    std::fs::read_to_string(sys_class_net.join(upper).join("uevent")).unwrap_or_default();
                if uevent.lines().any(|l| l.trim() == "DEVTYPE=vlan") {
                    found.push(upper.to_owned());
                }
                next.push(upper.to_owned());
            }
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    found.sort();
    found.dedup();
    found
}

/// Runs the check on the attached interfaces and logs each verdict when it changes.
#[derive(Default)]
pub struct VlanCheck {
    last: HashMap<u32, (VlanVerdict, Vec<String>)>,
}

impl VlanCheck {
    /// `ifaces`: (ifindex, name) of every interface the program is attached to. An
    /// interface whose offload cannot be read is treated as stripping (the safe side).
    pub fn run(&mut self, ifaces: &[(u32, String)]) -> BTreeMap<u32, IfacePolicy> {
        let sys = Path::new("/sys/class/net");
        let mut out = BTreeMap::new();
        for (ifindex, name) in ifaces {
            let uppers = vlan_uppers(sys, name);
            let offload = rx_vlan_offload(name).unwrap_or_else(|e| {
                warn!(iface = %name, error = %e, "cannot read rx VLAN offload; assuming tags are stripped");
                true
            });
            let facts = VlanFacts { rx_vlan_offload: offload, vlan_uppers: uppers };
            let (policy, verdict) = decide(&facts);
            out.insert(*ifindex, policy);
            let seen = (verdict, facts.vlan_uppers.clone());
            if self.last.get(ifindex) != Some(&seen) {
                log_verdict(name, &facts, verdict);
                self.last.insert(*ifindex, seen);
            }
        }
        self.last.retain(|i, _| out.contains_key(i));
        out
    }
}

fn log_verdict(name: &str, facts: &VlanFacts, verdict: VlanVerdict) {
    match verdict {
        VlanVerdict::NoOffload => info!(iface = %name, "rx VLAN offload off: VLAN tags reach XDP"),
        VlanVerdict::OffloadWithoutVlans => info!(
            iface = %name,
            "rx VLAN offload on, but no VLAN device on top: untagged frames are answered as usual"
        ),
        VlanVerdict::Stripped => warn!(
            iface = %name,
            vlans = %facts.vlan_uppers.join(","),
            "the NIC strips VLAN tags before XDP and VLANs sit on this interface: its SYNs are left \
             to the kernel (no cookies from XDP). Fix: `ethtool -K {name} rxvlan off`"
        ),
    }
}

#[cfg(test)]
#[path = "vlan_tests.rs"]
mod tests;
