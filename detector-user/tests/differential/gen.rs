//! Proptest strategies: well-formed TCP frames from many sources, and the mutations that
//! hostile input brings (truncation, impossible header lengths, wrong length fields, IPv4
//! options, IPv6 extension chains, fragments, VLAN tags, flag combinations, jumbo frames,
//! bad checksums). Frames are built byte by byte, not with a packet library, so that every
//! field can be wrong. Addresses are from 198.18.0.0/15 and 2001:2::/48 only.

use proptest::{collection::vec, prelude::*, sample::Index};

pub const SERVER4: [u8; 4] = [198, 18, 0, 1];
pub const SERVER6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// Addresses that are not the host's own: SYNs to them are another machine's.
pub const OTHER4: [u8; 4] = [198, 18, 0, 250];
pub const OTHER6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfa];
/// The port with a listener in the test's namespace, and one without.
pub const LISTEN_PORT: u16 = 8080;
pub const CLOSED_PORT: u16 = 9;
pub const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
pub const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

/// How the program is configured for one sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Tracking with drops (`FLAG_ENFORCE`); limits 0 = off.
    Track { syn_rate: u32, half_open: u32 },
    /// Tracking without `FLAG_ENFORCE`: drops become monitor passes.
    Monitor { syn_rate: u32, half_open: u32 },
    /// The cookie responder (`FLAG_COOKIES`), with or without timestamp-encoded options,
    /// under a policy.
    Cookie { timestamps: bool, ecn: bool, policy: Policy },
}

/// What the policy maps and flags say in cookie mode (`detector_common::policy`).
#[allow(clippy::struct_excessive_bools, reason = "independent switches of the policy maps, generated freely")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// `PORT_POLICY` value of `LISTEN_PORT` (0 default, 1 kernel, 2 answer, others: none).
    pub listen_port_slot: u32,
    /// `FLAG_LISTED_PORTS_ONLY`.
    pub listed_only: bool,
    /// `IFACE_VLAN_STRIPPED` on the test-run interface (ifindex 1).
    pub vlan_stripped: bool,
    /// SERVER6/128 in `KERNEL_DESTS`: IPv6 SYNs left to the kernel, IPv4 ones answered.
    pub kernel_dest6: bool,
    /// `PORT_NO_LISTENER` on `CLOSED_PORT`: the agent saw no listener there.
    pub closed_no_listener: bool,
    /// `FLAG_RAW_COOKIES` clear: the agent has not yet seeded the closed filter, so every
    /// cookie takes the socket-bound path.
    pub filter_unseeded: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    Listener,
    Closed,
    NotLocal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Syn,
    SynAck,
    /// The third packet of the handshake that a `Syn` of the same flow began.
    Ack,
    /// As `Ack`, acknowledging the cookie the kernel last answered this flow's SYN with in
    /// this sequence (filled in by `check_case`; `0x0bad_cafe` until there is one): a
    /// cookie ACK the shield must let through.
    CookieAck,
    /// FIN|ACK from the client: the tuple may be in `TIME_WAIT` (the fast path's FIN filter).
    Fin,
    Rst,
    /// Any combination of the eight flag bits.
    Flags(u8),
}

#[derive(Clone, Debug)]
pub enum Mutation {
    None,
    /// Cut the frame at an offset anywhere in it (0 included).
    Truncate(Index),
    /// Overwrite the IP header's first byte (version and IHL).
    VersionIhl(u8),
    /// Overwrite the TCP data offset nibble.
    DataOffset(u8),
    /// Add to the IPv4 total length or the IPv6 payload length (both ways).
    LengthDelta(i16),
    /// Set the IP length field to any value.
    Length(u16),
    /// IPv4 fragment bits (MF and the offset); IPv6 has fragment headers in the chain.
    Fragment(u16),
    TcpChecksum(u16),
    IpChecksum(u16),
    EtherType(u16),
    /// Overwrite one byte anywhere.
    Byte(Index, u8),
}

/// One frame of a sequence, before it is built.
#[derive(Clone, Debug)]
pub struct FrameSpec {
    pub v6: bool,
    /// Client 198.18.1.n or 2001:2::1:n.
    pub source: u8,
    pub sport: u16,
    pub dest: Dest,
    pub kind: Kind,
    /// TCP options, at most 40 bytes, padded to a multiple of 4 when built.
    pub tcp_options: Vec<u8>,
    /// IPv4 options, likewise.
    pub ip_options: Vec<u8>,
    /// IPv6 extension headers (next-header value naming each, its length in 8-octet units
    /// beyond the first 8), innermost last.
    pub ext_headers: Vec<(u8, u8)>,
    /// VLAN tag protocol IDs, outermost first.
    pub vlan: Vec<u16>,
    pub payload_len: u16,
    pub mutation: Mutation,
}

/// One generated case: a configuration and the frames it sees, in order.
#[derive(Clone, Debug)]
pub struct Case {
    pub mode: Mode,
    pub frames: Vec<FrameSpec>,
}

/// TCP options: well-formed ones a client sends, and malformed ones (bad lengths, unknown
/// kinds, an END in the middle), concatenated and cut at 40 bytes.
pub fn tcp_options() -> impl Strategy<Value = Vec<u8>> {
    let element = prop_oneof![
        4 => any::<u16>().prop_map(|m| { let [a, b] = m.to_be_bytes(); vec![2, 4, a, b] }),
        3 => any::<u8>().prop_map(|s| vec![3, 3, s]),
        3 => Just(vec![4, 2]),
        4 => (any::<u32>(), any::<u32>()).prop_map(|(v, e)| [&[8u8, 10][..], &v.to_be_bytes(), &e.to_be_bytes()].concat()),
        3 => Just(vec![1]),
        1 => Just(vec![0]),
        2 => (any::<u8>(), any::<u8>(), vec(any::<u8>(), 0..8)).prop_map(|(k, l, body)| [vec![k, l], body].concat()),
    ];
    prop_oneof![
        6 => vec(element, 0..8).prop_map(|e| e.concat()),
        // Linux's SYN layout, which the program reads without the walk (synopts.rs).
        2 => (any::<u16>(), any::<u32>(), any::<u32>(), any::<u8>()).prop_map(|(m, v, e, s)| {
            [&m.to_be_bytes()[..], &[4, 2, 8, 10], &v.to_be_bytes(), &e.to_be_bytes(), &[1, 3, 3, s]]
                .iter()
                .fold(vec![2, 4], |mut out, part| { out.extend_from_slice(part); out })
        }),
        1 => vec(any::<u8>(), 0..=40),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        24 => Just(Mutation::None),
        4 => any::<Index>().prop_map(Mutation::Truncate),
        2 => prop_oneof![(0u8..16).prop_map(|ihl| 0x40 | ihl), any::<u8>()].prop_map(Mutation::VersionIhl),
        2 => (0u8..16).prop_map(Mutation::DataOffset),
        2 => (-64i16..64).prop_map(Mutation::LengthDelta),
        1 => any::<u16>().prop_map(Mutation::Length),
        2 => any::<u16>().prop_map(Mutation::Fragment),
        1 => any::<u16>().prop_map(Mutation::TcpChecksum),
        1 => any::<u16>().prop_map(Mutation::IpChecksum),
        1 => prop_oneof![Just(0x0806u16), Just(0x8100), Just(0x88a8), any::<u16>()].prop_map(Mutation::EtherType),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Byte(i, b)),
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        8 => Just(Kind::Syn),
        1 => Just(Kind::SynAck),
        4 => Just(Kind::Ack),
        3 => Just(Kind::CookieAck),
        2 => Just(Kind::Fin),
        1 => Just(Kind::Rst),
        4 => any::<u8>().prop_map(Kind::Flags),
    ]
}

/// IPv6 extension headers: hop-by-hop, routing, destination options, fragment, and chains
/// longer than the parser walks (`MAX_IPV6_EXT_HEADERS`).
fn ext_headers() -> impl Strategy<Value = Vec<(u8, u8)>> {
    prop_oneof![
        6 => Just(Vec::new()),
        3 => vec((prop_oneof![Just(0u8), Just(43), Just(60), Just(44)], 0u8..4), 1..=6),
        1 => vec((prop_oneof![Just(0u8), Just(60)], any::<u8>()), 1..=3),
    ]
}

pub fn frame() -> impl Strategy<Value = FrameSpec> {
    let addressing = (
        any::<bool>(),
        1u8..7,
        prop_oneof![Just(40_000u16), Just(40_001), Just(40_002), Just(50_000)],
        prop_oneof![8 => Just(Dest::Listener), 1 => Just(Dest::Closed), 1 => Just(Dest::NotLocal)],
    );
    let headers = (
        kind(),
        tcp_options(),
        prop_oneof![8 => Just(Vec::new()), 1 => vec(any::<u8>(), 1..=40), 1 => Just(vec![1u8; 40])],
        ext_headers(),
        prop_oneof![12 => Just(Vec::new()), 2 => vec(Just(0x8100u16), 1..=1),
            2 => Just(vec![0x88a8u16, 0x8100]), 1 => vec(prop_oneof![Just(0x8100u16), Just(0x88a8)], 3..=3)],
        prop_oneof![10 => Just(0u16), 3 => 1u16..64, 1 => 1400u16..1500, 1 => prop_oneof![Just(3000u16), Just(8960)]],
    );
    (addressing, headers, mutation()).prop_map(
        |(
            (v6, source, sport, dest),
            (kind, tcp_options, ip_options, ext_headers, vlan, payload_len),
            mutation,
        )| {
            FrameSpec {
                v6,
                source,
                sport,
                dest,
                kind,
                tcp_options,
                ip_options,
                ext_headers,
                vlan,
                payload_len,
                mutation,
            }
        },
    )
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        // Mostly none, so that most SYNs reach the responder.
        3 => Just(Policy::default()),
        1 => (
            prop_oneof![Just(0u32), Just(1), Just(2), Just(7)],
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(listen_port_slot, listed_only, vlan_stripped, kernel_dest6, closed_no_listener, filter_unseeded)| {
                    Policy {
                        listen_port_slot,
                        listed_only,
                        vlan_stripped,
                        kernel_dest6,
                        closed_no_listener,
                        filter_unseeded,
                    }
                },
            ),
    ]
}

fn mode() -> impl Strategy<Value = Mode> {
    let limit = prop_oneof![Just(0u32), 1u32..6];
    prop_oneof![
        3 => (limit.clone(), limit.clone()).prop_map(|(syn_rate, half_open)| Mode::Track { syn_rate, half_open }),
        1 => (limit.clone(), limit).prop_map(|(syn_rate, half_open)| Mode::Monitor { syn_rate, half_open }),
        3 => (any::<bool>(), any::<bool>(), policy())
            .prop_map(|(timestamps, ecn, policy)| Mode::Cookie { timestamps, ecn, policy }),
    ]
}

/// A sequence of up to 48 frames under one configuration.
pub fn case() -> impl Strategy<Value = Case> {
    (mode(), vec(frame(), 1..=48)).prop_map(|(mode, frames)| Case { mode, frames })
}
