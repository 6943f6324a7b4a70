//! The fuzz corpus seeds: the generators' frames in each fuzz target's input format.

use std::path::PathBuf;

use detector_common::parse::parse_tcp;
use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, TestRng, TestRunner};

use crate::gen;

/// Writes generated frames for `cargo xtask fuzz` to seed its corpora from, one file per
/// input, under $SYNDETECTOR_FUZZ_CORPUS/{parse,options,synack} in each target's input
/// format (fuzz/fuzz_targets/). Deterministic; needs no root.
#[test]
#[ignore = "run by `cargo xtask fuzz` to seed the fuzz corpus"]
fn write_fuzz_corpus() {
    use proptest::strategy::{Strategy, ValueTree};

    let root = PathBuf::from(std::env::var("SYNDETECTOR_FUZZ_CORPUS").expect("SYNDETECTOR_FUZZ_CORPUS"));
    for target in ["parse", "options", "synack"] {
        std::fs::create_dir_all(root.join(target)).unwrap();
    }
    let mut runner =
        TestRunner::new_with_rng(ProptestConfig::default(), TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let strategy = gen::frame();
    let mut syns = 0;
    for i in 0..512 {
        let frame = strategy.new_tree(&mut runner).unwrap().current().build();
        std::fs::write(root.join("parse").join(format!("gen-{i:04}")), &frame).unwrap();
        let Ok(seg) = parse_tcp(frame.as_slice()) else { continue };
        // options: the declared length, then the option bytes.
        let l4 = usize::from(seg.l4_offset);
        let options = &frame[l4 + 20..l4 + usize::from(seg.tcp_header_len)];
        let len = u8::try_from(options.len()).unwrap();
        std::fs::write(root.join("options").join(format!("gen-{i:04}")), [&[len][..], options].concat())
            .unwrap();
        if seg.is_syn() {
            // synack: cookie, MSS, clock, settings (timestamps and ECN on), then the SYN.
            let knobs = [0x12, 0x34, 0x56, 0x78, 0x05, 0xb4, 0, 1, 0, 0, 0x53];
            std::fs::write(root.join("synack").join(format!("gen-{i:04}")), [&knobs[..], &frame].concat())
                .unwrap();
            syns += 1;
        }
    }
    println!("fuzz corpus: 512 frames ({syns} SYNs) under {}", root.display());
}
