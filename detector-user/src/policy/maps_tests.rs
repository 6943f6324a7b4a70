//! Tests of `policy::maps`: reconciling real BPF maps created standalone with the policy
//! maps' shapes (needs root), and the object without them.

use detector_common::policy::{IFACE_VLAN_STRIPPED, PORT_ANSWER, PORT_KERNEL};

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
