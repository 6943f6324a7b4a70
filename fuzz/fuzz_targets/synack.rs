//! The SYN-ACK builder for any SYN the parser accepts, any cookie, MSS, clock and
//! settings: never panics, and the reply (as the program writes it over the SYN) parses
//! back as a SYN-ACK to that SYN with valid IP and TCP checksums.
#![no_main]

use detector_common::{
    parse::{parse_tcp, tcp_flags, IpVersion},
    synack::{
        build_ipv4_reply, build_ipv6_reply, build_synack, parse_syn_options, ReplySettings, MAX_OPTIONS_LEN,
    },
};
use libfuzzer_sys::fuzz_target;

/// One's-complement sum of `bytes` (odd length padded), folded.
fn sum(chunks: &[&[u8]]) -> u16 {
    let mut s: u32 = 0;
    for bytes in chunks {
        for pair in bytes.chunks(2) {
            s += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fuzz_target!(|data: &[u8]| {
    // The first 11 bytes choose cookie, MSS, clock and settings; the rest is the frame.
    if data.len() < 11 {
        return;
    }
    let (knobs, frame) = data.split_at(11);
    let Ok(syn) = parse_tcp(frame) else { return };
    if !syn.is_syn() {
        return;
    }
    let cookie = u32::from_be_bytes([knobs[0], knobs[1], knobs[2], knobs[3]]);
    let mss = u16::from_be_bytes([knobs[4], knobs[5]]);
    let now_ms = u32::from_be_bytes([knobs[6], knobs[7], knobs[8], knobs[9]]);
    let settings = ReplySettings {
        timestamps: knobs[10] & 1 != 0,
        ecn: knobs[10] & 2 != 0,
        wscale: knobs[10] >> 4,
        window: u16::from_be_bytes([knobs[4], knobs[9]]),
    };
    let l4 = usize::from(syn.l4_offset);
    let opt_len = usize::from(syn.tcp_header_len) - 20;
    let mut buf = [0u8; MAX_OPTIONS_LEN];
    buf[..opt_len].copy_from_slice(&frame[l4 + 20..l4 + 20 + opt_len]);
    let opts = parse_syn_options(&buf, opt_len);
    let tcp = build_synack(&syn, &opts, cookie, mss, now_ms, &settings);
    let tcp_len = usize::from(tcp.len);
    assert!(tcp_len == 24 || tcp_len == 40);
    // The reply as the program lays it out: link header and tags kept, new IP header.
    let l3 = usize::from(syn.l3_offset);
    let mut reply = frame[..l3].to_vec();
    let ip: Vec<u8> = match syn.version {
        IpVersion::V4 => build_ipv4_reply(&syn, tcp.len).to_vec(),
        IpVersion::V6 => build_ipv6_reply(&syn, tcp.len).to_vec(),
    };
    reply.extend_from_slice(&ip);
    reply.extend_from_slice(&tcp.bytes()[..tcp_len]);
    let back = parse_tcp(reply.as_slice()).expect("the reply parses");
    assert_eq!(back.flags & !tcp_flags::ECE, tcp_flags::SYN | tcp_flags::ACK);
    assert_eq!((back.src, back.dst), (syn.dst, syn.src));
    assert_eq!((back.src_port, back.dst_port), (syn.dst_port, syn.src_port));
    assert_eq!((back.seq, back.ack_seq), (cookie, syn.seq.wrapping_add(1)));
    assert_eq!(usize::from(back.tcp_header_len), tcp_len);
    let segment = &reply[usize::from(back.l4_offset)..];
    let len = u16::try_from(tcp_len).unwrap().to_be_bytes();
    let pseudo_sum = match syn.version {
        IpVersion::V4 => {
            assert_eq!(sum(&[&ip]), 0xffff, "IPv4 header checksum");
            sum(&[&ip[12..20], &[0, 6], &len, segment])
        }
        IpVersion::V6 => sum(&[&ip[8..40], &[0, 0], &len, &[0, 0, 0, 6], segment]),
    };
    assert_eq!(pseudo_sum, 0xffff, "TCP checksum");
});
