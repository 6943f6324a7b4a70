//! The SYN-ACK that answers a SYN with a cookie: the client's options, and the reply's
//! TCP and IP headers built on the stack, checksums included, for the program to copy
//! over the SYN in place.

use crate::{
    checksum::{add_bytes, finish},
    parse::{tcp_flags, IpVersion, TcpSegment},
};

/// Largest TCP options area (60-byte header minus the fixed 20).
pub const MAX_OPTIONS_LEN: usize = 40;
/// SYN-ACK TCP header length without timestamps: fixed header + MSS.
pub const SYNACK_LEN_MSS_ONLY: u8 = 24;
/// With timestamps: + SACK-permitted or NOPs, TS, window scale or NOPs.
pub const SYNACK_LEN_WITH_TS: u8 = 40;

/// Timestamp low bits that carry options (`TSBITS` in net/ipv4/syncookies.c).
const TS_OPTION_BITS: u32 = 6;
const TS_OPT_WSCALE_MASK: u32 = 0xf;
const TS_OPT_SACK: u32 = 1 << 4;
const TS_OPT_ECN: u32 = 1 << 5;
/// The largest window scale TCP allows (RFC 7323).
const MAX_WSCALE: u8 = 14;

const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;
const OPT_WSCALE: u8 = 3;
const OPT_SACK_PERM: u8 = 4;
const OPT_TIMESTAMP: u8 = 8;

/// What the client asked for in its SYN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynOptions {
    /// Its window scale, if it offered one.
    pub wscale: Option<u8>,
    pub sack_permitted: bool,
    /// Its timestamp value, if it sent the option.
    pub tsval: Option<u32>,
}

/// Walks the options of a SYN: `buf[..len]` are the bytes after the fixed TCP header.
/// Malformed options end the walk; what was read so far stands.
#[inline(always)]
#[must_use]
pub fn parse_syn_options(buf: &[u8; MAX_OPTIONS_LEN], len: usize) -> SynOptions {
    parse_syn_options_with(buf, len, |w| w)
}

/// The option walk's state between two steps, as plain integers (no `Option`, no
/// `bool`), so that the XDP program can keep it in a map value (`parse_syn_options_with`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OptionWalk {
    /// Offset of the next option in the options area.
    pub pos: u32,
    /// The client's timestamp value; meaningful when `has_tsval` is 1.
    pub tsval: u32,
    /// The client's window scale, clamped to 14; meaningful when `has_wscale` is 1.
    pub wscale: u8,
    pub has_wscale: u8,
    pub sack_permitted: u8,
    pub has_tsval: u8,
}

// Shared with the XDP program's scratch map: 12 bytes, no padding.
const _: () = assert!(core::mem::size_of::<OptionWalk>() == 12);

/// The XDP program's per-CPU scratch for a SYN's options: the walk's state, then the
/// option bytes. In a map value rather than on the stack because the verifier accepts a
/// read at a position it cannot bound exactly as long as it stays inside the value: the
/// 24 spare bytes after the 40 an option can occupy are that margin.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionScratch {
    pub walk: OptionWalk,
    pub bytes: [u8; MAX_OPTIONS_LEN],
    pub _spare: [u8; 24],
}

const _: () = assert!(core::mem::size_of::<OptionScratch>() == 76);

impl OptionWalk {
    /// What the walk found so far.
    #[inline(always)]
    #[must_use]
    pub fn options(&self) -> SynOptions {
        SynOptions {
            wscale: (self.has_wscale != 0).then_some(self.wscale),
            sack_permitted: self.sack_permitted != 0,
            tsval: (self.has_tsval != 0).then_some(self.tsval),
        }
    }
}

/// `parse_syn_options` with a hook applied to the walk's whole state at every step and
/// once at the end.
///
/// The XDP program passes a hook that stores the state in a map value and reads it back:
/// the verifier does not track what a map value holds, so after the hook the position
/// and every option found so far are unknown to it, the branches of one step lead to one
/// state at the next, and the caller continues from one state instead of one per
/// combination of options found and way out of the loop (docs/verifier.md). Every access
/// stays bounds-checked, so the unknown position is safe.
#[inline(always)]
#[must_use]
pub fn parse_syn_options_with(
    buf: &[u8; MAX_OPTIONS_LEN],
    len: usize,
    mut launder: impl FnMut(OptionWalk) -> OptionWalk,
) -> SynOptions {
    let mut w = OptionWalk::default();
    // Each iteration consumes at least one byte: MAX_OPTIONS_LEN bounds the loop.
    for _ in 0..MAX_OPTIONS_LEN {
        w = launder(w);
        let i = w.pos as usize;
        if i >= len || i >= MAX_OPTIONS_LEN {
            break;
        }
        let Some(&kind) = buf.get(i) else { break };
        match kind {
            OPT_END => break,
            OPT_NOP => {
                w.pos += 1;
                continue;
            }
            _ => {}
        }
        let Some(&opt_len) = buf.get(i + 1) else { break };
        let opt_len = usize::from(opt_len);
        if opt_len < 2 || i + opt_len > len {
            break;
        }
        match (kind, opt_len) {
            (OPT_WSCALE, 3) => match buf.get(i + 2) {
                Some(&scale) => {
                    w.wscale = scale.min(MAX_WSCALE);
                    w.has_wscale = 1;
                }
                None => w.has_wscale = 0,
            },
            (OPT_SACK_PERM, 2) => w.sack_permitted = 1,
            (OPT_TIMESTAMP, 10) => {
                if let (Some(a), Some(b), Some(c), Some(d)) =
                    (buf.get(i + 2), buf.get(i + 3), buf.get(i + 4), buf.get(i + 5))
                {
                    w.tsval = u32::from_be_bytes([*a, *b, *c, *d]);
                    w.has_tsval = 1;
                }
            }
            // MSS is the helper's business: it reads the SYN itself.
            _ => {}
        }
        // i + opt_len <= len <= MAX_OPTIONS_LEN, checked above.
        #[allow(clippy::cast_possible_truncation, reason = "at most MAX_OPTIONS_LEN")]
        {
            w.pos = (i + opt_len) as u32;
        }
    }
    launder(w).options()
}

/// Choices for the reply that come from the agent's config and the host's sysctls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplySettings {
    /// Carry options in a timestamp (needs `net.ipv4.tcp_timestamps = 2` on the host).
    pub timestamps: bool,
    /// Accept ECN when the client asks for it (only expressible with timestamps).
    pub ecn: bool,
    /// The window scale the kernel will use for the connection.
    pub wscale: u8,
    /// The (unscaled) window the SYN-ACK advertises.
    pub window: u16,
}

/// A built SYN-ACK TCP header: `bytes[..len]` with the checksum filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynAckHeader {
    pub bytes: [u8; SYNACK_LEN_WITH_TS as usize],
    pub len: u8,
}

/// The timestamp value that encodes the negotiated options in its low bits, as
/// `cookie_init_timestamp` in net/ipv4/syncookies.c does, so `cookie_timestamp_decode`
/// restores them when the client echoes it.
#[inline(always)]
#[must_use]
pub fn encode_timestamp(now_ms: u32, opts: &SynOptions, ecn: bool) -> u32 {
    let mut options = match opts.wscale {
        Some(w) => u32::from(w),
        None => TS_OPT_WSCALE_MASK,
    };
    if opts.sack_permitted {
        options |= TS_OPT_SACK;
    }
    if ecn {
        options |= TS_OPT_ECN;
    }
    let mut ts = (now_ms >> TS_OPTION_BITS) << TS_OPTION_BITS | options;
    // Never ahead of the clock: the kernel rejects timestamps from the future.
    if ts > now_ms {
        ts = ts.wrapping_sub(1 << TS_OPTION_BITS);
    }
    ts
}

/// Builds the SYN-ACK's TCP header (checksum included) for a SYN `syn` answered with
/// `cookie` and the MSS the cookie helper chose.
#[inline(always)]
#[must_use]
pub fn build_synack(
    syn: &TcpSegment,
    opts: &SynOptions,
    cookie: u32,
    mss: u16,
    now_ms: u32,
    settings: &ReplySettings,
) -> SynAckHeader {
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
            // ECN setup is a SYN with ECE and CWR (RFC 3168).
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
    let mut sum = pseudo_header_sum(syn.version, &syn.dst, &syn.src, len);
    sum = if len == SYNACK_LEN_WITH_TS {
        add_bytes(sum, &h)
    } else {
        let mut short = [0u8; SYNACK_LEN_MSS_ONLY as usize];
        short.copy_from_slice(&h[..SYNACK_LEN_MSS_ONLY as usize]);
        add_bytes(sum, &short)
    };
    h[16..18].copy_from_slice(&finish(sum).to_be_bytes());
    SynAckHeader { bytes: h, len }
}

/// The TCP pseudo-header's contribution to the checksum.
#[inline(always)]
fn pseudo_header_sum(version: IpVersion, src: &[u8; 16], dst: &[u8; 16], tcp_len: u8) -> u32 {
    const IPPROTO_TCP: u32 = 6;
    let addrs = match version {
        IpVersion::V4 => {
            let mut v4 = [0u8; 8];
            v4[..4].copy_from_slice(&src[12..]);
            v4[4..].copy_from_slice(&dst[12..]);
            add_bytes(0, &v4)
        }
        IpVersion::V6 => add_bytes(add_bytes(0, src), dst),
    };
    addrs + IPPROTO_TCP + u32::from(tcp_len)
}

/// The reply's IPv4 header (no options), checksum included.
#[inline(always)]
#[must_use]
pub fn build_ipv4_reply(syn: &TcpSegment, tcp_len: u8) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&(20 + u16::from(tcp_len)).to_be_bytes());
    // Don't fragment, as Linux sets on its own SYN-ACKs.
    h[6] = 0x40;
    h[8] = 64;
    h[9] = 6;
    h[12..16].copy_from_slice(&syn.dst[12..]);
    h[16..20].copy_from_slice(&syn.src[12..]);
    let sum = finish(add_bytes(0, &h));
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h
}

/// The reply's IPv6 header (no extension headers).
#[inline(always)]
#[must_use]
pub fn build_ipv6_reply(syn: &TcpSegment, tcp_len: u8) -> [u8; 40] {
    let mut h = [0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&u16::from(tcp_len).to_be_bytes());
    h[6] = 6;
    h[7] = 64;
    h[8..24].copy_from_slice(&syn.dst);
    h[24..40].copy_from_slice(&syn.src);
    h
}
