//! The kill switch and the allow/deny lists in the real XDP object (BPF_PROG_TEST_RUN):
//! allowed sources pass even over their limits, denied ones are dropped (all their IP
//! traffic, monitor mode only counts), allow wins, `FLAG_OFF` passes everything before
//! parsing. Each fixture checks the verdict and that exactly its counter rose. Needs root.

mod common;

use std::time::Instant;

use aya::{
    maps::{lpm_trie::Key, LpmTrie},
    programs::Xdp,
};
use common::{Detector, SERVER4, SERVER6, XDP_DROP, XDP_PASS};
use detector_common::{
    config::{Config, FLAG_ALLOW_LIST, FLAG_DENY_LIST, FLAG_ENFORCE, FLAG_OFF},
    counters::Counter,
    names,
    parse::ipv4_mapped,
};
use etherparse::PacketBuilder;

const SEC: u64 = 1_000_000_000;
const ALLOWED4: [u8; 4] = [198, 18, 1, 7];
const DENIED4: [u8; 4] = [198, 18, 2, 7];
/// Outside the denied 198.18.0.0/16 (still inside the lab's 198.18.0.0/15).
const OTHER4: [u8; 4] = [198, 19, 3, 7];
/// In 2001:2:0:d::/64, the denied IPv6 prefix.
const DENIED6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0xd, 0, 0, 0, 0, 0, 0, 0, 9];

fn syn4(src: [u8; 4], sport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]).ipv4(src, SERVER4, 64);
    let mut out = Vec::new();
    b.tcp(sport, 80, 1000, 64240).syn().write(&mut out, &[]).unwrap();
    out
}

fn syn6(src: [u8; 16]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]).ipv6(src, SERVER6, 64);
    let mut out = Vec::new();
    b.tcp(40_000, 80, 1000, 64240).syn().write(&mut out, &[]).unwrap();
    out
}

fn udp4(src: [u8; 4]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]).ipv4(src, SERVER4, 64);
    let mut out = Vec::new();
    b.udp(5353, 53).write(&mut out, b"query").unwrap();
    out
}

/// A TCP SYN from `src` behind five IPv6 destination-options headers: one more than the
/// parser walks (`parse::MAX_IPV6_EXT_HEADERS`), so it is `too_deep` to track.
fn deep_v6(src: [u8; 16]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x86, 0xdd];
    let payload_len: u16 = 5 * 8 + 20;
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&payload_len.to_be_bytes());
    f.extend_from_slice(&[60, 64]); // next: destination options; hop limit
    f.extend_from_slice(&src);
    f.extend_from_slice(&SERVER6);
    for i in 0..5 {
        let next = if i == 4 { 6 } else { 60 };
        f.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]); // PadN over the 6 option bytes
    }
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&40_000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    f.extend_from_slice(&tcp);
    f
}

fn add(det: &mut Detector, map: &str, addr: [u8; 16], len: u32) {
    let mut trie: LpmTrie<_, [u8; 16], u32> = LpmTrie::try_from(det.ebpf.map_mut(map).unwrap()).unwrap();
    trie.insert(&Key::new(len, addr), 1, 0).unwrap();
}

/// A detector with 198.18.1.0/24 allowed; 198.18.2.0/24, 2001:2:0:d::/64 and (to show that
/// allow wins) 198.18.0.0/16, which covers the allowed /24, denied.
fn lists(flags: u32) -> Detector {
    let mut cfg = Config::new(2, 0, 60 * SEC, 3 * SEC);
    cfg.flags = flags;
    let mut det = Detector::load(cfg, &[]);
    add(&mut det, names::MAP_ALLOW, ipv4_mapped(ALLOWED4), 96 + 24);
    add(&mut det, names::MAP_DENY, ipv4_mapped(DENIED4), 96 + 24);
    // Allow wins: the allowed /24 is inside a denied /16.
    add(&mut det, names::MAP_DENY, ipv4_mapped([198, 18, 1, 0]), 96 + 16);
    add(&mut det, names::MAP_DENY, DENIED6, 64);
    det
}

/// Runs `frame`, checks the verdict and that of the verdict slots `counter`, and only it,
/// rose by one (event slots, e.g. "a source was blocked", may rise beside it).
fn expect(det: &Detector, name: &str, frame: &[u8], verdict: u32, counter: Counter) {
    let before = det.counters();
    let (got, _) = det.run(names::PROGRAM, frame);
    assert_eq!(got, verdict, "{name}: verdict");
    let after = det.counters();
    for c in Counter::ALL.iter().filter(|c| c.verdict().is_some()) {
        let delta = after[*c as usize] - before[*c as usize];
        let want = u64::from(*c == counter);
        assert_eq!(delta, want, "{name}: {c:?} rose by {delta}");
    }
}

#[test]
fn an_allowed_source_passes_even_over_its_limit() {
    let det = lists(FLAG_ENFORCE | FLAG_ALLOW_LIST | FLAG_DENY_LIST);
    // A SYN rate limit of 2/s: ten SYNs from an allowed source all pass, none is tracked.
    for sport in 0..10 {
        expect(&det, "allowed syn", &syn4(ALLOWED4, 40_000 + sport), XDP_PASS, Counter::PassAllowed);
    }
    assert!(det.sources().keys().next().is_none(), "an allowed source was tracked");
    // The same from an unlisted source: the third SYN crosses the limit.
    expect(&det, "other syn 1", &syn4(OTHER4, 1), XDP_PASS, Counter::PassSyn);
    expect(&det, "other syn 2", &syn4(OTHER4, 2), XDP_PASS, Counter::PassSyn);
    expect(&det, "other syn 3", &syn4(OTHER4, 3), XDP_DROP, Counter::DropOverLimit);
}

#[test]
fn a_denied_source_is_dropped_whatever_it_sends() {
    let det = lists(FLAG_ENFORCE | FLAG_ALLOW_LIST | FLAG_DENY_LIST);
    expect(&det, "denied syn", &syn4(DENIED4, 1), XDP_DROP, Counter::DropDenied);
    expect(&det, "denied udp", &udp4(DENIED4), XDP_DROP, Counter::DropDenied);
    expect(&det, "denied v6 prefix", &syn6(DENIED6), XDP_DROP, Counter::DropDenied);
    expect(&det, "allowed udp", &udp4(ALLOWED4), XDP_PASS, Counter::PassAllowed);
    expect(&det, "other udp", &udp4(OTHER4), XDP_PASS, Counter::PassNotTcp);
    let mut v6 = DENIED6;
    v6[7] = 0xe; // outside the /64
    expect(&det, "v6 outside the prefix", &syn6(v6), XDP_PASS, Counter::PassSyn);
    expect(&det, "denied, too deep to parse", &deep_v6(DENIED6), XDP_DROP, Counter::DropDenied);
    expect(&det, "other, too deep to parse", &deep_v6(v6), XDP_PASS, Counter::PassTooDeep);
}

#[test]
fn monitor_mode_counts_denied_sources_but_passes() {
    let det = lists(FLAG_ALLOW_LIST | FLAG_DENY_LIST);
    expect(&det, "denied syn", &syn4(DENIED4, 1), XDP_PASS, Counter::PassMonitorDenied);
    expect(&det, "denied udp", &udp4(DENIED4), XDP_PASS, Counter::PassMonitorDenied);
}

#[test]
fn lists_without_their_flag_are_not_consulted() {
    // The agent sets the flags only when a list has entries; entries without the flag
    // (a state that only exists mid-reconcile) are ignored.
    let det = lists(FLAG_ENFORCE);
    expect(&det, "denied syn", &syn4(DENIED4, 1), XDP_PASS, Counter::PassSyn);
    expect(&det, "denied udp", &udp4(DENIED4), XDP_PASS, Counter::PassNotTcp);
}

#[test]
fn the_kill_switch_passes_everything_before_parsing() {
    let det = lists(FLAG_OFF | FLAG_ENFORCE | FLAG_ALLOW_LIST | FLAG_DENY_LIST);
    expect(&det, "denied syn", &syn4(DENIED4, 1), XDP_PASS, Counter::PassOff);
    expect(&det, "denied udp", &udp4(DENIED4), XDP_PASS, Counter::PassOff);
    expect(&det, "garbage", &[0xff; 20], XDP_PASS, Counter::PassOff);
    for sport in 0..5 {
        expect(&det, "over the limit", &syn4(OTHER4, sport), XDP_PASS, Counter::PassOff);
    }
    assert!(det.sources().keys().next().is_none(), "tracked while off");
}

/// Not a behaviour test: prints what the verifier processed, for the budget (1M).
#[test]
fn verifier_instructions_processed() {
    let start = Instant::now();
    let det = Detector::load_without_config(&[]);
    let elapsed = start.elapsed();
    let prog: &Xdp = det.ebpf.program(names::PROGRAM).unwrap().try_into().unwrap();
    let insns = prog.info().unwrap().verified_instruction_count().expect("kernel reports verified_insns");
    println!("verified_insns={insns} load={:.2}s", elapsed.as_secs_f64());
    assert!(insns < 1_000_000, "over the verifier's limit: {insns}");
}
