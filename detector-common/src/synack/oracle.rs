//! The byte-wise SYN-ACK builder that the word-wise one replaced, kept only as a test
//! oracle: for random SYNs, options and settings, both must produce the same bytes.

use super::{
    build_ipv4_reply, build_ipv6_reply, build_synack, encode_timestamp, ReplySettings, SynOptions,
    MAX_WSCALE, OPT_MSS, OPT_NOP, OPT_SACK_PERM, OPT_TIMESTAMP, OPT_WSCALE, SYNACK_LEN_MSS_ONLY,
    SYNACK_LEN_WITH_TS,
};
use crate::{
    checksum::{add_bytes, finish},
    parse::{tcp_flags, IpVersion, TcpSegment},
};

#[allow(clippy::trivially_copy_pass_by_ref, reason = "the old builder's signature, kept as it was")]
fn old_synack(
    syn: &TcpSegment,
    opts: &SynOptions,
    cookie: u32,
    mss: u16,
    now_ms: u32,
    settings: &ReplySettings,
) -> ([u8; 40], u8) {
    let mut h = [0u8; SYNACK_LEN_WITH_TS as usize];
    h[0..2].copy_from_slice(&syn.dst_port.to_be_bytes());
    h[2..4].copy_from_slice(&syn.src_port.to_be_bytes());
    h[4..8].copy_from_slice(&cookie.to_be_bytes());
    h[8..12].copy_from_slice(&syn.seq.wrapping_add(1).to_be_bytes());
    h[14..16].copy_from_slice(&settings.window.to_be_bytes());
    let [mss_hi, mss_lo] = mss.to_be_bytes();
    h[20..24].copy_from_slice(&[OPT_MSS, 4, mss_hi, mss_lo]);
    let mut flags = tcp_flags::SYN | tcp_flags::ACK;
    let len = match opts.tsval {
        Some(tsecr) if settings.timestamps => {
            let ecn = settings.ecn
                && syn.flags & (tcp_flags::ECE | tcp_flags::CWR) == tcp_flags::ECE | tcp_flags::CWR;
            if ecn {
                flags |= tcp_flags::ECE;
            }
            h[24..26].copy_from_slice(&if opts.sack_permitted {
                [OPT_SACK_PERM, 2]
            } else {
                [OPT_NOP, OPT_NOP]
            });
            h[26..28].copy_from_slice(&[OPT_TIMESTAMP, 10]);
            h[28..32].copy_from_slice(&encode_timestamp(now_ms, opts, ecn).to_be_bytes());
            h[32..36].copy_from_slice(&tsecr.to_be_bytes());
            h[36..40].copy_from_slice(&match opts.wscale {
                Some(_) => [OPT_NOP, OPT_WSCALE, 3, settings.wscale.min(MAX_WSCALE)],
                None => [OPT_NOP; 4],
            });
            SYNACK_LEN_WITH_TS
        }
        _ => SYNACK_LEN_MSS_ONLY,
    };
    h[12] = (len / 4) << 4;
    h[13] = flags;
    let addrs = match syn.version {
        IpVersion::V4 => {
            let mut v4 = [0u8; 8];
            v4[..4].copy_from_slice(&syn.dst[12..]);
            v4[4..].copy_from_slice(&syn.src[12..]);
            add_bytes(0, &v4)
        }
        IpVersion::V6 => add_bytes(add_bytes(0, &syn.dst), &syn.src),
    };
    let sum = add_bytes(addrs + 6 + u32::from(len), &h);
    h[16..18].copy_from_slice(&finish(sum).to_be_bytes());
    (h, len)
}

fn old_ipv4(syn: &TcpSegment, tcp_len: u8) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&(20 + u16::from(tcp_len)).to_be_bytes());
    h[6] = 0x40;
    h[8] = 64;
    h[9] = 6;
    h[12..16].copy_from_slice(&syn.dst[12..]);
    h[16..20].copy_from_slice(&syn.src[12..]);
    let sum = finish(add_bytes(0, &h));
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h
}

fn old_ipv6(syn: &TcpSegment, tcp_len: u8) -> [u8; 40] {
    let mut h = [0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&u16::from(tcp_len).to_be_bytes());
    h[6] = 6;
    h[7] = 64;
    h[8..24].copy_from_slice(&syn.dst);
    h[24..40].copy_from_slice(&syn.src);
    h
}

/// xorshift64: reproducible, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    #[allow(clippy::cast_possible_truncation, reason = "random bits")]
    fn u32(&mut self) -> u32 {
        self.next() as u32
    }
    #[allow(clippy::cast_possible_truncation, reason = "random bits")]
    fn u16(&mut self) -> u16 {
        self.next() as u16
    }
    #[allow(clippy::cast_possible_truncation, reason = "random bits")]
    fn u8(&mut self) -> u8 {
        self.next() as u8
    }
    fn bool(&mut self) -> bool {
        self.next() & 1 == 1
    }
    fn addr(&mut self) -> [u8; 16] {
        let mut a = [0u8; 16];
        a[..8].copy_from_slice(&self.next().to_le_bytes());
        a[8..].copy_from_slice(&self.next().to_le_bytes());
        a
    }
}

#[test]
fn word_builder_matches_the_byte_builder() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut with_ts, mut mss_only) = (0, 0);
    for _ in 0..200_000 {
        let syn = TcpSegment {
            version: if rng.bool() { IpVersion::V4 } else { IpVersion::V6 },
            vlan_tags: 0,
            l3_offset: 14,
            l4_offset: 34,
            tcp_header_len: 20,
            flags: rng.u8(),
            src: rng.addr(),
            dst: rng.addr(),
            src_port: rng.u16(),
            dst_port: rng.u16(),
            seq: rng.u32(),
            ack_seq: rng.u32(),
        };
        let opts = SynOptions {
            wscale: rng.bool().then(|| rng.u8() % 16),
            sack_permitted: rng.bool(),
            tsval: rng.bool().then(|| rng.u32()),
        };
        let settings = ReplySettings {
            timestamps: rng.bool(),
            ecn: rng.bool(),
            wscale: rng.u8() % 16,
            window: rng.u16(),
        };
        let (cookie, mss, now_ms) = (rng.u32(), rng.u16(), rng.u32());
        let new = build_synack(&syn, &opts, cookie, mss, now_ms, &settings);
        let (old, old_len) = old_synack(&syn, &opts, cookie, mss, now_ms, &settings);
        assert_eq!(new.len, old_len, "{syn:?} {opts:?} {settings:?}");
        let len = usize::from(new.len);
        assert_eq!(new.bytes()[..len], old[..len], "{syn:?} {opts:?} {settings:?}");
        // Past the header the words stay zero: the sum over all ten relies on it.
        assert!(new.bytes()[len..].iter().all(|&b| b == 0));
        match syn.version {
            IpVersion::V4 => assert_eq!(build_ipv4_reply(&syn, new.len), old_ipv4(&syn, new.len)),
            IpVersion::V6 => assert_eq!(build_ipv6_reply(&syn, new.len), old_ipv6(&syn, new.len)),
        }
        if new.len == SYNACK_LEN_WITH_TS {
            with_ts += 1;
        } else {
            mss_only += 1;
        }
    }
    // Both layouts were exercised many times.
    assert!(with_ts > 10_000 && mss_only > 10_000, "{with_ts} {mss_only}");
}
