//! The SYN-ACK that answers a SYN with a cookie: the client's options, and the reply's
//! TCP and IP headers built on the stack, checksums included, for the program to copy
//! over the SYN in place.

use crate::{
    checksum::{add_word, finish_wide},
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

/// A built SYN-ACK TCP header, checksum included: `words[..len / 4]`, each the
/// big-endian value of four header bytes. Words rather than bytes so that the XDP program
/// builds, sums and stores the header in registers, four bytes per instruction
/// (docs/hotpaths.md, "The cookie path").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynAckHeader {
    pub words: [u32; SYNACK_WORDS_WITH_TS],
    pub len: u8,
}

/// Words in a SYN-ACK header with MSS only, and with timestamps.
pub const SYNACK_WORDS_MSS_ONLY: usize = SYNACK_LEN_MSS_ONLY as usize / 4;
pub const SYNACK_WORDS_WITH_TS: usize = SYNACK_LEN_WITH_TS as usize / 4;

impl SynAckHeader {
    /// The header as bytes (`[..len]` of them are the header), for tests and models.
    #[must_use]
    pub fn bytes(&self) -> [u8; SYNACK_LEN_WITH_TS as usize] {
        words_to_bytes(&self.words)
    }
}

/// Big-endian words back to the bytes they stand for.
#[inline(always)]
#[must_use]
pub fn words_to_bytes<const W: usize, const B: usize>(words: &[u32; W]) -> [u8; B] {
    const { assert!(W * 4 == B) };
    let mut out = [0u8; B];
    for (chunk, word) in out.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
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

/// Whether the reply carries timestamps, hence its TCP header length: known before the
/// header is built, so that the frame can be resized first and the header written
/// straight into it (`build_synack_into`).
#[inline(always)]
#[must_use]
pub fn synack_len(opts: &SynOptions, settings: &ReplySettings) -> u8 {
    if opts.tsval.is_some() && settings.timestamps {
        SYNACK_LEN_WITH_TS
    } else {
        SYNACK_LEN_MSS_ONLY
    }
}

/// Builds the SYN-ACK's TCP header (checksum included) for a SYN `syn` answered with
/// `cookie` and the MSS the cookie helper chose, into a fresh array of words.
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
    let mut words = [0u32; SYNACK_WORDS_WITH_TS];
    let len = build_synack_into(syn, opts, cookie, mss, now_ms, settings, |i, w| words[i] = w);
    SynAckHeader { words, len }
}

/// Builds the SYN-ACK's TCP header word by word: `put(i, w)` receives word `i` (its
/// big-endian value) as soon as it is known, the checksum word (4) last, every index
/// below `synack_len / 4` exactly once. Returns `synack_len`.
///
/// Why a sink rather than an array: the XDP program stores each word into the packet as
/// it is made, so no word stays live until the checksum is done. Ten live words are more
/// than the BPF registers, and their spills cost stack the SYN cookie chain does not have
/// (docs/hotpaths.md, "The cookie path").
#[inline(always)]
pub fn build_synack_into(
    syn: &TcpSegment,
    opts: &SynOptions,
    cookie: u32,
    mss: u16,
    now_ms: u32,
    settings: &ReplySettings,
    mut put: impl FnMut(usize, u32),
) -> u8 {
    let len = synack_len(opts, settings);
    let mut sum = pseudo_header_sum(syn.version, &syn.src, &syn.dst, len);
    let mut emit = |i: usize, w: u32| {
        put(i, w);
        sum = add_word(sum, w);
    };
    emit(0, u32::from(syn.dst_port) << 16 | u32::from(syn.src_port));
    emit(1, cookie);
    emit(2, syn.seq.wrapping_add(1));
    emit(5, u32::from(OPT_MSS) << 24 | 4 << 16 | u32::from(mss));
    let mut flags = tcp_flags::SYN | tcp_flags::ACK;
    if let (Some(tsecr), SYNACK_LEN_WITH_TS) = (opts.tsval, len) {
        // ECN setup is a SYN with ECE and CWR (RFC 3168).
        let ecn =
            settings.ecn && syn.flags & (tcp_flags::ECE | tcp_flags::CWR) == tcp_flags::ECE | tcp_flags::CWR;
        if ecn {
            flags |= tcp_flags::ECE;
        }
        let sack = if opts.sack_permitted {
            u32::from(OPT_SACK_PERM) << 8 | 2
        } else {
            u32::from(OPT_NOP) << 8 | u32::from(OPT_NOP)
        };
        emit(6, sack << 16 | u32::from(OPT_TIMESTAMP) << 8 | 0x0a);
        emit(7, encode_timestamp(now_ms, opts, ecn));
        emit(8, tsecr);
        emit(
            9,
            match opts.wscale {
                Some(_) => {
                    u32::from(OPT_NOP) << 24
                        | u32::from(OPT_WSCALE) << 16
                        | 3 << 8
                        | u32::from(settings.wscale.min(MAX_WSCALE))
                }
                None => u32::from_be_bytes([OPT_NOP; 4]),
            },
        );
    }
    // Data offset, flags, window: the flags wait for the ECN decision above.
    emit(3, u32::from(len / 4) << 28 | u32::from(flags) << 16 | u32::from(settings.window));
    // The checksum, over everything emitted (the checksum field itself counts as zero),
    // and a zero urgent pointer.
    put(4, u32::from(finish_wide(sum)) << 16);
    len
}

/// The TCP pseudo-header's contribution to the checksum. `src` and `dst` are the SYN's;
/// the sum does not depend on their order.
#[inline(always)]
fn pseudo_header_sum(version: IpVersion, src: &[u8; 16], dst: &[u8; 16], tcp_len: u8) -> u64 {
    const IPPROTO_TCP: u64 = 6;
    let addrs = match version {
        IpVersion::V4 => add_word(add_word(0, addr_word(src, 3)), addr_word(dst, 3)),
        IpVersion::V6 => {
            let mut sum = 0;
            let mut i = 0;
            while i < 4 {
                sum = add_word(add_word(sum, addr_word(src, i)), addr_word(dst, i));
                i += 1;
            }
            sum
        }
    };
    addrs + IPPROTO_TCP + u64::from(tcp_len)
}

/// Word `i` (big-endian value) of a 16-byte address.
#[inline(always)]
fn addr_word(addr: &[u8; 16], i: usize) -> u32 {
    u32::from_be_bytes([addr[i * 4], addr[i * 4 + 1], addr[i * 4 + 2], addr[i * 4 + 3]])
}

/// The reply's IPv4 header (no options) as five big-endian words, checksum included.
/// Identification 0 and don't-fragment, as Linux sets on its own SYN-ACKs; TTL 64.
#[inline(always)]
#[must_use]
pub fn ipv4_reply_words(syn: &TcpSegment, tcp_len: u8) -> [u32; 5] {
    let mut h = [
        0x4500_0000 | (20 + u32::from(tcp_len)),
        0x0000_4000,
        64 << 24 | 6 << 16,
        addr_word(&syn.dst, 3),
        addr_word(&syn.src, 3),
    ];
    let sum = add_word(add_word(add_word(add_word(add_word(0, h[0]), h[1]), h[2]), h[3]), h[4]);
    h[2] |= u32::from(finish_wide(sum));
    h
}

/// The reply's IPv6 header (no extension headers) as ten big-endian words.
#[inline(always)]
#[must_use]
pub fn ipv6_reply_words(syn: &TcpSegment, tcp_len: u8) -> [u32; 10] {
    [
        0x6000_0000,
        u32::from(tcp_len) << 16 | 6 << 8 | 64,
        addr_word(&syn.dst, 0),
        addr_word(&syn.dst, 1),
        addr_word(&syn.dst, 2),
        addr_word(&syn.dst, 3),
        addr_word(&syn.src, 0),
        addr_word(&syn.src, 1),
        addr_word(&syn.src, 2),
        addr_word(&syn.src, 3),
    ]
}

/// `ipv4_reply_words` as bytes, for tests and models.
#[must_use]
pub fn build_ipv4_reply(syn: &TcpSegment, tcp_len: u8) -> [u8; 20] {
    words_to_bytes(&ipv4_reply_words(syn, tcp_len))
}

/// `ipv6_reply_words` as bytes, for tests and models.
#[must_use]
pub fn build_ipv6_reply(syn: &TcpSegment, tcp_len: u8) -> [u8; 40] {
    words_to_bytes(&ipv6_reply_words(syn, tcp_len))
}

#[cfg(test)]
mod oracle;
