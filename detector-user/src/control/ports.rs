//! The `PORT_LIMITS` map as a reconcile step: each poll, what the map holds is read back
//! and brought to what the configuration's `protected_ports` and `[ports]` ask for.

use std::collections::BTreeMap;

use aya::maps::{HashMap, MapData};
use detector_common::{names, ports::PortLimits};

use super::reconcile::Reconciler;
use crate::{
    config::{self, Config},
    metrics::WHAT_PORT_LIMITS,
};

pub struct PortStep {
    map: HashMap<MapData, u32, PortLimits>,
    desired: BTreeMap<u16, PortLimits>,
    flags: u32,
}

impl PortStep {
    /// Takes the map from the loaded object.
    pub fn take(ebpf: &mut aya::Ebpf, cfg: &Config) -> anyhow::Result<Self> {
        let map = crate::loader::take_map(ebpf, names::MAP_PORT_LIMITS)?;
        let mut step = Self { map, desired: BTreeMap::new(), flags: 0 };
        step.reload(cfg).map_err(anyhow::Error::msg)?;
        Ok(step)
    }

    fn applied(&self) -> Result<BTreeMap<u16, PortLimits>, String> {
        let mut out = BTreeMap::new();
        for entry in &self.map {
            let (port, limits) = entry.map_err(|e| e.to_string())?;
            // A key above 65535 was never ours to write: keep it out so it gets removed.
            out.insert(u16::try_from(port).unwrap_or(0), limits);
        }
        Ok(out)
    }
}

impl Reconciler for PortStep {
    fn what(&self) -> &'static str {
        WHAT_PORT_LIMITS
    }

    fn reconcile(&mut self) -> Result<(), String> {
        let applied = self.applied()?;
        if applied == self.desired {
            return Ok(());
        }
        for port in applied.keys().filter(|p| !self.desired.contains_key(p)) {
            self.map.remove(&u32::from(*port)).map_err(|e| format!("removing port {port}: {e}"))?;
        }
        for (port, limits) in &self.desired {
            if applied.get(port) != Some(limits) {
                self.map.insert(u32::from(*port), *limits, 0).map_err(|e| format!("port {port}: {e}"))?;
            }
        }
        if self.applied()? == self.desired {
            Ok(())
        } else {
            Err("written, but the map read back differs".into())
        }
    }

    fn program_flags(&self) -> u32 {
        self.flags
    }

    fn reload(&mut self, cfg: &Config) -> Result<(), String> {
        self.desired = config::ports::table(&cfg.file);
        self.flags = config::ports::flags(&cfg.file);
        Ok(())
    }
}
