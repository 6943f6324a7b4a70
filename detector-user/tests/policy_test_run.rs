//! What the real XDP object (BPF_PROG_TEST_RUN) leaves alone on real hosts: frames whose
//! IP length disagrees with the frame, SYNs for addresses that are not the host's, and,
//! in cookie mode, SYNs that policy leaves to the kernel (ports, destinations, interfaces
//! whose NIC strips VLAN tags); and the host-wide SYN-ACK budget. Fixture tables of
//! {name, frame, verdict, counter that rises by exactly one}. Needs root.
//!
//! Cookie-mode tests run on a thread of their own inside a private network namespace
//! (`unshare`) with their own listeners and `tcp_syncookies`: the host is not touched.

mod common;

use std::{net::Ipv6Addr, net::TcpListener, thread, time::Duration};

use common::{Detector, SERVER4, SERVER6, TEST_RUN_IFINDEX, XDP_DROP, XDP_PASS, XDP_TX};
use detector_common::{
    config::{
        Config, FLAG_COOKIES, FLAG_COOKIE_TIMESTAMPS, FLAG_ENFORCE, FLAG_LISTED_PORTS_ONLY,
        FLAG_NO_IFACE_POLICY, FLAG_NO_KERNEL_DESTS, FLAG_RAW_COOKIES,
    },
    counters::Counter,
    local_table::{self, LocalBucket},
    names,
    parse::ipv4_mapped,
    policy::{IFACE_VLAN_STRIPPED, PORT_ANSWER, PORT_DEFAULT, PORT_KERNEL},
};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TcpOptionElement, TransportSlice};

const SEC: u64 = 1_000_000_000;
/// Listened on in the cookie tests' namespaces.
const PORT: u16 = 8080;
const OTHER_PORT: u16 = 8081;
const CLIENT4: [u8; 4] = [198, 18, 0, 2];
const CLIENT6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
/// Addresses that are not the host's (not in `LOCAL_ADDRS`).
const ELSEWHERE4: [u8; 4] = [198, 18, 0, 99];
const ELSEWHERE6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x99];

/// A SYN from the client; `sport` varies so that each is a new flow.
#[derive(Clone, Copy)]
struct Syn {
    v6: bool,
    dst4: [u8; 4],
    dst6: [u8; 16],
    sport: u16,
    dport: u16,
    mss: bool,
}

impl Syn {
    fn v4() -> Self {
        Self { v6: false, dst4: SERVER4, dst6: SERVER6, sport: 40_000, dport: PORT, mss: false }
    }

    fn v6() -> Self {
        Self { v6: true, ..Self::v4() }
    }

    fn to_elsewhere(self) -> Self {
        Self { dst4: ELSEWHERE4, dst6: ELSEWHERE6, ..self }
    }

    fn port(self, dport: u16) -> Self {
        Self { dport, ..self }
    }

    fn sport(self, sport: u16) -> Self {
        Self { sport, ..self }
    }

    fn with_mss(self) -> Self {
        Self { mss: true, ..self }
    }

    fn frame(self) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]);
        let b = if self.v6 { b.ipv6(CLIENT6, self.dst6, 64) } else { b.ipv4(CLIENT4, self.dst4, 64) };
        let options: &[TcpOptionElement] =
            if self.mss { &[TcpOptionElement::MaximumSegmentSize(1460)] } else { &[] };
        let tcp = b.tcp(self.sport, self.dport, 1000, 64240).syn().options(options).unwrap();
        let mut out = Vec::new();
        tcp.write(&mut out, &[]).unwrap();
        out
    }
}

/// `frame` with the 16-bit big-endian field at `at` set to `value`.
fn with_u16(frame: &[u8], at: usize, value: u16) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[at..at + 2].copy_from_slice(&value.to_be_bytes());
    out
}

/// IPv4 total length (untagged frame).
const IPV4_TOTAL_LEN_AT: usize = 14 + 2;
/// IPv6 payload length (untagged frame).
const IPV6_PAYLOAD_LEN_AT: usize = 14 + 4;

fn with_vlan_tag(frame: &[u8]) -> Vec<u8> {
    [&frame[..12], &[0x81, 0x00, 0x00, 42], &frame[12..]].concat()
}

fn tracking_config() -> Config {
    Config::new(100, 100, 60 * SEC, 3 * SEC)
}

fn monitor_config() -> Config {
    let mut c = tracking_config();
    c.flags &= !FLAG_ENFORCE;
    c
}

fn cookie_config() -> Config {
    let mut c = Config::new(0, 0, 60 * SEC, 3 * SEC);
    c.flags = FLAG_ENFORCE | FLAG_COOKIES | FLAG_COOKIE_TIMESTAMPS | FLAG_RAW_COOKIES;
    c.sketch_width = 16_384;
    c.sketch_seed = 7;
    c.cookie_budget_per_second = 1_000_000;
    c.synack_wscale = 10;
    c
}

/// One row of a fixture table.
struct Fixture {
    name: &'static str,
    frame: Vec<u8>,
    verdict: u32,
    /// The verdict counter that must rise by exactly one (all others stay put).
    counter: Counter,
}

impl Fixture {
    fn new(name: &'static str, frame: Vec<u8>, verdict: u32, counter: Counter) -> Self {
        Self { name, frame, verdict, counter }
    }
}

/// Runs each fixture in order; checks the verdict and that exactly the named verdict
/// counter rose. Passed frames must leave as they came: the kernel gets them untouched.
/// `mode` names the config in failure messages.
fn run_table(det: &Detector, mode: &str, table: &[Fixture]) {
    for f in table {
        let before = det.counters();
        let (verdict, out) = det.run(names::PROGRAM, &f.frame);
        assert_eq!(verdict, f.verdict, "{mode}, {}: verdict", f.name);
        let mut after = det.counters();
        // `TxCookie` stands for "answered": by the socket-bound helper or, within a second
        // of it for the same listener, by the raw one (cookie_fastpath_test_run.rs).
        let fast = Counter::TxCookieFast as usize;
        if f.counter == Counter::TxCookie && after[fast] > before[fast] {
            after[Counter::TxCookie as usize] += after[fast] - before[fast];
            after[fast] = before[fast];
        }
        for (i, c) in Counter::ALL.iter().enumerate() {
            if c.verdict().is_none() {
                continue;
            }
            let rose = after[i] - before[i];
            assert_eq!(rose, u64::from(*c == f.counter), "{mode}, {}: counter {c:?} rose by {rose}", f.name);
        }
        if verdict == XDP_PASS {
            assert_eq!(out, f.frame, "{mode}, {}: a passed frame is unchanged", f.name);
        }
    }
}

/// Runs `test` on a thread of its own in a fresh network namespace, pinned to CPU 0, with
/// dual-stack listeners on PORT and OTHER_PORT and `tcp_syncookies = 2` there.
fn in_private_netns(test: impl FnOnce() + Send + 'static) {
    common::assert_root();
    thread::spawn(move || {
        // SAFETY: affects only this thread, which nothing else uses.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare(CLONE_NEWNET)");
        pin_to_cpu(0);
        std::fs::write("/proc/sys/net/ipv4/tcp_syncookies", "2").unwrap();
        let _listeners = [PORT, OTHER_PORT].map(|p| TcpListener::bind(("::", p)).expect("listener"));
        test();
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

/// Moves the calling thread to `cpu`: BPF_PROG_TEST_RUN runs the program on the caller's.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set),
            0,
            "pinning to CPU {cpu}"
        );
    }
}

fn bad_length_table() -> Vec<Fixture> {
    let v4 = Syn::v4().with_mss().frame(); // IP total length 44
    let v6 = Syn::v6().frame(); // payload length 20
    let bad = |name, frame| Fixture::new(name, frame, XDP_PASS, Counter::PassBadLength);
    vec![
        bad("IPv4 total length 0", with_u16(&v4, IPV4_TOTAL_LEN_AT, 0)),
        bad("IPv4 total length below the IP header", with_u16(&v4, IPV4_TOTAL_LEN_AT, 19)),
        bad("IPv4 total length below IP + TCP headers", with_u16(&v4, IPV4_TOTAL_LEN_AT, 30)),
        bad("IPv4 total length beyond the frame", with_u16(&v4, IPV4_TOTAL_LEN_AT, 45)),
        bad("IPv4 total length far beyond the frame", with_u16(&v4, IPV4_TOTAL_LEN_AT, 1500)),
        // Past what the XDP side compares against the linear part by pointer (16 KiB).
        bad("IPv4 total length 65535", with_u16(&v4, IPV4_TOTAL_LEN_AT, 65_535)),
        bad("IPv6 payload length 65535", with_u16(&v6, IPV6_PAYLOAD_LEN_AT, 65_535)),
        bad("TCP options beyond the IPv4 total length", with_u16(&v4, IPV4_TOTAL_LEN_AT, 40)),
        bad("IPv6 payload length beyond the frame", with_u16(&v6, IPV6_PAYLOAD_LEN_AT, 21)),
        bad("IPv6 payload length 0 (jumbogram)", with_u16(&v6, IPV6_PAYLOAD_LEN_AT, 0)),
        bad("TCP header beyond the IPv6 payload", with_u16(&v6, IPV6_PAYLOAD_LEN_AT, 12)),
        bad("tagged, IPv4 total length beyond the frame", with_u16(&with_vlan_tag(&v4), 18 + 2, 100)),
    ]
}

#[test]
fn frames_whose_ip_length_disagrees_pass_unchanged_in_every_mode() {
    let mut det = Detector::load(monitor_config(), &[]);
    for (mode, cfg) in
        [("monitor", monitor_config()), ("drop", tracking_config()), ("cookie", cookie_config())]
    {
        det.set_config(cfg);
        run_table(&det, mode, &bad_length_table());
    }
    assert_eq!(det.sources().keys().count(), 0, "nothing tracked");
}

#[test]
fn padded_minimum_frames_are_tracked() {
    let det = Detector::load(tracking_config(), &[]);
    // A bare IPv4 SYN is 54 bytes; on the wire it arrives padded to 60.
    let mut padded = Syn::v4().frame();
    assert_eq!(padded.len(), 54);
    padded.resize(60, 0xaa);
    let mut padded_tagged = with_vlan_tag(&Syn::v4().sport(40_001).frame());
    padded_tagged.resize(64, 0);
    let mut padded6 = Syn::v6().frame();
    padded6.extend_from_slice(&[0; 6]);
    run_table(
        &det,
        "drop",
        &[
            Fixture::new("60-byte IPv4 SYN", padded, XDP_PASS, Counter::PassSyn),
            Fixture::new("64-byte tagged IPv4 SYN", padded_tagged, XDP_PASS, Counter::PassSyn),
            Fixture::new("padded IPv6 SYN", padded6, XDP_PASS, Counter::PassSyn),
        ],
    );
    assert_eq!(det.pending().keys().count(), 3, "each is a pending handshake");
}

#[test]
fn padded_minimum_frames_are_answered() {
    in_private_netns(|| {
        let det = Detector::load(cookie_config(), &[]);
        let syn = Syn::v4();
        let mut padded = syn.frame();
        padded.resize(60, 0xaa);
        let (verdict, reply) = det.run(names::PROGRAM, &padded);
        assert_eq!(verdict, XDP_TX);
        // No client options: an MSS-only SYN-ACK, the padding cut off.
        assert_eq!(reply.len(), 14 + 20 + 24, "the reply is its own length");
        let sliced = SlicedPacket::from_ethernet(&reply).expect("etherparse decodes the SYN-ACK");
        let Some(NetSlice::Ipv4(ip)) = &sliced.net else { panic!("IPv4 reply") };
        assert_eq!(ip.header().total_len(), 44);
        assert_eq!(ip.header().destination(), CLIENT4);
        let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else { panic!("TCP reply") };
        assert!(tcp.syn() && tcp.ack() && tcp.payload().is_empty());
        assert_eq!(tcp.acknowledgment_number(), 1001);
        assert_eq!(det.counter(Counter::TxCookie), 1);
    });
}

fn not_local_table() -> Vec<Fixture> {
    let gone = |name, frame| Fixture::new(name, frame, XDP_PASS, Counter::PassNotLocal);
    vec![
        gone("IPv4 SYN for another machine", Syn::v4().to_elsewhere().frame()),
        gone("IPv6 SYN for another machine", Syn::v6().to_elsewhere().frame()),
        gone("tagged IPv4 SYN for another machine", with_vlan_tag(&Syn::v4().to_elsewhere().frame())),
    ]
}

#[test]
fn syns_for_other_machines_are_neither_tracked_nor_dropped() {
    // A source over its limits, flooding another machine through us: still not ours.
    let mut strict = tracking_config();
    strict.syn_rate_limit = 1;
    let mut det = Detector::load(monitor_config(), &[]);
    for (mode, cfg) in [("monitor", monitor_config()), ("drop", tracking_config()), ("drop, rate 1", strict)]
    {
        det.set_config(cfg);
        run_table(&det, mode, &not_local_table());
    }
    assert_eq!(det.sources().keys().count(), 0, "no source state");
    assert_eq!(det.pending().keys().count(), 0, "no pending flows");
}

#[test]
fn syns_for_other_machines_are_not_answered_even_with_a_wildcard_listener() {
    in_private_netns(|| {
        let mut det = Detector::load(cookie_config(), &[]);
        run_table(&det, "cookie", &not_local_table());
        // The same SYN is answered once its address is local.
        det.set_local(ipv4_mapped(ELSEWHERE4), true);
        run_table(
            &det,
            "cookie",
            &[Fixture::new("now local", Syn::v4().to_elsewhere().frame(), XDP_TX, Counter::TxCookie)],
        );
    });
}

/// `n` addresses of 198.18.0.0/15 that share one `LOCAL_TABLE` bucket, ascending.
fn colliding_v4(n: usize) -> Vec<[u8; 4]> {
    let key = |a: [u8; 4]| local_table::bucket_of(local_table::words(&ipv4_mapped(a)));
    let target = key([198, 18, 1, 0]);
    (0..=u16::MAX)
        .map(|n| {
            let [hi, lo] = n.to_be_bytes();
            [198, 18, hi, lo]
        })
        .filter(|&a| key(a) == target)
        .take(n)
        .collect()
}

#[test]
fn addresses_beyond_a_full_bucket_are_found_in_local_addrs() {
    in_private_netns(|| {
        let mut det = Detector::load(cookie_config(), &[]);
        let addrs = colliding_v4(local_table::WAYS + 2);
        let (inside, beyond, stranger) =
            (&addrs[..local_table::WAYS], addrs[local_table::WAYS], addrs[local_table::WAYS + 1]);
        for a in inside.iter().chain([&beyond]) {
            det.set_local(ipv4_mapped(*a), true);
        }
        // The bucket is full and says so; `beyond` is in no way of it.
        let w = local_table::words(&ipv4_mapped(beyond));
        let table: aya::maps::Array<_, LocalBucket> =
            aya::maps::Array::try_from(det.ebpf.map(names::MAP_LOCAL_TABLE).unwrap()).unwrap();
        let bucket = table.get(&local_table::bucket_of(w), 0).unwrap();
        assert_eq!((bucket.valid, bucket.overflow), (0b1111, 1), "{bucket:?}");
        assert_eq!(local_table::probe(&bucket, w), local_table::Probe::AskMap);
        let syn = |dst4| Syn { dst4, ..Syn::v4() };
        run_table(
            &det,
            "cookie",
            &[
                Fixture::new("local, in a way", syn(inside[0]).frame(), XDP_TX, Counter::TxCookie),
                Fixture::new("local, beyond the ways", syn(beyond).frame(), XDP_TX, Counter::TxCookie),
                Fixture::new(
                    "not local, same bucket",
                    syn(stranger).frame(),
                    XDP_PASS,
                    Counter::PassNotLocal,
                ),
            ],
        );
        // Without the overflow mark, `beyond` is not found: the program did ask the map.
        det.set_local_bucket(local_table::bucket_of(w), LocalBucket { overflow: 0, ..bucket });
        run_table(
            &det,
            "cookie",
            &[Fixture::new(
                "beyond, mark cleared",
                syn(beyond).sport(40_001).frame(),
                XDP_PASS,
                Counter::PassNotLocal,
            )],
        );
    });
}

#[test]
fn a_bucket_holds_only_the_addresses_whose_bits_are_set() {
    let mut det = Detector::load(tracking_config(), &[]);
    // ELSEWHERE4's bytes in every way of its bucket, no bit set: still not local.
    let w = local_table::words(&ipv4_mapped(ELSEWHERE4));
    let stale = LocalBucket { addrs: [w; local_table::WAYS], ..LocalBucket::default() };
    det.set_local_bucket(local_table::bucket_of(w), stale);
    run_table(&det, "drop", &not_local_table()[..1]);
    det.set_local_bucket(local_table::bucket_of(w), LocalBucket { valid: 0b1000, ..stale });
    run_table(
        &det,
        "drop",
        &[Fixture::new("bit set", Syn::v4().to_elsewhere().frame(), XDP_PASS, Counter::PassSyn)],
    );
}

#[test]
fn kernel_ports_are_left_to_the_kernel() {
    in_private_netns(|| {
        let mut det = Detector::load(cookie_config(), &[]);
        det.set_port_policy(PORT, PORT_KERNEL);
        run_table(
            &det,
            "cookie",
            &[
                Fixture::new(
                    "IPv4, kernel port",
                    Syn::v4().frame(),
                    XDP_PASS,
                    Counter::PassCookieKernelPolicy,
                ),
                Fixture::new(
                    "IPv6, kernel port",
                    Syn::v6().frame(),
                    XDP_PASS,
                    Counter::PassCookieKernelPolicy,
                ),
                Fixture::new(
                    "tagged, kernel port",
                    with_vlan_tag(&Syn::v4().frame()),
                    XDP_PASS,
                    Counter::PassCookieKernelPolicy,
                ),
                Fixture::new("another port", Syn::v4().port(OTHER_PORT).frame(), XDP_TX, Counter::TxCookie),
            ],
        );
        det.set_port_policy(PORT, PORT_DEFAULT);
        run_table(
            &det,
            "cookie",
            &[Fixture::new("policy cleared", Syn::v4().sport(40_001).frame(), XDP_TX, Counter::TxCookie)],
        );
    });
}

#[test]
fn listed_ports_only_answers_listed_ports() {
    in_private_netns(|| {
        let mut cfg = cookie_config();
        cfg.flags |= FLAG_LISTED_PORTS_ONLY;
        let mut det = Detector::load(cfg, &[]);
        det.set_port_policy(OTHER_PORT, PORT_ANSWER);
        run_table(
            &det,
            "cookie, listed ports only",
            &[
                Fixture::new("not listed", Syn::v4().frame(), XDP_PASS, Counter::PassCookieKernelPolicy),
                Fixture::new(
                    "not listed, IPv6",
                    Syn::v6().frame(),
                    XDP_PASS,
                    Counter::PassCookieKernelPolicy,
                ),
                Fixture::new("listed", Syn::v4().port(OTHER_PORT).frame(), XDP_TX, Counter::TxCookie),
                Fixture::new("listed, IPv6", Syn::v6().port(OTHER_PORT).frame(), XDP_TX, Counter::TxCookie),
            ],
        );
        det.set_port_policy(OTHER_PORT, PORT_KERNEL);
        run_table(
            &det,
            "cookie, listed ports only",
            &[Fixture::new(
                "listed, then made the kernel's",
                Syn::v4().port(OTHER_PORT).sport(40_001).frame(),
                XDP_PASS,
                Counter::PassCookieKernelPolicy,
            )],
        );
    });
}

#[test]
fn kernel_destinations_match_by_prefix() {
    in_private_netns(|| {
        let mut det = Detector::load(cookie_config(), &[]);
        // A neighbouring IPv4 /24 and IPv6 /64: no match yet.
        det.add_kernel_dest(Ipv6Addr::from(ipv4_mapped([198, 18, 1, 0])), 96 + 24);
        det.add_kernel_dest("2001:3::".parse().unwrap(), 64);
        run_table(
            &det,
            "cookie",
            &[
                Fixture::new("IPv4, no prefix matches", Syn::v4().frame(), XDP_TX, Counter::TxCookie),
                Fixture::new("IPv6, no prefix matches", Syn::v6().frame(), XDP_TX, Counter::TxCookie),
            ],
        );
        // 198.18.0.0/24: the IPv4 server matches, the IPv6 one does not.
        det.add_kernel_dest(Ipv6Addr::from(ipv4_mapped([198, 18, 0, 0])), 96 + 24);
        run_table(
            &det,
            "cookie",
            &[
                Fixture::new(
                    "IPv4 in 198.18.0.0/24",
                    Syn::v4().sport(40_001).frame(),
                    XDP_PASS,
                    Counter::PassCookieKernelPolicy,
                ),
                Fixture::new(
                    "IPv6 still answered",
                    Syn::v6().sport(40_001).frame(),
                    XDP_TX,
                    Counter::TxCookie,
                ),
            ],
        );
        // 2001:2::/64: now the IPv6 server too.
        det.add_kernel_dest("2001:2::".parse().unwrap(), 64);
        run_table(
            &det,
            "cookie",
            &[
                Fixture::new(
                    "IPv6 in 2001:2::/64",
                    Syn::v6().sport(40_002).frame(),
                    XDP_PASS,
                    Counter::PassCookieKernelPolicy,
                ),
                Fixture::new(
                    "tagged IPv6 in 2001:2::/64",
                    with_vlan_tag(&Syn::v6().sport(40_003).frame()),
                    XDP_PASS,
                    Counter::PassCookieKernelPolicy,
                ),
            ],
        );
    });
}

#[test]
fn untagged_syns_on_a_tag_stripping_nic_are_left_to_the_kernel() {
    in_private_netns(|| {
        let mut det = Detector::load(cookie_config(), &[]);
        // Another interface's flag changes nothing here.
        det.set_iface_flags(TEST_RUN_IFINDEX + 1, IFACE_VLAN_STRIPPED);
        run_table(
            &det,
            "cookie",
            &[Fixture::new("flag on another ifindex", Syn::v4().frame(), XDP_TX, Counter::TxCookie)],
        );
        // Test runs arrive on loopback, ifindex 1: flagging it proves the program reads the
        // ingress ifindex.
        det.set_iface_flags(TEST_RUN_IFINDEX, IFACE_VLAN_STRIPPED);
        run_table(
            &det,
            "cookie, VLAN stripped",
            &[
                Fixture::new(
                    "untagged IPv4",
                    Syn::v4().sport(40_001).frame(),
                    XDP_PASS,
                    Counter::PassCookieVlanOffload,
                ),
                Fixture::new(
                    "untagged IPv6",
                    Syn::v6().sport(40_001).frame(),
                    XDP_PASS,
                    Counter::PassCookieVlanOffload,
                ),
                Fixture::new(
                    "tagged IPv4: the tag is kept in the reply",
                    with_vlan_tag(&Syn::v4().sport(40_002).frame()),
                    XDP_TX,
                    Counter::TxCookie,
                ),
                Fixture::new(
                    "tagged IPv6",
                    with_vlan_tag(&Syn::v6().sport(40_002).frame()),
                    XDP_TX,
                    Counter::TxCookie,
                ),
            ],
        );
        det.set_iface_flags(TEST_RUN_IFINDEX, 0);
        run_table(
            &det,
            "cookie",
            &[Fixture::new("flag cleared", Syn::v4().sport(40_003).frame(), XDP_TX, Counter::TxCookie)],
        );
    });
}

/// The agent sets `FLAG_NO_KERNEL_DESTS` / `FLAG_NO_IFACE_POLICY` only while those maps
/// hold nothing (`policy::feed::PolicyStep`); the program then skips the lookups. Proven
/// here by breaking that promise: with the bits set, entries in the maps are not seen.
#[test]
fn maps_the_config_says_are_empty_are_not_looked_up() {
    in_private_netns(|| {
        let mut det = Detector::load(cookie_config(), &[]);
        det.add_kernel_dest(Ipv6Addr::from(ipv4_mapped([198, 18, 0, 0])), 96 + 24);
        det.set_iface_flags(TEST_RUN_IFINDEX, IFACE_VLAN_STRIPPED);
        let flagged = |flags: u32| {
            let mut c = cookie_config();
            c.flags |= flags;
            c
        };
        det.set_config(flagged(FLAG_NO_KERNEL_DESTS));
        run_table(
            &det,
            "cookie, KERNEL_DESTS skipped",
            &[Fixture::new(
                "IPv4 in 198.18.0.0/24",
                Syn::v4().frame(),
                XDP_PASS,
                Counter::PassCookieVlanOffload,
            )],
        );
        det.set_config(flagged(FLAG_NO_IFACE_POLICY));
        run_table(
            &det,
            "cookie, IFACES skipped",
            &[Fixture::new(
                "IPv4 in 198.18.0.0/24",
                Syn::v4().sport(40_001).frame(),
                XDP_PASS,
                Counter::PassCookieKernelPolicy,
            )],
        );
        det.set_config(flagged(FLAG_NO_KERNEL_DESTS | FLAG_NO_IFACE_POLICY));
        run_table(
            &det,
            "cookie, both skipped",
            &[Fixture::new(
                "IPv4 in 198.18.0.0/24",
                Syn::v4().sport(40_002).frame(),
                XDP_TX,
                Counter::TxCookie,
            )],
        );
    });
}

#[test]
fn the_synack_budget_holds_across_cpus_and_renews_each_second() {
    assert!(
        std::thread::available_parallelism().map_or(1, usize::from) >= 2,
        "this test moves between two CPUs"
    );
    in_private_netns(|| {
        let mut cfg = cookie_config();
        cfg.cookie_budget_per_second = 3;
        let mut det = Detector::load(cfg, &[]);
        det.set_port_policy(OTHER_PORT, PORT_KERNEL);
        let syn = |i: u16| Syn::v4().sport(41_000 + i).frame();
        // SYNs left to the kernel spend nothing.
        let mut table = vec![Fixture::new(
            "kernel port, before",
            Syn::v4().port(OTHER_PORT).frame(),
            XDP_PASS,
            Counter::PassCookieKernelPolicy,
        )];
        table.extend((0..2).map(|i| Fixture::new("within, CPU 0", syn(i), XDP_TX, Counter::TxCookie)));
        run_table(&det, "cookie, budget 3", &table);
        // The budget is one count for the host: another CPU gets what is left.
        pin_to_cpu(1);
        run_table(
            &det,
            "cookie, budget 3",
            &[
                Fixture::new("within, CPU 1", syn(2), XDP_TX, Counter::TxCookie),
                Fixture::new("beyond, CPU 1", syn(3), XDP_DROP, Counter::DropCookieBudget),
            ],
        );
        pin_to_cpu(0);
        run_table(
            &det,
            "cookie, budget 3",
            &[
                Fixture::new("beyond, CPU 0", syn(4), XDP_DROP, Counter::DropCookieBudget),
                Fixture::new(
                    "kernel port, after",
                    Syn::v4().port(OTHER_PORT).sport(41_100).frame(),
                    XDP_PASS,
                    Counter::PassCookieKernelPolicy,
                ),
            ],
        );
        // A new second, a new budget.
        thread::sleep(Duration::from_millis(1_100));
        let mut table: Vec<Fixture> =
            (5..8).map(|i| Fixture::new("next second", syn(i), XDP_TX, Counter::TxCookie)).collect();
        table.push(Fixture::new("beyond again", syn(8), XDP_DROP, Counter::DropCookieBudget));
        run_table(&det, "cookie, budget 3", &table);
    });
}
