//! Sketch admission in the real XDP object (BPF_PROG_TEST_RUN): with
//! `FLAG_SKETCH_ADMISSION`, a light source leaves no map entry, and a source crossing a
//! limit is blocked at the same SYN as when every source is tracked exactly. Needs root.

mod common;

use common::{monotonic_ns, Detector, XDP_DROP, XDP_PASS};
use detector_common::{
    config::{Config, FLAG_SKETCH_ADMISSION},
    counters::Counter,
    names,
    parse::ipv4_mapped,
    sketch::EPOCH_SHIFT,
    state::{FlowKey, SourceKey},
    track::promotion_threshold,
};
use etherparse::PacketBuilder;

const SEC: u64 = 1_000_000_000;
const SERVER4: [u8; 4] = [198, 18, 0, 1];
const CLIENT_PORT: u16 = 40_000;

fn config(rate: u32, half_open: u32) -> Config {
    let mut c = Config::new(rate, half_open, 60 * SEC, 3 * SEC);
    // The object's default SKETCH size (4 × 16384).
    c.sketch_width = 16_384;
    c.sketch_seed = 0x5eed;
    c.flags |= FLAG_SKETCH_ADMISSION;
    c
}

fn key(n: u8) -> SourceKey {
    SourceKey { addr: ipv4_mapped([198, 18, 1, n]) }
}

fn flow(n: u8, sport: u16) -> FlowKey {
    FlowKey { src: key(n).addr, dst: ipv4_mapped(SERVER4), src_port: sport, dst_port: 80 }
}

/// A SYN (or, with `ack`, the handshake's completing ACK) from 198.18.1.n to port 80.
fn frame(n: u8, sport: u16, ack: bool) -> Vec<u8> {
    let b =
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]).ipv4([198, 18, 1, n], SERVER4, 64);
    let tcp = if ack { b.tcp(sport, 80, 1001, 64240).ack(777) } else { b.tcp(sport, 80, 1000, 64240).syn() };
    let mut out = Vec::new();
    tcp.write(&mut out, &[]).unwrap();
    out
}

/// Runs one frame, checks its verdict and that `counter` rose by one.
fn expect(det: &Detector, what: &str, frame: &[u8], verdict: u32, counter: Counter) {
    let before = det.counter(counter);
    let (got, _) = det.run(names::PROGRAM, frame);
    assert_eq!(got, verdict, "{what}: verdict");
    assert_eq!(det.counter(counter), before + 1, "{what}: {counter:?} must rise by one");
}

/// Waits, if needed, until a sketch epoch has at least 200 ms left, so that a short burst
/// counts in one epoch (a burst split over two would be promoted one SYN later).
fn wait_for_epoch_room() {
    let epoch = 1u64 << EPOCH_SHIFT;
    let into = monotonic_ns() % epoch;
    if into + 200_000_000 > epoch {
        std::thread::sleep(std::time::Duration::from_nanos(epoch - into + 1_000_000));
    }
}

#[test]
fn a_light_source_leaves_no_entry_and_its_handshake_is_not_tracked() {
    let det = Detector::load(config(200, 100), &[]);
    assert_eq!(promotion_threshold(&config(200, 100)), 20, "the agent's default limits");
    expect(&det, "a light source's SYN", &frame(1, CLIENT_PORT, false), XDP_PASS, Counter::PassSyn);
    assert!(det.sources().get(&key(1), 0).is_err(), "no SOURCES entry below the threshold");
    assert!(det.pending().get(&flow(1, CLIENT_PORT), 0).is_err(), "no PENDING entry either");
    let completed = det.counter(Counter::HandshakeCompleted);
    expect(&det, "its completing ACK", &frame(1, CLIENT_PORT, true), XDP_PASS, Counter::PassTcp);
    assert_eq!(det.counter(Counter::HandshakeCompleted), completed, "nothing to complete");
}

#[test]
fn a_source_is_promoted_at_the_threshold_with_its_earlier_syns_counted() {
    let cfg = config(200, 100);
    let det = Detector::load(cfg, &[]);
    wait_for_epoch_room();
    for i in 0..20u16 {
        expect(&det, "SYN", &frame(2, CLIENT_PORT + i, false), XDP_PASS, Counter::PassSyn);
        let tracked = det.sources().get(&key(2), 0).is_ok();
        assert_eq!(tracked, i + 1 >= 20, "SYN {}: tracked only from the 20th", i + 1);
    }
    let state = det.sources().get(&key(2), 0).unwrap();
    assert_eq!((state.syns_total, state.syns_in_window, state.half_open()), (20, 20, 20));
    assert!(det.pending().get(&flow(2, CLIENT_PORT + 19), 0).is_ok(), "the promoting SYN's flow is pending");
    assert!(det.pending().get(&flow(2, CLIENT_PORT), 0).is_err(), "the earlier flows were not recorded");
}

#[test]
fn a_flooder_is_blocked_at_the_same_syn_as_with_exact_tracking() {
    // (rate, half-open, the SYN that crosses, the counter of its block)
    let cases = [(8, 0, 9, Counter::BlockedSynRate), (0, 10, 11, Counter::BlockedHalfOpen)];
    for (n, (rate, half_open, crossing, reason)) in (3u8..).zip(cases) {
        let cfg = config(rate, half_open);
        assert!(promotion_threshold(&cfg) > 1, "{rate}/{half_open}: admission must be in play");
        let det = Detector::load(cfg, &[]);
        wait_for_epoch_room();
        for i in 1..crossing {
            expect(&det, "within the limit", &frame(n, CLIENT_PORT + i, false), XDP_PASS, Counter::PassSyn);
        }
        expect(
            &det,
            "crossing it",
            &frame(n, CLIENT_PORT + crossing, false),
            XDP_DROP,
            Counter::DropOverLimit,
        );
        assert_eq!(det.counter(reason), 1, "{rate}/{half_open}");
        expect(&det, "blocked", &frame(n, CLIENT_PORT + 100, false), XDP_DROP, Counter::DropBlocked);
        expect(&det, "another source", &frame(99, CLIENT_PORT, false), XDP_PASS, Counter::PassSyn);
    }
}
