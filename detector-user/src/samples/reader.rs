//! Drains the program's `SAMPLES` ring buffer on a thread of its own (file writes block,
//! and must not hold up the runtime that serves /metrics), writes each record through
//! `writer`, and carries the ring's loss counter into `syndetector_samples_lost_total`.

use std::{
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    Ebpf,
};
use detector_common::{names, sample::SampleRecord};
use tracing::{info, warn};

use super::{
    writer::{Limits, RotatingWriter, Sample},
    Samples,
};
use crate::{lock::StateDir, maps::monotonic_ns, metrics::Metrics};

/// What errors call the samples directory.
const SAMPLES_DIR: &str = "samples directory (samples.dir)";
/// How long the thread waits for records before it checks for a stop and the loss count.
const POLL: Duration = Duration::from_millis(500);
/// Records taken per wake-up before the stop flag is looked at again.
const BATCH: usize = 4_096;
/// At most one warning per this long about failing writes; the rest are only counted.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Opens (creating it 0700) the sample directory now when sampling is on, so that an
/// unusable one (a symlink, another user's, writable by others) is refused at start,
/// before the host is touched. With sampling off it is opened when a reload turns it on.
pub fn prepare_dir(s: &Samples) -> Result<Option<StateDir>> {
    if s.one_in == 0 {
        return Ok(None);
    }
    Ok(Some(StateDir::open_as(&s.dir, true, SAMPLES_DIR)?))
}

/// The running reader; `stop` flushes and closes the current file.
pub struct Reader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Takes the sample maps out of `ebpf` and starts the thread.
pub fn spawn(ebpf: &mut Ebpf, s: &Samples, dir: Option<StateDir>, metrics: Arc<Metrics>) -> Result<Reader> {
    let ring: RingBuf<_> = crate::loader::take_map(ebpf, names::MAP_SAMPLES)?;
    let lost: PerCpuArray<_, u64> = crate::loader::take_map(ebpf, names::MAP_SAMPLES_LOST)?;
    let limits = Limits {
        max_file_bytes: s.max_file_bytes,
        max_files: usize::try_from(s.max_files).unwrap_or(usize::MAX),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut state = State {
        ring,
        lost,
        lost_seen: 0,
        path: s.dir.clone(),
        writer: dir.map(|d| RotatingWriter::new(d, limits)),
        limits,
        metrics,
        failures: Failures::default(),
    };
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("samples".into())
        .spawn(move || state.run(&flag))
        .context("starting the sample reader thread")?;
    Ok(Reader { stop, thread: Some(thread) })
}

#[derive(Default)]
struct Failures {
    since_warning: u64,
    last_warning: Option<Instant>,
}

impl Failures {
    /// Counts a failure; logs it unless one was logged within `WARN_EVERY`.
    fn record(&mut self, metrics: &Metrics, what: &str, error: &dyn std::fmt::Display) {
        metrics.sample_write_errors.inc();
        self.since_warning += 1;
        if self.last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            warn!(event = "sample_write_failed", what, error = %error, failures = self.since_warning,
                "could not write a packet sample (counted in syndetector_sample_write_errors_total; mitigation is unaffected)");
            self.since_warning = 0;
            self.last_warning = Some(Instant::now());
        }
    }
}

struct State {
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    lost_seen: u64,
    path: std::path::PathBuf,
    writer: Option<RotatingWriter>,
    limits: Limits,
    metrics: Arc<Metrics>,
    failures: Failures,
}

impl State {
    fn run(&mut self, stop: &AtomicBool) {
        let mut pfd = libc::pollfd { fd: self.ring.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: one valid pollfd; the ring's descriptor stays open while `self` lives.
            #[allow(clippy::cast_possible_truncation, reason = "POLL is 500 ms")]
            unsafe {
                libc::poll(&raw mut pfd, 1, POLL.as_millis() as libc::c_int)
            };
            self.drain();
            self.count_lost();
        }
        self.drain();
        if let Some(w) = self.writer.as_mut() {
            let _ = w.flush();
        }
    }

    fn drain(&mut self) {
        let mut wrote = false;
        for _ in 0..BATCH {
            let Some(item) = self.ring.next() else { break };
            if item.len() != size_of::<SampleRecord>() {
                continue;
            }
            // SAFETY: SampleRecord is plain integers and bytes; the length is checked above.
            let record = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<SampleRecord>()) };
            drop(item);
            wrote |= self.write(&record);
        }
        if wrote {
            if let Some(Err(e)) = self.writer.as_mut().map(RotatingWriter::flush) {
                self.failures.record(&self.metrics, "flush", &e);
            }
        }
    }

    /// Writes one record; whether anything went to a file.
    fn write(&mut self, record: &SampleRecord) -> bool {
        let Some(data) = record.bytes() else { return false };
        if self.writer.is_none() {
            match StateDir::open_as(&self.path, true, SAMPLES_DIR) {
                Ok(dir) => {
                    info!(dir = %self.path.display(), "writing packet samples");
                    self.writer = Some(RotatingWriter::new(dir, self.limits));
                }
                Err(e) => {
                    self.failures.record(&self.metrics, "directory", &e);
                    return false;
                }
            }
        }
        let comment = super::comment(record);
        let now_wall = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let sample = Sample {
            time: super::wall_time(record.ts_ns, monotonic_ns(), now_wall),
            original_len: record.frame_len,
            data,
            comment: &comment,
        };
        let writer = self.writer.as_mut().expect("opened above");
        match writer.write(&sample) {
            Ok(()) => {
                self.metrics.samples_written.inc();
                true
            }
            Err(e) => {
                self.failures.record(&self.metrics, "write", &e);
                false
            }
        }
    }

    fn count_lost(&mut self) {
        let Ok(values) = self.lost.get(&0, 0) else { return };
        let total: u64 = values.iter().sum();
        crate::metrics::advance(&self.metrics.samples_lost, &mut self.lost_seen, total);
    }
}
