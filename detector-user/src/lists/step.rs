//! The reconcile step for the lists: every poll, the `ALLOW` and `DENY` tries are read
//! back and brought to `Lists::desired` (inserting what is missing, deleting what is
//! extra), expired blocks are forgotten, and the program is told which lists have entries
//! (`FLAG_ALLOW_LIST`, `FLAG_DENY_LIST`: it skips the lookups of an empty list).
//!
//! Order: allow entries are added before deny entries and removed after them, so a source
//! that is in both (allow wins) is never dropped mid-reconcile.
//!
//! Reading a full trie back is one syscall per entry (16k per list at most), so while the
//! desired lists are unchanged the tries are read back only every `RESCAN_EVERY` polls
//! (as `PORT_POLICY` is): someone else's change is still put right within a minute.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use aya::{
    maps::{lpm_trie::Key, LpmTrie, MapData},
    Ebpf,
};
use detector_common::{
    config::{FLAG_ALLOW_LIST, FLAG_DENY_LIST},
    names,
};
use tracing::{info, warn};

#[cfg(test)]
use super::List;
use super::{files, now_secs, Desired, Lists};
use crate::{
    config::Config, control::reconcile::Reconciler, lock::StateDir, metrics::Metrics,
    policy::desired::set_diff, prefix::Prefix,
};

/// Polls between full read-backs of unchanged lists.
pub const RESCAN_EVERY: u32 = 60;

/// The `what` label of this step.
pub const WHAT_LISTS: &str = "lists";

type Trie = LpmTrie<MapData, [u8; 16], u32>;

/// The tries, the shared lists (the control socket changes them) and where they persist.
pub struct ListStep {
    allow: Trie,
    deny: Trie,
    lists: Arc<Mutex<Lists>>,
    dir: StateDir,
    metrics: Arc<Metrics>,
    /// What the last successful reconcile applied, and the polls since its read-back.
    applied: Option<Desired>,
    since_rescan: u32,
}

/// Takes `ALLOW` and `DENY` out of the loaded object.
pub fn take_tries(ebpf: &mut Ebpf) -> anyhow::Result<(Trie, Trie)> {
    Ok((crate::loader::take_map(ebpf, names::MAP_ALLOW)?, crate::loader::take_map(ebpf, names::MAP_DENY)?))
}

impl ListStep {
    pub fn new(tries: (Trie, Trie), lists: Arc<Mutex<Lists>>, dir: StateDir, metrics: Arc<Metrics>) -> Self {
        Self { allow: tries.0, deny: tries.1, lists, dir, metrics, applied: None, since_rescan: 0 }
    }

    fn desired(&self) -> Desired {
        self.lists.lock().expect("lists lock").desired(now_secs())
    }

    fn publish(&self, d: &Desired) {
        for (list, set) in [("allow", &d.allow), ("deny", &d.deny)] {
            let v4 = set.iter().filter(|p| p.is_v4()).count();
            let gauge = |family, n: usize| {
                self.metrics
                    .list_entries
                    .with_label_values(&[list, family])
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            };
            gauge("ipv4", v4);
            gauge("ipv6", set.len() - v4);
        }
    }
}

fn read(trie: &Trie) -> Result<BTreeSet<Prefix>, String> {
    trie.keys()
        .map(|k| k.map(|k| Prefix::from_mapped(k.data(), u8::try_from(k.prefix_len()).unwrap_or(128))))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())
}

fn key(p: &Prefix) -> Key<[u8; 16]> {
    Key::new(u32::from(p.mapped_len()), p.addr())
}

/// Brings `trie` to `want`: returns (added, removed). `add_first`: insert before delete.
fn apply(name: &str, trie: &mut Trie, want: &BTreeSet<Prefix>, adds: bool) -> Result<usize, String> {
    let have = read(trie).map_err(|e| format!("reading {name}: {e}"))?;
    let (add, remove) = set_diff(&have, want);
    if adds {
        for p in &add {
            trie.insert(&key(p), 1, 0).map_err(|e| format!("adding {p} to {name}: {e}"))?;
        }
        Ok(add.len())
    } else {
        for p in &remove {
            trie.remove(&key(p)).map_err(|e| format!("removing {p} from {name}: {e}"))?;
        }
        Ok(remove.len())
    }
}

impl Reconciler for ListStep {
    fn what(&self) -> &'static str {
        WHAT_LISTS
    }

    fn reconcile(&mut self) -> Result<(), String> {
        {
            // The file is written under the lock, as the control socket writes it: writes
            // never interleave, and the newest lists are the ones on disk.
            let mut lists = self.lists.lock().expect("lists lock");
            if lists.expire(now_secs()) {
                info!(event = "list_change", list = "deny", action = "block_expired", "a block expired");
                if let Err(e) = files::write_state(&self.dir, &lists.runtime) {
                    // The tries are still right (expired blocks are not desired); the file
                    // is rewritten at the next change or expiry; expired blocks are ignored.
                    warn!(error = %e, "could not rewrite the lists state file after a block expired");
                }
            }
        }
        let d = self.desired();
        self.since_rescan += 1;
        if self.applied.as_ref() == Some(&d) && self.since_rescan < RESCAN_EVERY {
            return Ok(());
        }
        self.applied = None; // unknown until this pass succeeds
        self.since_rescan = 0;
        let added_allow = apply(names::MAP_ALLOW, &mut self.allow, &d.allow, true)?;
        let added_deny = apply(names::MAP_DENY, &mut self.deny, &d.deny, true)?;
        let removed_deny = apply(names::MAP_DENY, &mut self.deny, &d.deny, false)?;
        let removed_allow = apply(names::MAP_ALLOW, &mut self.allow, &d.allow, false)?;
        if added_allow + added_deny + removed_deny + removed_allow > 0 {
            info!(
                event = "lists_applied",
                added_allow,
                removed_allow,
                added_deny,
                removed_deny,
                "allow/deny tries brought to the desired lists"
            );
        }
        self.publish(&d);
        self.applied = Some(d);
        Ok(())
    }

    fn program_flags(&self) -> u32 {
        let d = self.desired();
        let mut flags = 0;
        if !d.allow.is_empty() {
            flags |= FLAG_ALLOW_LIST;
        }
        if !d.deny.is_empty() {
            flags |= FLAG_DENY_LIST;
        }
        flags
    }

    fn reload(&mut self, cfg: &Config) -> Result<(), String> {
        let l = &cfg.file.lists;
        let files = files::load(&l.allow_files, &l.deny_files).map_err(|e| e.to_string())?;
        self.lists.lock().expect("lists lock").files = files;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use aya::maps::Map;

    use super::*;

    /// A standalone LPM trie shaped like `ALLOW`/`DENY` (needs root).
    fn trie(name: &str) -> Trie {
        crate::test_netns::assert_root();
        let obj = aya_obj::Map::new_from_params(11, 20, 4, names::LIST_CAPACITY, 1);
        let map = Map::from_map_data(MapData::create(obj, name, None).expect("creating a BPF map")).unwrap();
        Trie::try_from(map).unwrap()
    }

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn step() -> (tempfile::TempDir, ListStep, Arc<Mutex<Lists>>) {
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let lists = Arc::new(Mutex::new(Lists::default()));
        let dir = StateDir::open(t.path(), false).unwrap();
        let s =
            ListStep::new((trie("sd_allow"), trie("sd_deny")), lists.clone(), dir, Arc::new(Metrics::new()));
        (t, s, lists)
    }

    #[test]
    fn the_tries_follow_the_lists_and_flags_follow_their_emptiness() {
        let (_t, mut s, lists) = step();
        assert_eq!(s.program_flags(), 0);
        {
            let mut l = lists.lock().unwrap();
            l.files.allow.insert(p("198.18.1.0/24"));
            l.change(List::Deny, p("2001:2::/48"), true);
            l.runtime.blocks.insert(p("198.18.2.9"), 0);
        }
        s.reconcile().unwrap();
        assert_eq!(read(&s.allow).unwrap(), [p("198.18.1.0/24")].into());
        assert_eq!(read(&s.deny).unwrap(), [p("2001:2::/48"), p("198.18.2.9")].into());
        assert_eq!(s.program_flags(), FLAG_ALLOW_LIST | FLAG_DENY_LIST);
        let gauge = |list, family| s.metrics.list_entries.with_label_values(&[list, family]).get();
        assert_eq!((gauge("allow", "ipv4"), gauge("deny", "ipv4"), gauge("deny", "ipv6")), (1, 1, 1));
        // Someone else's entry in the map is removed at the next read-back (at once when
        // the lists change, else within RESCAN_EVERY polls); a removed runtime entry too.
        s.allow.insert(&key(&p("198.18.7.0/24")), 1, 0).unwrap();
        s.reconcile().unwrap();
        assert_eq!(read(&s.allow).unwrap().len(), 2, "unchanged lists: no read-back yet");
        for _ in 0..RESCAN_EVERY {
            s.reconcile().unwrap();
        }
        assert_eq!(read(&s.allow).unwrap(), [p("198.18.1.0/24")].into(), "the periodic read-back");
        s.allow.insert(&key(&p("198.18.7.0/24")), 1, 0).unwrap();
        lists.lock().unwrap().change(List::Deny, p("2001:2::/48"), false);
        s.reconcile().unwrap();
        assert_eq!(read(&s.allow).unwrap(), [p("198.18.1.0/24")].into());
        assert_eq!(read(&s.deny).unwrap(), [p("198.18.2.9")].into());
        assert_eq!(s.program_flags(), FLAG_ALLOW_LIST | FLAG_DENY_LIST);
    }

    #[test]
    fn an_expired_block_leaves_the_trie_and_the_state_file() {
        let (t, mut s, lists) = step();
        lists.lock().unwrap().runtime.blocks.insert(p("198.18.2.9"), now_secs() + 1);
        s.reconcile().unwrap();
        assert_eq!(read(&s.deny).unwrap(), [p("198.18.2.9")].into());
        std::thread::sleep(std::time::Duration::from_millis(2_100));
        s.reconcile().unwrap();
        assert!(read(&s.deny).unwrap().is_empty());
        assert_eq!(s.program_flags(), 0);
        let dir = StateDir::open(t.path(), false).unwrap();
        assert!(files::read_state(&dir).unwrap().blocks.is_empty(), "the state file forgot it");
    }
}
