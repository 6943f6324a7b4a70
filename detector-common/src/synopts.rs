//! Shortcuts around the SYN option walk (`synack::parse_syn_options_with`) for the cookie
//! path: when the reply needs none of the client's options, and the one layout most SYNs
//! carry (Linux's), recognised in a few compares instead of a step per option.
//!
//! The walk costs a map round trip per option (it keeps the verifier's state count flat),
//! about a tenth of the cookie path on a Linux SYN (docs/hotpaths.md); these shortcuts
//! give the same `SynOptions` as the walk wherever they answer.
//!
//! One more shortcut is around the kernel's own walk: the raw cookie helper looks for the
//! MSS through every option of the header it is given (`mss_first_offset_byte`).

use crate::{
    config::{Config, FLAG_COOKIE_TIMESTAMPS},
    synack::SynOptions,
};

/// Whether the SYN-ACK depends on the client's options at all: only a reply with
/// timestamps echoes them (`build_synack` reads window scale, SACK and the timestamp only
/// on that branch; the MSS is the cookie helper's business). Without, the walk is skipped.
#[inline(always)]
#[must_use]
pub fn reply_reads_options(cfg: &Config) -> bool {
    cfg.has(FLAG_COOKIE_TIMESTAMPS)
}

/// The options area of a Linux SYN with timestamps on (the default): MSS, SACK-permitted,
/// timestamp, NOP, window scale, 20 bytes in this order (`tcp_options_write`). The values
/// sit at: MSS bytes 2-3, tsval 8-11, tsecr 12-15, window scale 19.
pub const LINUX_LEN: usize = 20;

/// The options of an area exactly `LINUX_LEN` long if they are laid out as Linux lays out
/// a SYN's, `None` for any other layout (then the walk decides). Equal to
/// `parse_syn_options(area, LINUX_LEN)` whenever it answers (host tests check both). The
/// XDP program reads the area straight from the frame (no copy into the walk's scratch,
/// no helper call) when the SYN's options are `LINUX_LEN` long.
#[inline(always)]
#[must_use]
pub fn linux_options(buf: &[u8; LINUX_LEN]) -> Option<SynOptions> {
    let is_linux = buf[0] == 2
        && buf[1] == 4
        && buf[4] == 4
        && buf[5] == 2
        && buf[6] == 8
        && buf[7] == 10
        && buf[16] == 1
        && buf[17] == 3
        && buf[18] == 3;
    is_linux.then(|| SynOptions {
        // The walk clamps a window scale to 14 (RFC 7323), so does this.
        wscale: Some(buf[19].min(14)),
        sack_permitted: true,
        tsval: Some(u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]])),
    })
}

/// The TCP header length the raw cookie helper is shown for a SYN whose options begin
/// with its MSS: the fixed header and that one option.
pub const MSS_FIRST_HEADER_LEN: usize = 24;

/// The data-offset byte (byte 12 of the TCP header: the offset in its high nibble) that
/// shows the raw cookie helper a header ending after the MSS option, for a SYN whose
/// options begin with a nonzero MSS (kind 2, length 4), as Linux, Windows, macOS and the
/// BSDs send it; `offset_byte` is the SYN's own, `first_option` the four bytes after the
/// fixed header. `None` for any other SYN: no options, another option first, or an MSS of
/// 0 (which the kernel's walk passes over); the helper then gets the whole header.
///
/// Why: `bpf_tcp_raw_gen_syncookie_ipv4/6` takes the MSS from `tcp_parse_mss_option`,
/// which walks every option the data offset covers (five for a Linux SYN) and keeps the
/// last MSS it finds. The cookie itself depends only on the addresses, ports, sequence
/// number and that MSS, so the helper answers the same for the shortened header. The one
/// difference: a SYN with a second MSS option, which no stack sends, gets its first one
/// here where the kernel's walk would take the last; both are values the client offered.
/// The XDP program writes this byte, calls the helper and writes the SYN's byte back
/// before anything else reads the frame (docs/cookies.md).
#[inline(always)]
#[must_use]
pub fn mss_first_offset_byte(offset_byte: u8, first_option: [u8; 4]) -> Option<u8> {
    /// The data offset of `MSS_FIRST_HEADER_LEN`, in 4-byte words.
    const WORDS: u8 = 6;
    let has_options = offset_byte >> 4 > 5;
    let mss_first = first_option[0] == 2 && first_option[1] == 4 && first_option[2] | first_option[3] != 0;
    (has_options && mss_first).then_some(WORDS << 4 | (offset_byte & 0x0f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::FLAG_COOKIE_ECN,
        parse::{IpVersion, TcpSegment},
        synack::{build_synack, parse_syn_options, ReplySettings, MAX_OPTIONS_LEN},
    };
    use std::{vec, vec::Vec};

    /// A byte of a xorshift64 sequence: the pseudo-random areas below, the same on every run.
    fn next_byte(seed: &mut u64) -> u8 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        seed.to_le_bytes()[3]
    }

    /// What `syncookie::read_options` in the XDP program makes of `buf[..len]` before
    /// the walk: `linux_options` for an area `LINUX_LEN` long, nothing otherwise.
    fn linux_layout(buf: &[u8; MAX_OPTIONS_LEN], len: usize) -> Option<SynOptions> {
        let mut area = [0u8; LINUX_LEN];
        area.copy_from_slice(&buf[..LINUX_LEN]);
        (len == LINUX_LEN).then(|| linux_options(&area)).flatten()
    }

    fn linux_syn(tsval: u32, wscale: u8) -> [u8; MAX_OPTIONS_LEN] {
        let mut buf = [0u8; MAX_OPTIONS_LEN];
        let ts = tsval.to_be_bytes();
        buf[..LINUX_LEN].copy_from_slice(&[
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, ts[0], ts[1], ts[2], ts[3], 0, 0, 0, 0, 1, 3, 3, wscale,
        ]);
        // Bytes past the options are an earlier SYN's leftovers in the program's scratch.
        buf[LINUX_LEN..].fill(0xa5);
        buf
    }

    #[test]
    fn a_linux_syn_reads_as_the_walk_reads_it() {
        for (tsval, wscale) in [(0, 0), (12_345, 7), (u32::MAX, 14), (1, 15), (0x0102_0304, 255)] {
            let buf = linux_syn(tsval, wscale);
            let fast = linux_layout(&buf, LINUX_LEN);
            assert_eq!(fast, Some(parse_syn_options(&buf, LINUX_LEN)), "tsval {tsval} wscale {wscale}");
            assert_eq!(fast.and_then(|o| o.wscale), Some(wscale.min(14)));
            assert_eq!(fast.and_then(|o| o.tsval), Some(tsval));
        }
    }

    #[test]
    fn other_layouts_are_left_to_the_walk() {
        let buf = linux_syn(1, 7);
        // The same bytes at another length: the walk must judge them.
        for len in [0, 4, 12, 19, 21, 40] {
            assert_eq!(linux_layout(&buf, len), None, "len {len}");
        }
        // Any one marker byte changed: another layout.
        for i in [0, 1, 4, 5, 6, 7, 16, 17, 18] {
            let mut other = buf;
            other[i] ^= 0x40;
            assert_eq!(linux_layout(&other, LINUX_LEN), None, "byte {i}");
        }
        // Windows' SYN: MSS, NOP, window scale, NOP, NOP, SACK-permitted.
        let mut windows = [0u8; MAX_OPTIONS_LEN];
        windows[..12].copy_from_slice(&[2, 4, 5, 0xb4, 1, 3, 3, 8, 1, 1, 4, 2]);
        assert_eq!(linux_layout(&windows, 12), None);
    }

    #[test]
    fn whenever_it_answers_it_agrees_with_the_walk() {
        // Pseudo-random areas with the markers forced in half of them: the other bytes
        // (MSS, tsecr, values) must not matter, and nothing else may match.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut answered = 0;
        for n in 0..20_000 {
            let mut buf = [0u8; MAX_OPTIONS_LEN];
            for b in &mut buf {
                *b = next_byte(&mut seed);
            }
            if n % 2 == 0 {
                for (i, v) in [(0, 2), (1, 4), (4, 4), (5, 2), (6, 8), (7, 10), (16, 1), (17, 3), (18, 3)] {
                    buf[i] = v;
                }
            }
            #[allow(clippy::cast_possible_truncation, reason = "below 41")]
            let len = if n % 2 == 0 { LINUX_LEN } else { (seed % 41) as usize };
            if let Some(fast) = linux_layout(&buf, len) {
                answered += 1;
                assert_eq!(fast, parse_syn_options(&buf, len), "{buf:?} len {len}");
            }
        }
        assert_eq!(answered, 10_000);
    }

    #[test]
    fn without_timestamps_the_reply_ignores_the_clients_options() {
        let mut cfg = Config::new(0, 0, 1, 3);
        assert!(!reply_reads_options(&cfg));
        let syn = TcpSegment {
            version: IpVersion::V4,
            vlan_tags: 0,
            l3_offset: 14,
            l4_offset: 34,
            tcp_header_len: 40,
            // SYN with ECE and CWR: asks for ECN, which only a reply with timestamps grants.
            flags: 0xc2,
            src: [9; 16],
            dst: [7; 16],
            src_port: 40_000,
            dst_port: 80,
            seq: 1000,
            ack_seq: 0,
        };
        let settings = |cfg: &Config| ReplySettings {
            timestamps: cfg.has(FLAG_COOKIE_TIMESTAMPS),
            ecn: cfg.has(FLAG_COOKIE_ECN),
            wscale: 7,
            window: 64_240,
        };
        let found = SynOptions { wscale: Some(9), sack_permitted: true, tsval: Some(77) };
        for flags in [0, FLAG_COOKIE_ECN] {
            cfg.flags = flags;
            let reply =
                |opts: &SynOptions| build_synack(&syn, opts, 0xdead_beef, 1460, 5_000, &settings(&cfg));
            assert_eq!(reply(&found), reply(&SynOptions::default()), "flags {flags:#x}");
        }
        // With timestamps the options do change the reply: the check above could fail.
        cfg.flags = FLAG_COOKIE_TIMESTAMPS;
        assert!(reply_reads_options(&cfg));
        let reply = |opts: &SynOptions| build_synack(&syn, opts, 0xdead_beef, 1460, 5_000, &settings(&cfg));
        assert_ne!(reply(&found), reply(&SynOptions::default()));
    }

    /// The kernel's `tcp_parse_mss_option` as its source reads (net/ipv4/tcp_input.c), in
    /// our words: over the options the data offset covers, END stops, NOP is one byte, any
    /// other option needs a length of 2 or more that fits; an MSS option of length 4 and a
    /// nonzero value replaces what was found before. 0 means none (the helper then takes
    /// the default MSS).
    fn kernel_mss_walk(header: &[u8]) -> u16 {
        let len = usize::from(header[12] >> 4) * 4;
        let (mut at, mut mss) = (20, 0);
        while at < len {
            match header[at] {
                0 => return mss,
                1 => at += 1,
                kind => {
                    let Some(&size) = header.get(at + 1).filter(|_| at + 2 <= len) else { return mss };
                    let size = usize::from(size);
                    if size < 2 || at + size > len {
                        return mss;
                    }
                    if kind == 2 && size == 4 {
                        let value = u16::from_be_bytes([header[at + 2], header[at + 3]]);
                        if value != 0 {
                            mss = value;
                        }
                    }
                    at += size;
                }
            }
        }
        mss
    }

    /// A TCP header of a SYN with these options, padded with END to whole words.
    fn header_with(options: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 20];
        h.extend_from_slice(options);
        h.resize(20 + options.len().div_ceil(4) * 4, 0);
        #[allow(clippy::cast_possible_truncation, reason = "at most 60 bytes")]
        let words = (h.len() / 4) as u8;
        // The offset and, in the low nibble, a reserved bit that must survive.
        h[12] = words << 4 | 0x01;
        h
    }

    /// The header the raw helper is shown for this one, if it is cut.
    fn shown(header: &[u8]) -> Option<Vec<u8>> {
        // A header without options has no first option: zeros, as past the frame's end
        // (`header_with` pads the options to whole words, so there are four bytes or none).
        let first = header.get(20..24).map_or([0; 4], |b| [b[0], b[1], b[2], b[3]]);
        mss_first_offset_byte(header[12], first).map(|byte| {
            let mut h = header.to_vec();
            h[12] = byte;
            h
        })
    }

    #[test]
    fn an_mss_that_comes_first_is_the_mss_the_whole_walk_finds() {
        let linux = [2, 4, 0x05, 0xa0, 4, 2, 8, 10, 0, 0, 0, 7, 0, 0, 0, 0, 1, 3, 3, 7];
        let windows = [2, 4, 0x05, 0xa0, 1, 3, 3, 8, 1, 1, 4, 2];
        let macos = [2, 4, 0x05, 0xa0, 1, 3, 3, 6, 1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 0, 4, 2, 0, 0];
        let mss_only = [2, 4, 0x05, 0xa0];
        for options in [&linux[..], &windows[..], &macos[..], &mss_only[..]] {
            let header = header_with(options);
            let cut = shown(&header).expect("the MSS comes first");
            assert_eq!(usize::from(cut[12] >> 4) * 4, MSS_FIRST_HEADER_LEN);
            assert_eq!(cut[12] & 0x0f, 0x01, "the low nibble is the SYN's");
            assert_eq!(kernel_mss_walk(&cut), 1440, "{options:?}");
            assert_eq!(kernel_mss_walk(&cut), kernel_mss_walk(&header), "{options:?}");
        }
    }

    #[test]
    fn any_other_first_option_gets_the_whole_header() {
        for options in [
            &[][..],
            &[1, 2, 4, 0x05, 0xa0][..],
            &[4, 2, 2, 4, 0x05, 0xa0][..],
            &[2, 4, 0, 0, 2, 4, 0x05, 0xa0][..],
            &[2, 3, 0x05, 0xa0][..],
            &[0, 2, 4, 0x05][..],
        ] {
            assert_eq!(shown(&header_with(options)), None, "{options:?}");
        }
    }

    #[test]
    fn only_a_second_mss_option_reads_differently() {
        // What no stack sends: the kernel's walk keeps the last, the shortcut the first.
        let header = header_with(&[2, 4, 0x05, 0xa0, 2, 4, 0x05, 0xb4]);
        assert_eq!(kernel_mss_walk(&header), 1460);
        assert_eq!(kernel_mss_walk(&shown(&header).unwrap()), 1440);
        // Pseudo-random areas after a first MSS: wherever no later option is an MSS, the
        // walks agree.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut compared = 0;
        for _ in 0..20_000 {
            let mut options = [0u8; 40];
            for b in &mut options {
                // Mostly small kinds and lengths, so that the walk goes far.
                *b = next_byte(&mut seed) % 12;
            }
            options[..4].copy_from_slice(&[2, 4, 0x05, 0xa0]);
            #[allow(clippy::cast_possible_truncation, reason = "below 10")]
            let words = 1 + (seed % 10) as usize;
            let header = header_with(&options[..4 * words]);
            let full = kernel_mss_walk(&header);
            let mut later = header.clone();
            later[20..24].fill(1);
            if kernel_mss_walk(&later) == 0 {
                compared += 1;
                assert_eq!(kernel_mss_walk(&shown(&header).unwrap()), full, "{header:?}");
            }
        }
        assert!(compared > 10_000, "{compared}");
    }
}
