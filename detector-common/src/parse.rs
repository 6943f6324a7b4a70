//! Ethernet (up to two VLAN tags) → IPv4/IPv6 (options, extension headers) → TCP.
//!
//! One generic path serves both IP versions: addresses come out as 16 bytes, IPv4 in its
//! IPv4-mapped IPv6 form (`::ffff:a.b.c.d`), so maps and decisions never fork on the family.

use crate::{packet::Packet, state::FlowKey};

pub const ETH_HEADER_LEN: usize = 14;
pub const VLAN_TAG_LEN: usize = 4;
/// 802.1Q (C-tag) and 802.1ad (S-tag, the outer tag of `QinQ`).
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
/// At most this many VLAN tags are stripped; a third one makes the frame unparsed.
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers skipped before giving up (hop-by-hop, routing, destination options).
pub const MAX_IPV6_EXT_HEADERS: usize = 4;
/// No header the parser reads may start beyond this offset. It bounds every packet
/// offset for the verifier, and keeps the cost of a hostile extension-header chain flat.
pub const MAX_L4_OFFSET: usize = 512;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;

/// TCP flag bits as they sit in byte 13 of the TCP header.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVersion {
    V4,
    V6,
}

/// The fields of a TCP segment that tracking and the cookie responder use.
///
/// `repr(C)` and 8-byte aligned, addresses first: both then sit at 8-byte aligned offsets
/// that LLVM can see, so copying one into a map key or reading it as words takes a few
/// word loads. With Rust's own layout an address could land at any offset, and the BPF
/// target (no unaligned loads) copied and compared them a byte at a time: 16 loads and 16
/// stores per address copy, plus 12 shifts per word read back (docs/hotpaths.md).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment {
    /// Source and destination address, network order, IPv4 mapped into IPv6.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Sequence and acknowledgement numbers in host order.
    pub seq: u32,
    pub ack_seq: u32,
    /// Ports in host order.
    pub src_port: u16,
    pub dst_port: u16,
    /// Offset of the IP header from the start of the frame.
    pub l3_offset: u16,
    /// Offset of the TCP header from the start of the frame.
    pub l4_offset: u16,
    pub version: IpVersion,
    pub vlan_tags: u8,
    /// TCP header length in bytes (data offset × 4), 20..=60.
    pub tcp_header_len: u8,
    pub flags: u8,
}

const _: () = assert!(core::mem::align_of::<TcpSegment>() == 8);
const _: () = assert!(core::mem::offset_of!(TcpSegment, dst) == 16);

impl TcpSegment {
    /// The segment's flow, client (source) first: the key of the pending handshakes and of
    /// the fast path's closed filter.
    #[inline(always)]
    #[must_use]
    pub fn flow(&self) -> FlowKey {
        FlowKey { src: self.src, dst: self.dst, src_port: self.src_port, dst_port: self.dst_port }
    }

    #[inline(always)]
    #[must_use]
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// A connection request: SYN without ACK, RST or FIN. The kernel discards a SYN with
    /// RST or FIN in a listener (`tcp_rcv_state_process`), so those make no handshake, and
    /// the cookie helper refuses them too.
    #[inline(always)]
    #[must_use]
    pub fn is_syn(&self) -> bool {
        self.flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST | tcp_flags::FIN) == tcp_flags::SYN
    }

    /// Could be the third packet of a handshake: ACK set, no SYN/RST/FIN.
    #[inline(always)]
    #[must_use]
    pub fn may_complete_handshake(&self) -> bool {
        self.flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST | tcp_flags::FIN) == tcp_flags::ACK
    }
}

/// Why a frame was not parsed to TCP. Each variant has its own pass counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotTcp {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NotIp,
    /// IP, but the transport is not TCP.
    OtherProtocol,
    /// An IP fragment: only the first could carry TCP ports, and we do not reassemble.
    Fragment,
    /// A header is cut short by the end of the frame.
    Truncated,
    /// A header field is impossible (IHL < 5, TCP data offset < 5, wrong IP version).
    Malformed,
    /// More VLAN tags or IPv6 extension headers than we walk, or headers past `MAX_L4_OFFSET`.
    TooDeep,
    /// An IP length field disagrees with the frame or the headers (the kernel drops these).
    BadLength,
}

/// Parses a frame that starts with an Ethernet header.
///
/// Length fields are checked the way the kernel's IP layer checks them before it accepts
/// a packet (`ip_rcv_core`, `ipv6_rcv`): a frame the kernel would discard is never tracked
/// nor answered. A frame longer than the IP length is fine: Ethernet pads short frames to
/// 60 bytes. A frame cut inside a header the parser reads is `Truncated`.
#[inline(always)]
pub fn parse_tcp<P: Packet + ?Sized>(pkt: &P) -> Result<TcpSegment, NotTcp> {
    let (ethertype, l3, vlan_tags) = parse_ethernet(pkt)?;
    parse_from_l3(pkt, ethertype, l3, vlan_tags)
}

/// The ethertype of a frame without VLAN tags that carries IPv4 or IPv6: the frames
/// `parse_from_l3` can take straight after the Ethernet header. `None` for anything else
/// (tagged, not IP, cut short), which `parse_tcp` takes whole.
#[inline(always)]
pub fn untagged_ip<P: Packet + ?Sized>(pkt: &P) -> Option<u16> {
    pkt.be16_at(12).filter(|&ethertype| ethertype == ETH_P_IPV4 || ethertype == ETH_P_IPV6)
}

/// `parse_tcp` past the Ethernet header and its tags: `ethertype` the inner one, `l3` the
/// IP header's offset.
#[inline(always)]
pub fn parse_from_l3<P: Packet + ?Sized>(
    pkt: &P,
    ethertype: u16,
    l3: usize,
    vlan_tags: u8,
) -> Result<TcpSegment, NotTcp> {
    let ip = match ethertype {
        ETH_P_IPV4 => parse_ipv4(pkt, l3)?,
        ETH_P_IPV6 => parse_ipv6(pkt, l3)?,
        _ => return Err(NotTcp::NotIp),
    };
    let tcp = parse_tcp_header(pkt, ip.l4)?;
    // The TCP header must lie inside the datagram the IP header declares, and that
    // datagram inside the frame. Scalars only: `end` comes from the header, `frame_len`
    // from the kernel (no arithmetic on packet pointers).
    if ip.l4 + usize::from(tcp.tcp_header_len) > ip.end || !pkt.holds(ip.end) {
        return Err(NotTcp::BadLength);
    }
    Ok(TcpSegment {
        version: ip.version,
        vlan_tags,
        // Both offsets are bounded by MAX_L4_OFFSET, so they fit.
        #[allow(clippy::cast_possible_truncation, reason = "bounded by MAX_L4_OFFSET")]
        l3_offset: l3 as u16,
        #[allow(clippy::cast_possible_truncation, reason = "bounded by MAX_L4_OFFSET")]
        l4_offset: ip.l4 as u16,
        src: from_two_words(ip.src),
        dst: from_two_words(ip.dst),
        ..tcp
    })
}

/// Returns (inner ethertype, offset of the L3 header, number of VLAN tags).
#[inline(always)]
pub(crate) fn parse_ethernet<P: Packet + ?Sized>(pkt: &P) -> Result<(u16, usize, u8), NotTcp> {
    let mut ethertype = pkt.be16_at(12).ok_or(NotTcp::Truncated)?;
    let mut offset = ETH_HEADER_LEN;
    let mut tags = 0u8;
    // Unrolled by the compiler: a fixed, tiny bound.
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        // The tag is TCI (2 bytes) then the next ethertype.
        ethertype = pkt.be16_at(offset + 2).ok_or(NotTcp::Truncated)?;
        offset += VLAN_TAG_LEN;
        tags += 1;
    }
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        return Err(NotTcp::TooDeep);
    }
    Ok((ethertype, offset, tags))
}

/// What the IP parsers hand on to the TCP parser.
struct L3 {
    version: IpVersion,
    /// Offset of the TCP header.
    l4: usize,
    /// Offset one past the datagram's last byte, as the IP length field declares it.
    end: usize,
    /// Addresses as `two_words`.
    src: [u64; 2],
    dst: [u64; 2],
}

/// An address as two native-endian words, the form it travels in from the IP parsers to
/// the segment. Where the IPv4 and IPv6 paths join, LLVM keeps a 16-byte array as 16
/// separate bytes (spilled, then stored one by one: about 130 instructions for the two
/// addresses); two words stay two registers and two stores.
#[inline(always)]
#[must_use]
pub fn two_words(a: [u8; 16]) -> [u64; 2] {
    let (hi, lo) = a.split_at(8);
    let word = |b: &[u8]| u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    [word(hi), word(lo)]
}

/// `two_words` back to the address's bytes.
#[inline(always)]
fn from_two_words(w: [u64; 2]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..8].copy_from_slice(&w[0].to_ne_bytes());
    a[8..].copy_from_slice(&w[1].to_ne_bytes());
    a
}

#[inline(always)]
fn parse_ipv4<P: Packet + ?Sized>(pkt: &P, l3: usize) -> Result<L3, NotTcp> {
    let version_ihl = pkt.u8_at(l3).ok_or(NotTcp::Truncated)?;
    if version_ihl >> 4 != 4 {
        return Err(NotTcp::Malformed);
    }
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if header_len < 20 {
        return Err(NotTcp::Malformed);
    }
    // Read the fixed header's last byte first: one check covers the fields below.
    pkt.u8_at(l3 + 19).ok_or(NotTcp::Truncated)?;
    // Total length covers the header itself: below it (0 included) the kernel discards
    // the packet. Checked against the frame once the TCP header is known (`parse_tcp`).
    let total_len = usize::from(pkt.be16_at(l3 + 2).ok_or(NotTcp::Truncated)?);
    if total_len < header_len {
        return Err(NotTcp::BadLength);
    }
    let frag = pkt.be16_at(l3 + 6).ok_or(NotTcp::Truncated)?;
    // More-fragments flag or a non-zero fragment offset.
    if frag & 0x3fff != 0 {
        return Err(NotTcp::Fragment);
    }
    if pkt.u8_at(l3 + 9).ok_or(NotTcp::Truncated)? != IPPROTO_TCP {
        return Err(NotTcp::OtherProtocol);
    }
    let src = pkt.read::<4>(l3 + 12).ok_or(NotTcp::Truncated)?;
    let dst = pkt.read::<4>(l3 + 16).ok_or(NotTcp::Truncated)?;
    Ok(L3 {
        version: IpVersion::V4,
        l4: l3 + header_len,
        end: l3 + total_len,
        src: two_words(ipv4_mapped(src)),
        dst: two_words(ipv4_mapped(dst)),
    })
}

#[inline(always)]
fn parse_ipv6<P: Packet + ?Sized>(pkt: &P, l3: usize) -> Result<L3, NotTcp> {
    let version = pkt.u8_at(l3).ok_or(NotTcp::Truncated)? >> 4;
    if version != 6 {
        return Err(NotTcp::Malformed);
    }
    // Payload length 0 announces a jumbogram (length in a hop-by-hop option): not
    // handled here, the kernel decides.
    let payload_len = usize::from(pkt.be16_at(l3 + 4).ok_or(NotTcp::Truncated)?);
    if payload_len == 0 {
        return Err(NotTcp::BadLength);
    }
    let mut next = pkt.u8_at(l3 + 6).ok_or(NotTcp::Truncated)?;
    let src = pkt.read::<16>(l3 + 8).ok_or(NotTcp::Truncated)?;
    let dst = pkt.read::<16>(l3 + 24).ok_or(NotTcp::Truncated)?;
    let mut offset = l3 + 40;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                // Next header, then length in 8-octet units not counting the first 8.
                let ext = pkt.read::<2>(offset).ok_or(NotTcp::Truncated)?;
                next = ext[0];
                offset += (usize::from(ext[1]) + 1) * 8;
                if offset > MAX_L4_OFFSET {
                    return Err(NotTcp::TooDeep);
                }
            }
            _ => break,
        }
    }
    match next {
        IPPROTO_TCP => Ok(L3 {
            version: IpVersion::V6,
            l4: offset,
            end: l3 + 40 + payload_len,
            src: two_words(src),
            dst: two_words(dst),
        }),
        IPPROTO_FRAGMENT => Err(NotTcp::Fragment),
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => Err(NotTcp::TooDeep),
        _ => Err(NotTcp::OtherProtocol),
    }
}

/// Parses the TCP header at `l4`; addresses and L3 offsets are filled in by the caller.
#[inline(always)]
fn parse_tcp_header<P: Packet + ?Sized>(pkt: &P, l4: usize) -> Result<TcpSegment, NotTcp> {
    if l4 > MAX_L4_OFFSET {
        return Err(NotTcp::TooDeep);
    }
    let fixed = pkt.read::<20>(l4).ok_or(NotTcp::Truncated)?;
    let header_len = (fixed[12] >> 4) * 4;
    if header_len < 20 {
        return Err(NotTcp::Malformed);
    }
    // The options must be inside the frame too: a SYN-ACK built from this header reads them.
    pkt.u8_at(l4 + usize::from(header_len) - 1).ok_or(NotTcp::Truncated)?;
    Ok(TcpSegment {
        version: IpVersion::V4,
        vlan_tags: 0,
        l3_offset: 0,
        l4_offset: 0,
        tcp_header_len: header_len,
        flags: fixed[13],
        src: [0; 16],
        dst: [0; 16],
        src_port: u16::from_be_bytes([fixed[0], fixed[1]]),
        dst_port: u16::from_be_bytes([fixed[2], fixed[3]]),
        seq: u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
        ack_seq: u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]),
    })
}

/// `a.b.c.d` → `::ffff:a.b.c.d`, the key form of an IPv4 address.
#[inline(always)]
#[must_use]
pub fn ipv4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3]]
}
