//! Tests of `addresses`: the watcher in a scratch network namespace follows `ip addr` and
//! `ip link` changes made there (test addresses only: 198.18.0.0/15, 2001:2::/48).

use std::time::{Duration, Instant};

use super::*;
use crate::test_netns::TestNs;

fn wait_for(rx: &watch::Receiver<HostSnapshot>, ok: impl Fn(&HostSnapshot) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if ok(&rx.borrow()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn has(s: &HostSnapshot, ip: &str) -> bool {
    let ip: IpAddr = ip.parse().unwrap();
    s.addrs.iter().any(|a| a.addr == ip)
}

#[test]
fn the_snapshot_follows_address_and_link_changes() {
    let ns = TestNs::new("addr");
    let mut watch = ns.run(|| spawn().expect("watcher"));
    let first = watch.snapshot.borrow().clone();
    assert!(has(&first, "127.0.0.1") && has(&first, "::1"), "loopback is local: {first:?}");

    let (a, b) = (format!("sdva{}", ns.suffix), format!("sdvb{}", ns.suffix));
    ns.ip_in(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
    ns.ip_in(&["link", "set", &a, "up"]);
    ns.ip_in(&["addr", "add", "198.18.0.1/24", "dev", &a]);
    ns.ip_in(&["addr", "add", "2001:2::1/64", "dev", &a, "nodad"]);
    let rx = &watch.snapshot;
    assert!(wait_for(rx, |s| has(s, "198.18.0.1") && has(s, "2001:2::1")), "{:?}", rx.borrow());
    let s = rx.borrow().clone();
    assert!(s.generation > first.generation);
    assert!(s.local_keys().contains(&mapped("198.18.0.1".parse().unwrap())));
    let ifindex = s.links.iter().find(|(_, l)| l.name == a).map(|(i, _)| *i).expect("the veth is listed");
    assert!(s.addrs.iter().any(|h| h.ifindex == ifindex && h.prefix_len == 24));

    // Bringing both ends up gives the veth an IPv6 link-local address (after DAD): local too.
    ns.ip_in(&["link", "set", &b, "up"]);
    let link_local = |s: &HostSnapshot| {
        s.addrs
            .iter()
            .any(|h| h.ifindex == ifindex && matches!(h.addr, IpAddr::V6(v6) if v6.is_unicast_link_local()))
    };
    assert!(wait_for(rx, link_local), "no fe80:: address on {a}: {:?}", rx.borrow());

    ns.ip_in(&["addr", "del", "198.18.0.1/24", "dev", &a]);
    assert!(wait_for(rx, |s| !has(s, "198.18.0.1") && has(s, "2001:2::1")), "{:?}", rx.borrow());

    // Link events: the veth came up earlier; now it goes away with its addresses.
    ns.ip_in(&["link", "del", &a]);
    assert!(wait_for(rx, |s| !has(s, "2001:2::1") && !s.links.contains_key(&ifindex)));
    let mut events = Vec::new();
    while let Ok(e) = watch.link_events.try_recv() {
        events.push(e);
    }
    assert!(events.contains(&LinkEvent::Changed { ifindex, name: a.clone(), up: true }), "{events:?}");
    assert!(events.contains(&LinkEvent::Gone { ifindex, name: a.clone() }), "{events:?}");
}

#[test]
fn tentative_ipv6_addresses_are_not_local_yet() {
    let mut m = AddressMessage::default();
    m.header.index = 7;
    m.header.prefix_len = 64;
    m.attributes.push(AddressAttribute::Address("2001:2::9".parse().unwrap()));
    m.header.flags = AddressHeaderFlags::Tentative;
    let mut s = HostSnapshot::default();
    s.apply(&RouteNetlinkMessage::NewAddress(m.clone()));
    assert!(s.addrs.is_empty(), "tentative");
    m.header.flags = AddressHeaderFlags::empty();
    s.apply(&RouteNetlinkMessage::NewAddress(m.clone()));
    assert_eq!(s.addrs.len(), 1, "DAD done");
    s.apply(&RouteNetlinkMessage::DelAddress(m));
    assert!(s.addrs.is_empty());
}

#[test]
fn ipv4_uses_the_local_address_not_the_peer() {
    let mut m = AddressMessage::default();
    m.header.index = 3;
    m.header.prefix_len = 32;
    m.attributes.push(AddressAttribute::Address("198.18.9.2".parse().unwrap()));
    m.attributes.push(AddressAttribute::Local("198.18.9.1".parse().unwrap()));
    let mut s = HostSnapshot::default();
    s.apply(&RouteNetlinkMessage::NewAddress(m));
    assert!(has(&s, "198.18.9.1") && !has(&s, "198.18.9.2"));
}
