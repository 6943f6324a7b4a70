//! Tests of `policy::maps`: reconciling real BPF maps created standalone with the policy
//! maps' shapes (needs root), and the object without them.

use detector_common::{
    local_table::{self, LocalBucket, Probe, LOCAL_TABLE_BUCKETS, WAYS},
    policy::{IFACE_VLAN_STRIPPED, PORT_ANSWER, PORT_KERNEL},
};

use super::*;
use crate::policy::{
    nat::NatFindings,
    test_support::{cfg, key, keys, prefixes},
};

/// BPF_F_NO_PREALLOC: LPM tries must be created with it.
const BPF_F_NO_PREALLOC: u32 = 1;
/// From linux/bpf.h `enum bpf_map_type`.
const HASH: u32 = 1;
const ARRAY: u32 = 2;
const LPM_TRIE: u32 = 11;

/// A standalone map shaped like the object's (aya's typed `create` hides the fd).
fn create(name: &str, map_type: u32, key: usize, value: usize, entries: u32, flags: u32) -> Map {
    let (key, value) = (u32::try_from(key).unwrap(), u32::try_from(value).unwrap());
    let obj = aya_obj::Map::new_from_params(map_type, key, value, entries, flags);
    Map::from_map_data(MapData::create(obj, name, None).expect("creating a BPF map (needs root)")).unwrap()
}

fn real_maps() -> PolicyMaps {
    crate::test_netns::assert_root();
    PolicyMaps::from_maps(
        create("sd_local", HASH, 16, 4, names::LOCAL_ADDRS_CAPACITY, 0),
        create("sd_table", ARRAY, 4, size_of::<LocalBucket>(), LOCAL_TABLE_BUCKETS, 0),
        create("sd_ports", ARRAY, 4, 4, u32::try_from(PORT_SLOTS).unwrap(), 0),
        create("sd_dests", LPM_TRIE, 20, 4, names::KERNEL_DESTS_CAPACITY, BPF_F_NO_PREALLOC),
        create("sd_ifaces", HASH, 4, 4, 64, 0),
    )
    .unwrap()
}

#[test]
fn a_port_map_of_the_wrong_shape_is_refused() {
    crate::test_netns::assert_root();
    let e = PolicyMaps::from_maps(
        create("sd_local", HASH, 16, 4, 16, 0),
        create("sd_table", ARRAY, 4, size_of::<LocalBucket>(), LOCAL_TABLE_BUCKETS, 0),
        create("sd_ports", ARRAY, 4, 4, 1024, 0),
        create("sd_dests", LPM_TRIE, 20, 4, 16, BPF_F_NO_PREALLOC),
        create("sd_ifaces", HASH, 4, 4, 16, 0),
    )
    .err()
    .expect("a 1024-slot PORT_POLICY");
    assert!(matches!(e, PolicyError::WrongSize { len: 1024, .. }), "{e}");
}

#[test]
fn the_batch_read_matches_slot_by_slot_reads() {
    let mut maps = real_maps();
    for (port, value) in [(0, PORT_KERNEL), (80, PORT_ANSWER), (65535, PORT_KERNEL)] {
        maps.ports.set(port, value, 0).unwrap();
    }
    let started = std::time::Instant::now();
    let batch = crate::bpf_batch::lookup_array_u32(maps.ports_fd.as_fd(), PORT_SLOTS).unwrap();
    let batch_time = started.elapsed();
    let started = std::time::Instant::now();
    let one_by_one: Vec<u32> = maps.ports.iter().collect::<Result<_, _>>().unwrap();
    eprintln!("PORT_POLICY read: batch {batch_time:?}, slot by slot {:?}", started.elapsed());
    assert_eq!(batch, one_by_one);
    assert_eq!(
        (batch[0], batch[80], batch[65535], batch[81]),
        (PORT_KERNEL, PORT_ANSWER, PORT_KERNEL, PORT_DEFAULT)
    );
}

#[test]
fn reconcile_applies_the_difference_once() {
    let mut maps = real_maps();
    let nat = NatFindings {
        kernel_ports: [8080].into(),
        kernel_dests: prefixes(&["198.18.5.0/24"]),
        ..NatFindings::default()
    };
    let ifaces = BTreeMap::from([(3, IfacePolicy { flags: IFACE_VLAN_STRIPPED })]);
    let first = DesiredPolicy::build(
        &cfg(&[], &[25], &["2001:2::/48"]),
        &keys(&["198.18.0.1", "2001:2::1"]),
        &nat,
        ifaces,
    );

    let started = std::time::Instant::now();
    let diff = maps.reconcile(&first).unwrap();
    eprintln!("first reconcile (full PORT_POLICY read): {:?}", started.elapsed());
    assert_eq!((diff.addrs_added, diff.ports_changed, diff.dests_added, diff.ifaces_set), (2, 2, 2, 1));
    assert!(diff.ports_rescanned);
    let again = maps.reconcile(&first).unwrap();
    assert!(again.is_empty(), "level-triggered: nothing to do the second time: {again:?}");
    assert!(!again.ports_rescanned, "the second pass compares with what was written");

    // The kernel side sees the values.
    assert_eq!(maps.local.get(&key("198.18.0.1"), 0).unwrap(), 1);
    assert_eq!(maps.ports.get(&8080, 0).unwrap(), PORT_KERNEL);
    let hit = Key::new(128, key("198.18.5.77"));
    assert_eq!(maps.dests.get(&hit, 0).unwrap(), 1, "the LPM trie covers addresses inside the prefix");
    assert!(maps.dests.get(&Key::new(128, key("198.18.6.1")), 0).is_err());

    // Changes: an address goes, one comes, a port moves, a prefix goes, an iface goes.
    let second = DesiredPolicy::build(
        &cfg(&[], &[26], &[]),
        &keys(&["198.18.0.2", "2001:2::1"]),
        &nat,
        BTreeMap::new(),
    );
    let diff = maps.reconcile(&second).unwrap();
    assert_eq!(
        (diff.addrs_added, diff.addrs_removed, diff.ports_changed, diff.dests_removed, diff.ifaces_removed),
        (1, 1, 2, 1, 1)
    );
    assert!(maps.reconcile(&second).unwrap().is_empty());

    // Someone else wrote into the maps: a full pass finds and repairs it.
    maps.local.insert(key("198.18.9.9"), 1, 0).unwrap();
    maps.local.insert(key("198.18.0.2"), 0, 0).unwrap();
    maps.ports.set(9999, PORT_ANSWER, 0).unwrap();
    maps.ports_seen = None;
    let diff = maps.reconcile(&second).unwrap();
    assert_eq!((diff.addrs_removed, diff.addrs_fixed, diff.ports_changed), (1, 1, 1), "{diff:?}");
    assert_eq!(maps.local.get(&key("198.18.0.2"), 0).unwrap(), 1);
    assert!(maps.reconcile(&second).unwrap().is_empty());
}

#[test]
fn lookups_are_skipped_only_while_the_maps_are_known_to_hold_nothing() {
    use std::sync::{Arc, Mutex};

    use detector_common::config::{FLAG_NO_IFACE_POLICY, FLAG_NO_KERNEL_DESTS};

    use crate::{control::reconcile::Reconciler, policy::feed::PolicyStep};

    let skip = FLAG_NO_KERNEL_DESTS | FLAG_NO_IFACE_POLICY;
    let build = |dests: &[&str], ifaces: BTreeMap<u32, IfacePolicy>| {
        DesiredPolicy::build(&cfg(&[], &[], dests), &keys(&["198.18.0.1"]), &NatFindings::default(), ifaces)
    };
    let plain = build(&[], BTreeMap::from([(3, IfacePolicy::default())]));
    assert_eq!(plain.empty_map_flags(), skip);
    let shared = Arc::new(Mutex::new(plain.clone()));
    let mut step = PolicyStep::new(real_maps(), shared.clone());
    assert_eq!(step.program_flags() & skip, 0, "nothing is known of the maps before a reconcile");
    step.reconcile().unwrap();
    assert_eq!(step.program_flags() & skip, skip);

    // A destination and a stripping NIC appear: looked up from the very next config write,
    // before the maps are filled, and afterwards.
    let policy = build(&["198.18.5.0/24"], BTreeMap::from([(3, IfacePolicy { flags: IFACE_VLAN_STRIPPED })]));
    assert_eq!(policy.empty_map_flags(), 0);
    *shared.lock().unwrap() = policy;
    assert_eq!(step.program_flags() & skip, 0);
    step.reconcile().unwrap();
    assert_eq!(step.program_flags() & skip, 0);

    // They go again: still looked up until the maps no longer hold them.
    *shared.lock().unwrap() = plain;
    assert_eq!(step.program_flags() & skip, 0, "the maps still hold the old policy");
    step.reconcile().unwrap();
    assert_eq!(step.program_flags() & skip, skip);
}

#[test]
fn the_object_without_policy_maps_is_refused_by_name() {
    crate::test_netns::assert_root();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../detector-ebpf/target/bpfel-unknown-none/debug/detector-ebpf"
    );
    let bytes = std::fs::read(path).expect("the XDP object (cargo xtask build-ebpf)");
    let mut ebpf = aya::EbpfLoader::new().load(&bytes).expect("loading the object");
    match PolicyMaps::take(&mut ebpf) {
        Err(e @ PolicyError::MissingMap(_)) => assert!(e.to_string().contains("rebuild"), "{e}"),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => eprintln!("this object already has the policy maps; nothing to check"),
    }
}

/// Every bucket of the table, as the program would read it.
fn table(maps: &PolicyMaps) -> Vec<LocalBucket> {
    maps.table.map.iter().collect::<Result<_, _>>().unwrap()
}

/// What the program concludes for `addr` from the maps as they are.
fn is_local(maps: &PolicyMaps, addr: [u8; 16]) -> bool {
    let w = local_table::words(&addr);
    let bucket = maps.table.map.get(&local_table::bucket_of(w), 0).unwrap();
    match local_table::probe(&bucket, w) {
        Probe::Local => true,
        Probe::NotLocal => false,
        Probe::AskMap => maps.local.get(&addr, 0).is_ok(),
    }
}

fn with_addrs(addrs: &BTreeSet<[u8; 16]>) -> DesiredPolicy {
    DesiredPolicy::build(&cfg(&[], &[], &[]), addrs, &NatFindings::default(), BTreeMap::new())
}

#[test]
fn the_local_table_follows_the_addresses() {
    let mut maps = real_maps();
    let first = keys(&["198.18.0.1", "198.18.0.2", "2001:2::1"]);
    let diff = maps.reconcile(&with_addrs(&first)).unwrap();
    assert_eq!((diff.addrs_added, diff.buckets_rewritten), (3, 3), "{diff:?}");
    let placed = local_table::place(&first);
    let held = table(&maps);
    for (i, bucket) in held.iter().enumerate() {
        let i = u32::try_from(i).unwrap();
        assert_eq!(*bucket, placed.get(&i).copied().unwrap_or_default(), "bucket {i}");
    }
    assert!(first.iter().all(|a| is_local(&maps, *a)));
    let started = std::time::Instant::now();
    assert!(maps.reconcile(&with_addrs(&first)).unwrap().is_empty(), "nothing to do again");
    eprintln!("a reconcile with nothing to do (LOCAL_TABLE read back): {:?}", started.elapsed());

    // One goes, one comes: its old bucket is empty again, no mark left behind.
    let second = keys(&["198.18.0.1", "2001:2::1", "2001:2::2"]);
    let diff = maps.reconcile(&with_addrs(&second)).unwrap();
    assert_eq!((diff.addrs_added, diff.addrs_removed, diff.buckets_rewritten), (1, 1, 2), "{diff:?}");
    assert!(!is_local(&maps, key("198.18.0.2")));
    assert!(second.iter().all(|a| is_local(&maps, *a)));
    let used = table(&maps).iter().filter(|b| **b != LocalBucket::default()).count();
    assert_eq!(used, 3, "one bucket per address, the removed one zeroed");
    assert!(table(&maps).iter().all(|b| b.overflow == 0), "no overflow mark left");
}

#[test]
fn a_full_bucket_overflows_to_local_addrs_and_recovers() {
    let mut maps = real_maps();
    let target = local_table::bucket_of(local_table::words(&key("198.18.1.0")));
    let colliding: Vec<[u8; 16]> = (0..=u16::MAX)
        .map(|n| key(&std::net::Ipv4Addr::from(0xc612_0000 | u32::from(n)).to_string()))
        .filter(|a| local_table::bucket_of(local_table::words(a)) == target)
        .take(WAYS + 1)
        .collect();
    let all: BTreeSet<_> = colliding.iter().copied().collect();
    maps.reconcile(&with_addrs(&all)).unwrap();
    let bucket = maps.table.map.get(&target, 0).unwrap();
    assert_eq!((bucket.valid, bucket.overflow), (0b1111, 1), "{bucket:?}");
    let last = colliding[WAYS];
    assert_eq!(local_table::probe(&bucket, local_table::words(&last)), Probe::AskMap);
    assert!(all.iter().all(|a| is_local(&maps, *a)), "the fifth is found in LOCAL_ADDRS");

    // Down to WAYS: the mark goes, every address sits in a way.
    let fewer: BTreeSet<_> = colliding[1..].iter().copied().collect();
    let diff = maps.reconcile(&with_addrs(&fewer)).unwrap();
    assert_eq!((diff.addrs_removed, diff.buckets_rewritten), (1, 1), "{diff:?}");
    let bucket = maps.table.map.get(&target, 0).unwrap();
    assert_eq!((bucket.valid, bucket.overflow), (0b1111, 0), "{bucket:?}");
    assert!(fewer.iter().all(|a| is_local(&maps, *a)));
    assert!(!is_local(&maps, colliding[0]));
}

#[test]
fn a_table_changed_behind_the_agents_back_is_repaired() {
    let mut maps = real_maps();
    let addrs = keys(&["198.18.0.1", "2001:2::1"]);
    maps.reconcile(&with_addrs(&addrs)).unwrap();
    // A stranger made local, a real address dropped, an overflow mark set.
    let stranger = key("198.18.9.9");
    let sw = local_table::words(&stranger);
    let forged = LocalBucket { valid: 1, addrs: [sw; WAYS], ..LocalBucket::default() };
    maps.table.map.set(local_table::bucket_of(sw), forged, 0).unwrap();
    let own = local_table::bucket_of(local_table::words(&key("198.18.0.1")));
    maps.table.map.set(own, LocalBucket::default(), 0).unwrap();
    maps.table.map.set(7, LocalBucket { overflow: 1, ..LocalBucket::default() }, 0).unwrap();
    assert!(is_local(&maps, stranger));

    let diff = maps.reconcile(&with_addrs(&addrs)).unwrap();
    assert_eq!((diff.buckets_rewritten, diff.addrs_added), (3, 0), "{diff:?}");
    assert!(!is_local(&maps, stranger));
    assert!(addrs.iter().all(|a| is_local(&maps, *a)));
    assert_eq!(maps.table.map.get(&7, 0).unwrap(), LocalBucket::default());
    assert!(maps.reconcile(&with_addrs(&addrs)).unwrap().is_empty());
}

#[test]
fn the_batch_read_of_the_table_matches_bucket_by_bucket_reads() {
    let mut maps = real_maps();
    maps.reconcile(&with_addrs(&keys(&["198.18.0.1", "198.18.0.2", "2001:2::1"]))).unwrap();
    maps.table
        .map
        .set(LOCAL_TABLE_BUCKETS - 1, LocalBucket { overflow: 1, ..LocalBucket::default() }, 0)
        .unwrap();
    let started = std::time::Instant::now();
    let batch = maps.table.read().unwrap();
    let batch_time = started.elapsed();
    let started = std::time::Instant::now();
    let one_by_one = table(&maps);
    eprintln!("LOCAL_TABLE read: batch {batch_time:?}, bucket by bucket {:?}", started.elapsed());
    assert_eq!(batch, one_by_one);
    assert_eq!(batch.iter().filter(|b| **b != LocalBucket::default()).count(), 4);
}
