//! Pcap samples (docs/samples.md): the XDP program sends 1 in `samples.one_in` dropped or
//! cookie-answered frames, as received, through its `SAMPLES` ring buffer; `reader` drains
//! it on a thread of its own and `writer` keeps them in rotating pcapng files. A failing
//! disk is logged and counted, never allowed to slow the control loop or the program.

pub mod reader;
#[cfg(test)]
mod tests;
pub mod writer;

use std::{path::PathBuf, time::Duration};

use detector_common::sample::SampleRecord;
use serde::Deserialize;

use crate::error::ConfigError;

/// A file must hold its headers and at least a few full-size records.
pub const MIN_FILE_BYTES: u64 = 4_096;
// A record's block is under 512 bytes (SNAP_LEN of data, a short comment).
const _: () = assert!(MIN_FILE_BYTES > writer::FILE_HEADER_BYTES + 4 * 512);
/// Sampling rates above this are refused: a typo rather than a rate.
pub const MAX_ONE_IN: u32 = 1 << 30;

/// Pcap samples of dropped and cookie-answered packets (see `samples`, docs/samples.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Samples {
    /// Sample 1 in this many dropped or cookie-answered packets (0 = off).
    pub one_in: u32,
    /// Where the capture files go: created 0700, refused if a symlink or not ours.
    pub dir: PathBuf,
    /// A capture file is closed before it would grow past this.
    pub max_file_bytes: u64,
    /// At most this many capture files are kept; the oldest is deleted.
    pub max_files: u32,
}

impl Default for Samples {
    fn default() -> Self {
        Self {
            one_in: 0,
            dir: PathBuf::from("/var/lib/syndetector/samples"),
            max_file_bytes: 16 * 1024 * 1024,
            max_files: 8,
        }
    }
}

pub fn validate(s: &Samples) -> Result<(), ConfigError> {
    let invalid = |key, problem: String| ConfigError::Invalid { key, problem };
    if s.one_in > MAX_ONE_IN {
        return Err(invalid(
            "samples.one_in",
            format!("{} is above {MAX_ONE_IN} (0 turns sampling off)", s.one_in),
        ));
    }
    if !s.dir.is_absolute() {
        return Err(invalid("samples.dir", format!("{} is not an absolute path", s.dir.display())));
    }
    if !(MIN_FILE_BYTES..=1 << 40).contains(&s.max_file_bytes) {
        return Err(invalid(
            "samples.max_file_bytes",
            format!("{} is outside {MIN_FILE_BYTES}..={}", s.max_file_bytes, 1u64 << 40),
        ));
    }
    if !(1..=100_000).contains(&s.max_files) {
        return Err(invalid("samples.max_files", format!("{} is outside 1..=100000", s.max_files)));
    }
    Ok(())
}

/// The packet comment: the verdict and its reason as in `syndetector_packets_total`
/// (e.g. "drop blocked", "tx cookie").
#[must_use]
pub fn comment(record: &SampleRecord) -> String {
    match record.counter() {
        Some(c) => format!("{} {}", c.verdict().map_or("?", |v| v.as_str()), c.label()),
        None => format!("unknown counter {}", record.counter),
    }
}

/// Wall-clock time (since the Unix epoch) of a `CLOCK_MONOTONIC` instant, given both
/// clocks read now.
#[must_use]
pub fn wall_time(mono_ns: u64, now_mono_ns: u64, now_wall: Duration) -> Duration {
    now_wall.saturating_sub(Duration::from_nanos(now_mono_ns.saturating_sub(mono_ns)))
}
