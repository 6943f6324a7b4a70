//! The sample writer on a real directory: rotation, the size and count caps, file modes,
//! comments and timestamps as a pcapng reader (the `pcap-file` crate) sees them.

use std::{os::unix::fs::PermissionsExt, path::Path, time::Duration};

use detector_common::{counters::Counter, sample::SampleRecord};
use pcap_file::pcapng::{Block, PcapNgReader};

use super::{
    comment, validate, wall_time,
    writer::{block_bytes, Limits, RotatingWriter, Sample, FILE_HEADER_BYTES},
    Samples,
};
use crate::lock::StateDir;

fn sample(i: u8, comment: &str) -> (Vec<u8>, String) {
    (vec![i; 60 + usize::from(i % 7)], comment.to_owned())
}

/// Every packet of a file: (timestamp, original length, data, comment).
fn read(path: &Path) -> Vec<(Duration, u32, Vec<u8>, Option<String>)> {
    let mut reader = PcapNgReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut out = Vec::new();
    while let Some(block) = reader.next_block() {
        if let Block::EnhancedPacket(p) = block.unwrap() {
            let comment = p.options.iter().find_map(|o| match o {
                pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption::Comment(c) => {
                    Some(c.to_string())
                }
                _ => None,
            });
            out.push((p.timestamp, p.original_len, p.data.to_vec(), comment));
        }
    }
    out
}

fn writer(dir: &Path, limits: Limits) -> RotatingWriter {
    let dir = StateDir::open(dir, true).unwrap();
    let mut second = 1_700_000_000;
    RotatingWriter::with_clock(
        dir,
        limits,
        Box::new(move || {
            second += 1;
            second
        }),
    )
}

#[test]
fn packets_keep_their_time_length_bytes_and_verdict_comment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("samples");
    let mut w = writer(&dir, Limits { max_file_bytes: 1 << 20, max_files: 4 });
    let data = vec![0xaa; 70];
    let time = Duration::new(1_700_000_123, 456_789_012);
    w.write(&Sample { time, original_len: 1500, data: &data, comment: "drop blocked" }).unwrap();
    w.flush().unwrap();
    let files = w.files().unwrap();
    assert_eq!(files.len(), 1);
    let packets = read(&dir.join(&files[0]));
    assert_eq!(packets, [(time, 1500, data, Some("drop blocked".to_owned()))]);

    let meta = std::fs::metadata(dir.join(&files[0])).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "capture files are 0600");
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700, "the dir is 0700");
}

#[test]
fn files_rotate_at_the_size_cap_and_the_oldest_go_beyond_the_count_cap() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let limits = Limits { max_file_bytes: 4_096, max_files: 3 };
    let mut w = writer(&dir, limits);
    let mut sizes = 0;
    for i in 0..200u8 {
        let (data, comment) = sample(i, "tx cookie");
        sizes +=
            block_bytes(&Sample { time: Duration::ZERO, original_len: 80, data: &data, comment: &comment });
        w.write(&Sample {
            time: Duration::from_secs(u64::from(i)),
            original_len: 80,
            data: &data,
            comment: &comment,
        })
        .unwrap();
    }
    w.flush().unwrap();
    let files = w.files().unwrap();
    assert_eq!(files.len(), 3, "at most max_files: {files:?}");
    assert!(sizes > 3 * 4_096, "the test wrote enough to rotate more than max_files times");
    let mut seen = Vec::new();
    for name in &files {
        let size = std::fs::metadata(dir.join(name)).unwrap().len();
        assert!(size <= limits.max_file_bytes, "{name} is {size} bytes");
        // Full files stop within one packet of the cap.
        seen.extend(read(&dir.join(name)).into_iter().map(|p| p.0.as_secs()));
    }
    // The newest packets survive, in order, without gaps.
    let last = *seen.last().unwrap();
    assert_eq!(last, 199);
    let first = seen[0];
    assert_eq!(seen, (first..=last).collect::<Vec<_>>());
    assert!(files.windows(2).all(|p| p[0] < p[1]), "names sort oldest first");
}

#[test]
fn block_size_formula_matches_what_the_crate_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let mut w = writer(&dir, Limits { max_file_bytes: 1 << 20, max_files: 1 });
    let mut expected = FILE_HEADER_BYTES;
    for (len, comment) in [(60, "drop blocked"), (61, "tx cookie"), (256, ""), (63, "drop cookie_budget")] {
        let data = vec![1; len];
        let s = Sample { time: Duration::ZERO, original_len: 2000, data: &data, comment };
        expected += block_bytes(&s);
        w.write(&s).unwrap();
    }
    w.flush().unwrap();
    let name = &w.files().unwrap()[0];
    assert_eq!(std::fs::metadata(dir.join(name)).unwrap().len(), expected);
}

#[test]
fn a_symlinked_or_foreign_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let s = Samples { one_in: 10, dir: link, ..Samples::default() };
    let e = super::reader::prepare_dir(&s).unwrap_err();
    assert!(format!("{e:#}").contains("symlink"), "{e:#}");
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o777)).unwrap();
    let s = Samples { one_in: 10, dir: real, ..Samples::default() };
    let e = super::reader::prepare_dir(&s).unwrap_err();
    assert!(format!("{e:#}").contains("writable"), "{e:#}");
    let off = Samples { one_in: 0, dir: tmp.path().join("never"), ..Samples::default() };
    assert!(super::reader::prepare_dir(&off).unwrap().is_none());
    assert!(!tmp.path().join("never").exists(), "sampling off creates nothing");
}

#[test]
fn comments_name_verdict_and_reason() {
    let mut r = SampleRecord { ts_ns: 0, frame_len: 60, cap_len: 60, counter: 0, _pad: 0, data: [0; 256] };
    for (counter, text) in [
        (Counter::DropBlocked, "drop blocked"),
        (Counter::TxCookie, "tx cookie"),
        (Counter::DropCookieBudget, "drop cookie_budget"),
    ] {
        r.counter = counter as u32;
        assert_eq!(comment(&r), text);
    }
    r.counter = 9_999;
    assert_eq!(comment(&r), "unknown counter 9999");
}

#[test]
fn monotonic_stamps_become_wall_clock() {
    let now_wall = Duration::from_secs(1_700_000_000);
    assert_eq!(wall_time(5_000_000_000, 7_000_000_000, now_wall), Duration::from_secs(1_699_999_998));
    assert_eq!(wall_time(9, 7, now_wall), now_wall, "a stamp after now is now");
}

#[test]
fn settings_are_validated() {
    assert!(validate(&Samples::default()).is_ok(), "off by default, and valid");
    let bad = [
        Samples { dir: "relative".into(), ..Samples::default() },
        Samples { max_file_bytes: 100, ..Samples::default() },
        Samples { max_files: 0, ..Samples::default() },
        Samples { one_in: u32::MAX, ..Samples::default() },
    ];
    for s in bad {
        assert!(validate(&s).is_err(), "{s:?}");
    }
}

#[test]
fn the_rate_reloads_into_the_program_config_but_the_files_need_a_restart() {
    use crate::config::reload::{decide, Takes};
    let parse = |text: &str| -> crate::config::FileConfig { toml::from_str(text).unwrap() };
    let on = parse("[samples]\none_in = 100\n");
    assert_eq!(
        crate::config::Config { file: parse("[samples]\none_in = 100\n") }.kernel_config().sample_one_in,
        100
    );
    assert_eq!(crate::config::Config { file: parse("") }.kernel_config().sample_one_in, 0, "off by default");
    assert_eq!(decide(&parse(""), &on).unwrap().changed, ["samples.one_in"]);
    for (text, key) in [
        ("[samples]\ndir = \"/x\"", "samples.dir"),
        ("[samples]\nmax_file_bytes = 5000", "samples.max_file_bytes"),
        ("[samples]\nmax_files = 2", "samples.max_files"),
    ] {
        assert_eq!(decide(&parse(""), &parse(text)).unwrap_err().keys, [key], "{text}");
        assert!(matches!(crate::config::reload::takes(key), Takes::Restart { .. }));
    }
}
