//! One agent protecting two interfaces from one configuration (a host on two networks, or
//! the members of a bond): each interface gets its own attachment, and every interface
//! shares the one set of maps, so a source blocked for what it sent on one is blocked on
//! the other too.
//!
//! Topology (`ThreeHosts`): client — middle host — backend, the agent on both of the middle
//! host's veths in cookie mode, a listener on the middle host. Needs root.
#![allow(clippy::float_cmp, reason = "metric values compared here are exact counts")]

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Command,
    thread,
    time::Duration,
};

use aya::{
    programs::{Xdp, XdpMode},
    Ebpf,
};
use xtask::lab::{in_netns, Agent, ClientReport, Flood, FloodSources, ThreeHosts, MIDDLE_BACK_V4, SERVER_V4};
use xtask::objects::test_programs;

const PORT: u16 = 8080;
const BODY: usize = 2048;
const REQUESTS: u32 = 20;
const AGENT: &str = env!("CARGO_BIN_EXE_syndetector");
/// SYN-ACKs answered from XDP, by the socket-bound helper and by the fast path.
const TX_COOKIE: &str = "syndetector_cookies_sent_total";
const DROP_BLOCKED: &str = "syndetector_packets_total{reason=\"blocked\",verdict=\"drop\"}";
/// The flooder's host part inside the lab's attack range (`Flood::single_v4`).
const FLOODER: u16 = 0x4242;

/// XDP_TX on a veth reaches its peer only when the peer runs an XDP program: the test
/// object's `baseline_pass` on the backend's end (the lab does the same on the client's).
fn attach_pass(ns: &str, iface: &str) -> Ebpf {
    let bytes =
        std::fs::read(test_programs(false)).expect("the test XDP object: run `cargo xtask build-ebpf`");
    let iface = iface.to_owned();
    in_netns(ns, move || {
        let mut ebpf = Ebpf::load(&bytes).unwrap();
        let prog: &mut Xdp = ebpf.program_mut("baseline_pass").unwrap().try_into().unwrap();
        prog.load().unwrap();
        prog.attach(&iface, XdpMode::Driver).unwrap();
        ebpf
    })
    .unwrap()
}

fn mac(ns: &str, iface: &str) -> String {
    let out = Command::new("ip").args(["-n", ns, "-br", "link", "show", "dev", iface]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace().nth(2).unwrap_or_else(|| panic!("no MAC in {text:?}")).to_owned()
}

/// `count` SYNs from `src` to `dst`:`PORT`, sent by scapy from `ns` out of `iface` (Debian's
/// python3, which has python3-scapy, not whatever python3 comes first on PATH).
fn spoofed_syns(ns: &str, iface: &str, dst_mac: &str, src: IpAddr, dst: IpAddr, count: u32) {
    let script = format!(
        "from scapy.all import Ether, IP, TCP, sendp\n\
         sendp([Ether(dst='{dst_mac}')/IP(src='{src}', dst='{dst}')/TCP(sport=40000 + i, dport={PORT}, \
         flags='S', seq=1000 + i) for i in range({count})], iface='{iface}', verbose=0)\n"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "/usr/bin/python3", "-c", &script])
        .output()
        .expect("python3 with scapy (package python3-scapy)");
    assert!(out.status.success(), "scapy failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
}

fn legit(ns: &str, addr: SocketAddr) -> ClientReport {
    in_netns(ns, move || ClientReport::run(addr, "/data", REQUESTS, Duration::from_secs(3))).unwrap()
}

fn xdp_attached(ns: &str, iface: &str) -> bool {
    let out = Command::new("ip").args(["-n", ns, "-d", "link", "show", "dev", iface]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

#[test]
fn one_agent_protects_two_interfaces_with_one_set_of_maps() {
    let mut hosts = ThreeHosts::new(&test_programs(false)).expect("the three-host lab");
    let _backend_xdp = attach_pass(&hosts.backend_ns, &hosts.backend_if);
    hosts.start_middle_listener(PORT, BODY).unwrap();
    let (middle, front, back) =
        (hosts.middle_ns().to_owned(), hosts.lab.server_if.clone(), hosts.middle_back_if.clone());
    let args = [
        "--iface",
        &back,
        "--mode",
        "cookie",
        "--poll-interval-ms",
        "200",
        "--syn-rate-limit",
        "200",
        "--half-open-limit",
        "0",
        "--block-ttl",
        "120",
    ];
    let agent = Agent::start(&hosts.lab, Path::new(AGENT), &args).expect("starting the agent");

    // Each interface its own attachment.
    let s = agent.scrape().unwrap();
    for iface in [&front, &back] {
        assert!(xdp_attached(&middle, iface), "no XDP program on {iface}");
        let attached: f64 = ["driver", "skb"]
            .iter()
            .filter_map(|m| {
                s.get(&format!("syndetector_interface_attached{{interface=\"{iface}\",mode=\"{m}\"}}"))
            })
            .sum();
        assert_eq!(attached, 1.0, "syndetector_interface_attached for {iface}");
    }

    // Legit clients on both sides, answered with cookies from XDP on both interfaces and
    // accepted by the middle host's kernel.
    // The agent's counters lag by up to one poll (200 ms): one is waited out before each scrape.
    thread::sleep(Duration::from_millis(400));
    let before = (agent.scrape().unwrap().value(TX_COOKIE).unwrap(), hosts.lab.nstat(&middle).unwrap());
    let from_client = legit(&hosts.lab.client_ns, SocketAddr::from((SERVER_V4, PORT)));
    let from_backend = legit(&hosts.backend_ns, SocketAddr::from((MIDDLE_BACK_V4, PORT)));
    thread::sleep(Duration::from_millis(400));
    let after = (agent.scrape().unwrap().value(TX_COOKIE).unwrap(), hosts.lab.nstat(&middle).unwrap());
    assert_eq!(from_client.ok, REQUESTS, "through {front}: {from_client:?}");
    assert_eq!(from_backend.ok, REQUESTS, "through {back}: {from_backend:?}");
    let recv =
        |n: &std::collections::HashMap<String, u64>| n.get("TcpExtSyncookiesRecv").copied().unwrap_or(0);
    assert!(
        after.0 - before.0 >= f64::from(2 * REQUESTS),
        "cookies answered from XDP: {} -> {}",
        before.0,
        after.0
    );
    assert!(
        recv(&after.1) - recv(&before.1) >= u64::from(2 * REQUESTS),
        "the kernel accepted the cookies of both sides"
    );

    // One set of maps: a source blocked for its flood through the client side is dropped
    // as blocked when it shows up on the backend side.
    let flood = Flood {
        v6: false,
        sources: FloodSources::Single(FLOODER),
        port: PORT,
        count: 2_000,
        pps: 1_000,
        limit: Duration::from_secs(10),
    };
    flood.run(&hosts.lab).unwrap();
    thread::sleep(Duration::from_millis(500));
    let blocked_before = agent.scrape().unwrap().value(DROP_BLOCKED).unwrap();
    assert!(blocked_before > 0.0, "the flooder was not blocked through {front}");
    let flooder = IpAddr::V4(Flood::single_v4(FLOODER));
    spoofed_syns(
        &hosts.backend_ns,
        &hosts.backend_if,
        &mac(&middle, &back),
        flooder,
        MIDDLE_BACK_V4.into(),
        50,
    );
    thread::sleep(Duration::from_millis(500));
    let blocked_after = agent.scrape().unwrap().value(DROP_BLOCKED).unwrap();
    assert_eq!(
        blocked_after - blocked_before,
        50.0,
        "the flooder's SYNs through {back} must be dropped as blocked"
    );
    println!(
        "two interfaces: {front} and {back} attached; legit {}/{REQUESTS} and {}/{REQUESTS} through cookies; \
         the flooder blocked through {front} was dropped 50/50 through {back}",
        from_client.ok, from_backend.ok
    );
}
