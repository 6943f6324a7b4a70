//! The cookie responder in the real kernel (BPF_PROG_TEST_RUN): SYNs in, SYN-ACKs out,
//! decoded by an independent parser (etherparse), their cookies checked by the kernel
//! (`bpf_tcp_check_syncookie`, through the test object's `probe_check_cookie` program).
//!
//! Each test runs on its own thread inside a private network namespace (`unshare`), with
//! its own listener and `tcp_syncookies` there: the host is not touched. Needs root.

mod common;

use std::{net::TcpListener, thread};

use common::{Detector, XDP_DROP, XDP_PASS, XDP_TX};
use detector_common::{
    block_filter,
    config::{Config, FLAG_COOKIES, FLAG_COOKIE_TIMESTAMPS, FLAG_ENFORCE, FLAG_RAW_COOKIES},
    counters::Counter,
    names, sketch,
    state::{SourceKey, SourceState},
    tick_clock::TickAnchor,
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
    c.flags =
        FLAG_ENFORCE | FLAG_COOKIES | FLAG_RAW_COOKIES | if timestamps { FLAG_COOKIE_TIMESTAMPS } else { 0 };
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

/// The reply frame: a SYN the reply's length is answered in place (no resize: `send_reply`
/// sees the length by pointer comparison); one with longer options that end the frame
/// keeps its length, the bytes after the MSS-only SYN-ACK zeroed as an Ethernet trailer
/// that the IP length leaves out (`reply_frame`: no resize either; trailers of an odd and
/// an even number of words, up to the longest); one padded to
/// Ethernet's 60-byte minimum or carrying data is cut to the reply (its length from the
/// helper); one shorter grows to it. The kernel accepts every cookie.
#[test]
fn the_reply_frame_is_its_headers_or_the_syns_with_a_zeroed_trailer() {
    in_private_netns("2", || {
        let det = Detector::load(cookie_config(false), &["probe_check_cookie"]);
        let mss = [TcpOptionElement::MaximumSegmentSize(1460)];
        for syn in [Syn::v4(), Syn::v6()] {
            let exact = syn.frame(&mss);
            let mut padded = exact.clone();
            padded.extend_from_slice(&[0; 6]);
            let longer = syn.frame(&[
                TcpOptionElement::MaximumSegmentSize(1460),
                TcpOptionElement::Noop,
                TcpOptionElement::WindowScale(7),
            ]);
            // As Linux sends it: 20 bytes of options, 16 more than the reply's.
            let linux = syn.frame(&[
                TcpOptionElement::MaximumSegmentSize(1460),
                TcpOptionElement::SelectiveAcknowledgementPermitted,
                TcpOptionElement::Timestamp(7, 0),
                TcpOptionElement::Noop,
                TcpOptionElement::WindowScale(7),
            ]);
            // The longest TCP header: 36 bytes more than the reply's, nine trailer words.
            let longest = syn.frame(&options_of_len(40));
            for (what, frame, frame_len) in [
                ("same length", &exact, exact.len()),
                ("longer options", &longer, longer.len()),
                ("Linux's options", &linux, linux.len()),
                ("the longest header", &longest, longest.len()),
                ("padded", &padded, exact.len()),
                ("no options", &syn.frame(&[]), exact.len()),
            ] {
                let (verdict, reply) = det.run(names::PROGRAM, frame);
                assert_eq!(verdict, XDP_TX, "{what}");
                let h = check_synack(&reply, syn);
                assert_eq!(h.header_len(), 24, "{what}");
                assert_eq!(
                    ip_packet_end(&reply),
                    exact.len(),
                    "{what}: the IP length ends the packet at the SYN-ACK"
                );
                assert_eq!(reply.len(), frame_len, "{what}: the frame's length");
                assert!(reply[exact.len()..].iter().all(|&b| b == 0), "{what}: the trailer is zeroed");
                assert!(kernel_accepts(&det, syn, h.sequence_number), "{what}");
            }
            assert!(
                longer.len() == exact.len() + 4
                    && linux.len() == exact.len() + 16
                    && longest.len() == exact.len() + 36,
                "the cases differ as named: trailers of 1, 4 and 9 words"
            );
        }
    });
}

/// Where the IP header's length field says the packet ends, as bytes from the frame's
/// start (an untagged frame).
fn ip_packet_end(frame: &[u8]) -> usize {
    match frame[14] >> 4 {
        4 => 14 + usize::from(u16::from_be_bytes([frame[16], frame[17]])),
        6 => 14 + 40 + usize::from(u16::from_be_bytes([frame[18], frame[19]])),
        v => panic!("IP version {v}"),
    }
}

/// The options of a SYN whose TCP header is `20 + len` bytes: MSS, NOPs, and from 16
/// bytes on a timestamp last, so the option walk must find it at every offset.
fn options_of_len(len: usize) -> Vec<TcpOptionElement> {
    let mut opts = Vec::new();
    if len >= 4 {
        opts.push(TcpOptionElement::MaximumSegmentSize(1460));
    }
    let ts = len >= 16;
    let nops = len.saturating_sub(4) - if ts { 12 } else { 0 };
    opts.extend(std::iter::repeat_n(TcpOptionElement::Noop, nops));
    if ts {
        opts.extend([
            TcpOptionElement::Noop,
            TcpOptionElement::Noop,
            TcpOptionElement::Timestamp(0x0a0b_0c0d, 0),
        ]);
    }
    opts
}

#[test]
fn every_tcp_header_length_gets_a_cookie_the_kernel_accepts() {
    // The cookie helper is called with the header length as a verifier-checked constant,
    // one call per length (docs/verifier.md): each of them must work.
    in_private_netns("2", || {
        let det = Detector::load(cookie_config(true), &["probe_check_cookie"]);
        for syn in [Syn::v4(), Syn::v6()] {
            for len in (0..=40).step_by(4) {
                let frame = syn.frame(&options_of_len(len));
                let header = if syn.v6 { 54 } else { 34 };
                assert_eq!(usize::from(frame[header + 12] >> 4) * 4, 20 + len, "the SYN's header length");
                let (verdict, reply) = det.run(names::PROGRAM, &frame);
                assert_eq!(verdict, XDP_TX, "options of {len} bytes");
                let h = check_synack(&reply, syn);
                let echoed = options(&h).iter().find_map(|o| match o {
                    TcpOptionElement::Timestamp(_, ecr) => Some(*ecr),
                    _ => None,
                });
                assert_eq!(echoed, (len >= 16).then_some(0x0a0b_0c0d), "options of {len} bytes: TS echo");
                assert!(kernel_accepts(&det, syn, h.sequence_number), "options of {len} bytes");
            }
        }
        // One socket-bound answer per listener address (IPv4, IPv6), which renews its
        // overflow stamp; the fast path answers the other 20 within that second, and the
        // kernel accepted those cookies too (cookie_fastpath_test_run.rs has the timing).
        assert_eq!(det.counter(Counter::TxCookie), 2);
        assert_eq!(det.counter(Counter::TxCookieFast), 20);
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

/// The sketch's cascade in the kernel (`sketch::cascade`): with a hot mark, a source's SYNs
/// count in the first row only until that cell passes the mark, then in every row; a
/// source alone in its cells is still blocked at exactly the SYN past the limit.
#[test]
fn a_source_counts_in_the_later_sketch_rows_only_past_the_hot_mark() {
    in_private_netns("2", || {
        let mut cfg = cookie_config(true);
        cfg.syn_rate_limit = 6;
        cfg.sketch_hot_mark = sketch::hot_mark(6);
        let det = Detector::load(cfg, &[]);
        let sketch_cells = |det: &Detector| -> Vec<u64> {
            let map: aya::maps::Array<_, u64> =
                aya::maps::Array::try_from(det.ebpf.map(names::MAP_SKETCH).unwrap()).unwrap();
            map.iter().map(Result::unwrap).collect()
        };
        let counts = |words: &[u64], last: u8| -> [u32; 4] {
            let mut key = SourceKey { addr: [0; 16] };
            key.addr[10..12].copy_from_slice(&[0xff, 0xff]);
            key.addr[12..].copy_from_slice(&[198, 18, 0, last]);
            sketch::counts(words, &key, &cfg, None).unwrap()
        };
        let light = |i: u16| Syn { sport: 44_000 + i, src_last: 88, ..Syn::v4() };
        for i in 0..3 {
            assert_eq!(det.run(names::PROGRAM, &light(i).frame(&[])).0, XDP_TX);
        }
        assert_eq!(counts(&sketch_cells(&det), 88), [3, 0, 0, 0], "up to the mark: the first row only");

        let heavy = |i: u16| Syn { sport: 45_000 + i, src_last: 89, ..Syn::v4() };
        let verdicts: Vec<u32> = (0..9).map(|i| det.run(names::PROGRAM, &heavy(i).frame(&[])).0).collect();
        assert_eq!(verdicts[..6], [XDP_TX; 6], "within the limit: answered");
        assert_eq!(verdicts[6..], [XDP_DROP; 3], "the 7th SYN is over it: blocked");
        assert_eq!(det.counter(Counter::BlockedSynRate), 1);
        // SYNs 4 to 7 past the mark counted in every row; 8 and 9 dropped before the sketch.
        assert_eq!(counts(&sketch_cells(&det), 89), [7, 4, 4, 4]);
    });
}

/// Cookie mode looks a source up only when its `BLOCK_FILTER` bucket holds a running block
/// (`detector_common::block_filter`), so every block must stamp it: here one made in
/// tracking mode, before an auto-mode switch to cookies. And the gate is real: a block
/// written into `SOURCES` behind the program's back (no stamp) is not seen.
#[test]
fn blocks_from_tracking_mode_hold_in_cookie_mode_through_the_block_filter() {
    in_private_netns("2", || {
        let mut tracking = Config::new(3, 0, 60 * SEC, 3 * SEC);
        tracking.sketch_width = 16_384;
        let mut det = Detector::load(tracking, &[]);
        let flood = |i: u16| Syn { sport: 43_000 + i, src_last: 77, ..Syn::v4() };
        let verdicts: Vec<u32> = (0..5).map(|i| det.run(names::PROGRAM, &flood(i).frame(&[])).0).collect();
        assert_eq!(verdicts, [XDP_PASS, XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP], "blocked in tracking mode");

        det.set_config(Config { syn_rate_limit: 3, ..cookie_config(true) });
        assert_eq!(det.run(names::PROGRAM, &flood(5).frame(&[])).0, XDP_DROP, "still blocked with cookies");
        assert_eq!(det.counter(Counter::DropBlocked), 2);
        assert_eq!(det.run(names::PROGRAM, &Syn { src_last: 78, ..Syn::v4() }.frame(&[])).0, XDP_TX);

        // A block the filter was not told about: the program does not look, and answers.
        let mut key = SourceKey { addr: [0; 16] };
        key.addr[10..12].copy_from_slice(&[0xff, 0xff]);
        key.addr[12..].copy_from_slice(&[198, 18, 0, 79]);
        let mut sources: aya::maps::HashMap<_, SourceKey, SourceState> =
            aya::maps::HashMap::try_from(det.ebpf.map_mut(names::MAP_SOURCES).unwrap()).unwrap();
        let blocked = SourceState { blocked_until_ns: u64::MAX, ..SourceState::new(0, &tracking) };
        sources.insert(key, blocked, 0).unwrap();
        assert_eq!(det.run(names::PROGRAM, &Syn { src_last: 79, ..Syn::v4() }.frame(&[])).0, XDP_TX);
        // Stamped as the program stamps a block: dropped.
        let mut filter: aya::maps::Array<_, u32> =
            aya::maps::Array::try_from(det.ebpf.map_mut(names::MAP_BLOCK_FILTER).unwrap()).unwrap();
        // Stamps wrap (a block lasts at most a day: the config's limit), so an hour from now.
        let in_an_hour = (common::monotonic_ns() / SEC + 3600) * SEC;
        filter.set(block_filter::bucket(&key.addr), block_filter::stamp(in_an_hour, 0), 0).unwrap();
        assert_eq!(det.run(names::PROGRAM, &Syn { src_last: 79, ..Syn::v4() }.frame(&[])).0, XDP_DROP);
    });
}

/// The slot past the buckets (`block_filter::LATEST_SLOT`) gates them: while it holds no
/// running block, a SYN reads no bucket and looks nothing up, whatever its bucket says;
/// once it does, the bucket decides; once it has run out, the bucket is skipped again.
#[test]
fn the_latest_block_slot_gates_the_buckets() {
    in_private_netns("2", || {
        let cfg = Config { syn_rate_limit: 3, ..cookie_config(true) };
        let mut det = Detector::load(cfg, &[]);
        let mut key = SourceKey { addr: [0; 16] };
        key.addr[10..12].copy_from_slice(&[0xff, 0xff]);
        key.addr[12..].copy_from_slice(&[198, 18, 0, 79]);
        let mut sources: aya::maps::HashMap<_, SourceKey, SourceState> =
            aya::maps::HashMap::try_from(det.ebpf.map_mut(names::MAP_SOURCES).unwrap()).unwrap();
        sources
            .insert(key, SourceState { blocked_until_ns: u64::MAX, ..SourceState::new(0, &cfg) }, 0)
            .unwrap();
        let now = common::monotonic_ns() / SEC * SEC;
        // Ended ten seconds ago, not an hour: a machine booted less than an hour ago has
        // no monotonic time an hour back (CI machines are fresh).
        let (in_an_hour, ended) = (now + 3600 * SEC, now - 10 * SEC);
        let stamp = |det: &mut Detector, slot: u32, until: u64| {
            let mut filter: aya::maps::Array<_, u32> =
                aya::maps::Array::try_from(det.ebpf.map_mut(names::MAP_BLOCK_FILTER).unwrap()).unwrap();
            filter.set(slot, block_filter::stamp(until, 0), 0).unwrap();
        };
        stamp(&mut det, block_filter::bucket(&key.addr), in_an_hour);
        let syn = Syn { src_last: 79, ..Syn::v4() }.frame(&[]);
        assert_eq!(det.run(names::PROGRAM, &syn).0, XDP_TX, "the bucket alone: not read");
        stamp(&mut det, block_filter::LATEST_SLOT, in_an_hour);
        assert_eq!(det.run(names::PROGRAM, &syn).0, XDP_DROP, "both: looked up, blocked");
        stamp(&mut det, block_filter::LATEST_SLOT, ended);
        assert_eq!(det.run(names::PROGRAM, &syn).0, XDP_TX, "the latest block is over: not read");
        assert_eq!(det.counter(Counter::DropBlocked), 1);
    });
}

/// Cookie mode drops a blocked source from the block cache too (`BLOCKED_TABLE`): the
/// sketch blocks it, its next SYN is dropped from `SOURCES` and caches the block, the
/// ones after that from the cache, counted in its slot and added to the entry every
/// `FOLD_EVERY`. The fold leaves the entry's pending handshakes alone: cookie mode keeps
/// none, and does not count them as failed.
#[test]
fn cookie_mode_drops_a_blocked_source_from_the_block_cache() {
    use detector_common::blocked_table::FOLD_EVERY;
    in_private_netns("2", || {
        let cfg = Config { syn_rate_limit: 5, ..cookie_config(true) };
        let mut det = Detector::load(cfg, &[]);
        let flood = |i: u16| Syn { sport: 44_000 + i, src_last: 68, ..Syn::v4() }.frame(&[]);
        let mut key = SourceKey { addr: [0; 16] };
        key.addr[10..12].copy_from_slice(&[0xff, 0xff]);
        key.addr[12..].copy_from_slice(&[198, 18, 0, 68]);
        let verdicts: Vec<u32> = (0..6).map(|i| det.run(names::PROGRAM, &flood(i)).0).collect();
        assert_eq!(verdicts, [XDP_TX, XDP_TX, XDP_TX, XDP_TX, XDP_TX, XDP_DROP], "blocked by the sketch");
        assert!(det.cached_block(&key.addr).is_none(), "cached by the blocked source's next SYN, not before");

        assert_eq!(det.run(names::PROGRAM, &flood(6)).0, XDP_DROP);
        let entry = det.sources().get(&key, 0).unwrap();
        let slot = det.cached_block(&key.addr).expect("cached by the SYN the SOURCES path dropped");
        assert_eq!((slot.until_ns, slot.unfolded), (entry.blocked_until_ns, 0));
        // Pending handshakes that tracking would now count as failed (from a tracking-mode
        // past): the fold must not age them in cookie mode.
        let aged =
            SourceState { newest_slot: 0, pending: [3; detector_common::config::PENDING_SLOTS], ..entry };
        let mut sources: aya::maps::HashMap<_, SourceKey, SourceState> =
            aya::maps::HashMap::try_from(det.ebpf.map_mut(names::MAP_SOURCES).unwrap()).unwrap();
        sources.insert(key, aged, 0).unwrap();

        let fold = u16::try_from(FOLD_EVERY).unwrap();
        for i in 0..fold - 1 {
            assert_eq!(det.run(names::PROGRAM, &flood(7 + i)).0, XDP_DROP);
        }
        let syns = |det: &Detector| det.sources().get(&key, 0).unwrap().syns_total;
        assert_eq!(
            (det.cached_block(&key.addr).unwrap().unfolded, syns(&det)),
            (FOLD_EVERY - 1, entry.syns_total),
            "counted in the slot, not in the entry"
        );
        assert_eq!(det.run(names::PROGRAM, &flood(7 + fold)).0, XDP_DROP);
        let folded = det.sources().get(&key, 0).unwrap();
        assert_eq!(
            (det.cached_block(&key.addr).unwrap().unfolded, folded.syns_total),
            (0, entry.syns_total + u64::from(FOLD_EVERY)),
            "folded into the entry"
        );
        assert_eq!((folded.pending, folded.failed), (aged.pending, aged.failed), "not aged");
        assert_eq!(det.counter(Counter::HandshakeFailed), 0);
        assert_eq!(det.counter(Counter::DropBlocked), 1 + u64::from(fold));
        // Someone else is still answered while the block runs (and reads the cache).
        assert_eq!(det.run(names::PROGRAM, &Syn { src_last: 7, ..Syn::v4() }.frame(&[])).0, XDP_TX);
    });
}

// ---- Pass reasons that need a particular kernel state -----------------------------------

/// A SYN with extra flags (`tcp_flags` bits besides SYN), as `Syn::frame` builds it.
fn syn_with_flags(syn: Syn, fin: bool, options: &[TcpOptionElement]) -> Vec<u8> {
    let (c4, c6) = syn.client();
    let b = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC);
    let b = if syn.v6 { b.ipv6(c6, SERVER6, 64) } else { b.ipv4(c4, SERVER4, 64) };
    let mut tcp = b.tcp(syn.sport, syn.dport, 1000, 64240).syn().options(options).unwrap();
    if fin {
        tcp = tcp.fin();
    }
    let mut out = Vec::new();
    tcp.write(&mut out, &[]).unwrap();
    out
}

/// Runs `ip args` in the calling thread's network namespace (a child process inherits it).
fn ip_here(args: &[&str]) {
    let out = std::process::Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A TCP connection from `src` (bound before connecting) to `dst`, in this namespace.
fn connect_from(src: std::net::SocketAddrV4, dst: std::net::SocketAddrV4) -> std::net::TcpStream {
    use std::os::fd::FromRawFd;
    let sockaddr = |a: std::net::SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap(),
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
        sin_zero: [0; 8],
    };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_in>()).unwrap();
    // SAFETY: plain socket calls on a descriptor we own; the addresses are valid sockaddr_in.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = std::net::TcpStream::from_raw_fd(fd);
        let (s, d) = (sockaddr(src), sockaddr(dst));
        assert_eq!(
            libc::bind(fd, (&raw const s).cast(), len),
            0,
            "bind: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::connect(fd, (&raw const d).cast(), len),
            0,
            "connect: {}",
            std::io::Error::last_os_error()
        );
        stream
    }
}

#[test]
fn a_syn_for_an_existing_connection_or_time_wait_socket_is_left_to_the_kernel() {
    in_private_netns("2", || {
        use std::{
            io::Read,
            net::{Ipv4Addr, Shutdown, SocketAddrV4},
        };
        // The fixture's addresses on this namespace's loopback: a real connection from the
        // client to the listener, whose exact 4-tuple a SYN can then reuse.
        ip_here(&["link", "set", "lo", "up"]);
        ip_here(&["addr", "add", &format!("{}/32", Ipv4Addr::from(SERVER4)), "dev", "lo"]);
        ip_here(&["addr", "add", &format!("{}/32", Ipv4Addr::from(CLIENT4)), "dev", "lo"]);
        let listener = TcpListener::bind((Ipv4Addr::from(SERVER4), PORT + 1)).unwrap();
        let syn = Syn { sport: 45_000, dport: PORT + 1, ..Syn::v4() };
        let client = connect_from(
            SocketAddrV4::new(CLIENT4.into(), syn.sport),
            SocketAddrV4::new(SERVER4.into(), syn.dport),
        );
        let (accepted, _) = listener.accept().unwrap();
        let det = Detector::load(cookie_config(true), &[]);

        // An established connection owns the tuple.
        let frame = syn.frame(&linux_syn_options());
        let (verdict, out) = det.run(names::PROGRAM, &frame);
        assert_eq!(verdict, XDP_PASS, "established");
        assert_eq!(out, frame, "the kernel must get the SYN as it came");
        assert_eq!(det.counter(Counter::PassCookieExistingSocket), 1, "established");
        assert_eq!(det.counter(Counter::TxCookie), 0);

        // The server closes first, so its side of the tuple goes to TIME_WAIT.
        accepted.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        (&client).read_to_end(&mut rest).unwrap();
        drop(client);
        drop(accepted);
        thread::sleep(std::time::Duration::from_millis(200));
        let ss = std::process::Command::new("ss").args(["-tan", "state", "time-wait"]).output().unwrap();
        let ss = String::from_utf8_lossy(&ss.stdout);
        assert!(
            ss.contains(&format!("{}:{}", Ipv4Addr::from(SERVER4), syn.dport)),
            "no TIME_WAIT socket: {ss}"
        );
        let (verdict, out) = det.run(names::PROGRAM, &frame);
        assert_eq!(verdict, XDP_PASS, "TIME_WAIT");
        assert_eq!(out, frame);
        assert_eq!(det.counter(Counter::PassCookieExistingSocket), 2, "TIME_WAIT");

        // Another port of the same client: no socket owns it, the listener answers.
        let fresh = Syn { sport: syn.sport + 1, ..syn };
        assert_eq!(det.run(names::PROGRAM, &fresh.frame(&linux_syn_options())).0, XDP_TX);
        assert_eq!(det.counter(Counter::TxCookie), 1);
    });
}

/// A SYN with FIN set is no connection request: the kernel discards it in a listener
/// (`tcp_rcv_state_process`), so it is neither tracked nor answered, and passes as plain
/// TCP, unchanged.
///
/// `cookie_helper_error` has no fixture: with the checks before the call, every argument
/// `bpf_tcp_gen_syncookie` validates is valid by construction (a listener from the lookup,
/// th_len = doff × 4, SYN without ACK/RST/FIN, an IPv4 tuple finds no IPv6-only listener,
/// an IPv6 tuple only IPv6 listeners). SYN|FIN reached it before FIN excluded a SYN.
#[test]
fn a_syn_with_fin_is_not_a_connection_request() {
    in_private_netns("2", || {
        let det = Detector::load(cookie_config(true), &[]);
        for syn in [Syn::v4(), Syn::v6()] {
            let frame = syn_with_flags(syn, true, &linux_syn_options());
            let (verdict, out) = det.run(names::PROGRAM, &frame);
            assert_eq!(verdict, XDP_PASS, "v6: {}", syn.v6);
            assert_eq!(out, frame, "the kernel must get the segment as it came");
        }
        assert_eq!(det.counter(Counter::PassTcp), 2);
        assert_eq!(det.counter(Counter::TxCookie), 0);
        // The same SYN without FIN is answered: the FIN made the difference.
        assert_eq!(
            det.run(names::PROGRAM, &syn_with_flags(Syn::v4(), false, &linux_syn_options())).0,
            XDP_TX
        );
    });
}

/// `cookie_no_room` cannot be reached through BPF_PROG_TEST_RUN: the kernel copies the
/// test frame into a buffer of a whole page (`bpf_prog_test_run_xdp`: `frame_sz` =
/// PAGE_SIZE, headroom 256, the linear part up to 4096 - 256 - 320 bytes), so growing a
/// SYN by the at most 40 bytes its SYN-ACK needs always succeeds; a frame too large for
/// that linear part is longer than any SYN-ACK and only shrinks. This test pins that down
/// (a SYN without options is answered with a longer SYN-ACK), so that the counter's absence from
/// the fixtures is a known fact: the path is reached only by drivers (or generic XDP on a
/// cloned or tight skb) that leave less tailroom than the reply needs.
#[test]
fn test_run_frames_always_have_room_for_the_reply() {
    in_private_netns("2", || {
        let det = Detector::load(cookie_config(true), &[]);
        for syn in [Syn::v4(), Syn::v6()] {
            // No options: a 20-byte TCP header, answered with MSS (24 bytes) at least.
            let frame = syn.frame(&[]);
            let (verdict, reply) = det.run(names::PROGRAM, &frame);
            assert_eq!(verdict, XDP_TX);
            assert!(reply.len() > frame.len(), "{} -> {} bytes", frame.len(), reply.len());
        }
        assert_eq!(det.counter(Counter::PassCookieNoRoom), 0);
    });
}

/// `map_error` from the one lookup that can miss under BPF_PROG_TEST_RUN: a `SKETCH` cell
/// when the config's `sketch_width` is wider than the map (the agent sizes both from one
/// key, so only a bug gets here). Without the estimate no flooder could be found, so the
/// SYN is left to the kernel, counted, rather than answered blind. The other map paths
/// cannot fail here: `SOURCES` and `PENDING` are LRU hashes, whose inserts evict rather
/// than fail (and a failed PENDING insert counts as a retransmission), and `COOKIE_BUDGET`
/// is a one-slot array.
#[test]
fn a_sketch_wider_than_its_map_is_a_counted_map_error() {
    in_private_netns("2", || {
        let mut cfg = cookie_config(true);
        // The object's SKETCH holds `sketch::words(16_384)` words; the last row of a 32,768
        // wide sketch is outside it.
        cfg.sketch_width = 32_768;
        cfg.syn_rate_limit = 5;
        let det = Detector::load(cfg, &[]);
        let verdicts: Vec<u32> = (0..8)
            .map(|i| det.run(names::PROGRAM, &Syn { sport: 46_000 + i, ..Syn::v4() }.frame(&[])).0)
            .collect();
        println!("verdicts {verdicts:?}, map_error {}", det.counter(Counter::PassMapError));
        assert_eq!(det.counter(Counter::PassMapError), 8, "every SYN whose sketch cell is missing");
        assert_eq!(verdicts, [XDP_PASS; 8], "left to the kernel, not answered blind");
    });
}

/// Cookie mode's clock in the kernel (`clock::coarse_now`): the first SYN on a CPU reads
/// the coarse clock and keeps it with the jiffies it read it at; SYNs within that tick
/// reuse it; a SYN after the next tick reads again. What it keeps is the kernel's coarse
/// time, so it lies between two readings of `CLOCK_MONOTONIC_COARSE` around the SYN.
#[test]
fn cookie_mode_reads_the_coarse_clock_once_per_tick() {
    in_private_netns("2", || {
        let det = Detector::load(cookie_config(true), &[]);
        let anchor = || {
            let map: aya::maps::PerCpuArray<_, TickAnchor> =
                aya::maps::PerCpuArray::try_from(det.ebpf.map(names::MAP_TICK_ANCHOR).unwrap()).unwrap();
            // The test thread is pinned to CPU 0 (`in_private_netns`).
            map.get(&0, 0).unwrap()[0]
        };
        assert_eq!(anchor(), TickAnchor::default(), "nothing read before the first SYN");
        let before = common::coarse_monotonic_ns();
        assert_eq!(det.run(names::PROGRAM, &Syn::v4().frame(&linux_syn_options())).0, XDP_TX);
        let after = common::coarse_monotonic_ns();
        let first = anchor();
        assert!(first.jiffies != 0, "jiffies read: {first:?}");
        assert!(
            (before..=after).contains(&first.coarse_ns),
            "the kept time {} is the coarse clock's, between {before} and {after}",
            first.coarse_ns
        );
        // Ticks are 1-10 ms; 50 ms later the jiffies have moved and the SYN reads again.
        thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(det.run(names::PROGRAM, &Syn::v4().frame(&linux_syn_options())).0, XDP_TX);
        let second = anchor();
        assert!(second.jiffies > first.jiffies, "{first:?} then {second:?}");
        assert!(second.coarse_ns >= first.coarse_ns + 40 * 1_000_000, "{first:?} then {second:?}");
    });
}
