//! `cargo xtask soak --minutes 2` as a test: the agent in auto mode through two cycles of
//! single-source, random-source, forged-ACK floods and calm, with its RSS, descriptors and
//! legit success held to the bounds in xtask/src/soak.rs. Needs root; takes 2 minutes.

use std::{path::Path, time::Duration};

const AGENT: &str = env!("CARGO_BIN_EXE_syndetector");

#[test]
fn a_two_minute_soak_stays_within_its_bounds() {
    // The client veth's dummy program comes from the test object.
    let object = xtask::objects::test_programs(false);
    assert!(object.exists(), "the test XDP object is missing: run `cargo xtask build-ebpf` first");
    let outcome = xtask::soak::run(Path::new(AGENT), &object, Duration::from_mins(2)).expect("soak (root)");
    println!("{}", outcome.table);
    assert!(outcome.violations.is_empty(), "soak bounds broken:\n{}", outcome.violations.join("\n"));
}
