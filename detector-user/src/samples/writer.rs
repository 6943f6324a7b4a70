//! Rotating pcapng files in a directory the agent owns: each file at most `max_file_bytes`
//! (a packet that would push it past is written to a new file), at most `max_files` of
//! them (the oldest deleted). pcapng rather than pcap so that each packet carries a
//! comment with the verdict it got (tshark shows it as `frame.comment`).

use std::{
    borrow::Cow,
    fs::File,
    io::{self, BufWriter, Write},
    time::Duration,
};

use pcap_file::{
    pcapng::{
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
        PcapNgWriter,
    },
    DataLink, PcapError,
};

use crate::lock::StateDir;

/// File names: `samples-<unix seconds, 11 digits>-<sequence, 6 digits>.pcapng`, so that
/// name order is creation order.
const PREFIX: &str = "samples-";
const SUFFIX: &str = ".pcapng";

/// Size of the section header and interface description blocks that open each file
/// (checked by a test against what the crate writes).
pub const FILE_HEADER_BYTES: u64 = 28 + 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_file_bytes: u64,
    pub max_files: usize,
}

/// One packet to write.
pub struct Sample<'a> {
    /// Wall-clock time since the Unix epoch.
    pub time: Duration,
    /// Length on the wire; `data` may be shorter (cut at the program's snap length).
    pub original_len: u32,
    pub data: &'a [u8],
    pub comment: &'a str,
}

/// Bytes an enhanced packet block takes for `sample` (its data and comment padded to 4).
#[must_use]
pub fn block_bytes(sample: &Sample<'_>) -> u64 {
    let pad4 = |n: usize| n.div_ceil(4) as u64 * 4;
    // Type, length, interface, timestamp (2), captured and original length, trailing length.
    let fixed = 32;
    // The comment option (code, length, text) and the end-of-options marker.
    let options = if sample.comment.is_empty() { 0 } else { 4 + pad4(sample.comment.len()) + 4 };
    fixed + pad4(sample.data.len()) + options
}

/// Counts what goes through, so the writer knows each file's size without a stat.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct Current {
    writer: PcapNgWriter<Counting<BufWriter<File>>>,
    packets: u64,
}

impl Current {
    fn bytes(&self) -> u64 {
        self.writer.get_ref().bytes
    }
}

pub struct RotatingWriter {
    dir: StateDir,
    limits: Limits,
    current: Option<Current>,
    seq: u32,
    /// Seconds since the epoch, for file names (a function so tests can pin it).
    clock: Box<dyn FnMut() -> u64 + Send>,
}

fn pcap_io(e: PcapError) -> io::Error {
    match e {
        PcapError::IoError(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

impl RotatingWriter {
    pub fn new(dir: StateDir, limits: Limits) -> Self {
        let clock =
            || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Self::with_clock(dir, limits, Box::new(clock))
    }

    pub fn with_clock(dir: StateDir, limits: Limits, clock: Box<dyn FnMut() -> u64 + Send>) -> Self {
        Self { dir, limits, current: None, seq: 0, clock }
    }

    /// Writes one packet, starting a new file first if it would not fit in the current
    /// one. An error drops the current file (the next packet starts a new one).
    pub fn write(&mut self, sample: &Sample<'_>) -> io::Result<()> {
        let need = block_bytes(sample);
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.packets > 0 && c.bytes() + need > self.limits.max_file_bytes)
        {
            self.close()?;
        }
        if self.current.is_none() {
            self.current = Some(self.open()?);
        }
        let current = self.current.as_mut().expect("opened above");
        let block = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: sample.time,
            original_len: sample.original_len,
            data: Cow::Borrowed(sample.data),
            options: if sample.comment.is_empty() {
                Vec::new()
            } else {
                vec![EnhancedPacketOption::Comment(Cow::Borrowed(sample.comment))]
            },
        };
        let written = current.writer.write_pcapng_block(block).map_err(pcap_io);
        match written {
            Ok(_) => {
                current.packets += 1;
                Ok(())
            }
            Err(e) => {
                self.current = None;
                Err(e)
            }
        }
    }

    /// Pushes buffered packets to the file, so a reader sees them while the agent runs.
    pub fn flush(&mut self) -> io::Result<()> {
        let Some(current) = self.current.as_mut() else { return Ok(()) };
        let flushed = current.writer.get_mut().flush();
        if flushed.is_err() {
            self.current = None;
        }
        flushed
    }

    fn close(&mut self) -> io::Result<()> {
        match self.current.take() {
            Some(mut c) => c.writer.get_mut().flush(),
            None => Ok(()),
        }
    }

    /// A new file (0600, never an existing name), after deleting the oldest files so that
    /// with it there are at most `max_files`.
    fn open(&mut self) -> io::Result<Current> {
        let mut existing = self.files()?;
        let keep = self.limits.max_files.saturating_sub(1);
        if existing.len() > keep {
            for name in existing.drain(..existing.len() - keep) {
                self.dir.unlink(&name)?;
            }
        }
        let secs = (self.clock)();
        let file = loop {
            let name = format!("{PREFIX}{secs:011}-{:06}{SUFFIX}", self.seq);
            self.seq = self.seq.wrapping_add(1);
            match self.dir.open_file(&name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o600) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                other => break other?,
            }
        };
        let counting = Counting { inner: BufWriter::new(file), bytes: 0 };
        let mut writer = PcapNgWriter::new(counting).map_err(pcap_io)?;
        let interface = InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: u32::try_from(detector_common::sample::SNAP_LEN).unwrap_or(u32::MAX),
            // The crate writes timestamps in nanoseconds: say so, or readers assume µs.
            options: vec![InterfaceDescriptionOption::IfTsResol(9)],
        };
        writer.write_pcapng_block(interface).map_err(pcap_io)?;
        Ok(Current { writer, packets: 0 })
    }

    /// The capture files now in the directory, oldest first.
    pub fn files(&self) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())?
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
            .collect();
        names.sort();
        Ok(names)
    }
}

impl Drop for RotatingWriter {
    fn drop(&mut self) {
        let _ = self.close();
    }
}
