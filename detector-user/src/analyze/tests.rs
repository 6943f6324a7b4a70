//! Hand-built pcap and pcapng files (frames from etherparse) replayed through `analyze`.

use std::path::Path;

use etherparse::PacketBuilder;

use super::{
    model::{Analysis, Model, SourceReport},
    reader::{self, CaptureError, CaptureInfo},
};
use crate::config::{Config, LimitArgs, RunArgs};
use detector_common::track::BlockReason;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;
/// 2023-11-14 22:13:20 UTC: capture times are epoch times.
const T0: u64 = 1_700_000_000 * SEC;
const SERVER: [u8; 4] = [198, 19, 0, 1];

/// A TCP segment over IPv4 without a link-layer header.
fn ip_segment(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, seq: u32, kind: &str) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src, dst, 64).tcp(sport, dport, seq, 64_240);
    let b = match kind {
        "syn" => b.syn(),
        "synack" => b.syn().ack(seq.wrapping_add(1)),
        "ack" => b.ack(1),
        "rst" => b.rst(),
        other => panic!("{other}"),
    };
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

fn ethernet(ip: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    f.extend_from_slice(ip);
    f
}

/// Linux cooked capture v1: packet type, ARPHRD_ETHER, address length, address, protocol.
fn sll(ip: &[u8]) -> Vec<u8> {
    let mut f = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 2, 0, 0, 0x08, 0x00];
    f.extend_from_slice(ip);
    f
}

/// A little-endian microsecond pcap file.
fn pcap(link: u32, frames: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 65_535, link] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for (ns, data) in frames {
        let len = u32::try_from(data.len()).unwrap();
        let secs = u32::try_from(ns / SEC).unwrap();
        let micros = u32::try_from(ns % SEC / 1_000).unwrap();
        for v in [secs, micros, len, len] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(data);
    }
    out
}

fn block(out: &mut Vec<u8>, kind: u32, body: &[u8]) {
    let len = u32::try_from(12 + body.len().next_multiple_of(4)).unwrap();
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(body);
    out.resize(out.len() + body.len().next_multiple_of(4) - body.len(), 0);
    out.extend_from_slice(&len.to_le_bytes());
}

/// A little-endian pcapng file, one Ethernet interface with `if_tsresol` = `resol`
/// (None: the default, microseconds).
fn pcapng(resol: Option<u8>, frames: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut shb = 0x1a2b_3c4du32.to_le_bytes().to_vec();
    shb.extend_from_slice(&[1, 0, 0, 0]);
    shb.extend_from_slice(&u64::MAX.to_le_bytes());
    block(&mut out, 0x0a0d_0d0a, &shb);
    let mut idb = vec![1, 0, 0, 0];
    idb.extend_from_slice(&65_535u32.to_le_bytes());
    if let Some(r) = resol {
        idb.extend_from_slice(&[9, 0, 1, 0, r, 0, 0, 0, 0, 0, 0, 0]);
    }
    block(&mut out, 1, &idb);
    let unit = 10u64.pow(9 - u32::from(resol.unwrap_or(6)));
    for (ns, data) in frames {
        let ts = ns / unit;
        let len = u32::try_from(data.len()).unwrap();
        let mut epb = 0u32.to_le_bytes().to_vec();
        #[allow(clippy::cast_possible_truncation, reason = "the low word, by design")]
        for v in [(ts >> 32) as u32, ts as u32, len, len] {
            epb.extend_from_slice(&v.to_le_bytes());
        }
        epb.extend_from_slice(data);
        epb.resize(20 + data.len().next_multiple_of(4), 0);
        block(&mut out, 6, &epb);
    }
    out
}

fn run(bytes: &[u8], args: &RunArgs) -> Result<(Analysis, CaptureInfo), CaptureError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capture");
    std::fs::write(&path, bytes).unwrap();
    replay(&path, args)
}

fn replay(path: &Path, args: &RunArgs) -> Result<(Analysis, CaptureInfo), CaptureError> {
    let cfg = Config::load_offline(args).unwrap();
    let mut model = Model::new(cfg.kernel_config(), cfg.detection());
    let info = reader::read_into(path, &mut model)?;
    Ok((model.finish(), info))
}

fn source<'a>(a: &'a Analysis, addr: &str) -> &'a SourceReport {
    &a.sources.iter().find(|(ip, _)| ip.to_string() == addr).unwrap().1
}

/// 300 SYNs from one source, 3 ms apart, then one frame 40 s later so that the
/// detector sees the calm seconds after the flood.
fn single_source_flood(link: fn(&[u8]) -> Vec<u8>) -> Vec<(u64, Vec<u8>)> {
    let mut frames: Vec<_> = (0..300u16)
        .map(|i| {
            (T0 + u64::from(i) * 3 * MS, link(&ip_segment([198, 18, 0, 1], SERVER, 10_000 + i, 80, 7, "syn")))
        })
        .collect();
    frames.push((T0 + 40 * SEC, link(&ip_segment([198, 18, 0, 9], SERVER, 9, 80, 1, "rst"))));
    frames
}

fn flood_args() -> RunArgs {
    // The flooder's first 101 SYNs count toward the host's rate; once blocked, its SYNs
    // do not (as in the agent).
    RunArgs {
        limits: LimitArgs { enter_syn_rate: Some(100.0), exit_syn_rate: Some(50.0), ..LimitArgs::default() },
        ..RunArgs::default()
    }
}

fn check_single_source_flood(a: &Analysis) {
    let s = source(a, "198.18.0.1");
    // Default limits: 200 SYN/s, 100 half-open. The 101st SYN finds 100 pending.
    let expected = SourceReport {
        syns: 300,
        completed: 0,
        half_open: 0,
        failed: 100,
        rsts: 0,
        syn_acks: 0,
        retransmits: 0,
        dropped: 200,
        blocks: 1,
        first_block: Some((T0 + 100 * 3 * MS, BlockReason::HalfOpen)),
    };
    assert_eq!(*s, expected);
    let events: Vec<String> = a.timeline.iter().map(|(at, e)| format!("{} {e:?}", (at - T0) / MS)).collect();
    assert_eq!(
        events,
        ["300 SourceBlocked(198.18.0.1, HalfOpen)", "1000 AttackStarted", "32000 AttackEnded"],
        "calm from 2 s on, 30 s of hold"
    );
    assert!(!a.under_attack_at_end);
    assert_eq!((a.frames, a.tcp_segments, a.last_ns - a.first_ns), (301, 301, 40 * SEC));
}

#[test]
fn single_source_flood_is_blocked_by_the_half_open_limit() {
    let (a, info) = run(&pcap(1, &single_source_flood(ethernet)), &flood_args()).unwrap();
    assert_eq!((info.format, info.link_types.as_slice()), ("pcap", ["Ethernet".to_string()].as_slice()));
    check_single_source_flood(&a);
}

#[test]
fn without_a_half_open_limit_the_rate_limit_blocks_the_201st_syn() {
    let mut args = flood_args();
    args.limits.half_open_limit = Some(0);
    let (a, _) = run(&pcap(1, &single_source_flood(ethernet)), &args).unwrap();
    let s = source(&a, "198.18.0.1");
    assert_eq!((s.syns, s.dropped, s.failed, s.blocks), (300, 100, 200, 1));
    assert_eq!(s.first_block, Some((T0 + 200 * 3 * MS, BlockReason::SynRate)));
}

#[test]
fn sll_capture_gives_the_same_report() {
    let (a, info) = run(&pcap(113, &single_source_flood(sll)), &flood_args()).unwrap();
    assert_eq!(info.link_types, ["Linux cooked (SLL)"]);
    check_single_source_flood(&a);
}

#[test]
fn random_source_flood_blocks_nobody_but_starts_attack_mode() {
    // 1000 sources, one SYN each, 1 ms apart; the capture ends at 2 s, before any times out.
    let mut frames: Vec<_> = (0..1000u16)
        .map(|i| {
            let src = [198, 18, u8::try_from(i / 250).unwrap(), u8::try_from(i % 250 + 1).unwrap()];
            (T0 + u64::from(i) * MS, ethernet(&ip_segment(src, SERVER, 40_000, 443, u32::from(i), "syn")))
        })
        .collect();
    frames.push((T0 + 2 * SEC, ethernet(&ip_segment([198, 18, 9, 9], SERVER, 1, 443, 1, "rst"))));
    let (a, info) = run(&pcapng(None, &frames), &flood_args()).unwrap();
    assert_eq!(info.format, "pcapng");
    assert_eq!(a.sources.len(), 1001);
    assert!(a.sources.iter().all(|(_, s)| s.blocks == 0 && s.dropped == 0));
    let flooders = a.sources.iter().filter(|(_, s)| s.syns == 1 && s.half_open == 1).count();
    assert_eq!(flooders, 1000);
    let events: Vec<String> = a.timeline.iter().map(|(at, e)| format!("{} {e:?}", at - T0)).collect();
    assert_eq!(events, [format!("{SEC} AttackStarted")], "microsecond pcapng timestamps scaled");
    assert!(a.under_attack_at_end);
}

#[test]
fn calm_capture_completes_every_handshake() {
    // Five clients: SYN, SYN-ACK, ACK (seq = isn + 1); one retransmits its SYN first, one
    // later resets. Nanosecond timestamps (if_tsresol 9).
    let mut frames = Vec::new();
    for i in 0..5u8 {
        let client = [198, 18, 1, i + 1];
        let t = T0 + u64::from(i) * 100 * MS;
        let isn = 1_000 * u32::from(i);
        frames.push((t, ethernet(&ip_segment(client, SERVER, 5_000, 22, isn, "syn"))));
        if i == 0 {
            frames.push((t + 7, ethernet(&ip_segment(client, SERVER, 5_000, 22, isn, "syn"))));
        }
        frames.push((t + 10, ethernet(&ip_segment(SERVER, client, 22, 5_000, 99, "synack"))));
        frames.push((t + 20, ethernet(&ip_segment(client, SERVER, 5_000, 22, isn + 1, "ack"))));
    }
    frames.push((T0 + SEC, ethernet(&ip_segment([198, 18, 1, 5], SERVER, 5_000, 22, 4_001, "rst"))));
    let (a, _) = run(&pcapng(Some(9), &frames), &RunArgs::default()).unwrap();
    assert_eq!(a.sources.len(), 5, "the server sent only SYN-ACKs: not a source");
    for (addr, s) in &a.sources {
        let rsts = u64::from(addr.to_string() == "198.18.1.5");
        let retransmits = u64::from(addr.to_string() == "198.18.1.1");
        let expected = SourceReport {
            syns: 1 + retransmits,
            completed: 1,
            syn_acks: 1,
            rsts,
            retransmits,
            ..SourceReport::default()
        };
        assert_eq!(*s, expected, "{addr}");
    }
    assert!(a.timeline.is_empty());
    assert_eq!(a.last_ns - a.first_ns, SEC);
}

#[test]
fn truncated_file_is_refused_naming_the_problem() {
    let bytes = pcap(1, &single_source_flood(ethernet));
    let e = run(&bytes[..bytes.len() - 10], &RunArgs::default()).unwrap_err();
    assert!(matches!(e, CaptureError::Truncated { frames: 300, .. }), "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");
    let ng = pcapng(None, &single_source_flood(ethernet));
    let e = run(&ng[..ng.len() - 10], &RunArgs::default()).unwrap_err();
    assert!(matches!(e, CaptureError::Truncated { frames: 300, .. }), "{e}");
}

#[test]
fn non_capture_and_unsupported_link_type_are_refused() {
    let e = run(b"[thresholds]\nsyn_rate_limit = 5\n", &RunArgs::default()).unwrap_err();
    assert!(e.to_string().contains("not a pcap or pcapng capture"), "{e}");
    let e = run(b"", &RunArgs::default()).unwrap_err();
    assert!(matches!(e, CaptureError::NotACapture { .. }), "{e}");
    // 105: IEEE 802.11.
    let e = run(&pcap(105, &[]), &RunArgs::default()).unwrap_err();
    assert!(e.to_string().contains("unsupported link type IEEE802_11"), "{e}");
}

#[test]
fn sll2_and_raw_ipv6_frames_reach_the_parser() {
    let v6 = PacketBuilder::ipv6(
        [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5],
        [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        64,
    );
    let mut raw = Vec::new();
    v6.tcp(1, 80, 1, 1_000).syn().write(&mut raw, &[]).unwrap();
    let mut sll2 = vec![0x86, 0xdd, 0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 2, 0, 0, 0, 0, 2, 0, 0];
    sll2.extend_from_slice(&raw);
    for (link, frame) in [(101, raw), (276, sll2)] {
        let (a, _) = run(&pcap(link, &[(T0, frame)]), &RunArgs::default()).unwrap();
        assert_eq!(a.sources.len(), 1, "link type {link}");
        assert_eq!((a.sources[0].0.to_string(), a.sources[0].1.syns), ("2001:2::5".to_string(), 1));
    }
}

#[test]
fn a_flood_shorter_than_a_second_is_sampled_once_after_its_last_frame() {
    let mut frames = single_source_flood(ethernet);
    frames.pop();
    let (a, _) = run(&pcap(1, &frames), &flood_args()).unwrap();
    assert_eq!(
        a.timeline.last().map(|(at, e)| (at - T0, *e)),
        Some((SEC, super::model::Event::AttackStarted))
    );
}
