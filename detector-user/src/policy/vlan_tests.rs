//! Tests of `vlan`: the decision, the sysfs walk on a fake tree (this kernel has no 8021q
//! module, so no real VLAN device can be made), and the ioctl on a veth in a test netns.

use super::*;
use crate::test_netns::TestNs;

#[test]
fn stripped_only_with_offload_and_vlans_on_top() {
    let vlans = vec!["eth0.100".to_owned()];
    let cases = [
        (false, vec![], 0, VlanVerdict::NoOffload),
        (false, vlans.clone(), 0, VlanVerdict::NoOffload),
        (true, vec![], 0, VlanVerdict::OffloadWithoutVlans),
        (true, vlans, IFACE_VLAN_STRIPPED, VlanVerdict::Stripped),
    ];
    for (offload, uppers, flags, verdict) in cases {
        let facts = VlanFacts { rx_vlan_offload: offload, vlan_uppers: uppers };
        assert_eq!(decide(&facts), (IfacePolicy { flags }, verdict), "{facts:?}");
    }
}

fn fake_dev(root: &Path, name: &str, devtype: Option<&str>, uppers: &[&str]) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let devtype = devtype.map(|t| format!("DEVTYPE={t}\n")).unwrap_or_default();
    let uevent = format!("INTERFACE={name}\n{devtype}");
    std::fs::write(dir.join("uevent"), uevent).unwrap();
    for upper in uppers {
        std::os::unix::fs::symlink(root.join(upper), dir.join(format!("upper_{upper}"))).unwrap();
    }
}

#[test]
fn vlan_uppers_are_found_directly_and_through_a_bond() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fake_dev(root, "eth0", None, &["eth0.100", "br0"]);
    fake_dev(root, "eth0.100", Some("vlan"), &[]);
    fake_dev(root, "br0", Some("bridge"), &[]);
    fake_dev(root, "eth1", None, &["bond0"]);
    fake_dev(root, "bond0", Some("bond"), &["bond0.7"]);
    fake_dev(root, "bond0.7", Some("vlan"), &[]);
    fake_dev(root, "eth2", None, &[]);
    assert_eq!(vlan_uppers(root, "eth0"), vec!["eth0.100"]);
    assert_eq!(vlan_uppers(root, "eth1"), vec!["bond0.7"]);
    assert!(vlan_uppers(root, "eth2").is_empty());
    assert!(vlan_uppers(root, "missing").is_empty());
}

#[test]
fn the_ioctl_reads_a_veths_offload_and_follows_ethtool() {
    let ns = TestNs::new("vlan");
    let (a, b) = (format!("sdva{}", ns.suffix), format!("sdvb{}", ns.suffix));
    ns.ip_in(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
    let name = a.clone();
    assert!(ns.run(move || rx_vlan_offload(&name)).unwrap(), "a veth reports rx-vlan-offload on");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "ethtool", "-K", &a, "rxvlan", "off"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ethtool: {}", String::from_utf8_lossy(&out.stderr));
    let name = a.clone();
    assert!(!ns.run(move || rx_vlan_offload(&name)).unwrap(), "after ethtool -K rxvlan off");
    assert!(ns.run(|| rx_vlan_offload("sdnosuchif")).is_err());
}
