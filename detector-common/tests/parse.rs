//! The parser on crafted frames: IPv4/IPv6, VLAN and QinQ, IPv4 options, IPv6 extension
//! headers, fragments, TCP options, malformed and truncated input. Frames are built with
//! etherparse (an independent encoder) where it can, by hand where it cannot.

use detector_common::parse::{
    ipv4_mapped, parse_from_l3, parse_tcp, tcp_flags, untagged_ip, IpVersion, NotTcp, TcpSegment,
    ETH_HEADER_LEN,
};
use etherparse::{PacketBuilder, TcpOptionElement};

const CLIENT4: [u8; 4] = [198, 18, 0, 2];
const SERVER4: [u8; 4] = [198, 18, 0, 1];
const CLIENT6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const SERVER6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

fn syn4(options: &[TcpOptionElement]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv4(CLIENT4, SERVER4, 64)
        .tcp(40000, 80, 1000, 64240)
        .syn()
        .options(options)
        .unwrap()
        .write(&mut out, &[])
        .unwrap();
    out
}

fn syn6() -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv6(CLIENT6, SERVER6, 64)
        .tcp(40000, 80, 1000, 64240)
        .syn()
        .write(&mut out, &[])
        .unwrap();
    out
}

/// Inserts VLAN tags (outermost first) after the MAC addresses.
/// A DNS-sized UDP datagram over IPv4: IP, but not TCP.
fn udp4() -> Vec<u8> {
    let mut udp = Vec::new();
    PacketBuilder::ethernet2([2; 6], [3; 6])
        .ipv4(CLIENT4, SERVER4, 64)
        .udp(53, 53)
        .write(&mut udp, &[0; 8])
        .unwrap();
    udp
}

fn tagged(frame: &[u8], tags: &[u16]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    for (i, tpid) in tags.iter().enumerate() {
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&(100 + u16::try_from(i).unwrap()).to_be_bytes());
    }
    out.extend_from_slice(&frame[12..]);
    out
}

/// An IPv6 SYN with the given extension headers (each: next-header byte is filled in).
fn syn6_with_ext(exts: &[(u8, usize)]) -> Vec<u8> {
    let plain = syn6();
    let (eth, ip, tcp) = (&plain[..14], &plain[14..54], &plain[54..]);
    let mut headers = Vec::new();
    let kinds: Vec<u8> = exts.iter().map(|e| e.0).chain(std::iter::once(6)).collect();
    for (i, (_, len8)) in exts.iter().enumerate() {
        let mut h = vec![0u8; (len8 + 1) * 8];
        h[0] = kinds[i + 1];
        h[1] = u8::try_from(*len8).unwrap();
        headers.extend_from_slice(&h);
    }
    let mut ip = ip.to_vec();
    ip[6] = kinds[0];
    let payload = u16::try_from(headers.len() + tcp.len()).unwrap();
    ip[4..6].copy_from_slice(&payload.to_be_bytes());
    [eth, &ip, &headers, tcp].concat()
}

fn ok(frame: &[u8]) -> TcpSegment {
    parse_tcp(frame).unwrap_or_else(|e| panic!("{e:?} for a valid frame"))
}

#[test]
fn ipv4_syn() {
    let seg = ok(&syn4(&[]));
    assert_eq!(seg.version, IpVersion::V4);
    assert_eq!((seg.l3_offset, seg.l4_offset, seg.tcp_header_len, seg.vlan_tags), (14, 34, 20, 0));
    assert_eq!((seg.src, seg.dst), (ipv4_mapped(CLIENT4), ipv4_mapped(SERVER4)));
    assert_eq!((seg.src_port, seg.dst_port, seg.seq), (40000, 80, 1000));
    assert!(seg.is_syn() && !seg.may_complete_handshake());
}

#[test]
fn ipv6_syn() {
    let seg = ok(&syn6());
    assert_eq!(seg.version, IpVersion::V6);
    assert_eq!((seg.l3_offset, seg.l4_offset), (14, 54));
    assert_eq!((seg.src, seg.dst), (CLIENT6, SERVER6));
}

#[test]
fn vlan_and_qinq() {
    for (tags, l3) in [(vec![0x8100], 18), (vec![0x88a8, 0x8100], 22), (vec![0x8100, 0x8100], 22)] {
        let seg = ok(&tagged(&syn4(&[]), &tags));
        assert_eq!((seg.l3_offset, usize::from(seg.vlan_tags)), (l3, tags.len()), "{tags:x?}");
        let seg = ok(&tagged(&syn6(), &tags));
        assert_eq!(seg.l4_offset, l3 + 40);
    }
    assert_eq!(parse_tcp(&tagged(&syn4(&[]), &[0x88a8, 0x8100, 0x8100])[..]), Err(NotTcp::TooDeep));
}

#[test]
fn ipv4_options_move_the_tcp_header() {
    let plain = syn4(&[]);
    for ihl in 6..=15u8 {
        let extra = usize::from(ihl - 5) * 4;
        let mut frame = plain[..14].to_vec();
        let mut ip = plain[14..34].to_vec();
        ip[0] = 0x40 | ihl;
        let total = u16::from_be_bytes([ip[2], ip[3]]) + u16::from(ihl - 5) * 4;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip.extend(std::iter::repeat_n(1u8, extra)); // NOP options
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&plain[34..]);
        let seg = ok(&frame);
        assert_eq!(usize::from(seg.l4_offset), 34 + extra, "ihl {ihl}");
        assert_eq!(seg.dst_port, 80);
    }
}

#[test]
fn bad_ip_headers_are_malformed() {
    let mut frame = syn4(&[]);
    frame[14] = 0x44; // IHL 4
    assert_eq!(parse_tcp(&frame[..]), Err(NotTcp::Malformed));
    let mut frame = syn4(&[]);
    frame[14] = 0x65; // version 6 in an IPv4 ethertype
    assert_eq!(parse_tcp(&frame[..]), Err(NotTcp::Malformed));
    let mut frame = syn4(&[]);
    frame[46] = 0x40; // TCP data offset 4
    assert_eq!(parse_tcp(&frame[..]), Err(NotTcp::Malformed));
}

#[test]
fn fragments_pass_as_fragments() {
    for (flags_offset, what) in [(0x2000u16, "more fragments"), (0x0010, "offset 16")] {
        let mut frame = syn4(&[]);
        frame[20..22].copy_from_slice(&flags_offset.to_be_bytes());
        assert_eq!(parse_tcp(&frame[..]), Err(NotTcp::Fragment), "{what}");
    }
    let mut frame = syn4(&[]);
    frame[20..22].copy_from_slice(&0x4000u16.to_be_bytes()); // DF only: not a fragment
    ok(&frame);
    assert_eq!(parse_tcp(&syn6_with_ext(&[(44, 0)])[..]), Err(NotTcp::Fragment));
}

#[test]
fn ipv6_extension_headers_are_skipped_to_a_bound() {
    let seg = ok(&syn6_with_ext(&[(0, 0), (60, 1), (43, 0)]));
    assert_eq!(usize::from(seg.l4_offset), 54 + 8 + 16 + 8);
    assert_eq!(seg.dst_port, 80);
    let deep = syn6_with_ext(&[(60, 0), (60, 0), (60, 0), (60, 0), (60, 0)]);
    assert_eq!(parse_tcp(&deep[..]), Err(NotTcp::TooDeep));
}

#[test]
fn tcp_options_set_the_header_length() {
    let seg = ok(&syn4(&[
        TcpOptionElement::MaximumSegmentSize(1460),
        TcpOptionElement::SelectiveAcknowledgementPermitted,
        TcpOptionElement::Timestamp(1, 0),
        TcpOptionElement::Noop,
        TcpOptionElement::WindowScale(7),
    ]));
    assert_eq!(seg.tcp_header_len, 40);
    let mut frame = syn4(&[]);
    frame[46] = 0xf0; // data offset 15: 60 bytes, but the frame has only 20
    assert_eq!(parse_tcp(&frame[..]), Err(NotTcp::Truncated));
    frame.extend_from_slice(&[1u8; 40]);
    // The options are in the frame but beyond the IP total length.
    assert_eq!(parse_tcp(&frame[..]), Err(NotTcp::BadLength));
    frame[16..18].copy_from_slice(&80u16.to_be_bytes());
    assert_eq!(ok(&frame).tcp_header_len, 60);
}

#[test]
fn other_protocols() {
    let udp = udp4();
    assert_eq!(parse_tcp(&udp[..]), Err(NotTcp::OtherProtocol));
    let mut arp = syn4(&[]);
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(parse_tcp(&arp[..]), Err(NotTcp::NotIp));
}

#[test]
fn every_truncation_is_reported_and_never_panics() {
    let frames = [
        syn4(&[TcpOptionElement::MaximumSegmentSize(1460)]),
        syn6(),
        tagged(&syn4(&[]), &[0x88a8, 0x8100]),
        syn6_with_ext(&[(0, 0)]),
    ];
    for frame in &frames {
        for len in 0..frame.len() {
            assert_eq!(parse_tcp(&frame[..len]), Err(NotTcp::Truncated), "cut at {len} of {}", frame.len());
        }
        ok(frame);
    }
}

#[test]
fn flag_helpers() {
    use tcp_flags::{ACK, CWR, ECE, FIN, PSH, RST, SYN};
    let with = |flags: u8| TcpSegment { flags, ..ok(&syn4(&[])) };
    assert!(with(SYN).is_syn() && with(SYN | ECE | CWR).is_syn());
    assert!(!with(SYN | ACK).is_syn() && !with(SYN | RST).is_syn());
    assert!(with(ACK).may_complete_handshake() && with(ACK | PSH).may_complete_handshake());
    assert!(!with(ACK | FIN).may_complete_handshake() && !with(ACK | RST).may_complete_handshake());
    assert!(!with(SYN | ACK).may_complete_handshake());
}

#[test]
fn random_bytes_never_panic() {
    let mut seed = 0x9e37_79b9_u32;
    for len in (0..200).chain([1500, 9000]) {
        let mut frame: Vec<u8> = (0..len).map(|_| random_byte(&mut seed)).collect();
        // Make some of them look like IP to reach deeper code.
        if len > 14 && seed.is_multiple_of(2) {
            frame[12..14].copy_from_slice(if seed.is_multiple_of(4) { &[0x08, 0x00] } else { &[0x86, 0xdd] });
        }
        let _ = parse_tcp(&frame[..]);
    }
}

/// The next byte of a xorshift32 sequence: reproducible noise for the random frames.
fn random_byte(seed: &mut u32) -> u8 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 17;
    *seed ^= *seed << 5;
    seed.to_le_bytes()[0]
}

/// `frame` with its IPv4 total length (at offset 16) set to `len`.
fn with_ipv4_total_len(frame: &[u8], len: u16) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[16..18].copy_from_slice(&len.to_be_bytes());
    out
}

/// `frame` with its IPv6 payload length (at offset 18) set to `len`.
fn with_ipv6_payload_len(frame: &[u8], len: u16) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[18..20].copy_from_slice(&len.to_be_bytes());
    out
}

#[test]
fn ipv4_total_length_must_cover_the_headers_and_fit_the_frame() {
    let syn = syn4(&[TcpOptionElement::MaximumSegmentSize(1460)]); // IP length 44
    assert_eq!(u16::from_be_bytes([syn[16], syn[17]]), 44);
    for (len, what) in [
        (0, "zero"),
        (19, "shorter than the IP header"),
        (20, "IP header only: no room for TCP"),
        (39, "TCP header cut by the IP length"),
        (43, "TCP options cut by the IP length"),
        (45, "one byte beyond the frame"),
        (1500, "far beyond the frame"),
    ] {
        assert_eq!(parse_tcp(&with_ipv4_total_len(&syn, len)[..]), Err(NotTcp::BadLength), "{what}");
    }
    ok(&syn);
}

#[test]
fn ipv4_total_length_below_the_header_with_options() {
    // IHL 6 (24 bytes of header) but a total length of 22.
    let plain = syn4(&[]);
    let mut frame = plain[..14].to_vec();
    let mut ip = plain[14..34].to_vec();
    ip[0] = 0x46;
    ip[2..4].copy_from_slice(&22u16.to_be_bytes());
    ip.extend_from_slice(&[1, 1, 1, 0]);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&plain[34..]);
    assert_eq!(parse_tcp(&frame[..]), Err(NotTcp::BadLength));
}

#[test]
fn bad_ipv4_length_is_reported_for_every_transport() {
    // The kernel's IP layer discards these whatever they carry.
    let udp = udp4();
    assert_eq!(parse_tcp(&with_ipv4_total_len(&udp, 0)[..]), Err(NotTcp::BadLength));
}

#[test]
fn ipv6_payload_length_must_fit_the_frame_and_hold_the_tcp_header() {
    let syn = syn6(); // payload 20
    assert_eq!(u16::from_be_bytes([syn[18], syn[19]]), 20);
    for (len, what) in [
        (0, "zero: a jumbogram, not handled"),
        (19, "TCP header cut by the payload length"),
        (21, "one byte beyond the frame"),
        (9000, "far beyond the frame"),
    ] {
        assert_eq!(parse_tcp(&with_ipv6_payload_len(&syn, len)[..]), Err(NotTcp::BadLength), "{what}");
    }
    // With extension headers, the payload length counts them too.
    let ext = syn6_with_ext(&[(0, 0), (60, 1)]);
    ok(&ext);
    let payload = u16::from_be_bytes([ext[18], ext[19]]);
    assert_eq!(parse_tcp(&with_ipv6_payload_len(&ext, payload - 1)[..]), Err(NotTcp::BadLength));
    assert_eq!(parse_tcp(&with_ipv6_payload_len(&ext, 8 + 16 + 10)[..]), Err(NotTcp::BadLength));
}

#[test]
fn frames_longer_than_the_ip_length_are_padding() {
    // A bare IPv4 SYN is 54 bytes: on the wire, Ethernet pads it to the 60-byte minimum
    // (with zeros, or with whatever the sender's buffer held).
    for fill in [0u8, 0xaa] {
        let mut frame = syn4(&[]);
        assert_eq!(frame.len(), 54);
        frame.resize(60, fill);
        let seg = ok(&frame);
        assert_eq!((seg.l4_offset, seg.tcp_header_len, seg.dst_port), (34, 20, 80));
        assert!(seg.is_syn());
    }
    // Tagged frames are padded too (a switch may strip the tag and keep the padding).
    let mut frame = tagged(&syn4(&[]), &[0x8100]);
    frame.resize(64, 0);
    assert_eq!(ok(&frame).vlan_tags, 1);
    // An IPv6 SYN with padding after it.
    let mut frame = syn6();
    frame.extend_from_slice(&[0; 6]);
    assert_eq!(ok(&frame).version, IpVersion::V6);
    // A SYN carrying data (TCP Fast Open) whose IP length covers the data.
    let mut with_data = Vec::new();
    PacketBuilder::ethernet2([2; 6], [3; 6])
        .ipv4(CLIENT4, SERVER4, 64)
        .tcp(40000, 80, 1000, 64240)
        .syn()
        .write(&mut with_data, &[7; 100])
        .unwrap();
    ok(&with_data);
    // ... and is bad when the frame lost some of that data.
    assert_eq!(parse_tcp(&with_data[..with_data.len() - 1]), Err(NotTcp::BadLength));
}

/// The XDP program parses untagged IPv4/IPv6 frames inline (`untagged_ip`, then
/// `parse_from_l3`) and all others with `parse_tcp`: the two must agree on every frame the
/// inline path takes, and it must take exactly the untagged IP ones.
#[test]
fn the_inline_untagged_path_parses_as_parse_tcp() {
    let mut frames = vec![
        syn4(&[TcpOptionElement::MaximumSegmentSize(1460)]),
        syn4(&[]),
        syn6(),
        udp4(),
        tagged(&syn4(&[]), &[0x8100]),
        tagged(&syn6(), &[0x88a8, 0x8100]),
        syn6_with_ext(&[(0, 0), (60, 8)]),
        with_ipv4_total_len(&syn4(&[]), 20),
        with_ipv6_payload_len(&syn6(), 4),
    ];
    let whole = frames.clone();
    for frame in &whole {
        frames.extend((0..frame.len()).map(|len| frame[..len].to_vec()));
    }
    let mut seed = 0x2545_f491_u32;
    for len in [13, 14, 20, 34, 54, 60, 74, 94] {
        for ethertype in [[0x08, 0x00], [0x86, 0xdd], [0x81, 0x00]] {
            let mut frame: Vec<u8> = (0..len).map(|_| random_byte(&mut seed)).collect();
            if len >= 14 {
                frame[12..14].copy_from_slice(&ethertype);
            }
            frames.push(frame);
        }
    }
    let mut inline = 0;
    for frame in &frames {
        let untagged = frame.len() >= 14 && matches!([frame[12], frame[13]], [0x08, 0x00] | [0x86, 0xdd]);
        match untagged_ip(&frame[..]) {
            Some(ethertype) => {
                assert!(untagged, "{frame:02x?} taken inline");
                assert_eq!(
                    parse_from_l3(&frame[..], ethertype, ETH_HEADER_LEN, 0),
                    parse_tcp(&frame[..]),
                    "{frame:02x?}"
                );
                inline += 1;
            }
            None => assert!(!untagged, "{frame:02x?} left to parse_tcp"),
        }
    }
    assert!(inline > frames.len() / 2, "only {inline} of {} frames took the inline path", frames.len());
}
