//! `syndetector analyze`: the binary on hand-built captures. --json parses and carries the
//! numbers; bad files exit non-zero naming the problem; bad thresholds exit 64.

use std::process::{Command, Output};

use etherparse::PacketBuilder;
use serde_json::Value;

const AGENT: &str = env!("CARGO_BIN_EXE_syndetector");
const SEC: u64 = 1_000_000_000;
const T0: u64 = 1_700_000_000;

fn syndetector(args: &[&str]) -> Output {
    Command::new(AGENT).args(args).output().expect("running syndetector")
}

fn syn(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, [198, 19, 0, 1], 64)
        .tcp(sport, 80, 7, 64_240)
        .syn()
        .write(&mut frame, &[])
        .unwrap();
    frame
}

/// A little-endian microsecond pcap file of Ethernet frames at (ns from T0, frame).
fn pcap(frames: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 65_535, 1] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for (ns, data) in frames {
        let len = u32::try_from(data.len()).unwrap();
        let secs = u32::try_from(T0 + ns / SEC).unwrap();
        let micros = u32::try_from(ns % SEC / 1_000).unwrap();
        for v in [secs, micros, len, len] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(data);
    }
    out
}

/// 50 SYNs from 198.18.0.1 in 50 ms and one from 198.18.0.2, with a rate limit of 20/s.
fn flood_file() -> tempfile::NamedTempFile {
    let mut frames: Vec<_> =
        (0..50u16).map(|i| (u64::from(i) * 1_000_000, syn([198, 18, 0, 1], 1_000 + i))).collect();
    frames.push((2 * SEC, syn([198, 18, 0, 2], 5)));
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), pcap(&frames)).unwrap();
    f
}

#[test]
fn json_report_has_one_object_per_source_and_a_summary() {
    let file = flood_file();
    let out = syndetector(&["analyze", "--json", "--syn-rate-limit", "20", file.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("analyze --json prints JSON");
    let sources = report["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 2);
    let flooder = &sources[0];
    assert_eq!(flooder["address"], "198.18.0.1");
    assert_eq!(flooder["syns"], 50);
    assert_eq!(flooder["dropped"], 30, "the 21st SYN crosses 20/s");
    assert_eq!(flooder["half_open"], 20);
    assert_eq!(flooder["blocked"], true);
    assert_eq!(flooder["blocked_by"], "syn_rate");
    assert_eq!(flooder["blocked_at_ns"], (T0 * SEC + 20_000_000));
    assert_eq!(sources[1]["address"], "198.18.0.2");
    assert_eq!(sources[1]["blocked"], false);
    assert_eq!(sources[1]["blocked_by"], Value::Null);
    let summary = &report["summary"];
    assert_eq!(summary["format"], "pcap");
    assert_eq!((summary["frames"].as_u64(), summary["syns"].as_u64()), (Some(51), Some(51)));
    assert_eq!((summary["sources"].as_u64(), summary["blocked_sources"].as_u64()), (Some(2), Some(1)));
    let timeline = summary["timeline"].as_array().unwrap();
    assert_eq!(timeline.len(), 1, "{timeline:?}");
    assert_eq!(timeline[0]["event"], "source_blocked");
    assert_eq!(timeline[0]["address"], "198.18.0.1");
}

#[test]
fn text_report_shows_the_verdict() {
    let file = flood_file();
    let out = syndetector(&["analyze", "--syn-rate-limit", "20", file.path().to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("blocked (syn rate) at +0.020 s"), "{text}");
    assert!(text.contains("2 sources, 1 blocked; 51 SYNs, 30 would be dropped"), "{text}");
}

#[test]
fn unreadable_captures_and_bad_thresholds_exit_non_zero_naming_the_problem() {
    let not_a_capture = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_a_capture.path(), "hello\n").unwrap();
    let out = syndetector(&["analyze", not_a_capture.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a pcap or pcapng capture"));

    let file = flood_file();
    let bytes = std::fs::read(file.path()).unwrap();
    std::fs::write(file.path(), &bytes[..bytes.len() - 3]).unwrap();
    let out = syndetector(&["analyze", "--json", file.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncated"));
    assert!(out.stdout.is_empty(), "no half report on a broken file");

    let out = syndetector(&["analyze", "--exit-syn-rate", "0", file.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("detection.exit_syn_rate"));
}
