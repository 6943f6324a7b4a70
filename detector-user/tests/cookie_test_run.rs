//! The cookie responder in the real kernel (BPF_PROG_TEST_RUN): SYNs in, SYN-ACKs out,
//! decoded by an independent parser (etherparse), their cookies checked by the kernel
//! (`bpf_tcp_check_syncookie`, through the object's `probe_check_cookie` program).
//!
//! Each test runs on its own thread inside a private network namespace (`unshare`), with
//! its own listener and `tcp_syncookies` there: the host is not touched. Needs root.

mod common;

use std::{net::TcpListener, thread};

use common::{Detector, XDP_DROP, XDP_PASS, XDP_TX};
use detector_common::{
    config::{Config, FLAG_COOKIES, FLAG_COOKIE_TIMESTAMPS, FLAG_ENFORCE},
    counters::Counter,
    names,
    state::SourceKey,
};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TcpHeader, TcpOptionElement, TransportSlice};

const PORT: u16 = 8080;
const CLOSED_PORT: u16 = 9;
const SEC: u64 = 1_000_000_000;
const CLIENT4: [u8; 4] = [198, 18, 0, 2];
const SERVER4: [u8; 4] = [198, 18, 0, 1];
const CLIENT6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const SERVER6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// The scale the config hands the program: not the host's (10 with the default
/// `tcp_rmem`), so a value hard-coded in the program would show.
const SYNACK_WSCALE: u8 = 5;
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

/// Runs `test` on a thread of its own in a fresh network namespace with a dual-stack
/// listener on PORT and `tcp_syncookies` set as given (in that namespace only).
fn in_private_netns(syncookies: &str, test: impl FnOnce() + Send + 'static) {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests load BPF programs and make network namespaces: run them as root"
    );
    let syncookies = syncookies.to_owned();
    thread::spawn(move || {
        // SAFETY: affects only this thread, which nothing else uses.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare(CLONE_NEWNET)");
        // Pin to one CPU: the SYN-ACK budget is per CPU.
        // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set);
        }
        std::fs::write("/proc/sys/net/ipv4/tcp_syncookies", &syncookies).unwrap();
        let _listener = TcpListener::bind(("::", PORT)).expect("listener in the private netns");
        test();
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

fn cookie_config(timestamps: bool) -> Config {
    let mut c = Config::new(0, 0, 60 * SEC, 3 * SEC);
    c.flags = FLAG_ENFORCE | FLAG_COOKIES | if timestamps { FLAG_COOKIE_TIMESTAMPS } else { 0 };
    c.sketch_width = 16_384;
    c.sketch_seed = 7;
    c.cookie_budget_per_second = 1_000_000;
    c.synack_wscale = SYNACK_WSCALE;
    c
}

fn linux_syn_options() -> Vec<TcpOptionElement> {
    vec![
        TcpOptionElement::MaximumSegmentSize(1460),
        TcpOptionElement::SelectiveAcknowledgementPermitted,
        TcpOptionElement::Timestamp(0x0102_0304, 0),
        TcpOptionElement::Noop,
        TcpOptionElement::WindowScale(7),
    ]
}

#[derive(Clone, Copy)]
struct Syn {
    v6: bool,
    src_last: u8,
    sport: u16,
    dport: u16,
}

impl Syn {
    fn v4() -> Self {
        Self { v6: false, src_last: 2, sport: 40_000, dport: PORT }
    }

    fn v6() -> Self {
        Self { v6: true, ..Self::v4() }
    }

    fn client(self) -> ([u8; 4], [u8; 16]) {
        let (mut a4, mut a6) = (CLIENT4, CLIENT6);
        a4[3] = self.src_last;
        a6[15] = self.src_last;
        (a4, a6)
    }

    fn frame(self, options: &[TcpOptionElement]) -> Vec<u8> {
        let (c4, c6) = self.client();
        let b = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC);
        let b = if self.v6 { b.ipv6(c6, SERVER6, 64) } else { b.ipv4(c4, SERVER4, 64) };
        let tcp = b.tcp(self.sport, self.dport, 1000, 64240).syn().options(options).unwrap();
        let mut out = Vec::new();
        tcp.write(&mut out, &[]).unwrap();
        out
    }

    /// The client's third packet for a SYN-ACK whose sequence number is `cookie`.
    fn ack(self, cookie: u32) -> Vec<u8> {
        let (c4, c6) = self.client();
        let b = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC);
        let b = if self.v6 { b.ipv6(c6, SERVER6, 64) } else { b.ipv4(c4, SERVER4, 64) };
        let tcp = b.tcp(self.sport, self.dport, 1001, 502).ack(cookie.wrapping_add(1));
        let mut out = Vec::new();
        tcp.write(&mut out, &[]).unwrap();
        out
    }
}

/// Inserts VLAN tags (outermost first) after the MAC addresses.
fn with_vlan_tags(frame: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    for (tpid, vid) in tags {
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&vid.to_be_bytes());
    }
    out.extend_from_slice(&frame[12..]);
    out
}

/// Decodes a reply independently and checks every field a client relies on.
fn check_synack(reply: &[u8], syn: Syn) -> TcpHeader {
    assert_eq!(&reply[..6], &CLIENT_MAC, "destination MAC is the client's");
    assert_eq!(&reply[6..12], &SERVER_MAC, "source MAC is ours");
    let sliced = SlicedPacket::from_ethernet(reply).expect("etherparse decodes the SYN-ACK");
    let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else { panic!("no TCP in the reply") };
    let header = tcp.to_header();
    let (c4, c6) = syn.client();
    let expected = match sliced.net.as_ref().expect("IP") {
        NetSlice::Ipv4(ip) => {
            let ip4 = ip.header().to_header();
            assert_eq!(ip4.header_checksum, ip4.calc_header_checksum(), "IPv4 header checksum");
            assert_eq!((ip4.source, ip4.destination), (SERVER4, c4));
            header.calc_checksum_ipv4(&ip4, tcp.payload()).unwrap()
        }
        NetSlice::Ipv6(ip) => {
            let ip6 = ip.header().to_header();
            assert_eq!((ip6.source, ip6.destination), (SERVER6, c6));
            header.calc_checksum_ipv6(&ip6, tcp.payload()).unwrap()
        }
        NetSlice::Arp(_) => panic!("ARP?"),
    };
    assert_eq!(header.checksum, expected, "TCP checksum");
    assert!(tcp.payload().is_empty(), "a SYN-ACK carries no data");
    assert_eq!((header.source_port, header.destination_port), (syn.dport, syn.sport));
    assert_eq!(header.acknowledgment_number, 1001, "acks the client's ISN + 1");
    assert!(header.syn && header.ack && !header.rst && !header.fin && !header.psh);
    header
}

/// The kernel's verdict on the ACK that would complete this handshake.
fn kernel_accepts(det: &Detector, syn: Syn, cookie: u32) -> bool {
    match det.run("probe_check_cookie", &syn.ack(cookie)).0 {
        XDP_TX => true,
        XDP_DROP => false,
        other => panic!("probe could not check the cookie (verdict {other}: no listener?)"),
    }
}

fn options(header: &TcpHeader) -> Vec<TcpOptionElement> {
    header.options_iterator().map(Result::unwrap).collect()
}

#[test]
fn ipv4_syn_gets_a_synack_whose_cookie_the_kernel_accepts() {
    in_private_netns("2", || {
        let det = Detector::load(cookie_config(true), &["probe_check_cookie"]);
        let syn = Syn::v4();
        let (verdict, reply) = det.run(names::PROGRAM, &syn.frame(&linux_syn_options()));
        assert_eq!(verdict, XDP_TX);
        let h = check_synack(&reply, syn);
        let opts = options(&h);
        assert!(opts.contains(&TcpOptionElement::MaximumSegmentSize(1460)), "{opts:?}");
        assert!(opts.contains(&TcpOptionElement::SelectiveAcknowledgementPermitted));
        assert!(opts.contains(&TcpOptionElement::WindowScale(SYNACK_WSCALE)), "our scale, from the config");
        let ts = opts.iter().find_map(|o| match o {
            TcpOptionElement::Timestamp(val, ecr) => Some((*val, *ecr)),
            _ => None,
        });
        let (val, ecr) = ts.expect("TS option");
        assert_eq!(ecr, 0x0102_0304);
        assert_eq!(val & 0x3f, 7 | 1 << 4, "wscale 7 and SACK encoded for the kernel");
        assert!(kernel_accepts(&det, syn, h.sequence_number));
        assert!(!kernel_accepts(&det, syn, h.sequence_number ^ 0x00ff_0000), "a forged cookie is refused");
        assert_eq!(det.counter(Counter::TxCookie), 1);
    });
}

#[test]
fn ipv6_syn_gets_a_synack_whose_cookie_the_kernel_accepts() {
    in_private_netns("2", || {
        let det = Detector::load(cookie_config(true), &["probe_check_cookie"]);
        let syn = Syn::v6();
        let (verdict, reply) = det.run(names::PROGRAM, &syn.frame(&linux_syn_options()));
        assert_eq!(verdict, XDP_TX);
        let h = check_synack(&reply, syn);
        assert!(kernel_accepts(&det, syn, h.sequence_number));
        assert!(!kernel_accepts(&det, syn, h.sequence_number ^ 0x00ff_0000));
    });
}

#[test]
fn vlan_and_qinq_tags_are_kept_in_the_reply() {
    in_private_netns("2", || {
        let det = Detector::load(cookie_config(true), &["probe_check_cookie"]);
        for (syn, tags) in [
            (Syn::v4(), vec![(0x8100, 42)]),
            (Syn::v6(), vec![(0x8100, 42)]),
            (Syn::v4(), vec![(0x88a8, 100), (0x8100, 42)]),
            (Syn::v6(), vec![(0x88a8, 100), (0x8100, 42)]),
        ] {
            let frame = with_vlan_tags(&syn.frame(&linux_syn_options()), &tags);
            let (verdict, reply) = det.run(names::PROGRAM, &frame);
            assert_eq!(verdict, XDP_TX, "tags {tags:?}");
            let tag_bytes = 4 * tags.len();
            assert_eq!(&reply[12..12 + tag_bytes], &frame[12..12 + tag_bytes], "tags unchanged");
            // Strip the tags and check the rest like an untagged reply.
            let mut untagged = reply[..12].to_vec();
            untagged.extend_from_slice(&reply[12 + tag_bytes..]);
            let h = check_synack(&untagged, syn);
            assert!(kernel_accepts(&det, syn, h.sequence_number));
        }
    });
}

#[test]
fn without_timestamps_or_client_options_the_reply_has_mss_only() {
    in_private_netns("2", || {
        // Timestamps off in the config: MSS only, whatever the client offered.
        let det = Detector::load(cookie_config(false), &["probe_check_cookie"]);
        for syn in [Syn::v4(), Syn::v6()] {
            let (verdict, reply) = det.run(names::PROGRAM, &syn.frame(&linux_syn_options()));
            assert_eq!(verdict, XDP_TX);
            let h = check_synack(&reply, syn);
            assert_eq!(h.header_len(), 24);
            assert!(matches!(options(&h)[..], [TcpOptionElement::MaximumSegmentSize(_)]));
            assert!(kernel_accepts(&det, syn, h.sequence_number));
        }
        // Timestamps on, but a client that sent no options at all.
        let det = Detector::load(cookie_config(true), &["probe_check_cookie"]);
        let syn = Syn::v4();
        let (verdict, reply) = det.run(names::PROGRAM, &syn.frame(&[]));
        assert_eq!(verdict, XDP_TX);
        let h = check_synack(&reply, syn);
        assert_eq!(h.header_len(), 24);
        assert!(kernel_accepts(&det, syn, h.sequence_number));
    });
}

#[test]
fn syn_to_a_port_without_listener_passes_unchanged() {
    in_private_netns("2", || {
        let det = Detector::load(cookie_config(true), &["probe_check_cookie"]);
        let syn = Syn { dport: CLOSED_PORT, ..Syn::v4() };
        let frame = syn.frame(&linux_syn_options());
        let (verdict, out) = det.run(names::PROGRAM, &frame);
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(out, frame, "the kernel must get the SYN as it came");
        assert_eq!(det.counter(Counter::PassCookieNoListener), 1);
    });
}

#[test]
fn helper_declining_passes_the_syn_unchanged() {
    // tcp_syncookies = 1 and an empty SYN queue: the helper answers -ENOENT.
    in_private_netns("1", || {
        let det = Detector::load(cookie_config(true), &["probe_check_cookie"]);
        let frame = Syn::v6().frame(&linux_syn_options());
        let (verdict, out) = det.run(names::PROGRAM, &frame);
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(out, frame);
        assert_eq!(det.counter(Counter::PassCookieNotArmed), 1);
    });
}

#[test]
fn ipv4_options_are_left_to_the_kernel() {
    in_private_netns("2", || {
        let det = Detector::load(cookie_config(true), &["probe_check_cookie"]);
        let syn = Syn::v4();
        let plain = syn.frame(&linux_syn_options());
        // Rebuild the IPv4 header with 4 bytes of options (NOPs), fixing lengths and checksum.
        let mut frame = plain[..14].to_vec();
        let mut ip = plain[14..34].to_vec();
        ip[0] = 0x46;
        let total = u16::from_be_bytes([ip[2], ip[3]]) + 4;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&[1, 1, 1, 0]);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&plain[34..]);
        let (verdict, out) = det.run(names::PROGRAM, &frame);
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(out, frame);
        assert_eq!(det.counter(Counter::PassCookieUnsupported), 1);
    });
}

#[test]
fn synack_budget_caps_replies_per_cpu() {
    in_private_netns("2", || {
        let mut cfg = cookie_config(true);
        cfg.cookie_budget_per_second = 3;
        let det = Detector::load(cfg, &[]);
        let verdicts: Vec<u32> = (0..5)
            .map(|i| det.run(names::PROGRAM, &Syn { sport: 41_000 + i, ..Syn::v4() }.frame(&[])).0)
            .collect();
        assert_eq!(verdicts, [XDP_TX, XDP_TX, XDP_TX, XDP_DROP, XDP_DROP]);
        assert_eq!(det.counter(Counter::DropCookieBudget), 2);
    });
}

#[test]
fn cookie_mode_keeps_no_state_for_ordinary_sources() {
    in_private_netns("2", || {
        let mut cfg = cookie_config(true);
        cfg.syn_rate_limit = 50;
        let det = Detector::load(cfg, &[]);
        for last in 1..=200u8 {
            let syn = Syn { src_last: last, ..Syn::v6() };
            assert_eq!(det.run(names::PROGRAM, &syn.frame(&[])).0, XDP_TX);
        }
        assert_eq!(det.sources().keys().count(), 0, "no per-source entries for spoofable SYNs");
        assert_eq!(det.pending().keys().count(), 0, "no per-flow entries either");
    });
}

#[test]
fn a_single_source_flooding_in_cookie_mode_is_found_by_the_sketch_and_blocked() {
    in_private_netns("2", || {
        let mut cfg = cookie_config(true);
        cfg.syn_rate_limit = 5;
        let det = Detector::load(cfg, &[]);
        let flood = |i: u16| Syn { sport: 42_000 + i, src_last: 66, ..Syn::v4() };
        let verdicts: Vec<u32> = (0..8).map(|i| det.run(names::PROGRAM, &flood(i).frame(&[])).0).collect();
        assert_eq!(verdicts[..5], [XDP_TX; 5], "within the limit: answered");
        assert_eq!(verdicts[5..], [XDP_DROP; 3], "over it: blocked");
        assert_eq!(det.counter(Counter::BlockedSynRate), 1);
        assert_eq!(det.counter(Counter::DropOverLimit), 1);
        assert_eq!(det.counter(Counter::DropBlocked), 2);
        let mut key = SourceKey { addr: [0; 16] };
        key.addr[10..12].copy_from_slice(&[0xff, 0xff]);
        key.addr[12..].copy_from_slice(&[198, 18, 0, 66]);
        let state = det.sources().get(&key, 0).expect("the heavy hitter has an entry");
        assert!(state.blocked_until_ns > 0);
        // Someone else is still answered.
        assert_eq!(det.run(names::PROGRAM, &Syn { src_last: 7, ..Syn::v4() }.frame(&[])).0, XDP_TX);
    });
}
