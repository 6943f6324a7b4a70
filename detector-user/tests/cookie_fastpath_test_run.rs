//! The cookie fast path and the ACK shield in the real kernel (BPF_PROG_TEST_RUN): which
//! helper answers when (a socket-bound answer renews the listener, the raw helper answers
//! within the next second), that the kernel accepts raw cookies only while the listener's
//! overflow stamp is fresh, and that forged cookie ACKs are dropped while real ones pass.
//!
//! Each test runs on its own thread in a private network namespace (`unshare`) with its own
//! dual-stack listener and `tcp_syncookies = 2` there: the host is not touched. Needs root.

mod common;

use std::{net::TcpListener, thread, time::Duration};

use aya::maps::{PerCpuArray, PerCpuValues};
use common::{Detector, SERVER4, SERVER6, XDP_DROP, XDP_PASS, XDP_TX};
use detector_common::{
    config::{Config, FLAG_COOKIES, FLAG_COOKIE_TIMESTAMPS, FLAG_ENFORCE, FLAG_RAW_COOKIES},
    counters::Counter,
    fastpath::{renewal_index, RenewalSlot},
    names,
    parse::ipv4_mapped,
    policy::{PORT_DEFAULT, PORT_NO_LISTENER},
};
use etherparse::{PacketBuilder, SlicedPacket, TcpOptionElement, TransportSlice};

const PORT: u16 = 8080;
const SEC: u64 = 1_000_000_000;
const CLIENT4: [u8; 4] = [198, 18, 0, 2];
const CLIENT6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

fn in_private_netns(test: impl FnOnce() + Send + 'static) {
    common::assert_root();
    thread::spawn(move || {
        // SAFETY: affects only this thread, which nothing else uses.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare(CLONE_NEWNET)");
        // One CPU for the whole test: `COOKIE_RENEWALS` is per CPU, so a renewal made by
        // one test run is seen by the next only on the same CPU.
        // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set), 0);
        }
        std::fs::write("/proc/sys/net/ipv4/tcp_syncookies", "2").unwrap();
        let _listener = TcpListener::bind(("::", PORT)).expect("listener in the private netns");
        test();
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

fn cookie_config() -> Config {
    let mut c = Config::new(0, 0, 60 * SEC, 3 * SEC);
    c.flags = FLAG_ENFORCE | FLAG_COOKIES | FLAG_COOKIE_TIMESTAMPS | FLAG_RAW_COOKIES;
    c.sketch_width = 16_384;
    c.sketch_seed = 7;
    c.cookie_budget_per_second = 1_000_000;
    c.synack_wscale = 7;
    c
}

/// A segment from the client (`sport`) to PORT on the fixture server; a SYN carries
/// Linux's options.
fn segment(v6: bool, sport: u16, dport: u16, syn: bool, ack: Option<u32>) -> Vec<u8> {
    let options = if syn { linux_options(1460) } else { Vec::new() };
    segment_with(v6, sport, dport, syn, ack, &options)
}

/// The options of a Linux SYN, in Linux's order, with this MSS.
fn linux_options(mss: u16) -> Vec<TcpOptionElement> {
    vec![
        TcpOptionElement::MaximumSegmentSize(mss),
        TcpOptionElement::SelectiveAcknowledgementPermitted,
        TcpOptionElement::Timestamp(7, 0),
        TcpOptionElement::Noop,
        TcpOptionElement::WindowScale(7),
    ]
}

/// A segment as `segment` makes it, with these TCP options.
fn segment_with(
    v6: bool,
    sport: u16,
    dport: u16,
    syn: bool,
    ack: Option<u32>,
    options: &[TcpOptionElement],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]);
    let b = if v6 { b.ipv6(CLIENT6, SERVER6, 64) } else { b.ipv4(CLIENT4, SERVER4, 64) };
    let seq = if syn { 1000 } else { 1001 };
    let mut tcp = b.tcp(sport, dport, seq, 64240);
    if syn {
        tcp = tcp.syn();
    }
    if let Some(ack) = ack {
        tcp = tcp.ack(ack);
    }
    let tcp = tcp.options(options).unwrap();
    let mut out = Vec::new();
    tcp.write(&mut out, &[]).unwrap();
    out
}

fn syn(v6: bool, sport: u16) -> Vec<u8> {
    segment(v6, sport, PORT, true, None)
}

/// A bare IPv4 SYN from `client`:`sport` to the fixture server's `dport`, or the client's
/// FIN on that tuple.
fn syn_or_fin(client: [u8; 4], sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]).ipv4(client, SERVER4, 64);
    let mut out = Vec::new();
    if syn {
        b.tcp(sport, dport, 1000, 64240).syn().write(&mut out, &[]).unwrap();
    } else {
        b.tcp(sport, dport, 5, 512).ack(1).fin().write(&mut out, &[]).unwrap();
    }
    out
}

/// The client's third packet for a SYN-ACK whose sequence number is `cookie`.
fn ack(v6: bool, sport: u16, cookie: u32) -> Vec<u8> {
    segment(v6, sport, PORT, false, Some(cookie.wrapping_add(1)))
}

/// Answers the SYN from `sport`; returns the SYN-ACK's cookie.
fn answer(det: &Detector, v6: bool, sport: u16) -> u32 {
    answer_frame(det, &syn(v6, sport)).0
}

/// Answers this SYN; returns the SYN-ACK's cookie and its MSS option.
fn answer_frame(det: &Detector, frame: &[u8]) -> (u32, Option<u16>) {
    let (verdict, reply) = det.run(names::PROGRAM, frame);
    assert_eq!(verdict, XDP_TX, "the SYN is answered");
    let sliced = SlicedPacket::from_ethernet(&reply).expect("etherparse decodes the SYN-ACK");
    let Some(TransportSlice::Tcp(tcp)) = sliced.transport else { panic!("no TCP in the reply") };
    assert!(tcp.syn() && tcp.ack());
    let mss = tcp.options_iterator().find_map(|o| match o {
        Ok(TcpOptionElement::MaximumSegmentSize(mss)) => Some(mss),
        _ => None,
    });
    (tcp.sequence_number(), mss)
}

/// The kernel's verdict (`bpf_tcp_check_syncookie`, which also requires the listener's
/// fresh overflow stamp) on the ACK that would complete this handshake.
fn kernel_accepts(det: &Detector, v6: bool, sport: u16, cookie: u32) -> bool {
    match det.run("probe_check_cookie", &ack(v6, sport, cookie)).0 {
        XDP_TX => true,
        XDP_DROP => false,
        other => panic!("probe could not check the cookie (verdict {other}: no listener?)"),
    }
}

/// The fixture listener's address and port, as the program keys its renewal.
fn listener(v6: bool) -> ([u8; 16], u16) {
    (if v6 { SERVER6 } else { ipv4_mapped(SERVER4) }, PORT)
}

/// Sets the listener's `COOKIE_RENEWALS` slot on every CPU.
fn set_renewal(det: &mut Detector, v6: bool, slot: RenewalSlot) {
    let mut renewals: PerCpuArray<_, RenewalSlot> =
        PerCpuArray::try_from(det.ebpf.map_mut(names::MAP_COOKIE_RENEWALS).unwrap()).unwrap();
    let cpus = aya::util::nr_cpus().unwrap();
    let (addr, port) = listener(v6);
    renewals.set(renewal_index(&addr, port), PerCpuValues::try_from(vec![slot; cpus]).unwrap(), 0).unwrap();
}

#[test]
fn the_raw_helper_answers_within_a_second_of_a_socket_bound_answer_then_it_renews() {
    in_private_netns(|| {
        let det = Detector::load(cookie_config(), &["probe_check_cookie"]);
        for v6 in [false, true] {
            let before = (det.counter(Counter::TxCookie), det.counter(Counter::TxCookieFast));
            let first = answer(&det, v6, 40_000);
            let fast = answer(&det, v6, 40_001);
            assert_eq!(det.counter(Counter::TxCookie), before.0 + 1, "v6={v6}: the first renews");
            assert_eq!(det.counter(Counter::TxCookieFast), before.1 + 1, "v6={v6}: the second is raw");
            assert!(kernel_accepts(&det, v6, 40_000, first), "v6={v6}: socket-bound cookie");
            assert!(kernel_accepts(&det, v6, 40_001, fast), "v6={v6}: raw cookie");
            assert!(!kernel_accepts(&det, v6, 40_001, fast ^ 0x0100_0000), "v6={v6}: the probe can refuse");
            thread::sleep(Duration::from_millis(1_100));
            answer(&det, v6, 40_002);
            assert_eq!(det.counter(Counter::TxCookie), before.0 + 2, "v6={v6}: a second later, renewed");
            assert_eq!(det.counter(Counter::TxCookieFast), before.1 + 1);
        }
    });
}

/// The raw helper is shown a SYN's header cut after a first MSS option, so that the
/// kernel's walk for the MSS reads that one option (`synopts::mss_first_offset_byte`):
/// every layout must get the cookie and MSS the whole header gets, and the kernel must
/// accept the cookie. The one layout that reads differently, two MSS options (no stack
/// sends it), gets its first one where the kernel's walk would take the last.
#[test]
fn the_raw_helper_answers_a_header_cut_after_its_first_mss_as_the_whole_header() {
    use TcpOptionElement::{MaximumSegmentSize as Mss, Noop, SelectiveAcknowledgementPermitted as Sack};
    in_private_netns(|| {
        let det = Detector::load(cookie_config(), &["probe_check_cookie"]);
        // 1440: in both families' cookie MSS tables, and neither the default (536) nor
        // the other SYNs' 1460.
        let layouts: [(&str, Vec<TcpOptionElement>); 4] = [
            ("Linux's (cut after the MSS)", linux_options(1440)),
            ("the MSS alone (nothing to cut)", vec![Mss(1440)]),
            ("the MSS after a NOP (the whole header)", vec![Noop, Mss(1440), Sack, Noop]),
            ("an MSS of 0 first (the whole header)", vec![Mss(0), Mss(1440)]),
        ];
        for v6 in [false, true] {
            // A socket-bound answer renews the listener; the rest are raw answers.
            answer(&det, v6, 42_000);
            let fast_before = det.counter(Counter::TxCookieFast);
            let answer_with = |options: &[TcpOptionElement]| {
                answer_frame(&det, &segment_with(v6, 42_001, PORT, true, None, options))
            };
            // The cookie counts minutes (`tcp_cookie_time`): one set of answers may
            // straddle a minute's end, two in a row cannot both.
            let sets: Vec<Vec<(u32, Option<u16>)>> =
                (0..2).map(|_| layouts.iter().map(|(_, options)| answer_with(options)).collect()).collect();
            for set in &sets {
                for ((what, _), (_, mss)) in layouts.iter().zip(set) {
                    assert_eq!(*mss, Some(1440), "v6={v6}, {what}: the client's MSS");
                }
            }
            let Some(set) = sets.iter().find(|set| set.iter().all(|(cookie, _)| *cookie == set[0].0)) else {
                panic!("v6={v6}: the layouts got different cookies: {sets:?}");
            };
            assert!(kernel_accepts(&det, v6, 42_001, set[0].0), "v6={v6}: the kernel accepts it");

            let (cookie, mss) = answer_with(&[Mss(1300), Mss(1440)]);
            // 1300 as the cookie tables round it: IPv4's has 1300, IPv6's 1220 below 1420.
            let first = if v6 { 1220 } else { 1300 };
            assert_eq!(mss, Some(first), "v6={v6}: of two MSS options, the first");
            assert!(kernel_accepts(&det, v6, 42_001, cookie), "v6={v6}: and the kernel accepts its cookie");

            // No options, and the frame padded past the header (as Ethernet pads a short
            // frame) with bytes that read as an MSS: a header without options has no first
            // option, so the padding is not shown to the helper, which answers the default
            // MSS (536; IPv6's cookie table rounds it up to 1220).
            let mut padded = segment_with(v6, 42_001, PORT, true, None, &[]);
            padded.extend_from_slice(&[2, 4, 0x05, 0xa0]);
            let (cookie, mss) = answer_frame(&det, &padded);
            assert_eq!(
                mss,
                Some(if v6 { 1220 } else { 536 }),
                "v6={v6}: no options, padded: the default MSS"
            );
            assert!(kernel_accepts(&det, v6, 42_001, cookie), "v6={v6}: and the kernel accepts its cookie");
            assert_eq!(det.counter(Counter::TxCookieFast), fast_before + 10, "v6={v6}: every answer was raw");
        }
    });
}

#[test]
fn until_the_agent_seeds_the_closed_filter_every_cookie_is_socket_bound() {
    // FLAG_RAW_COOKIES clear: the filter may miss TIME_WAIT tuples from before the program
    // ran, so no raw cookie, however recent the renewal.
    in_private_netns(|| {
        let mut cfg = cookie_config();
        cfg.flags &= !FLAG_RAW_COOKIES;
        let mut det = Detector::load(cfg, &[]);
        for sport in 40_100..40_105 {
            answer(&det, false, sport);
        }
        assert_eq!(det.counter(Counter::TxCookie), 5);
        assert_eq!(det.counter(Counter::TxCookieFast), 0);
        // Seeded: the next SYN within the second is raw.
        det.set_config(cookie_config());
        answer(&det, false, 40_105);
        assert_eq!(det.counter(Counter::TxCookieFast), 1);
    });
}

#[test]
fn a_tuple_whose_client_sent_a_fin_recently_is_not_answered_by_the_raw_helper() {
    // The server may hold that tuple in TIME_WAIT: the SYN must take the socket lookup,
    // which leaves a TIME_WAIT tuple to the kernel (cookie_test_run.rs has that part).
    in_private_netns(|| {
        let det = Detector::load(cookie_config(), &[]);
        answer(&det, false, 45_000);
        let mut fin = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
            .ipv4(CLIENT4, SERVER4, 64)
            .tcp(45_001, PORT, 77, 512)
            .ack(1)
            .fin()
            .write(&mut fin, &[])
            .unwrap();
        // No connection owns the tuple in this fixture, so the ACK shield drops the FIN;
        // its bucket is stamped before that (a real FIN_WAIT_2 socket would take it).
        assert_eq!(det.run(names::PROGRAM, &fin).0, XDP_DROP);
        let before = (det.counter(Counter::TxCookie), det.counter(Counter::TxCookieFast));
        answer(&det, false, 45_001);
        assert_eq!(det.counter(Counter::TxCookie), before.0 + 1, "after its FIN: the socket lookup");
        answer(&det, false, 45_002);
        assert_eq!(det.counter(Counter::TxCookieFast), before.1 + 1, "another tuple: the raw helper");
    });
}

#[test]
fn the_kernel_refuses_a_raw_cookie_until_a_socket_bound_call_renews_the_listener() {
    // The fact the fast path is built on: on a listener without a fresh overflow stamp the
    // kernel refuses even a correct cookie; one socket-bound call later it accepts it.
    in_private_netns(|| {
        let mut det = Detector::load(cookie_config(), &["probe_check_cookie"]);
        // Pretend a renewal happened, so the very first SYN takes the raw path.
        let (addr, port) = listener(false);
        set_renewal(&mut det, false, RenewalSlot::renewed(&addr, port, common::coarse_monotonic_ns()));
        let raw = answer(&det, false, 41_000);
        assert_eq!(det.counter(Counter::TxCookieFast), 1);
        assert_eq!(det.counter(Counter::TxCookie), 0);
        assert!(!kernel_accepts(&det, false, 41_000, raw), "no overflow stamp yet: refused");

        set_renewal(&mut det, false, RenewalSlot::default());
        answer(&det, false, 41_001);
        assert_eq!(det.counter(Counter::TxCookie), 1, "the socket-bound path renewed");
        assert!(kernel_accepts(&det, false, 41_000, raw), "the same raw cookie, now accepted");
    });
}

#[test]
fn a_port_marked_without_listener_passes_without_a_lookup() {
    in_private_netns(|| {
        let mut det = Detector::load(cookie_config(), &[]);
        // The port has a listener: only the mark, not a lookup, can make this SYN pass.
        det.set_port_policy(PORT, PORT_DEFAULT | PORT_NO_LISTENER);
        let frame = syn(false, 42_000);
        let (verdict, out) = det.run(names::PROGRAM, &frame);
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(out, frame, "the kernel gets the SYN as it came");
        assert_eq!(det.counter(Counter::PassCookieNoListener), 1);
        assert_eq!(det.counter(Counter::TxCookie) + det.counter(Counter::TxCookieFast), 0);
        det.set_port_policy(PORT, PORT_DEFAULT);
        answer(&det, false, 42_001);
    });
}

#[test]
fn the_ack_shield_drops_forged_cookie_acks_and_passes_real_ones() {
    in_private_netns(|| {
        let mut det = Detector::load(cookie_config(), &[]);
        for v6 in [false, true] {
            let cookie = answer(&det, v6, 43_000);
            let drops = det.counter(Counter::DropAckShield);
            let (verdict, _) = det.run(names::PROGRAM, &ack(v6, 43_000, cookie));
            assert_eq!(verdict, XDP_PASS, "v6={v6}: a real cookie ACK goes to the kernel");
            let (verdict, _) = det.run(names::PROGRAM, &ack(v6, 43_001, 0x1234_5678));
            assert_eq!(verdict, XDP_DROP, "v6={v6}: a forged cookie ACK stops here");
            // The right cookie, but from another port: refused too (it is bound to the tuple).
            assert_eq!(det.run(names::PROGRAM, &ack(v6, 43_002, cookie)).0, XDP_DROP, "v6={v6}");
            assert_eq!(det.counter(Counter::DropAckShield), drops + 2);
        }
        // A port without a listener: no cookie would be checked, the kernel answers RST.
        let closed = segment(false, 43_003, 9, false, Some(1));
        assert_eq!(det.run(names::PROGRAM, &closed).0, XDP_PASS);
        // Calm (cookies off): no lookup, no check, forged ACKs pass as before.
        let mut calm = cookie_config();
        calm.flags &= !FLAG_COOKIES;
        det.set_config(calm);
        let before = det.counter(Counter::DropAckShield);
        assert_eq!(det.run(names::PROGRAM, &ack(false, 43_004, 0x1234_5678)).0, XDP_PASS);
        assert_eq!(det.counter(Counter::DropAckShield), before);
    });
}

#[test]
fn the_ack_shield_passes_acks_of_established_connections() {
    in_private_netns(|| {
        use std::net::{Ipv4Addr, TcpStream};
        for args in [&["link", "set", "lo", "up"][..], &["addr", "add", "198.18.0.1/32", "dev", "lo"]] {
            let out = std::process::Command::new("ip").args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let listener = TcpListener::bind((Ipv4Addr::from(SERVER4), PORT + 1)).unwrap();
        let client = TcpStream::connect((Ipv4Addr::from(SERVER4), PORT + 1)).unwrap();
        let _accepted = listener.accept().unwrap();
        let sport = client.local_addr().unwrap().port();
        let det = Detector::load(cookie_config(), &[]);
        // Any sequence numbers: the connection's socket owns the tuple, nothing is checked.
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]).ipv4(SERVER4, SERVER4, 64);
        let mut frame = Vec::new();
        b.tcp(sport, PORT + 1, 5, 512).ack(0x1234_5678).write(&mut frame, &[]).unwrap();
        assert_eq!(det.run(names::PROGRAM, &frame).0, XDP_PASS);
        assert_eq!(det.counter(Counter::DropAckShield), 0);
        // The same ACK from a port no connection uses reaches the listener: checked, dropped.
        let mut forged = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
            .ipv4(SERVER4, SERVER4, 64)
            .tcp(sport.wrapping_add(1), PORT + 1, 5, 512)
            .ack(0x1234_5678)
            .write(&mut forged, &[])
            .unwrap();
        assert_eq!(det.run(names::PROGRAM, &forged).0, XDP_DROP);
        assert_eq!(det.counter(Counter::DropAckShield), 1);
    });
}

#[test]
fn a_time_wait_tuple_gets_a_raw_cookie_unless_its_fin_was_seen() {
    // Why the FIN filter exists: the raw path makes no lookup, so without it a SYN reusing
    // a tuple the server holds in TIME_WAIT is answered from XDP; its ACK would then meet
    // the TIME_WAIT socket. After the client's FIN went through the program, the same SYN
    // takes the lookup, which leaves it to the kernel.
    in_private_netns(|| {
        use std::{
            io::Read,
            net::{Ipv4Addr, Shutdown, TcpStream},
        };
        for args in [&["link", "set", "lo", "up"][..], &["addr", "add", "198.18.0.1/32", "dev", "lo"]] {
            let out = std::process::Command::new("ip").args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = PORT + 2;
        let listener = TcpListener::bind((Ipv4Addr::from(SERVER4), port)).unwrap();
        let client = TcpStream::connect((Ipv4Addr::from(SERVER4), port)).unwrap();
        let sport = client.local_addr().unwrap().port();
        let (accepted, _) = listener.accept().unwrap();
        // The server closes first: its side of the tuple goes to TIME_WAIT.
        accepted.shutdown(Shutdown::Write).unwrap();
        (&client).read_to_end(&mut Vec::new()).unwrap();
        drop(client);
        drop(accepted);
        thread::sleep(Duration::from_millis(200));
        let frame = |syn: bool| syn_or_fin(SERVER4, sport, port, syn);
        let renew = || {
            let mut out = Vec::new();
            PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
                .ipv4(SERVER4, SERVER4, 64)
                .tcp(sport.wrapping_add(7), port, 1000, 64240)
                .syn()
                .write(&mut out, &[])
                .unwrap();
            out
        };
        let det = Detector::load(cookie_config(), &[]);
        assert_eq!(det.run(names::PROGRAM, &renew()).0, XDP_TX, "a socket-bound answer renews");
        assert_eq!(det.run(names::PROGRAM, &frame(true)).0, XDP_TX, "no FIN seen: the raw helper answers");
        assert_eq!(det.counter(Counter::TxCookieFast), 1);
        det.run(names::PROGRAM, &frame(false));
        let (verdict, out) = det.run(names::PROGRAM, &frame(true));
        assert_eq!(verdict, XDP_PASS, "after the FIN: the lookup finds the TIME_WAIT socket");
        assert_eq!(out, frame(true));
        assert_eq!(det.counter(Counter::PassCookieExistingSocket), 1);
    });
}

/// The program's closed filter, to read and write entries of.
fn closed_filter_map(
    det: &mut Detector,
) -> aya::maps::Array<&mut aya::maps::MapData, detector_common::closed_filter::ClosedLine> {
    aya::maps::Array::try_from(det.ebpf.map_mut(names::MAP_CLOSED_FILTER).unwrap()).unwrap()
}

#[test]
fn fins_of_other_flows_in_its_line_leave_a_flow_the_raw_path() {
    // The default size, and a larger filter (`maps.closed_filter_lines`, 32,768 lines).
    for extra_bits in [0, 2] {
        fins_of_other_flows_in_its_line_leave_a_flow_the_raw_path_at(extra_bits);
    }
}

/// With `Config::closed_filter_extra_bits = extra_bits` and the map sized to match.
fn fins_of_other_flows_in_its_line_leave_a_flow_the_raw_path_at(extra_bits: i8) {
    // The closed filter tells flows apart (detector_common::closed_filter): FINs of other
    // flows that hash to the same line stamp their own cells, and a SYN of a flow whose
    // cells they did not all stamp keeps the raw path. The program's stamps land in the
    // cells the pure logic says, in the line the configured size says.
    use detector_common::{
        closed_filter::{self, ClosedLine},
        state::FlowKey,
    };
    let flow = |client: [u8; 4], sport: u16| FlowKey {
        src: ipv4_mapped(client),
        dst: ipv4_mapped(SERVER4),
        src_port: sport,
        dst_port: PORT,
    };
    let cfg = Config { closed_filter_extra_bits: extra_bits, ..cookie_config() };
    let bits = closed_filter::line_bits(&cfg);
    let target = (CLIENT4, 44_000);
    let at = closed_filter::spot(&flow(target.0, target.1), bits);
    // Eight flows of other clients in the target's line, found by the pure hash.
    let others: Vec<([u8; 4], u16)> = (0..1u32 << 22)
        .map(|n| {
            let [_, port, c, d] = n.to_be_bytes();
            ([198, 19, c, d], 40_000 + u16::from(port))
        })
        .filter(|&(c, p)| closed_filter::spot(&flow(c, p), bits).line == at.line)
        .take(8)
        .collect();
    assert_eq!(others.len(), 8, "eight flows share the target's line");
    let mut model = ClosedLine::default();
    for &(c, p) in &others {
        model.stamp_flow(&closed_filter::spot(&flow(c, p), bits), 1);
    }
    assert!(!model.may_be_time_wait(&at, 1), "the eight do not cover the target's cells (fixed hash)");
    let frame = |(client, sport): ([u8; 4], u16), syn: bool| syn_or_fin(client, sport, PORT, syn);
    in_private_netns(move || {
        let mut det = Detector::load(cfg, &[]);
        // No connection owns these tuples here, so the ACK shield drops the FINs; the
        // filter stamps them before that, as it stamps every client FIN.
        for &other in &others {
            det.run(names::PROGRAM, &frame(other, false));
        }
        let entry = |det: &mut Detector, i: u32| closed_filter_map(det).get(&i, 0).unwrap();
        let set =
            |det: &mut Detector, i: u32, value: ClosedLine| closed_filter_map(det).set(i, value, 0).unwrap();
        assert_eq!(
            closed_filter_map(&mut det).len(),
            closed_filter::entries(bits),
            "the configured lines and their latest stamps"
        );
        let stamped = entry(&mut det, at.line);
        let cells = |l: &ClosedLine| l.cells.map(|c| c != 0);
        assert_eq!(cells(&stamped), cells(&model), "the program stamped the cells the pure logic names");
        let mut latest = ClosedLine::default();
        latest.stamp_latest(&at, 1);
        assert_eq!(cells(&entry(&mut det, at.latest)), cells(&latest), "and the line's latest stamp");
        // The program reads the line only when its latest stamp is recent: with it cleared,
        // a flow whose cells are all stamped keeps the raw path; put back, it does not.
        let before = entry(&mut det, at.latest);
        set(&mut det, at.line, ClosedLine::all(closed_filter::stamp(common::coarse_monotonic_ns())));
        set(&mut det, at.latest, ClosedLine::default());
        assert_eq!(det.run(names::PROGRAM, &syn(false, 45_001)).0, XDP_TX, "a socket-bound answer renews");
        let fast = det.counter(Counter::TxCookieFast);
        assert_eq!(det.run(names::PROGRAM, &frame(target, true)).0, XDP_TX);
        assert_eq!(
            det.counter(Counter::TxCookieFast),
            fast + 1,
            "a line with no recent latest stamp is not read"
        );
        set(&mut det, at.latest, before);
        let bound = det.counter(Counter::TxCookie);
        assert_eq!(det.run(names::PROGRAM, &frame(target, true)).0, XDP_TX);
        assert_eq!(det.counter(Counter::TxCookie), bound + 1, "its latest stamp recent: the line decides");
        assert_eq!(det.counter(Counter::ClosedFilterLookup), 1);
        set(&mut det, at.line, stamped);
        assert_eq!(det.run(names::PROGRAM, &syn(false, 45_000)).0, XDP_TX, "a socket-bound answer renews");
        let fast = det.counter(Counter::TxCookieFast);
        assert_eq!(det.run(names::PROGRAM, &frame(target, true)).0, XDP_TX);
        assert_eq!(det.counter(Counter::TxCookieFast), fast + 1, "the target keeps the raw path");
        let bound = det.counter(Counter::TxCookie);
        assert_eq!(det.run(names::PROGRAM, &frame(others[0], true)).0, XDP_TX, "the listener answers");
        assert_eq!(det.counter(Counter::TxCookie), bound + 1, "a flow that sent a FIN takes the lookup");
        assert_eq!(det.counter(Counter::TxCookieFast), fast + 1);
        assert_eq!(det.counter(Counter::ClosedFilterLookup), 2, "counted as the filter's doing");
    });
}
