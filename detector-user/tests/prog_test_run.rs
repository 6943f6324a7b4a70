//! The real XDP object in the kernel (BPF_PROG_TEST_RUN), tracking and drop mode: fixture
//! tables of frames with the verdict and counter changes each must produce, the state the
//! maps must hold afterwards, and a source crossing each limit. Needs root.

mod common;

use common::{monotonic_ns, Detector, XDP_DROP, XDP_PASS};
use detector_common::{
    config::{Config, FLAG_ENFORCE},
    counters::{Counter, Verdict},
    parse::ipv4_mapped,
    state::{FlowKey, SourceKey},
};
use etherparse::PacketBuilder;

const SEC: u64 = 1_000_000_000;
const SERVER4: [u8; 4] = [198, 18, 0, 1];
const SERVER6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// A TCP frame from client `.n` (198.18.0.n or 2001:2::n) to the server's port 80.
#[derive(Clone, Copy)]
struct Tcp {
    v6: bool,
    n: u8,
    sport: u16,
    seq: u32,
    syn: bool,
    ack: Option<u32>,
}

impl Tcp {
    fn syn(n: u8, sport: u16) -> Self {
        Self { v6: false, n, sport, seq: 1000, syn: true, ack: None }
    }

    fn v6(self) -> Self {
        Self { v6: true, ..self }
    }

    /// The client's third packet of this SYN's handshake.
    fn completing_ack(self) -> Self {
        Self { syn: false, seq: self.seq + 1, ack: Some(777), ..self }
    }

    fn client4(&self) -> [u8; 4] {
        [198, 18, 0, self.n]
    }

    fn client6(&self) -> [u8; 16] {
        let mut a = SERVER6;
        a[15] = self.n;
        a
    }

    fn key(&self) -> SourceKey {
        SourceKey { addr: if self.v6 { self.client6() } else { ipv4_mapped(self.client4()) } }
    }

    fn flow(&self) -> FlowKey {
        let dst = if self.v6 { SERVER6 } else { ipv4_mapped(SERVER4) };
        FlowKey { src: self.key().addr, dst, src_port: self.sport, dst_port: 80 }
    }

    fn frame(&self) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]);
        let b =
            if self.v6 { b.ipv6(self.client6(), SERVER6, 64) } else { b.ipv4(self.client4(), SERVER4, 64) };
        let mut tcp = b.tcp(self.sport, 80, self.seq, 64240);
        if self.syn {
            tcp = tcp.syn();
        }
        if let Some(ack) = self.ack {
            tcp = tcp.ack(ack);
        }
        let mut out = Vec::new();
        tcp.write(&mut out, &[]).unwrap();
        out
    }
}

fn with_tags(frame: &[u8], tpids: &[u16]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    for tpid in tpids {
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&7u16.to_be_bytes());
    }
    out.extend_from_slice(&frame[12..]);
    out
}

fn config(rate: u32, half_open: u32) -> Config {
    Config::new(rate, half_open, 60 * SEC, 3 * SEC)
}

/// One row of a fixture table.
struct Fixture {
    name: &'static str,
    frame: Vec<u8>,
    verdict: u32,
    /// The counter that must rise by exactly one (all others stay put, events aside).
    counter: Counter,
}

/// Runs each fixture in order on `det`, checking the verdict and that exactly the named
/// verdict counter rose (event counters may move too; they are checked separately).
fn run_table(det: &Detector, table: &[Fixture]) {
    for f in table {
        let before: Vec<u64> = Counter::ALL.iter().map(|c| det.counter(*c)).collect();
        let (verdict, _) = det.run(detector_common::names::PROGRAM, &f.frame);
        assert_eq!(verdict, f.verdict, "{}: verdict", f.name);
        for (i, c) in Counter::ALL.iter().enumerate() {
            if c.verdict().is_none() {
                continue;
            }
            let rose = det.counter(*c) - before[i];
            let want = u64::from(*c == f.counter);
            assert_eq!(rose, want, "{}: counter {c:?} rose by {rose}", f.name);
        }
    }
}

#[test]
fn without_config_everything_passes() {
    let det = Detector::load_without_config(&[]);
    run_table(
        &det,
        &[
            Fixture {
                name: "SYN",
                frame: Tcp::syn(2, 40000).frame(),
                verdict: XDP_PASS,
                counter: Counter::PassNoConfig,
            },
            Fixture {
                name: "ACK",
                frame: Tcp::syn(2, 40000).completing_ack().frame(),
                verdict: XDP_PASS,
                counter: Counter::PassNoConfig,
            },
        ],
    );
    assert_eq!(det.sources().keys().count(), 0, "nothing tracked without a config");
}

#[test]
fn frames_it_cannot_or_need_not_track_pass_by_reason() {
    let det = Detector::load(config(100, 100), &[]);
    let syn = Tcp::syn(2, 40000).frame();
    let mut arp = syn.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let mut udp = Vec::new();
    PacketBuilder::ethernet2([2; 6], [3; 6])
        .ipv4([198, 18, 0, 2], SERVER4, 64)
        .udp(53, 53)
        .write(&mut udp, &[0; 12])
        .unwrap();
    let mut fragment = syn.clone();
    fragment[20] = 0x20; // more fragments
    let mut ihl4 = syn.clone();
    ihl4[14] = 0x44;
    run_table(
        &det,
        &[
            Fixture { name: "ARP", frame: arp, verdict: XDP_PASS, counter: Counter::PassNotIp },
            Fixture { name: "UDP", frame: udp, verdict: XDP_PASS, counter: Counter::PassNotTcp },
            Fixture {
                name: "IPv4 fragment",
                frame: fragment,
                verdict: XDP_PASS,
                counter: Counter::PassFragment,
            },
            Fixture {
                name: "cut inside TCP",
                frame: syn[..40].to_vec(),
                verdict: XDP_PASS,
                counter: Counter::PassTruncated,
            },
            Fixture {
                name: "cut inside IPv4",
                frame: syn[..20].to_vec(),
                verdict: XDP_PASS,
                counter: Counter::PassTruncated,
            },
            Fixture { name: "IHL 4", frame: ihl4, verdict: XDP_PASS, counter: Counter::PassMalformed },
            Fixture {
                name: "three VLAN tags",
                frame: with_tags(&syn, &[0x88a8, 0x8100, 0x8100]),
                verdict: XDP_PASS,
                counter: Counter::PassTooDeep,
            },
            Fixture {
                name: "ACK of a flow never seen",
                frame: Tcp::syn(9, 1234).completing_ack().frame(),
                verdict: XDP_PASS,
                counter: Counter::PassTcp,
            },
        ],
    );
    assert_eq!(det.counter(Counter::HandshakeCompleted), 0);
}

#[test]
fn syns_are_tracked_and_handshakes_completed_for_every_encapsulation() {
    let det = Detector::load(config(100, 100), &[]);
    let cases = [
        ("IPv4", Tcp::syn(2, 40001), vec![]),
        ("IPv6", Tcp::syn(3, 40002).v6(), vec![]),
        ("802.1Q", Tcp::syn(4, 40003), vec![0x8100]),
        ("QinQ IPv6", Tcp::syn(5, 40004).v6(), vec![0x88a8, 0x8100]),
    ];
    for (name, syn, tags) in &cases {
        run_table(
            &det,
            &[Fixture {
                name,
                frame: with_tags(&syn.frame(), tags),
                verdict: XDP_PASS,
                counter: Counter::PassSyn,
            }],
        );
        let state = det.sources().get(&syn.key(), 0).unwrap_or_else(|_| panic!("{name}: source tracked"));
        assert_eq!((state.half_open(), state.syns_total), (1, 1), "{name}");
        let pending = det.pending().get(&syn.flow(), 0).unwrap_or_else(|_| panic!("{name}: flow pending"));
        assert_eq!(pending.isn, syn.seq);

        // A retransmission counts towards the rate, not twice towards half-open.
        run_table(
            &det,
            &[Fixture {
                name,
                frame: with_tags(&syn.frame(), tags),
                verdict: XDP_PASS,
                counter: Counter::PassSyn,
            }],
        );
        assert_eq!(det.sources().get(&syn.key(), 0).unwrap().half_open(), 1, "{name}: retransmission");

        // An ACK with the wrong sequence number completes nothing.
        let wrong = Tcp { seq: syn.seq + 100, ..syn.completing_ack() };
        run_table(
            &det,
            &[Fixture {
                name,
                frame: with_tags(&wrong.frame(), tags),
                verdict: XDP_PASS,
                counter: Counter::PassTcp,
            }],
        );
        assert!(det.pending().get(&syn.flow(), 0).is_ok(), "{name}: still pending");

        let completed = det.counter(Counter::HandshakeCompleted);
        run_table(
            &det,
            &[Fixture {
                name,
                frame: with_tags(&syn.completing_ack().frame(), tags),
                verdict: XDP_PASS,
                counter: Counter::PassTcp,
            }],
        );
        assert_eq!(det.counter(Counter::HandshakeCompleted), completed + 1, "{name}: completed");
        assert!(det.pending().get(&syn.flow(), 0).is_err(), "{name}: no longer pending");
        let state = det.sources().get(&syn.key(), 0).unwrap();
        assert_eq!((state.half_open(), state.completed), (0, 1), "{name}");
    }
    assert_eq!(det.counter(Counter::SynRetransmit), 4);
}

/// Sleeps until `CLOCK_MONOTONIC` reads at least `ns`.
fn sleep_until(ns: u64) {
    let now = monotonic_ns();
    if ns > now {
        std::thread::sleep(std::time::Duration::from_nanos(ns - now));
    }
}

#[test]
fn a_source_over_its_syn_rate_is_dropped_until_its_block_expires() {
    // A short TTL, and the kernel's real clock: the block must end by itself.
    const TTL: u64 = 2 * SEC;
    let det = Detector::load(Config::new(5, 0, TTL, 3 * SEC), &[]);
    let flood = |i: u16| Tcp::syn(66, 41000 + i);
    let mut table: Vec<Fixture> = (0..5)
        .map(|i| Fixture {
            name: "within the limit",
            frame: flood(i).frame(),
            verdict: XDP_PASS,
            counter: Counter::PassSyn,
        })
        .collect();
    table.push(Fixture {
        name: "crossing it",
        frame: flood(5).frame(),
        verdict: XDP_DROP,
        counter: Counter::DropOverLimit,
    });
    table.push(Fixture {
        name: "blocked",
        frame: flood(6).frame(),
        verdict: XDP_DROP,
        counter: Counter::DropBlocked,
    });
    table.push(Fixture {
        name: "another source",
        frame: Tcp::syn(7, 42000).frame(),
        verdict: XDP_PASS,
        counter: Counter::PassSyn,
    });
    table.push(Fixture {
        name: "the blocked source's established traffic",
        frame: flood(0).completing_ack().frame(),
        verdict: XDP_PASS,
        counter: Counter::PassTcp,
    });
    let started = monotonic_ns();
    run_table(&det, &table);
    let ended = monotonic_ns();
    assert_eq!(det.counter(Counter::BlockedSynRate), 1);
    let state = det.sources().get(&flood(0).key(), 0).unwrap();
    assert_eq!(state.blocks, 1);
    // The blocked SYN, dropped on the coarse clock (`blocked::surely_blocked`), is
    // accounted all the same.
    assert_eq!(state.syns_total, 7, "every SYN of the source counted, the blocked one too");
    assert!(
        (started + TTL..=ended + TTL).contains(&state.blocked_until_ns),
        "blocked until {} ns: the TTL ({TTL} ns) from the crossing SYN (between {started} and {ended})",
        state.blocked_until_ns
    );
    assert!(det.pending().get(&flood(5).flow(), 0).is_err(), "the dropped SYN left no pending flow");

    // Shortly before the block ends, the source is still dropped.
    sleep_until(state.blocked_until_ns - TTL / 4);
    run_table(
        &det,
        &[Fixture {
            name: "still blocked near the end of the TTL",
            frame: flood(7).frame(),
            verdict: XDP_DROP,
            counter: Counter::DropBlocked,
        }],
    );
    // Once the TTL is over, the same source's SYNs pass again and are tracked, without a
    // new block.
    sleep_until(state.blocked_until_ns + SEC / 10);
    run_table(
        &det,
        &[Fixture {
            name: "after the block expired",
            frame: flood(8).frame(),
            verdict: XDP_PASS,
            counter: Counter::PassSyn,
        }],
    );
    let after = det.sources().get(&flood(0).key(), 0).unwrap();
    assert_eq!(after.blocks, 1, "no new block");
    assert_eq!(after.syns_total, 9, "the SYN near the end of the block (fine clock) and the one after it");
    assert!(det.pending().get(&flood(8).flow(), 0).is_ok(), "the released source's SYN is tracked again");
    assert_eq!(det.counter(Counter::BlockedSynRate), 1);
}

#[test]
fn a_source_over_its_half_open_limit_is_blocked() {
    let det = Detector::load(config(0, 3), &[]);
    let flood = |i: u16| Tcp::syn(77, 43000 + i).v6();
    let mut table: Vec<Fixture> = (0..3)
        .map(|i| Fixture {
            name: "pending",
            frame: flood(i).frame(),
            verdict: XDP_PASS,
            counter: Counter::PassSyn,
        })
        .collect();
    table.push(Fixture {
        name: "fourth half-open",
        frame: flood(3).frame(),
        verdict: XDP_DROP,
        counter: Counter::DropOverLimit,
    });
    run_table(&det, &table);
    assert_eq!(det.counter(Counter::BlockedHalfOpen), 1);
}

#[test]
fn monitor_mode_counts_what_it_would_drop_but_passes() {
    let mut cfg = config(2, 0);
    cfg.flags &= !FLAG_ENFORCE;
    let det = Detector::load(cfg, &[]);
    let flood = |i: u16| Tcp::syn(88, 44000 + i);
    run_table(
        &det,
        &[
            Fixture { name: "1", frame: flood(0).frame(), verdict: XDP_PASS, counter: Counter::PassSyn },
            Fixture { name: "2", frame: flood(1).frame(), verdict: XDP_PASS, counter: Counter::PassSyn },
            Fixture {
                name: "would cross",
                frame: flood(2).frame(),
                verdict: XDP_PASS,
                counter: Counter::PassMonitorOverLimit,
            },
            Fixture {
                name: "would be blocked",
                frame: flood(3).frame(),
                verdict: XDP_PASS,
                counter: Counter::PassMonitorBlocked,
            },
        ],
    );
}

#[test]
fn garbage_never_aborts_and_always_passes() {
    let det = Detector::load(config(100, 100), &[]);
    let before: Vec<u64> = Counter::ALL.iter().map(|c| det.counter(*c)).collect();
    let mut seed = 0x2545_f491_u32;
    let mut frames = 0u64;
    for len in (14..=160).chain([600, 1500]) {
        for _ in 0..4 {
            let mut frame: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed.to_le_bytes()[1]
                })
                .collect();
            // Half of them claim to be IP, to reach the deeper parsers.
            match seed % 4 {
                0 => frame[12..14].copy_from_slice(&[0x08, 0x00]),
                1 => frame[12..14].copy_from_slice(&[0x86, 0xdd]),
                _ => {}
            }
            // Random bytes are never a flood: whatever the parser makes of them (at worst a
            // first SYN from some random source, far below 100/s), the frame must pass.
            let (verdict, _) = det.run(detector_common::names::PROGRAM, &frame);
            assert_eq!(verdict, XDP_PASS, "verdict {verdict} for {frame:02x?}");
            frames += 1;
        }
    }
    // Every frame was counted exactly once, in a pass slot; none was dropped or answered.
    let rose = |c: &Counter| det.counter(*c) - before[*c as usize];
    let counted: u64 = Counter::ALL.iter().filter(|c| c.verdict().is_some()).map(rose).sum();
    assert_eq!(counted, frames, "one verdict slot per frame");
    for c in Counter::ALL.iter().filter(|c| matches!(c.verdict(), Some(Verdict::Drop | Verdict::Tx))) {
        assert_eq!(rose(c), 0, "{c:?}");
    }
    // The IP-looking half reached the IP and TCP parsers (not everything stopped at the
    // ethertype).
    let deeper = frames - rose(&Counter::PassNotIp);
    println!("{frames} frames, {deeper} past the ethertype");
    assert!(deeper * 3 >= frames, "only {deeper} of {frames} frames reached the IP parsers");
}

/// A blocked source's SYNs after the first are dropped from the block cache
/// (`BLOCKED_TABLE`) without the `SOURCES` lookup: counted in its slot and added to its
/// entry every `FOLD_EVERY` SYNs. When the slot's block nears its end, what the slot still
/// counted goes to the entry and the `SOURCES` path decides again (here: still blocked
/// there, so dropped and cached again with the entry's end).
#[test]
fn a_blocked_sources_syns_are_dropped_from_the_block_cache_and_folded_into_its_entry() {
    use detector_common::blocked_table::FOLD_EVERY;
    let mut det = Detector::load(Config::new(5, 0, 600 * SEC, 3 * SEC), &[]);
    let flood = |i: u16| Tcp::syn(66, 41000 + i);
    let key = flood(0).key();
    let slot_of = |det: &Detector| det.cached_block(&key.addr);
    let dropped = |det: &Detector, from: u16, n: u16| {
        let table: Vec<Fixture> = (from..from + n)
            .map(|i| Fixture {
                name: "blocked",
                frame: flood(i).frame(),
                verdict: XDP_DROP,
                counter: Counter::DropBlocked,
            })
            .collect();
        run_table(det, &table);
    };
    for i in 0..6 {
        det.run(detector_common::names::PROGRAM, &flood(i).frame());
    }
    assert_eq!(det.counter(Counter::DropOverLimit), 1, "the sixth SYN crossed the limit");
    assert!(slot_of(&det).is_none(), "a block is cached by the blocked source's next SYN, not before");
    let syns = |det: &Detector| det.sources().get(&key, 0).unwrap().syns_total;

    dropped(&det, 6, 1);
    let until = det.sources().get(&key, 0).unwrap().blocked_until_ns;
    let slot = slot_of(&det).expect("cached by the SYN the SOURCES path dropped");
    assert_eq!((slot.until_ns, slot.unfolded, syns(&det)), (until, 0, 7));

    let fold = u16::try_from(FOLD_EVERY).unwrap();
    dropped(&det, 7, fold - 1);
    assert_eq!((slot_of(&det).unwrap().unfolded, syns(&det)), (FOLD_EVERY - 1, 7), "counted in the slot");
    dropped(&det, 7 + fold - 1, 1);
    assert_eq!((slot_of(&det).unwrap().unfolded, syns(&det)), (0, 7 + u64::from(FOLD_EVERY)), "folded");
    dropped(&det, 7 + fold, 3);
    assert_eq!(slot_of(&det).unwrap().unfolded, 3);

    // The slot's copy of the end moved to half a second from now: the block nears its end
    // as far as the cache knows.
    det.set_cached_block_end(&key.addr, monotonic_ns() + SEC / 2);
    dropped(&det, 10 + fold, 1);
    let slot = slot_of(&det).expect("cached again");
    assert_eq!(slot.until_ns, until, "with the entry's end");
    assert_eq!(syns(&det), 7 + u64::from(FOLD_EVERY) + 3 + 1, "the slot's 3 folded, and this SYN");
    assert_eq!(det.counter(Counter::DropBlocked), u64::from(fold) + 5);
}
