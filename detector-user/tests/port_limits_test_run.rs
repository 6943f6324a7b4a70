//! Per-port policy in the real XDP object (BPF_PROG_TEST_RUN): per-port limits replace the
//! config's for SYNs to that port, a block is per source (it holds on every port), and with
//! protected ports listed the others pass untouched. Needs root.

mod common;

use aya::maps::HashMap;
use common::{Detector, XDP_DROP, XDP_PASS};
use detector_common::{
    config::{Config, FLAG_COOKIES, FLAG_PORT_LIMITS, FLAG_PROTECTED_PORTS_ONLY},
    counters::Counter,
    names,
    parse::ipv4_mapped,
    ports::{PortLimits, PORT_HALF_OPEN, PORT_PROTECTED, PORT_SYN_RATE},
    sketch,
    state::SourceKey,
};
use etherparse::PacketBuilder;

const SEC: u64 = 1_000_000_000;
const SERVER4: [u8; 4] = [198, 18, 0, 1];
/// The port with its own, lower limit; `OTHER` keeps the config's.
const STRICT: u16 = 8080;
const OTHER: u16 = 80;

fn config(flags: u32) -> Config {
    let mut c = Config::new(200, 100, 60 * SEC, 3 * SEC);
    c.flags |= flags;
    c
}

fn key(n: u8) -> SourceKey {
    SourceKey { addr: ipv4_mapped([198, 18, 2, n]) }
}

/// A SYN from 198.18.2.n, source port `sport`, to `dport`.
fn syn(n: u8, sport: u16, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv4([198, 18, 2, n], SERVER4, 64)
        .tcp(sport, dport, 1000, 64240)
        .syn()
        .write(&mut out, &[])
        .unwrap();
    out
}

fn set_port(det: &mut Detector, port: u16, limits: PortLimits) {
    let mut map: HashMap<_, u32, PortLimits> =
        HashMap::try_from(det.ebpf.map_mut(names::MAP_PORT_LIMITS).unwrap()).unwrap();
    map.insert(u32::from(port), limits, 0).unwrap();
}

/// Runs one frame, checks its verdict and that `counter` rose by one.
fn expect(det: &Detector, what: &str, frame: &[u8], verdict: u32, counter: Counter) {
    let before = det.counter(counter);
    let (got, _) = det.run(names::PROGRAM, frame);
    assert_eq!(got, verdict, "{what}: verdict");
    assert_eq!(det.counter(counter), before + 1, "{what}: {counter:?} must rise by one");
}

fn strict_rate(limit: u32) -> PortLimits {
    PortLimits { syn_rate_limit: limit, half_open_limit: 0, flags: PORT_SYN_RATE, _pad: 0 }
}

#[test]
fn a_source_over_the_lower_limit_of_one_port_is_blocked_while_the_same_rate_to_another_passes() {
    let mut det = Detector::load(config(FLAG_PORT_LIMITS), &[]);
    set_port(&mut det, STRICT, strict_rate(3));
    for i in 0..3 {
        expect(
            &det,
            "within the strict port's limit",
            &syn(1, 41_000 + i, STRICT),
            XDP_PASS,
            Counter::PassSyn,
        );
    }
    expect(&det, "over it", &syn(1, 41_003, STRICT), XDP_DROP, Counter::DropOverLimit);
    assert_eq!(det.counter(Counter::BlockedSynRate), 1);
    for i in 0..4 {
        expect(&det, "same rate, default port", &syn(2, 42_000 + i, OTHER), XDP_PASS, Counter::PassSyn);
    }
    assert!(!det.sources().get(&key(2), 0).unwrap().is_blocked(0), "source 2 was never blocked");
    // A block is per source: the strict port's block holds on the other port too.
    expect(&det, "blocked source, other port", &syn(1, 41_010, OTHER), XDP_DROP, Counter::DropBlocked);
}

/// Cookie mode judges a source by its port's SYN-rate limit too, through the sketch (it
/// takes the limit alone, without tracking's copy of the config): the fourth SYN to the
/// strict port is over its limit and blocks the source, while as many to the other port
/// go on to the responder (which passes them here: no listener) and leave no entry.
#[test]
fn in_cookie_mode_the_sketch_holds_a_source_to_its_ports_limit() {
    let mut cfg = config(FLAG_PORT_LIMITS | FLAG_COOKIES);
    cfg.sketch_width = 16_384;
    cfg.sketch_seed = 7;
    // As the agent sets it: half the lowest limit in force, the strict port's.
    cfg.sketch_hot_mark = sketch::hot_mark(3);
    cfg.cookie_budget_per_second = 1_000_000;
    let mut det = Detector::load(cfg, &[]);
    set_port(&mut det, STRICT, strict_rate(3));
    for i in 0..4 {
        let (verdict, _) = det.run(names::PROGRAM, &syn(10, 48_000 + i, OTHER));
        assert_eq!(verdict, XDP_PASS, "default port, SYN {i}: answered by the responder or passed");
    }
    for i in 0..3 {
        let (verdict, _) = det.run(names::PROGRAM, &syn(9, 49_000 + i, STRICT));
        assert_eq!(verdict, XDP_PASS, "strict port, SYN {i}: within its limit");
    }
    assert_eq!(det.counter(Counter::DropOverLimit), 0, "no source was over a limit yet");
    expect(&det, "strict port, over its limit", &syn(9, 49_003, STRICT), XDP_DROP, Counter::DropOverLimit);
    assert_eq!(det.counter(Counter::BlockedSynRate), 1);
    assert!(det.sources().get(&key(9), 0).unwrap().blocked_until_ns > 0, "source 9 is blocked");
    assert!(det.sources().get(&key(10), 0).is_err(), "source 10 has no entry: never over a limit");
}

#[test]
fn a_port_half_open_limit_applies_and_entries_are_ignored_without_the_flag() {
    let mut det = Detector::load(config(FLAG_PORT_LIMITS), &[]);
    set_port(
        &mut det,
        STRICT,
        PortLimits { syn_rate_limit: 0, half_open_limit: 2, flags: PORT_HALF_OPEN, _pad: 0 },
    );
    expect(&det, "1st half-open", &syn(3, 43_000, STRICT), XDP_PASS, Counter::PassSyn);
    expect(&det, "2nd half-open", &syn(3, 43_001, STRICT), XDP_PASS, Counter::PassSyn);
    expect(&det, "3rd half-open", &syn(3, 43_002, STRICT), XDP_DROP, Counter::DropOverLimit);
    assert_eq!(det.counter(Counter::BlockedHalfOpen), 1);

    let mut det = Detector::load(config(0), &[]);
    set_port(&mut det, STRICT, strict_rate(1));
    for i in 0..5 {
        expect(
            &det,
            "flag off: the config's limits",
            &syn(4, 44_000 + i, STRICT),
            XDP_PASS,
            Counter::PassSyn,
        );
    }
}

#[test]
fn with_protected_ports_listed_the_others_pass_untracked() {
    let mut det = Detector::load(config(FLAG_PORT_LIMITS | FLAG_PROTECTED_PORTS_ONLY), &[]);
    set_port(&mut det, STRICT, PortLimits { flags: PORT_PROTECTED | PORT_SYN_RATE, ..strict_rate(2) });
    // A port with limits but not marked protected is not protected either.
    set_port(&mut det, 9000, strict_rate(1));
    for (port, n) in [(OTHER, 5u8), (9000, 6)] {
        for i in 0..3 {
            expect(
                &det,
                "unprotected port",
                &syn(n, 45_000 + i, port),
                XDP_PASS,
                Counter::PassUnprotectedPort,
            );
        }
        assert!(det.sources().get(&key(n), 0).is_err(), "port {port}: no state for its sources");
    }
    expect(&det, "protected", &syn(7, 46_000, STRICT), XDP_PASS, Counter::PassSyn);
    expect(&det, "protected", &syn(7, 46_001, STRICT), XDP_PASS, Counter::PassSyn);
    expect(&det, "protected, over its limit", &syn(7, 46_002, STRICT), XDP_DROP, Counter::DropOverLimit);

    // Cookie mode: an unprotected port is not answered either (it passes before the
    // responder), and its sources are not screened.
    let mut cookie = config(FLAG_PORT_LIMITS | FLAG_PROTECTED_PORTS_ONLY | FLAG_COOKIES);
    cookie.sketch_width = 16_384;
    det.set_config(cookie);
    expect(
        &det,
        "cookie mode, unprotected port",
        &syn(8, 47_000, OTHER),
        XDP_PASS,
        Counter::PassUnprotectedPort,
    );
    expect(
        &det,
        "cookie mode, blocked source, unprotected port",
        &syn(7, 47_001, OTHER),
        XDP_PASS,
        Counter::PassUnprotectedPort,
    );
}
