//! Differential test: the detector-common model (`model`) and the real XDP object
//! (`kernel`, BPF_PROG_TEST_RUN) fed the same generated frame sequences (`gen`, built by
//! `frame`), and fixed ones that cross each limit (`limits`). Per frame
//! the verdict, the counter slots that rose (verdict and events) and, for XDP_TX, the reply
//! bytes must agree; frames not answered must leave the program unchanged; XDP_ABORTED
//! never. A disagreement is shrunk by proptest to a short sequence, written as a pcap under
//! target/differential-failures/, and fails the test (docs/robustness.md).
//!
//! `SYNDETECTOR_DIFF_CASES` sets the number of sequences (default 150, about 3,600 frames);
//! `SYNDETECTOR_DIFF_SEED` replays a run. Needs root (BPF, a private network namespace).

#[path = "../common/mod.rs"]
mod common;
mod corpus;
mod frame;
mod gen;
mod kernel;
mod limits;
mod model;

use std::{
    cell::RefCell,
    fmt::Write as _,
    net::TcpListener,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use common::monotonic_ns;
use detector_common::{
    counters::{Counter, Verdict, COUNTER_SLOTS},
    names,
    parse::{parse_tcp, NotTcp},
};
use gen::Case;
use kernel::{Kernel, Run};
use proptest::test_runner::{
    Config as ProptestConfig, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner,
};

const DEFAULT_CASES: u32 = 150;
const EINVAL: i32 = 22;

/// What a run compared, for the closing line (and to show the generators reach each path).
#[derive(Default)]
struct Tally {
    sequences: u64,
    frames: u64,
    /// Frames BPF_PROG_TEST_RUN refuses (shorter than an Ethernet header).
    refused: u64,
    /// Rise of every counter slot over the run.
    slots: Vec<u64>,
    /// What the model saw that no counter tells apart.
    reached: model::Reached,
}

impl Tally {
    fn new() -> Self {
        Self { slots: vec![0; COUNTER_SLOTS as usize], ..Self::default() }
    }

    fn summary(&self) -> String {
        let mut s = format!(
            "{} sequences, {} frames compared ({} refused by BPF_PROG_TEST_RUN as shorter than Ethernet)",
            self.sequences, self.frames, self.refused
        );
        let _ =
            write!(s, "\n  model: {} valid cookie ACKs passed by the shield", self.reached.valid_cookie_acks);
        for (c, n) in Counter::ALL.iter().zip(&self.slots) {
            if *n != 0 {
                let _ = write!(s, "\n  {:<28} {n}", c.label());
            }
        }
        s
    }
}

fn verdict_code(counter: Counter) -> u32 {
    match counter.verdict() {
        Some(Verdict::Drop) => common::XDP_DROP,
        Some(Verdict::Tx) => common::XDP_TX,
        Some(Verdict::Pass) | None => common::XDP_PASS,
    }
}

fn nonzero(deltas: &[u64]) -> String {
    let parts: Vec<String> = Counter::ALL
        .iter()
        .zip(deltas)
        .filter(|(_, n)| **n != 0)
        .map(|(c, n)| format!("{}+{n}", c.label()))
        .collect();
    format!("[{}]", parts.join(" "))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Runs one sequence through both sides; `Err` describes the first disagreement.
fn check_case(kernel: &mut Kernel, case: &Case, tally: &mut Tally) -> Result<(), String> {
    kernel.start(case.mode);
    let mut model = model::Model::new(case.mode);
    let mut before = kernel.counters();
    for (i, spec) in case.frames.iter().enumerate() {
        let mut frame = spec.build();
        if spec.kind == gen::Kind::CookieAck {
            acknowledge_cookie(&model, &mut frame);
        }
        let at = || {
            format!(
                "frame {i} of {} ({:?}, {} bytes: {})",
                case.frames.len(),
                case.mode,
                frame.len(),
                hex(&frame)
            )
        };
        if frame.len() < 14 {
            // The syscall wants an Ethernet header (no driver hands XDP less); the parser
            // must call such a frame truncated all the same.
            if parse_tcp(frame.as_slice()) != Err(NotTcp::Truncated) {
                return Err(format!("{}: the model parses a sub-Ethernet frame", at()));
            }
            match kernel.run(names::PROGRAM, &frame) {
                Run::Refused(EINVAL) => {
                    tally.refused += 1;
                    continue;
                }
                Run::Refused(e) => return Err(format!("{}: refused with errno {e}, not EINVAL", at())),
                Run::Ran(v, _) => return Err(format!("{}: a sub-Ethernet frame ran (verdict {v})", at())),
            }
        }
        let want = model.step(&frame, monotonic_ns());
        let (verdict, out) = match kernel.run(names::PROGRAM, &frame) {
            Run::Ran(v, out) => (v, out),
            Run::Refused(e) => return Err(format!("{}: BPF_PROG_TEST_RUN refused it (errno {e})", at())),
        };
        let after = kernel.counters();
        let deltas: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        before = after;
        if verdict == 0 {
            return Err(format!("{}: XDP_ABORTED", at()));
        }
        if verdict != verdict_code(want.counter) || deltas != want.deltas {
            return Err(format!(
                "{}:\n  model:  verdict {} counters {}\n  kernel: verdict {verdict} counters {}",
                at(),
                verdict_code(want.counter),
                nonzero(&want.deltas),
                nonzero(&deltas)
            ));
        }
        match &want.reply {
            Some(plan) => {
                let cookie = check_reply(kernel, plan, &frame, &out).map_err(|e| format!("{}: {e}", at()))?;
                model.issued(&plan.seg, cookie);
            }
            None if out != frame => {
                return Err(format!(
                    "{}: verdict {verdict} but the frame was changed to {}",
                    at(),
                    hex(&out)
                ));
            }
            None => {}
        }
        for (t, d) in tally.slots.iter_mut().zip(&deltas) {
            *t += d;
        }
        tally.frames += 1;
    }
    tally.reached.valid_cookie_acks += model.reached.valid_cookie_acks;
    tally.sequences += 1;
    Ok(())
}

/// A `Kind::CookieAck` frame (unless a mutation broke it) gets the ack number of the
/// cookie the kernel last answered its flow with in this sequence. The TCP checksum is left
/// as built: neither the program nor the cookie check reads it.
fn acknowledge_cookie(model: &model::Model, frame: &mut [u8]) {
    let Ok(seg) = parse_tcp(&*frame) else { return };
    if let Some(cookie) = model.cookie_for(&seg) {
        let at = usize::from(seg.l4_offset) + 8;
        frame[at..at + 4].copy_from_slice(&cookie.wrapping_add(1).to_be_bytes());
    }
}

/// The reply must be exactly what `synack::build_synack` makes from the SYN, given the
/// three values only the kernel knows: the cookie and MSS the helper returned (read from
/// the reply) and the clock bits of the timestamp (the low six bits, which carry the
/// options, must match). The cookie itself is proven by the kernel accepting it.
fn check_reply(kernel: &Kernel, plan: &model::ReplyPlan, syn: &[u8], out: &[u8]) -> Result<u32, String> {
    let l4 = usize::from(plan.seg.l4_offset);
    if out.len() < l4 + 24 || out[l4 + 20..l4 + 22] != [2, 4] {
        return Err(format!("XDP_TX reply too short or without MSS first: {}", hex(out)));
    }
    let word = |at: usize| u32::from_be_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]);
    let cookie = word(l4 + 4);
    let mss = u16::from_be_bytes([out[l4 + 22], out[l4 + 23]]);
    // With timestamps the reply's TCP header is 40 bytes (its data offset 10); the TS
    // value sits at l4 + 28. (Not the frame's length: an MSS-only reply may keep a longer
    // SYN's frame, with a trailer.)
    let now_ms = if out[l4 + 12] >> 4 == 10 { word(l4 + 28) | 0x3f } else { 0 };
    let want = plan.frame(syn, cookie, mss, now_ms);
    if out != want {
        return Err(format!("reply differs\n  model:  {}\n  kernel: {}", hex(&want), hex(out)));
    }
    if !kernel.accepts_cookie(out)? {
        return Err(format!("the kernel refuses the reply's cookie {cookie:#x}"));
    }
    Ok(cookie)
}

/// Writes the failing sequence as a pcap (Ethernet, 1 ms apart); returns its path.
fn write_pcap(case: &Case, name: &str) -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/differential-failures"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.pcap"));
    let file = std::fs::File::create(&path).unwrap();
    let mut w = pcap_file::pcap::PcapWriter::new(file).unwrap();
    for (i, spec) in case.frames.iter().enumerate() {
        let frame = spec.build();
        let ts = Duration::from_millis(1_700_000_000_000 + i as u64);
        w.write_packet(&pcap_file::pcap::PcapPacket::new(ts, u32::try_from(frame.len()).unwrap(), &frame))
            .unwrap();
    }
    std::fs::write(dir.join(format!("{name}.txt")), format!("{case:#?}\n")).unwrap();
    path
}

/// Runs `test` on a thread in a fresh network namespace (pinned to CPU 0), with a
/// dual-stack listener on `LISTEN_PORT` and `tcp_syncookies = 2` there only.
fn in_private_netns(test: impl FnOnce() + Send + 'static) {
    common::assert_root();
    thread::spawn(move || {
        // SAFETY: affects only this thread.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare(CLONE_NEWNET)");
        // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set);
        }
        std::fs::write("/proc/sys/net/ipv4/tcp_syncookies", "2").unwrap();
        let _listener = TcpListener::bind(("::", gen::LISTEN_PORT)).expect("listener in the private netns");
        test();
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

fn seed() -> u64 {
    std::env::var("SYNDETECTOR_DIFF_SEED").map_or_else(
        |_| monotonic_ns() ^ u64::from(std::process::id()) << 32,
        |s| s.parse().expect("SYNDETECTOR_DIFF_SEED must be a u64"),
    )
}

#[test]
fn kernel_and_model_agree_on_generated_sequences() {
    let cases = std::env::var("SYNDETECTOR_DIFF_CASES")
        .map_or(DEFAULT_CASES, |s| s.parse().expect("SYNDETECTOR_DIFF_CASES must be a number"));
    let seed = seed();
    println!(
        "differential: {cases} sequences, seed {seed} \
         (SYNDETECTOR_DIFF_SEED={seed} SYNDETECTOR_DIFF_CASES={cases} replays this run)"
    );
    in_private_netns(move || {
        let kernel = RefCell::new(Kernel::load());
        println!(
            "differential: the test object's syndetector verified {:?} instructions",
            kernel.borrow().verified_insns()
        );
        let tally = RefCell::new(Tally::new());
        let mut seed_bytes = [0u8; 32];
        seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let config = ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() };
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes));
        let started = Instant::now();
        let result = runner.run(&gen::case(), |case| {
            check_case(&mut kernel.borrow_mut(), &case, &mut tally.borrow_mut()).map_err(TestCaseError::fail)
        });
        let tally = tally.into_inner();
        match result {
            Ok(()) => println!("differential: {} in {:.1?}", tally.summary(), started.elapsed()),
            Err(TestError::Fail(reason, case)) => {
                let path = write_pcap(&case, &format!("seed-{seed}"));
                panic!(
                    "model and kernel disagree (seed {seed}; shrunk sequence in {}):\n{reason}",
                    path.display()
                );
            }
            Err(e) => panic!("{e}"),
        }
        assert!(tally.frames >= u64::from(cases), "too few frames compared: {}", tally.frames);
        // The generators must reach the interesting paths, or agreement proves little.
        for c in [
            Counter::PassSyn,
            Counter::TxCookie,
            Counter::TxCookieFast,
            Counter::DropAckShield,
            Counter::PassTruncated,
            Counter::PassMalformed,
            Counter::PassTcp,
        ] {
            assert!(tally.slots[c as usize] > 0, "no frame reached {c:?}: {}", tally.summary());
        }
    });
}
