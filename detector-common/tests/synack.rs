//! The SYN-ACK builder checked against an independent decoder (etherparse): fields,
//! options and checksums, IPv4 and IPv6, with and without timestamps.

use detector_common::{
    parse::{parse_tcp, IpVersion},
    synack::{
        build_ipv4_reply, build_ipv6_reply, build_synack, encode_timestamp, parse_syn_options,
        parse_syn_options_with, OptionWalk, ReplySettings, SynOptions, MAX_OPTIONS_LEN,
    },
};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TcpOptionElement, TransportSlice};

const CLIENT4: [u8; 4] = [198, 18, 0, 2];
const SERVER4: [u8; 4] = [198, 18, 0, 1];
const CLIENT6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const SERVER6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const NOW_MS: u32 = 5_000_000;

const SETTINGS: ReplySettings = ReplySettings { timestamps: true, ecn: true, wscale: 10, window: 65535 };

fn syn_options_full() -> [TcpOptionElement; 4] {
    [
        TcpOptionElement::MaximumSegmentSize(1460),
        TcpOptionElement::SelectiveAcknowledgementPermitted,
        TcpOptionElement::Timestamp(0x1122_3344, 0),
        TcpOptionElement::WindowScale(7),
    ]
}

fn syn_frame(v6: bool, options: &[TcpOptionElement], ecn: bool) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]);
    let builder = if v6 { builder.ipv6(CLIENT6, SERVER6, 64) } else { builder.ipv4(CLIENT4, SERVER4, 64) };
    let mut tcp = builder.tcp(40000, 8080, 1000, 64240).syn().options(options).unwrap();
    if ecn {
        tcp = tcp.ece().cwr();
    }
    let mut out = Vec::new();
    tcp.write(&mut out, &[]).unwrap();
    out
}

/// Builds the reply frame as the program does (same functions, same order).
fn reply_for(frame: &[u8], settings: ReplySettings) -> Vec<u8> {
    let seg = parse_tcp(frame).unwrap();
    let l4 = usize::from(seg.l4_offset);
    let opts_bytes = &frame[l4 + 20..l4 + usize::from(seg.tcp_header_len)];
    let mut buf = [0u8; MAX_OPTIONS_LEN];
    buf[..opts_bytes.len()].copy_from_slice(opts_bytes);
    let opts = parse_syn_options(&buf, opts_bytes.len());
    let tcp = build_synack(&seg, &opts, 0xdead_beef, 1460, NOW_MS, &settings);
    let mut out = Vec::new();
    out.extend_from_slice(&frame[6..12]);
    out.extend_from_slice(&frame[0..6]);
    out.extend_from_slice(&frame[12..14]);
    match seg.version {
        IpVersion::V4 => out.extend_from_slice(&build_ipv4_reply(&seg, tcp.len)),
        IpVersion::V6 => out.extend_from_slice(&build_ipv6_reply(&seg, tcp.len)),
    }
    out.extend_from_slice(&tcp.bytes()[..tcp.len.into()]);
    out
}

/// Decodes the reply independently and checks addresses, ports, numbers and checksums.
fn check_reply(reply: &[u8], v6: bool) -> etherparse::TcpHeader {
    let sliced = SlicedPacket::from_ethernet(reply).expect("etherparse decodes the reply");
    let Some(TransportSlice::Tcp(tcp)) = sliced.transport else { panic!("no TCP in reply") };
    let header = tcp.to_header();
    let expected = match sliced.net.as_ref().unwrap() {
        NetSlice::Ipv4(ip) => {
            assert!(!v6);
            let ip4 = ip.header().to_header();
            assert_eq!(ip4.header_checksum, ip4.calc_header_checksum(), "IPv4 header checksum");
            assert_eq!((ip4.source, ip4.destination), (SERVER4, CLIENT4));
            assert_eq!(usize::from(ip4.total_len), reply.len() - 14);
            header.calc_checksum_ipv4(&ip4, &[]).unwrap()
        }
        NetSlice::Ipv6(ip) => {
            assert!(v6);
            let ip6 = ip.header().to_header();
            assert_eq!((ip6.source, ip6.destination), (SERVER6, CLIENT6));
            assert_eq!(usize::from(ip6.payload_length), reply.len() - 54);
            header.calc_checksum_ipv6(&ip6, &[]).unwrap()
        }
        NetSlice::Arp(_) => panic!("no IP"),
    };
    assert_eq!(header.checksum, expected, "TCP checksum");
    assert_eq!((header.source_port, header.destination_port), (8080, 40000));
    assert_eq!((header.sequence_number, header.acknowledgment_number), (0xdead_beef, 1001));
    assert!(header.syn && header.ack && !header.rst && !header.fin);
    header
}

fn options(header: &etherparse::TcpHeader) -> Vec<TcpOptionElement> {
    header.options_iterator().map(Result::unwrap).collect()
}

#[test]
fn timestamps_carry_wscale_sack_and_ecn() {
    for v6 in [false, true] {
        let reply = reply_for(&syn_frame(v6, &syn_options_full(), true), SETTINGS);
        let header = check_reply(&reply, v6);
        assert!(header.ece, "ECN accepted");
        let opts = options(&header);
        assert!(opts.contains(&TcpOptionElement::MaximumSegmentSize(1460)));
        assert!(opts.contains(&TcpOptionElement::SelectiveAcknowledgementPermitted));
        assert!(opts.contains(&TcpOptionElement::WindowScale(10)));
        let (val, ecr) = opts
            .iter()
            .find_map(|o| match o {
                TcpOptionElement::Timestamp(val, ecr) => Some((*val, *ecr)),
                _ => None,
            })
            .expect("TS option");
        assert_eq!(ecr, 0x1122_3344, "echoes the client's TSval");
        // Low bits as cookie_timestamp_decode reads them: wscale 7, SACK (bit 4), ECN (bit 5).
        assert_eq!(val & 0x3f, 7 | 1 << 4 | 1 << 5);
        assert!(val <= NOW_MS, "not ahead of the clock");
    }
}

#[test]
fn without_timestamps_only_mss() {
    let settings = ReplySettings { timestamps: false, ..SETTINGS };
    for v6 in [false, true] {
        let reply = reply_for(&syn_frame(v6, &syn_options_full(), true), settings);
        let header = check_reply(&reply, v6);
        assert!(!header.ece, "ECN cannot be remembered without timestamps");
        assert_eq!(options(&header), vec![TcpOptionElement::MaximumSegmentSize(1460)]);
    }
}

#[test]
fn client_without_timestamps_gets_mss_only_even_in_ts_mode() {
    let frame = syn_frame(false, &[TcpOptionElement::MaximumSegmentSize(1400)], false);
    let header = check_reply(&reply_for(&frame, SETTINGS), false);
    assert_eq!(header.header_len(), 24);
}

#[test]
fn client_without_wscale_or_sack_encodes_the_no_wscale_mask() {
    let opts = SynOptions { wscale: None, sack_permitted: false, tsval: Some(1) };
    assert_eq!(encode_timestamp(1_000_000, &opts, false) & 0x3f, 0xf);
    let frame = syn_frame(false, &[TcpOptionElement::Timestamp(5, 0)], false);
    let header = check_reply(&reply_for(&frame, SETTINGS), false);
    let opts = options(&header);
    assert!(!opts.iter().any(|o| matches!(o, TcpOptionElement::WindowScale(_))));
    assert!(!opts.contains(&TcpOptionElement::SelectiveAcknowledgementPermitted));
}

#[test]
fn timestamp_never_runs_ahead_of_the_clock() {
    let opts = SynOptions { wscale: Some(14), sack_permitted: true, tsval: Some(1) };
    for now in [64u32, 65, 127, 128, 1_000_003, u32::MAX] {
        let ts = encode_timestamp(now, &opts, true);
        assert_eq!(ts & 0x3f, 0xe | 0x10 | 0x20);
        assert!(ts <= now, "ts {ts} > now {now}");
        assert!(now - ts < 128, "ts {ts} too far behind {now}");
    }
}

#[test]
fn option_walk_survives_garbage_and_zero_lengths() {
    let mut seed = 0x1234_5678_u32;
    for _ in 0..10_000 {
        let mut buf = [0u8; MAX_OPTIONS_LEN];
        for b in &mut buf {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            *b = (seed & 0x0f) as u8;
        }
        let _ = parse_syn_options(&buf, (seed as usize) % (MAX_OPTIONS_LEN + 1));
    }
    // A zero-length option ends the walk instead of looping on it.
    let mut buf = [0u8; MAX_OPTIONS_LEN];
    buf[0] = 3;
    assert_eq!(parse_syn_options(&buf, MAX_OPTIONS_LEN), SynOptions::default());
    // An option that runs past the end is ignored.
    let mut buf = [0u8; MAX_OPTIONS_LEN];
    buf[..3].copy_from_slice(&[8, 10, 1]);
    assert_eq!(parse_syn_options(&buf, 3), SynOptions::default());
}

#[test]
fn the_walk_hands_its_whole_state_to_the_hook_at_every_step_and_at_the_end() {
    // Linux's SYN options: MSS, SACK-permitted, timestamp, NOP, window scale (20 bytes).
    let bytes = [2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0x30, 0x39, 0, 0, 0, 0, 1, 3, 3, 7];
    let mut buf = [0u8; MAX_OPTIONS_LEN];
    buf[..bytes.len()].copy_from_slice(&bytes);
    let mut seen = Vec::new();
    let opts = parse_syn_options_with(&buf, bytes.len(), |w| {
        seen.push(w);
        w
    });
    let positions: Vec<u32> = seen.iter().map(|w| w.pos).collect();
    assert_eq!(positions, [0, 4, 6, 16, 17, 20, 20], "one call per option, one at the end");
    let last = seen[seen.len() - 1];
    assert_eq!(
        last,
        OptionWalk { pos: 20, tsval: 12345, wscale: 7, has_wscale: 1, sack_permitted: 1, has_tsval: 1 }
    );
    assert_eq!(opts, SynOptions { wscale: Some(7), sack_permitted: true, tsval: Some(12345) });
    assert_eq!(opts, parse_syn_options(&buf, bytes.len()));
}

#[test]
fn what_the_hook_returns_is_what_the_walk_continues_from() {
    // The program's hook returns the state it stored; anything else returned is used as
    // is: here the hook skips the timestamp by moving the position past it.
    let bytes = [2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0x30, 0x39, 0, 0, 0, 0, 1, 3, 3, 7];
    let mut buf = [0u8; MAX_OPTIONS_LEN];
    buf[..bytes.len()].copy_from_slice(&bytes);
    let opts = parse_syn_options_with(&buf, bytes.len(), |mut w| {
        if w.pos == 6 {
            w.pos = 16;
        }
        w
    });
    assert_eq!(opts, SynOptions { wscale: Some(7), sack_permitted: true, tsval: None });
}

#[test]
fn bytes_past_the_options_length_never_change_the_result() {
    // The XDP program's option buffer is a per-CPU scratch that keeps the previous SYN's
    // bytes past `len`: the walk must not depend on them.
    let mut seed = 0x9e37_79b9_u32;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for _ in 0..20_000 {
        let mut buf = [0u8; MAX_OPTIONS_LEN];
        for b in &mut buf {
            // Mostly option kinds and small lengths, so that walks go somewhere.
            *b = (next() % 12) as u8;
        }
        let len = (next() as usize) % (MAX_OPTIONS_LEN + 1);
        let mut zeroed = buf;
        zeroed[len..].fill(0);
        let mut other = buf;
        for b in &mut other[len..] {
            *b = next().to_le_bytes()[0];
        }
        let expected = parse_syn_options(&zeroed, len);
        assert_eq!(parse_syn_options(&buf, len), expected, "{buf:?} len {len}");
        assert_eq!(parse_syn_options(&other, len), expected, "{other:?} len {len}");
    }
}
