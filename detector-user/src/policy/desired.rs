//! The cookie policy on the agent side: what the four policy maps should hold
//! (`DesiredPolicy`, built from config, the host's addresses, NAT rules and the VLAN
//! check), and the pure diffs `policy::maps::PolicyMaps` applies.

use std::collections::{BTreeMap, BTreeSet};

use detector_common::{
    config::{FLAG_LISTED_PORTS_ONLY, FLAG_NO_IFACE_POLICY, FLAG_NO_KERNEL_DESTS},
    names,
    policy::{IfacePolicy, PORT_ACTION_MASK, PORT_ANSWER, PORT_DEFAULT, PORT_KERNEL, PORT_NO_LISTENER},
};
use tracing::{info, warn};

use crate::{policy::nat::NatFindings, prefix::Prefix};

/// Slots in `PORT_POLICY`: one per TCP port.
pub const PORT_SLOTS: usize = 1 << 16;

/// The operator's part of the policy, validated (`config::Config::policy`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Non-empty: only these ports are answered from XDP (`FLAG_LISTED_PORTS_ONLY`).
    pub answer_ports: BTreeSet<u16>,
    pub kernel_ports: BTreeSet<u16>,
    pub kernel_destinations: BTreeSet<Prefix>,
    /// Read the nftables ruleset for DNAT/redirect/tproxy rules.
    pub detect_nat: bool,
}

/// What the policy maps should hold, and the notes explaining what was left to the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredPolicy {
    /// Mapped addresses (`prefix::mapped`).
    pub local_addrs: BTreeSet<[u8; 16]>,
    /// `PORT_SLOTS` values, indexed by port.
    pub ports: Vec<u32>,
    pub kernel_dests: BTreeSet<Prefix>,
    pub ifaces: BTreeMap<u32, IfacePolicy>,
    pub listed_ports_only: bool,
    /// Human-readable reasons for every exclusion, logged once per change.
    pub notes: Vec<Note>,
}

impl DesiredPolicy {
    /// `local` are the host's addresses (mapped), `ifaces` the flags per attached ifindex.
    pub fn build(
        cfg: &PolicyConfig,
        local: &BTreeSet<[u8; 16]>,
        nat: &NatFindings,
        ifaces: BTreeMap<u32, IfacePolicy>,
    ) -> Self {
        let mut notes = Vec::new();
        let capacity = names::LOCAL_ADDRS_CAPACITY as usize;
        let local_addrs: BTreeSet<[u8; 16]> = local.iter().copied().take(capacity).collect();
        if local.len() > capacity {
            notes.push(Note::Warn(format!(
                "{} of {} local addresses do not fit LOCAL_ADDRS ({capacity}): SYNs to them go to the kernel",
                local.len() - capacity,
                local.len()
            )));
        }

        let mut ports = vec![PORT_DEFAULT; PORT_SLOTS];
        for &p in &cfg.answer_ports {
            ports[usize::from(p)] = PORT_ANSWER;
        }
        for &p in &cfg.kernel_ports {
            ports[usize::from(p)] = PORT_KERNEL;
        }
        if !cfg.kernel_ports.is_empty() {
            notes.push(Note::Info(format!(
                "ports left to the kernel by policy.kernel_ports: {}",
                port_list(&cfg.kernel_ports)
            )));
        }
        for &p in &nat.kernel_ports {
            if cfg.answer_ports.contains(&p) {
                notes.push(Note::Warn(format!(
                    "port {p} is in policy.answer_ports but a DNAT/redirect rule publishes it: \
                     left to the kernel"
                )));
            }
            ports[usize::from(p)] = PORT_KERNEL;
        }
        if !nat.kernel_ports.is_empty() {
            notes.push(Note::Info(format!(
                "ports published by DNAT/redirect, left to the kernel: {}",
                port_list(&nat.kernel_ports)
            )));
        }

        let mut kernel_dests: BTreeSet<Prefix> = cfg.kernel_destinations.clone();
        kernel_dests.extend(nat.kernel_dests.iter().copied());
        if !nat.kernel_dests.is_empty() {
            notes.push(Note::Info(format!(
                "destinations DNAT'd on every port, left to the kernel: {}",
                list(&nat.kernel_dests)
            )));
        }
        let mut all_ports = nat.all_ports;
        if kernel_dests.len() > names::KERNEL_DESTS_CAPACITY as usize {
            notes.push(Note::Warn(format!(
                "{} kernel destinations exceed KERNEL_DESTS ({}): every port is left to the kernel",
                kernel_dests.len(),
                names::KERNEL_DESTS_CAPACITY
            )));
            kernel_dests.clear();
            all_ports = true;
        }
        if nat.all_ports {
            notes.push(Note::Warn(
                "a NAT rule matches no port or address we can read: every port is left to the kernel \
                 (cookies are effectively off; set policy.detect_nat = false and list ports to override)"
                    .to_owned(),
            ));
        }
        if all_ports {
            ports.fill(PORT_KERNEL);
        }
        for rule in &nat.unclassified {
            notes.push(Note::Warn(format!("NAT rule not classified: {rule}")));
        }
        for what in &nat.invisible {
            notes.push(Note::Warn(format!(
                "not seen by DNAT detection: {what}; list its ports in policy.kernel_ports"
            )));
        }
        for (ifindex, p) in &ifaces {
            if p.flags & detector_common::policy::IFACE_VLAN_STRIPPED != 0 {
                notes.push(Note::Info(format!(
                    "ifindex {ifindex}: VLAN tags stripped before XDP, its SYNs go to the kernel"
                )));
            }
        }
        Self {
            local_addrs,
            ports,
            kernel_dests,
            ifaces,
            listed_ports_only: !cfg.answer_ports.is_empty(),
            notes,
        }
    }

    /// Marks every port without a listener in `listeners` with `PORT_NO_LISTENER` (its
    /// SYNs then pass without a socket lookup). `PORT_KERNEL` slots stay as they are: those
    /// SYNs go to the kernel anyway. `None`: the listeners are unknown, no mark, and the
    /// program's socket lookup decides as it always did.
    #[must_use]
    pub fn with_listeners(mut self, listeners: Option<&BTreeSet<u16>>) -> Self {
        if let Some(listeners) = listeners {
            for (port, slot) in (0u16..=u16::MAX).zip(self.ports.iter_mut()) {
                if *slot != PORT_KERNEL && !listeners.contains(&port) {
                    *slot |= PORT_NO_LISTENER;
                }
            }
        }
        self
    }

    /// The `config::FLAG_*` bits this policy needs in the program's config.
    pub fn config_flags(&self) -> u32 {
        if self.listed_ports_only {
            FLAG_LISTED_PORTS_ONLY
        } else {
            0
        }
    }

    /// The `FLAG_NO_*` bits this policy allows: maps it leaves without anything the
    /// program's cookie policy could find. Only true of the maps once they hold this
    /// policy, so `feed::PolicyStep` sets a bit only when the policy it last applied
    /// allows it too.
    pub fn empty_map_flags(&self) -> u32 {
        let mut flags = 0;
        if self.kernel_dests.is_empty() {
            flags |= FLAG_NO_KERNEL_DESTS;
        }
        if self.ifaces.values().all(|p| p.flags == 0) {
            flags |= FLAG_NO_IFACE_POLICY;
        }
        flags
    }

    /// Logs the notes when they differ from the last logged ones (once per change).
    pub fn log_if_changed(&self, last: &mut Option<Vec<Note>>) {
        if last.as_ref() == Some(&self.notes) {
            return;
        }
        info!(
            local_addrs = self.local_addrs.len(),
            kernel_ports = self.ports.iter().filter(|&&v| v & PORT_ACTION_MASK == PORT_KERNEL).count(),
            kernel_dests = self.kernel_dests.len(),
            listed_ports_only = self.listed_ports_only,
            "cookie policy changed"
        );
        for note in &self.notes {
            match note {
                Note::Info(text) => info!("{text}"),
                Note::Warn(text) => warn!("{text}"),
            }
        }
        *last = Some(self.notes.clone());
    }
}

/// Why something was left to the kernel; `Warn` when the operator should act.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    Info(String),
    Warn(String),
}

#[cfg(test)]
impl Note {
    pub fn text(&self) -> &str {
        match self {
            Self::Info(t) | Self::Warn(t) => t,
        }
    }
}

/// Ports as runs ("25, 9000-9010"), at most 20 runs then a count.
pub fn port_list(ports: &BTreeSet<u16>) -> String {
    let mut runs: Vec<(u16, u16)> = Vec::new();
    for &p in ports {
        match runs.last_mut() {
            Some((_, hi)) if u32::from(*hi) + 1 == u32::from(p) => *hi = p,
            _ => runs.push((p, p)),
        }
    }
    let shown: Vec<String> = runs
        .iter()
        .take(20)
        .map(|&(lo, hi)| if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") })
        .collect();
    let more = runs.len().saturating_sub(20);
    if more == 0 {
        shown.join(", ")
    } else {
        format!("{} and {more} more ranges", shown.join(", "))
    }
}

fn list<T: std::fmt::Display>(items: &BTreeSet<T>) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Entries to add and to remove to turn `current` into `desired`.
pub fn set_diff<T: Ord + Copy>(current: &BTreeSet<T>, desired: &BTreeSet<T>) -> (Vec<T>, Vec<T>) {
    (desired.difference(current).copied().collect(), current.difference(desired).copied().collect())
}

/// Ports whose slot differs: (port, desired value).
pub fn port_diff(current: &[u32], desired: &[u32]) -> Vec<(u32, u32)> {
    (0u32..)
        .zip(current.iter().zip(desired))
        .filter(|(_, (c, d))| c != d)
        .map(|(i, (_, &d))| (i, d))
        .collect()
}

#[cfg(test)]
#[path = "desired_tests.rs"]
mod tests;
