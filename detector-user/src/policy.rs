//! The cookie policy on the agent side: what the four policy maps should hold
//! (`DesiredPolicy`, built from config, the host's addresses, NAT rules and the VLAN
//! check) and `PolicyMaps`, which brings the maps there by applying only the difference.
#![allow(dead_code, reason = "wired in by the control loop")]

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::{AsFd, OwnedFd},
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData},
    Ebpf,
};
use detector_common::{
    config::FLAG_LISTED_PORTS_ONLY,
    names,
    policy::{IfacePolicy, PORT_ANSWER, PORT_DEFAULT, PORT_KERNEL},
};
use tracing::{info, warn};

use crate::{error::PolicyError, nat::NatFindings, prefix::Prefix};

/// Slots in `PORT_POLICY`: one per TCP port.
pub const PORT_SLOTS: usize = 1 << 16;
/// `PORT_POLICY` is read back in full on the first reconcile and then every this many
/// (65536 lookups, one syscall each); in between it is compared with what was written.
pub const PORT_RESCAN_EVERY: u32 = 60;

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
    pub notes: Vec<String>,
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
            notes.push(format!(
                "{} of {} local addresses do not fit LOCAL_ADDRS ({capacity}): SYNs to them go to the kernel",
                local.len() - capacity,
                local.len()
            ));
        }

        let mut ports = vec![PORT_DEFAULT; PORT_SLOTS];
        for &p in &cfg.answer_ports {
            ports[usize::from(p)] = PORT_ANSWER;
        }
        for &p in &cfg.kernel_ports {
            ports[usize::from(p)] = PORT_KERNEL;
        }
        if !cfg.kernel_ports.is_empty() {
            notes.push(format!(
                "ports left to the kernel by policy.kernel_ports: {}",
                list(&cfg.kernel_ports)
            ));
        }
        for &p in &nat.kernel_ports {
            if cfg.answer_ports.contains(&p) {
                notes.push(format!(
                    "port {p} is in policy.answer_ports but a DNAT/redirect rule publishes it: left to the kernel"
                ));
            }
            ports[usize::from(p)] = PORT_KERNEL;
        }
        if !nat.kernel_ports.is_empty() {
            notes.push(format!(
                "ports published by DNAT/redirect, left to the kernel: {}",
                list(&nat.kernel_ports)
            ));
        }

        let mut kernel_dests: BTreeSet<Prefix> = cfg.kernel_destinations.clone();
        kernel_dests.extend(nat.kernel_dests.iter().copied());
        if !nat.kernel_dests.is_empty() {
            notes.push(format!(
                "destinations DNAT'd on every port, left to the kernel: {}",
                list(&nat.kernel_dests)
            ));
        }
        let mut all_ports = nat.all_ports;
        if kernel_dests.len() > names::KERNEL_DESTS_CAPACITY as usize {
            notes.push(format!(
                "{} kernel destinations exceed KERNEL_DESTS ({}): every port is left to the kernel",
                kernel_dests.len(),
                names::KERNEL_DESTS_CAPACITY
            ));
            kernel_dests.clear();
            all_ports = true;
        }
        if nat.all_ports {
            notes.push(
                "a NAT rule matches no port or address we can read: every port is left to the kernel \
                 (cookies are effectively off; set policy.detect_nat = false and list ports to override)"
                    .to_owned(),
            );
        }
        if all_ports {
            ports.fill(PORT_KERNEL);
        }
        for rule in &nat.unclassified {
            notes.push(format!("NAT rule not classified: {rule}"));
        }
        for (ifindex, p) in &ifaces {
            if p.flags & detector_common::policy::IFACE_VLAN_STRIPPED != 0 {
                notes.push(format!(
                    "ifindex {ifindex}: VLAN tags stripped before XDP, its SYNs go to the kernel"
                ));
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

    /// The `config::FLAG_*` bits this policy needs in the program's config.
    pub fn config_flags(&self) -> u32 {
        if self.listed_ports_only {
            FLAG_LISTED_PORTS_ONLY
        } else {
            0
        }
    }

    /// Logs the notes when they differ from the last logged ones (once per change).
    pub fn log_if_changed(&self, last: &mut Option<Vec<String>>) {
        if last.as_ref() == Some(&self.notes) {
            return;
        }
        info!(
            local_addrs = self.local_addrs.len(),
            kernel_ports = self.ports.iter().filter(|&&v| v == PORT_KERNEL).count(),
            kernel_dests = self.kernel_dests.len(),
            listed_ports_only = self.listed_ports_only,
            "cookie policy changed"
        );
        for note in &self.notes {
            warn!("{note}");
        }
        *last = Some(self.notes.clone());
    }
}

fn list<T: std::fmt::Display>(items: &BTreeSet<T>) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// What one `reconcile` changed; all zero when the maps already matched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyDiff {
    pub addrs_added: usize,
    pub addrs_removed: usize,
    /// Present with a value other than 1, rewritten.
    pub addrs_fixed: usize,
    pub ports_changed: usize,
    pub dests_added: usize,
    pub dests_removed: usize,
    pub ifaces_set: usize,
    pub ifaces_removed: usize,
    /// `PORT_POLICY` was read back in full this time.
    pub ports_rescanned: bool,
}

impl PolicyDiff {
    pub fn is_empty(&self) -> bool {
        *self == Self { ports_rescanned: self.ports_rescanned, ..Self::default() }
    }
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

/// The four policy maps, taken from the loaded object.
pub struct PolicyMaps {
    local: HashMap<MapData, [u8; 16], u32>,
    ports: Array<MapData, u32>,
    dests: LpmTrie<MapData, [u8; 16], u32>,
    ifaces: HashMap<MapData, u32, IfacePolicy>,
    /// A second descriptor of `PORT_POLICY` for batch reads (aya has no batch lookup).
    ports_fd: OwnedFd,
    /// What `PORT_POLICY` held after the last successful reconcile.
    ports_seen: Option<Vec<u32>>,
    reconciles: u32,
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> PolicyError {
    move |source| PolicyError::Map { map, source }
}

impl PolicyMaps {
    /// Takes the maps out of `ebpf`; fails (taking nothing) when any is missing.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, PolicyError> {
        let wanted =
            [names::MAP_LOCAL_ADDRS, names::MAP_PORT_POLICY, names::MAP_KERNEL_DESTS, names::MAP_IFACES];
        if let Some(missing) = wanted.into_iter().find(|n| ebpf.map(n).is_none()) {
            return Err(PolicyError::MissingMap(missing));
        }
        let mut take = |name| ebpf.take_map(name).ok_or(PolicyError::MissingMap(name));
        Self::from_maps(
            take(names::MAP_LOCAL_ADDRS)?,
            take(names::MAP_PORT_POLICY)?,
            take(names::MAP_KERNEL_DESTS)?,
            take(names::MAP_IFACES)?,
        )
    }

    /// From maps made elsewhere (tests create them standalone); checks types and sizes.
    pub fn from_maps(local: Map, ports: Map, dests: Map, ifaces: Map) -> Result<Self, PolicyError> {
        let Map::Array(ports_data) = &ports else {
            return Err(PolicyError::WrongType { map: names::MAP_PORT_POLICY, wanted: "an array" });
        };
        let ports_fd = ports_data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| PolicyError::Io { map: names::MAP_PORT_POLICY, source })?;
        let ports: Array<MapData, u32> = ports.try_into().map_err(map_err(names::MAP_PORT_POLICY))?;
        let needed = u32::try_from(PORT_SLOTS).unwrap_or(u32::MAX);
        if ports.len() != needed {
            return Err(PolicyError::WrongSize { map: names::MAP_PORT_POLICY, len: ports.len(), needed });
        }
        Ok(Self {
            local: local.try_into().map_err(map_err(names::MAP_LOCAL_ADDRS))?,
            ports,
            dests: dests.try_into().map_err(map_err(names::MAP_KERNEL_DESTS))?,
            ifaces: ifaces.try_into().map_err(map_err(names::MAP_IFACES))?,
            ports_fd,
            ports_seen: None,
            reconciles: 0,
        })
    }

    /// Every `PORT_POLICY` slot: one BPF_MAP_LOOKUP_BATCH call (kernel 5.6+), or one
    /// lookup per slot where batches are not supported.
    fn read_ports(&self) -> Result<Vec<u32>, PolicyError> {
        match crate::bpf_batch::lookup_array_u32(self.ports_fd.as_fd(), PORT_SLOTS) {
            Ok(values) => Ok(values),
            Err(e) => {
                tracing::debug!(error = %e, "batch lookup unavailable; reading PORT_POLICY slot by slot");
                self.ports.iter().collect::<Result<_, _>>().map_err(map_err(names::MAP_PORT_POLICY))
            }
        }
    }

    /// Brings the maps to `desired`: reads what each holds, inserts what is missing,
    /// deletes what is extra, rewrites wrong slots. Calling it again changes nothing.
    pub fn reconcile(&mut self, desired: &DesiredPolicy) -> Result<PolicyDiff, PolicyError> {
        let result = self.apply(desired);
        if result.is_err() {
            self.ports_seen = None; // unknown state: read it all next time
        }
        result
    }

    fn apply(&mut self, desired: &DesiredPolicy) -> Result<PolicyDiff, PolicyError> {
        let mut diff = PolicyDiff::default();

        let e = map_err(names::MAP_LOCAL_ADDRS);
        let current: BTreeMap<[u8; 16], u32> = self.local.iter().collect::<Result<_, _>>().map_err(&e)?;
        let (add, remove) = set_diff(&current.keys().copied().collect(), &desired.local_addrs);
        for key in &remove {
            self.local.remove(key).map_err(&e)?;
        }
        // Missing keys, and present ones whose value is not 1.
        for key in desired.local_addrs.iter().filter(|k| current.get(*k) != Some(&1)) {
            self.local.insert(key, 1, 0).map_err(&e)?;
        }
        diff.addrs_fixed =
            desired.local_addrs.iter().filter(|k| current.get(*k).is_some_and(|&v| v != 1)).count();
        (diff.addrs_added, diff.addrs_removed) = (add.len(), remove.len());

        let e = map_err(names::MAP_PORT_POLICY);
        let rescan = self.ports_seen.is_none() || self.reconciles.is_multiple_of(PORT_RESCAN_EVERY);
        if rescan {
            self.ports_seen = Some(self.read_ports()?);
        }
        diff.ports_rescanned = rescan;
        let seen = self.ports_seen.get_or_insert_with(|| vec![PORT_DEFAULT; PORT_SLOTS]);
        for (port, value) in port_diff(seen, &desired.ports) {
            self.ports.set(port, value, 0).map_err(&e)?;
            seen[port as usize] = value;
            diff.ports_changed += 1;
        }

        let e = map_err(names::MAP_KERNEL_DESTS);
        let current: BTreeSet<Prefix> = self
            .dests
            .keys()
            .map(|k| k.map(|k| Prefix::from_mapped(k.data(), u8::try_from(k.prefix_len()).unwrap_or(128))))
            .collect::<Result<_, _>>()
            .map_err(&e)?;
        let (add, remove) = set_diff(&current, &desired.kernel_dests);
        for p in &remove {
            self.dests.remove(&Key::new(u32::from(p.mapped_len()), p.addr())).map_err(&e)?;
        }
        for p in &add {
            self.dests.insert(&Key::new(u32::from(p.mapped_len()), p.addr()), 1, 0).map_err(&e)?;
        }
        (diff.dests_added, diff.dests_removed) = (add.len(), remove.len());

        let e = map_err(names::MAP_IFACES);
        let current: BTreeMap<u32, IfacePolicy> = self.ifaces.iter().collect::<Result<_, _>>().map_err(&e)?;
        for ifindex in current.keys().filter(|i| !desired.ifaces.contains_key(i)) {
            self.ifaces.remove(ifindex).map_err(&e)?;
            diff.ifaces_removed += 1;
        }
        for (ifindex, policy) in &desired.ifaces {
            if current.get(ifindex) != Some(policy) {
                self.ifaces.insert(ifindex, policy, 0).map_err(&e)?;
                diff.ifaces_set += 1;
            }
        }
        self.reconciles = self.reconciles.wrapping_add(1);
        Ok(diff)
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
