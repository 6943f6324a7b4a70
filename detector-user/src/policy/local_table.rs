//! `LOCAL_TABLE`, the program's inlined copy of `LOCAL_ADDRS`: what each bucket should
//! hold (`detector_common::local_table::place`), compared with what it holds, and the
//! rewrites in the order the program can read through (`local_table::transition`).

use std::{
    collections::BTreeSet,
    os::fd::{AsFd, OwnedFd},
};

use aya::maps::{Array, Map, MapData};
use detector_common::{
    local_table::{self, LocalBucket, LOCAL_TABLE_BUCKETS},
    names,
};

use super::map_shape::{map_err, sized_array};
use crate::error::PolicyError;

/// The table, taken from the loaded object (or made standalone by tests).
pub struct LocalTable {
    pub(super) map: Array<MapData, LocalBucket>,
    /// A second descriptor for batch reads (aya has no batch lookup).
    fd: OwnedFd,
}

/// The writes one reconcile makes, as (bucket, value) in order.
#[derive(Debug, Default)]
pub struct TablePlan {
    /// Before `LOCAL_ADDRS` loses addresses: overflow marks, bits cleared.
    pub before: Vec<(u32, LocalBucket)>,
    /// After `LOCAL_ADDRS` has gained its addresses: new bytes, new bits, marks cleared.
    pub after: Vec<(u32, LocalBucket)>,
    /// Buckets that differed from what they should hold.
    pub buckets: usize,
}

impl LocalTable {
    /// Checks the map's type and size.
    pub fn new(map: Map) -> Result<Self, PolicyError> {
        let (map, fd) = sized_array(map, names::MAP_LOCAL_TABLE, LOCAL_TABLE_BUCKETS)?;
        Ok(Self { map, fd })
    }

    /// Every bucket in index order: one BPF_MAP_LOOKUP_BATCH call (kernel 5.6+; about
    /// 0.3 ms where 1,024 lookups take 1.5), or bucket by bucket where batches fail.
    pub(super) fn read(&self) -> Result<Vec<LocalBucket>, PolicyError> {
        let len = LOCAL_TABLE_BUCKETS as usize;
        let mut held = vec![LocalBucket::default(); len];
        let mut seen = 0;
        let batch = crate::bpf_batch::walk::<u32, LocalBucket>(
            self.fd.as_fd(),
            LOCAL_TABLE_BUCKETS,
            &mut |keys, values| {
                for (&k, v) in keys.iter().zip(values) {
                    if let Some(slot) = held.get_mut(k as usize) {
                        *slot = *v;
                        seen += 1;
                    }
                }
            },
        );
        match batch {
            Ok(()) if seen == len => Ok(held),
            outcome => {
                tracing::debug!(
                    ?outcome,
                    seen,
                    "batch read of LOCAL_TABLE incomplete; reading it bucket by bucket"
                );
                self.map.iter().collect::<Result<_, _>>().map_err(map_err(names::MAP_LOCAL_TABLE))
            }
        }
    }

    /// Reads every bucket back (one batch read of 72 KiB) and plans the writes
    /// that bring it to `addrs`. Level-triggered: a bucket changed behind the agent's back
    /// is found and rewritten like any other difference.
    pub fn plan(&self, addrs: &BTreeSet<[u8; 16]>) -> Result<TablePlan, PolicyError> {
        let desired = local_table::place(addrs);
        let mut plan = TablePlan::default();
        for (index, held) in self.read()?.into_iter().enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            let wanted = desired.get(&index).copied().unwrap_or_default();
            let (before, after) = local_table::transition(&held, &wanted);
            if before.is_empty() && after.is_empty() {
                continue;
            }
            plan.buckets += 1;
            plan.before.extend(before.into_iter().map(|b| (index, b)));
            plan.after.extend(after.into_iter().map(|b| (index, b)));
        }
        Ok(plan)
    }

    /// Writes `steps` in order.
    pub fn write(&mut self, steps: &[(u32, LocalBucket)]) -> Result<(), PolicyError> {
        for &(index, bucket) in steps {
            self.map.set(index, bucket, 0).map_err(map_err(names::MAP_LOCAL_TABLE))?;
        }
        Ok(())
    }
}
