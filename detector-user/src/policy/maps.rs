//! The cookie policy maps (`LOCAL_ADDRS` and its inlined copy `LOCAL_TABLE`,
//! `PORT_POLICY`, `KERNEL_DESTS`, `IFACES`) taken from the loaded object, and `reconcile`, which brings them to a
//! `policy::DesiredPolicy` by applying only the difference (level-triggered).

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::{AsFd, OwnedFd},
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData},
    Ebpf,
};
use detector_common::{
    names,
    policy::{IfacePolicy, PORT_ANSWER, PORT_DEFAULT, PORT_KERNEL},
};

use crate::{
    error::PolicyError,
    policy::{
        desired::{port_diff, set_diff, DesiredPolicy, PORT_SLOTS},
        local_table::LocalTable,
        map_shape::{map_err, sized_array},
    },
    prefix::Prefix,
};

/// `PORT_POLICY` is read back in full (one BPF_MAP_LOOKUP_BATCH) on the first reconcile
/// and then every this many; in between it is compared with what was last written.
pub const PORT_RESCAN_EVERY: u32 = 60;

/// What one `reconcile` changed; all zero when the maps already matched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyDiff {
    pub addrs_added: usize,
    pub addrs_removed: usize,
    /// Present with a value other than 1, rewritten.
    pub addrs_fixed: usize,
    /// `LOCAL_TABLE` buckets rewritten (added, removed or repaired addresses).
    pub buckets_rewritten: usize,
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

/// The policy maps, taken from the loaded object.
pub struct PolicyMaps {
    local: HashMap<MapData, [u8; 16], u32>,
    table: LocalTable,
    ports: Array<MapData, u32>,
    dests: LpmTrie<MapData, [u8; 16], u32>,
    ifaces: HashMap<MapData, u32, IfacePolicy>,
    /// A second descriptor of `PORT_POLICY` for batch reads (aya has no batch lookup).
    ports_fd: OwnedFd,
    /// What `PORT_POLICY` held after the last successful reconcile.
    ports_seen: Option<Vec<u32>>,
    reconciles: u32,
}

impl PolicyMaps {
    /// Takes the maps out of `ebpf`; fails (taking nothing) when any is missing.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, PolicyError> {
        let wanted = [
            names::MAP_LOCAL_ADDRS,
            names::MAP_LOCAL_TABLE,
            names::MAP_PORT_POLICY,
            names::MAP_KERNEL_DESTS,
            names::MAP_IFACES,
        ];
        if let Some(missing) = wanted.into_iter().find(|n| ebpf.map(n).is_none()) {
            return Err(PolicyError::MissingMap(missing));
        }
        let mut take = |name| ebpf.take_map(name).ok_or(PolicyError::MissingMap(name));
        Self::from_maps(
            take(names::MAP_LOCAL_ADDRS)?,
            take(names::MAP_LOCAL_TABLE)?,
            take(names::MAP_PORT_POLICY)?,
            take(names::MAP_KERNEL_DESTS)?,
            take(names::MAP_IFACES)?,
        )
    }

    /// From maps made elsewhere (tests create them standalone); checks types and sizes.
    pub fn from_maps(
        local: Map,
        table: Map,
        ports: Map,
        dests: Map,
        ifaces: Map,
    ) -> Result<Self, PolicyError> {
        let (ports, ports_fd) =
            sized_array(ports, names::MAP_PORT_POLICY, u32::try_from(PORT_SLOTS).unwrap_or(u32::MAX))?;
        Ok(Self {
            local: local.try_into().map_err(map_err(names::MAP_LOCAL_ADDRS))?,
            table: LocalTable::new(table)?,
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

    /// Two passes: first every change that leaves more SYNs to the kernel (addresses
    /// removed, slots to PORT_KERNEL or off PORT_ANSWER, destinations and flags added), then the
    /// ones that let XDP answer more. The program reads the maps meanwhile and never sees
    /// a state more permissive than both the old and the new policy.
    ///
    /// `LOCAL_TABLE` brackets `LOCAL_ADDRS`: its buckets are marked and their leaving
    /// ways cleared before the map loses addresses, and refilled only after the map has
    /// gained them, so a bucket that sends the program to the map finds it complete
    /// (`detector_common::local_table::transition` says why each step is safe).
    fn apply(&mut self, desired: &DesiredPolicy) -> Result<PolicyDiff, PolicyError> {
        let mut diff = PolicyDiff::default();

        let e_local = map_err(names::MAP_LOCAL_ADDRS);
        let local: BTreeMap<[u8; 16], u32> = self.local.iter().collect::<Result<_, _>>().map_err(&e_local)?;
        let (local_add, local_remove) = set_diff(&local.keys().copied().collect(), &desired.local_addrs);
        let table = self.table.plan(&desired.local_addrs)?;
        let rescan = self.ports_seen.is_none() || self.reconciles.is_multiple_of(PORT_RESCAN_EVERY);
        if rescan {
            self.ports_seen = Some(self.read_ports()?);
        }
        diff.ports_rescanned = rescan;
        let seen = self.ports_seen.get_or_insert_with(|| vec![PORT_DEFAULT; PORT_SLOTS]);
        // Restricting: to PORT_KERNEL, or from PORT_ANSWER (matters with listed ports only).
        let (to_kernel, relaxed): (Vec<_>, Vec<_>) = port_diff(seen, &desired.ports)
            .into_iter()
            .partition(|&(port, value)| value == PORT_KERNEL || seen[port as usize] == PORT_ANSWER);
        let e_dests = map_err(names::MAP_KERNEL_DESTS);
        let dests: BTreeSet<Prefix> = self
            .dests
            .keys()
            .map(|k| k.map(|k| Prefix::from_mapped(k.data(), u8::try_from(k.prefix_len()).unwrap_or(128))))
            .collect::<Result<_, _>>()
            .map_err(&e_dests)?;
        let (dests_add, dests_remove) = set_diff(&dests, &desired.kernel_dests);
        let e_ifaces = map_err(names::MAP_IFACES);
        let ifaces: BTreeMap<u32, IfacePolicy> =
            self.ifaces.iter().collect::<Result<_, _>>().map_err(&e_ifaces)?;

        // Pass 1: more to the kernel.
        self.table.write(&table.before)?;
        for key in &local_remove {
            self.local.remove(key).map_err(&e_local)?;
        }
        self.set_ports(&to_kernel)?;
        for p in &dests_add {
            self.dests.insert(&Key::new(u32::from(p.mapped_len()), p.addr()), 1, 0).map_err(&e_dests)?;
        }
        // Interfaces gaining flags (every IFACE_* flag leaves SYNs to the kernel).
        let (gaining, losing): (Vec<_>, Vec<_>) = desired
            .ifaces
            .iter()
            .filter(|(i, p)| ifaces.get(i) != Some(p))
            .partition(|(i, p)| p.flags & !ifaces.get(i).map_or(0, |old| old.flags) != 0);
        for (ifindex, policy) in &gaining {
            self.ifaces.insert(*ifindex, *policy, 0).map_err(&e_ifaces)?;
        }

        // Pass 2: more answered from XDP.
        // Missing keys, and present ones whose value is not 1.
        for key in desired.local_addrs.iter().filter(|k| local.get(*k) != Some(&1)) {
            self.local.insert(key, 1, 0).map_err(&e_local)?;
        }
        self.table.write(&table.after)?;
        self.set_ports(&relaxed)?;
        for p in &dests_remove {
            self.dests.remove(&Key::new(u32::from(p.mapped_len()), p.addr())).map_err(&e_dests)?;
        }
        for (ifindex, policy) in &losing {
            self.ifaces.insert(*ifindex, *policy, 0).map_err(&e_ifaces)?;
        }
        let gone: Vec<u32> = ifaces.keys().filter(|i| !desired.ifaces.contains_key(i)).copied().collect();
        for ifindex in &gone {
            self.ifaces.remove(ifindex).map_err(&e_ifaces)?;
        }

        diff.addrs_fixed =
            desired.local_addrs.iter().filter(|k| local.get(*k).is_some_and(|&v| v != 1)).count();
        (diff.addrs_added, diff.addrs_removed) = (local_add.len(), local_remove.len());
        diff.buckets_rewritten = table.buckets;
        diff.ports_changed = to_kernel.len() + relaxed.len();
        (diff.dests_added, diff.dests_removed) = (dests_add.len(), dests_remove.len());
        (diff.ifaces_set, diff.ifaces_removed) = (gaining.len() + losing.len(), gone.len());
        self.reconciles = self.reconciles.wrapping_add(1);
        Ok(diff)
    }

    /// Writes slots and keeps `ports_seen` in step.
    fn set_ports(&mut self, changes: &[(u32, u32)]) -> Result<(), PolicyError> {
        for &(port, value) in changes {
            self.ports.set(port, value, 0).map_err(map_err(names::MAP_PORT_POLICY))?;
            if let Some(seen) = self.ports_seen.as_mut() {
                seen[port as usize] = value;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "maps_tests.rs"]
mod tests;
