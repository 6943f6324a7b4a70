//! Tests of `policy`: building the desired state and the diffs (pure).

use detector_common::policy::IFACE_VLAN_STRIPPED;

use super::*;
use std::net::IpAddr;

use crate::policy::test_support::{cfg, keys, prefixes};

#[test]
fn config_nat_and_interfaces_combine() {
    let nat = NatFindings {
        kernel_ports: [8080, 443].into_iter().collect(),
        kernel_dests: prefixes(&["198.18.5.0/24"]),
        ..NatFindings::default()
    };
    let ifaces =
        BTreeMap::from([(3, IfacePolicy { flags: IFACE_VLAN_STRIPPED }), (4, IfacePolicy::default())]);
    let d = DesiredPolicy::build(
        &cfg(&[443, 22], &[25], &["2001:2::/48"]),
        &keys(&["198.18.0.1", "::1"]),
        &nat,
        ifaces,
    );
    assert_eq!(d.local_addrs, keys(&["198.18.0.1", "::1"]));
    assert_eq!(d.ports[22], PORT_ANSWER);
    assert_eq!(d.ports[25], PORT_KERNEL);
    assert_eq!(d.ports[8080], PORT_KERNEL);
    assert_eq!(d.ports[443], PORT_KERNEL, "NAT wins over answer_ports");
    assert_eq!(d.ports[80], PORT_DEFAULT);
    assert_eq!(d.kernel_dests, prefixes(&["198.18.5.0/24", "2001:2::/48"]));
    assert!(d.listed_ports_only);
    assert_eq!(d.config_flags(), FLAG_LISTED_PORTS_ONLY);
    assert_eq!(d.empty_map_flags(), 0, "a kernel destination and a flagged interface");
    assert!(d.notes.iter().any(|n| n.text().contains("port 443 is in policy.answer_ports")), "{:?}", d.notes);
    assert!(d.notes.iter().any(|n| n.text().contains("ifindex 3")), "{:?}", d.notes);
}

#[test]
fn an_unclassified_nat_rule_sends_every_port_to_the_kernel() {
    let nat = NatFindings {
        all_ports: true,
        unclassified: vec!["dnat, no match".into()],
        ..NatFindings::default()
    };
    let d = DesiredPolicy::build(&cfg(&[], &[], &[]), &BTreeSet::new(), &nat, BTreeMap::new());
    assert!(d.ports.iter().all(|&v| v == PORT_KERNEL));
    assert!(!d.listed_ports_only);
    assert_eq!(d.config_flags(), 0);
    assert!(d.notes.iter().any(|n| n.text().contains("effectively off")), "{:?}", d.notes);
}

#[test]
fn too_many_kernel_destinations_fall_back_to_every_port() {
    let many: BTreeSet<Prefix> = (0..=names::KERNEL_DESTS_CAPACITY)
        .map(|i| Prefix::host(IpAddr::from((0xc612_0000 + i).to_be_bytes())))
        .collect();
    let nat = NatFindings { kernel_dests: many, ..NatFindings::default() };
    let d = DesiredPolicy::build(&cfg(&[], &[], &[]), &BTreeSet::new(), &nat, BTreeMap::new());
    assert!(d.kernel_dests.is_empty() && d.ports.iter().all(|&v| v == PORT_KERNEL));
}

#[test]
fn diffs_are_minimal() {
    let (add, remove) = set_diff(&[1, 2, 3].into(), &[2, 3, 4].into());
    assert_eq!((add, remove), (vec![4], vec![1]));
    let mut desired = vec![PORT_DEFAULT; 8];
    desired[5] = PORT_KERNEL;
    let mut current = vec![PORT_DEFAULT; 8];
    current[2] = PORT_ANSWER;
    assert_eq!(port_diff(&current, &desired), vec![(2, PORT_DEFAULT), (5, PORT_KERNEL)]);
}

#[test]
fn port_lists_are_runs() {
    let ports: BTreeSet<u16> = [25, 80, 81, 82, 443].into_iter().chain(9000..=9010).collect();
    assert_eq!(port_list(&ports), "25, 80-82, 443, 9000-9010");
    let many: BTreeSet<u16> = (0..50).map(|i| i * 3).collect();
    assert!(port_list(&many).ends_with("and 30 more ranges"), "{}", port_list(&many));
    assert_eq!(port_list(&BTreeSet::new()), "");
}

#[test]
fn operator_choices_are_info_and_surprises_are_warnings() {
    let nat = NatFindings {
        invisible: vec!["a iptables-legacy nat table exists".into()],
        ..NatFindings::default()
    };
    let d = DesiredPolicy::build(&cfg(&[], &[25], &[]), &BTreeSet::new(), &nat, BTreeMap::new());
    assert!(matches!(&d.notes[0], Note::Info(t) if t.contains("policy.kernel_ports: 25")), "{:?}", d.notes);
    assert!(matches!(&d.notes[1], Note::Warn(t) if t.contains("iptables-legacy")), "{:?}", d.notes);
}

#[test]
fn ports_without_a_listener_are_marked_only_when_the_listeners_are_known() {
    use detector_common::policy::{PORT_ANSWER, PORT_KERNEL, PORT_NO_LISTENER};
    let cfg = PolicyConfig {
        answer_ports: BTreeSet::from([80, 81]),
        kernel_ports: BTreeSet::from([22]),
        ..PolicyConfig::default()
    };
    let build = || DesiredPolicy::build(&cfg, &BTreeSet::new(), &NatFindings::default(), BTreeMap::new());
    assert_eq!(build().with_listeners(None), build(), "unknown listeners: nothing marked");
    let p = build().with_listeners(Some(&BTreeSet::from([80, 443])));
    assert_eq!(p.ports[80], PORT_ANSWER);
    assert_eq!(p.ports[81], PORT_ANSWER | PORT_NO_LISTENER);
    assert_eq!(p.ports[443], PORT_DEFAULT);
    assert_eq!(p.ports[444], PORT_DEFAULT | PORT_NO_LISTENER);
    assert_eq!(p.ports[22], PORT_KERNEL, "kernel ports keep their value");
    assert_eq!(p.ports[0], PORT_NO_LISTENER);
    assert_eq!(p.ports[65535], PORT_NO_LISTENER);
}
