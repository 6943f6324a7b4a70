//! The closed-connection filter (`CLOSED_FILTER`) mapped into the agent's memory, so that
//! the agent stamps a flow exactly as the program does: one byte store per cell, and one
//! for its line's latest stamp.
//!
//! A map update would write a whole 64-byte line and put back older values over cells the
//! program stamped meanwhile, forgetting a FIN; a byte store cannot (every writer stores a
//! recent time, `detector_common::closed_filter`). The map is created `BPF_F_MMAPABLE`,
//! and `mmap` of its fd at offset 0 gives its values, entry after entry.

use std::{io, os::fd::AsFd, ptr::NonNull};

use aya::maps::MapData;
use detector_common::closed_filter::{self, ClosedLine, ClosedSpot};

/// A shared, writable mapping of every entry of the filter (its lines, then their latest
/// stamps). It holds the map itself (the mapping keeps a reference to the map's file), so
/// the `MapData` it came from may go.
pub struct ClosedLines {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; every access is a single byte store.
unsafe impl Send for ClosedLines {}

impl ClosedLines {
    /// Maps the filter (kernel >= 5.5 for mmapable arrays).
    pub fn map(map: &MapData) -> io::Result<Self> {
        // As many entries as the map was made with (`closed_filter::entries` for
        // `maps.closed_filter_lines`).
        let entries = map.info().map_err(io::Error::other)?.max_entries();
        if entries != closed_filter::entries(closed_filter::line_bits_of_entries(entries)) {
            return Err(io::Error::other(format!(
                "{entries} entries, not a power of two of lines and their latest stamps"
            )));
        }
        let len = entries as usize * size_of::<ClosedLine>();
        let fd = map.fd().as_fd();
        // SAFETY: a new shared mapping of an fd we hold; the kernel checks the length and
        // the flags against the map (it refuses a map created without BPF_F_MMAPABLE).
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(at.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { base, len })
    }

    /// log2 of the filter's lines: what `closed_filter::spot` places flows by, as the
    /// program does from its config (`closed_filter::line_bits`), which the agent set to
    /// the same size as the map.
    pub fn line_bits(&self) -> u32 {
        #[allow(clippy::cast_possible_truncation, reason = "a map's entries are a u32")]
        closed_filter::line_bits_of_entries((self.len / size_of::<ClosedLine>()) as u32)
    }

    /// Byte `cell` of entry `entry`, inside the mapping (a place past it panics).
    fn byte(&self, entry: u32, cell: usize) -> *mut u8 {
        let at = entry as usize * size_of::<ClosedLine>() + cell;
        assert!(at < self.len, "byte {at} past the filter's {} bytes", self.len);
        // SAFETY: inside the mapping (checked above).
        unsafe { self.base.as_ptr().add(at) }
    }

    /// Writes `stamp` as the program's FIN does (`closed_filter::stamp_fin`): the line's
    /// latest stamp, then the flow's cells, one byte store each.
    pub fn stamp_flow(&self, spot: &ClosedSpot, stamp: u8) {
        for (entry, cell) in spot.fin_bytes() {
            // SAFETY: a byte of the mapping; a byte store never tears, and a concurrent
            // store by the program writes a recent time as well.
            unsafe { self.byte(entry, cell).write_volatile(stamp) };
        }
    }

    /// One entry (a line, or a line of latest stamps), as read through the mapping.
    #[cfg(test)]
    pub fn line(&self, entry: u32) -> ClosedLine {
        let mut out = ClosedLine::default();
        for (i, cell) in out.cells.iter_mut().enumerate() {
            // SAFETY: a byte of the mapping.
            *cell = unsafe { self.byte(entry, i).read_volatile() };
        }
        out
    }
}

impl Drop for ClosedLines {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use aya::maps::{Array, Map};
    use detector_common::{closed_filter, names, parse::ipv4_mapped, state::FlowKey};

    use super::*;
    use crate::config::{Config, FileConfig};

    /// Root: the mapping is the map. A flow stamped through it reads back through the map
    /// API in exactly its three cells and its line's latest stamp, and a line written
    /// through the map API reads back
    /// through the mapping. With a size other than the default (`maps.closed_filter_lines`):
    /// the map is made that size, the mapping spans all of it, and it places flows by the
    /// same line bits as the program's config says.
    #[test]
    fn a_stamp_through_the_mapping_is_in_the_map() {
        // SAFETY: geteuid cannot fail.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "needs root (loads the XDP object): run with `cargo xtask test`"
        );
        let mut file: FileConfig = toml::from_str("[maps]\nclosed_filter_lines = 32768").unwrap();
        file.interfaces = vec!["lo".into()];
        let cfg = Config { file };
        let (mut ebpf, _logger) = crate::loader::load(&cfg, None).expect("loading the object");
        let Some(Map::Array(data)) = ebpf.take_map(names::MAP_CLOSED_FILTER) else {
            panic!("no CLOSED_FILTER array")
        };
        assert_eq!(data.info().unwrap().max_entries(), 32_768 + 512, "the lines, then their latest stamps");
        let lines = ClosedLines::map(&data).expect("mmap of CLOSED_FILTER (BPF_F_MMAPABLE)");
        let flow = FlowKey {
            src: ipv4_mapped([198, 18, 0, 2]),
            dst: ipv4_mapped([198, 18, 0, 1]),
            src_port: 40_000,
            dst_port: 443,
        };
        assert_eq!(lines.line_bits(), 15);
        assert_eq!(closed_filter::line_bits(&cfg.kernel_config()), 15, "the program's config agrees");
        let at = closed_filter::spot(&flow, lines.line_bits());
        lines.stamp_flow(&at, 77);
        let map: Array<_, ClosedLine> = Array::try_from(Map::Array(data)).unwrap();
        let read = map.get(&at.line, 0).unwrap();
        let mut expected = ClosedLine::default();
        expected.stamp_flow(&at, 77);
        assert_eq!(read, expected, "only the flow's three cells, in the flow's line");
        let mut latest = ClosedLine::default();
        latest.stamp_latest(&at, 77);
        assert_eq!(map.get(&at.latest, 0).unwrap(), latest, "and its line's latest stamp");
        assert!((32_768..32_768 + 512).contains(&at.latest));
        let mut map = map;
        let other = if at.line == 32_767 { 0 } else { 32_767 };
        map.set(other, ClosedLine::all(9), 0).unwrap();
        assert_eq!(lines.line(other), ClosedLine::all(9));
        assert_eq!(lines.line(at.line), expected);
    }
}
