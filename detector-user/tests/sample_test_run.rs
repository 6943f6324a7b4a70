//! Packet samples in the real kernel (BPF_PROG_TEST_RUN): with `sample_one_in = 1` every
//! dropped or cookie-answered frame reaches the `SAMPLES` ring buffer as it was received
//! (the SYN, not the SYN-ACK the program turned it into), passed frames never do, and
//! `sample_one_in = 0` sends nothing. Needs root.

mod common;

use std::{net::TcpListener, thread};

use aya::maps::{MapData, RingBuf};
use common::{Detector, XDP_DROP, XDP_PASS, XDP_TX};
use detector_common::{
    config::{Config, FLAG_COOKIES, FLAG_ENFORCE, FLAG_RAW_COOKIES},
    counters::Counter,
    names,
    sample::SampleRecord,
};
use etherparse::PacketBuilder;

const SEC: u64 = 1_000_000_000;
const PORT: u16 = 8080;
const SERVER4: [u8; 4] = common::SERVER4;

fn syn(src_last: u8, sport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv4([198, 18, 7, src_last], SERVER4, 64)
        .tcp(sport, PORT, 1000, 64240)
        .syn()
        .options(&[etherparse::TcpOptionElement::MaximumSegmentSize(1460)])
        .unwrap();
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

/// Every record now in the ring, oldest first.
fn drain(det: &mut Detector) -> Vec<SampleRecord> {
    let mut ring: RingBuf<&mut MapData> =
        RingBuf::try_from(det.ebpf.map_mut(names::MAP_SAMPLES).unwrap()).unwrap();
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), size_of::<SampleRecord>(), "record size");
        // SAFETY: SampleRecord is Pod (integers and bytes); the length is checked above.
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<SampleRecord>()) });
    }
    out
}

fn check_record(rec: &SampleRecord, frame: &[u8], counter: Counter) {
    assert_eq!(rec.bytes(), Some(frame), "the record holds the frame as received");
    assert_eq!(rec.frame_len as usize, frame.len());
    assert_eq!(rec.counter(), Some(counter));
    assert!(rec.ts_ns > 0, "a monotonic timestamp");
}

#[test]
fn dropped_syns_are_sampled_as_received_and_passed_ones_never() {
    // A source may send one SYN a second: its second is dropped and it is blocked.
    let mut cfg = Config::new(1, 0, 60 * SEC, 3 * SEC);
    let mut det = Detector::load(cfg, &[]);
    let prog: &aya::programs::Xdp = det.ebpf.program(names::PROGRAM).unwrap().try_into().unwrap();
    // The figure the verifier budget is watched by (docs/verifier.md).
    println!("verified_insns={:?}", prog.info().unwrap().verified_instruction_count());

    // Sampling off: a pass and a drop, no record.
    assert_eq!(det.run(names::PROGRAM, &syn(1, 40_000)).0, XDP_PASS);
    assert_eq!(det.run(names::PROGRAM, &syn(1, 40_001)).0, XDP_DROP);
    assert!(drain(&mut det).is_empty(), "one_in = 0 samples nothing");

    cfg.sample_one_in = 1;
    det.set_config(cfg);
    assert_eq!(det.run(names::PROGRAM, &syn(2, 40_000)).0, XDP_PASS);
    assert!(drain(&mut det).is_empty(), "a passed SYN is not sampled");
    let dropped = syn(2, 40_001);
    assert_eq!(det.run(names::PROGRAM, &dropped).0, XDP_DROP);
    let blocked = syn(1, 40_002);
    assert_eq!(det.run(names::PROGRAM, &blocked).0, XDP_DROP);
    let recs = drain(&mut det);
    assert_eq!(recs.len(), 2, "one record per dropped SYN");
    check_record(&recs[0], &dropped, Counter::DropOverLimit);
    check_record(&recs[1], &blocked, Counter::DropBlocked);
    assert!(recs[1].ts_ns >= recs[0].ts_ns);

    // A frame longer than the snap length is cut, its real length kept.
    let mut long = syn(1, 40_003);
    long.resize(1_000, 0xab);
    assert_eq!(det.run(names::PROGRAM, &long).0, XDP_DROP);
    let recs = drain(&mut det);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].frame_len, 1_000);
    assert_eq!(recs[0].bytes(), Some(&long[..detector_common::sample::SNAP_LEN]));
    assert_eq!(det.lost(), 0);
}

#[test]
fn cookie_answers_are_sampled_as_the_original_syn() {
    common::assert_root();
    thread::spawn(|| {
        // A listener and tcp_syncookies = 2 in a namespace of this thread's own.
        // SAFETY: affects only this thread, which nothing else uses.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare(CLONE_NEWNET)");
        std::fs::write("/proc/sys/net/ipv4/tcp_syncookies", "2").unwrap();
        let _listener = TcpListener::bind(("0.0.0.0", PORT)).unwrap();
        let mut cfg = Config::new(0, 0, 60 * SEC, 3 * SEC);
        cfg.flags = FLAG_ENFORCE | FLAG_COOKIES | FLAG_RAW_COOKIES;
        cfg.sketch_width = 16_384;
        cfg.cookie_budget_per_second = 1_000_000;
        cfg.sample_one_in = 1;
        let mut det = Detector::load(cfg, &[]);
        let frame = syn(3, 40_000);
        let (verdict, reply) = det.run(names::PROGRAM, &frame);
        assert_eq!(verdict, XDP_TX, "the SYN is answered (counters: {:?})", det.counters());
        assert_ne!(reply, frame, "the frame was rewritten into a SYN-ACK");
        let recs = drain(&mut det);
        assert_eq!(recs.len(), 1);
        check_record(&recs[0], &frame, Counter::TxCookie);

        cfg.sample_one_in = 0;
        det.set_config(cfg);
        assert_eq!(det.run(names::PROGRAM, &syn(3, 40_001)).0, XDP_TX);
        assert!(drain(&mut det).is_empty(), "one_in = 0 samples nothing");
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

trait Lost {
    fn lost(&self) -> u64;
}

impl Lost for Detector {
    fn lost(&self) -> u64 {
        let map: aya::maps::PerCpuArray<_, u64> =
            aya::maps::PerCpuArray::try_from(self.ebpf.map(names::MAP_SAMPLES_LOST).unwrap()).unwrap();
        map.get(&0, 0).unwrap().iter().sum()
    }
}
