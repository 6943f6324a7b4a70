//! The closed-connection filter (`names::MAP_CLOSED_FILTER`): which flows may be in
//! `TIME_WAIT` here, so that the raw cookie helper never answers them (docs/cookies.md).
//!
//! A client's FIN stamps its flow; a SYN whose flow may have been stamped within
//! `TIME_WAIT_NS` takes the socket lookup, which hands a `TIME_WAIT` tuple to the kernel.
//! Forgetting a stamped flow would stall a connection; a false alarm only costs a lookup.
//!
//! The filter is a blocked Bloom filter of times. Each flow hashes to one line of
//! `LINE_CELLS` one-byte stamps (one 64-byte cache line: a SYN reads one line, as a single
//! stamp per bucket did) and to `CELLS_PER_FLOW` cells in it; a FIN writes the time into
//! those cells, and a SYN's flow may be in `TIME_WAIT` only if all of its cells are recent.
//! A single stamp per bucket, as before, told no flows apart: a server closing about 1,000
//! connections a second had 60 % of its buckets stamped, and 60 % of its SYNs lost the raw
//! path. Here a SYN is sent to the lookup by other flows' FINs only when they happened to
//! stamp all of its cells: about 3.5 % of SYNs at 1,000 closes a second, 45 % at 4,000
//! (`other_flows_rarely_cover_a_flows_cells` measures it).
//!
//! The size is a trade between those false alarms and the cost of the line's cache miss on
//! every answered SYN whose line is recent (below): 8,192 lines (512 KiB, the default) cost
//! the calm server 1-3 % over the old 256 KiB of buckets, before the latest stamps; 16,384
//! lines cut the false alarms to 0.9 % and 14 % but cost 5 % (docs/hotpaths.md). So the
//! operator chooses (`maps.closed_filter_lines`, in the program's config as
//! `Config::closed_filter_extra_bits`): a server closing thousands of connections a second
//! buys back its raw path with a larger filter (docs/cookies.md).
//!
//! After the lines come the filter's latest stamps: one more line per `LINE_CELLS` lines,
//! whose byte for a line holds the latest stamp written anywhere in it (`ClosedSpot::latest`).
//! A SYN reads its line's latest stamp first and the line itself only when that is recent:
//! a line no FIN stamped within the window cannot hold a recent cell. On a server that
//! closes few connections (a few dozen a second at the default size) most lines are quiet,
//! and a SYN reads one byte of a 1/64-sized array that stays in the cache instead of a
//! random line of the whole filter (its cache miss was about a tenth of an answered SYN,
//! docs/hotpaths.md); on a busy one every line is recent and the SYN reads both.
//!
//! Stamps count units of 4 s and wrap after 17 minutes: a cell written a wrap ago reads as
//! recent again for a minute, which costs a lookup, never a stall. Race-free by
//! construction: every write stores "now", so two CPUs stamping one line at once can only
//! leave a cell a few milliseconds older than the other's write, which the margin in
//! `TIME_WAIT_NS` absorbs. No cell is ever cleared: old stamps stop matching by age. The
//! agent stamps the same way, through a shared mapping of the array (a map update would
//! write a whole line and put back cells the program stamped meanwhile).

use crate::{config::Config, filter, state::FlowKey};

/// How long a tuple may stay in `TIME_WAIT` after the server saw the client's FIN
/// (`TCP_TIMEWAIT_LEN`, 60 s), with a margin for clocks read on different CPUs.
pub const TIME_WAIT_NS: u64 = 62_000_000_000;

/// Lines of `names::MAP_CLOSED_FILTER` by default (a power of two): 512 KiB in all.
pub const CLOSED_FILTER_LINES: u32 = 1 << DEFAULT_LINE_BITS;
/// log2 of the default lines.
pub const DEFAULT_LINE_BITS: u32 = 13;
/// The sizes an operator may choose, as log2 of the lines: 4,096 lines (256 KiB) to
/// 1,048,576 (64 MiB). The most a flow's 32-bit hash can place (see below).
pub const MIN_LINE_BITS: u32 = 12;
pub const MAX_LINE_BITS: u32 = 20;
/// Stamps in a line: 64 bytes, one cache line.
pub const LINE_CELLS: usize = 64;
/// Cells a flow stamps in its line. Three measured best: two leave more false alarms, four
/// fill lines faster than they tell flows apart.
pub const CELLS_PER_FLOW: usize = 3;

const CELL_BITS: u32 = LINE_CELLS.trailing_zeros();
const CELL_MASK: u32 = (1 << CELL_BITS) - 1;
/// Lines whose latest stamps one entry holds, a byte each.
const LINES_PER_LATEST: u32 = 1 << CELL_BITS;
const _: () = assert!(CLOSED_FILTER_LINES.is_power_of_two() && LINE_CELLS.is_power_of_two());
// The line and the two cell parameters (a start and an odd step) come from one 32-bit hash.
const _: () = assert!(MAX_LINE_BITS + 2 * CELL_BITS <= 32);
const _: () = assert!(MIN_LINE_BITS <= DEFAULT_LINE_BITS && DEFAULT_LINE_BITS <= MAX_LINE_BITS);

/// log2 of the filter's lines under `cfg`: the default's plus `Config::closed_filter_extra_bits`
/// (0, what an older agent or a test writes, is the default). The map's size must be
/// `lines(cfg)`, which the agent sets when it loads the program; it refuses sizes outside
/// `MIN_LINE_BITS..=MAX_LINE_BITS`. No branch (a default or a clamp made LLVM load the
/// flow's bytes before it and keep them spilled across it, 5-7 % of an answered SYN):
/// whatever the value, `spot` keeps the line below `1 << MAX_LINE_BITS`, and a line past
/// the map is one the program's lookup does not find (the safe path).
#[inline(always)]
#[must_use]
pub const fn line_bits(cfg: &Config) -> u32 {
    // Wraps by design: `spot` masks the shift. (`as`: `i32::from` is not const.)
    DEFAULT_LINE_BITS.wrapping_add_signed(cfg.closed_filter_extra_bits as i32)
}

/// `Config::closed_filter_extra_bits` for a filter of `1 << line_bits` lines.
#[must_use]
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, reason = "MIN..=MAX_LINE_BITS")]
pub const fn extra_bits(line_bits: u32) -> i8 {
    (line_bits as i32 - DEFAULT_LINE_BITS as i32) as i8
}

/// The lines of the filter under `cfg`.
#[inline(always)]
#[must_use]
pub fn lines(cfg: &Config) -> u32 {
    1 << line_bits(cfg)
}

/// The map's entries for a filter of `1 << line_bits` lines: the lines, then one line of
/// latest stamps per `LINE_CELLS` of them. What the agent makes the map (`maps.closed_filter_lines`
/// sets the lines).
#[must_use]
pub const fn entries(line_bits: u32) -> u32 {
    let lines = 1 << line_bits;
    lines + lines / LINES_PER_LATEST
}

/// log2 of the lines of a map of `entries` entries (`entries`), as the agent reads it back
/// from the map it maps.
#[must_use]
pub const fn line_bits_of_entries(entries: u32) -> u32 {
    (entries / (LINES_PER_LATEST + 1) * LINES_PER_LATEST).trailing_zeros()
}

/// The stamps' unit: 4 s, so that a byte spans 17 minutes and a minute is 16 units.
const UNIT_NS: u64 = 4_000_000_000;
/// Units a stamp stays recent: a FIN up to `TIME_WAIT_NS` ago is at most this many units
/// back, whatever its place within a unit (`ceil(62 / 4)`).
#[allow(clippy::cast_possible_truncation, reason = "16, checked below")]
const WINDOW_UNITS: u8 = TIME_WAIT_NS.div_ceil(UNIT_NS) as u8;
const _: () = assert!(WINDOW_UNITS as u64 == TIME_WAIT_NS.div_ceil(UNIT_NS) && WINDOW_UNITS < 128);
/// How far ahead of the reader's unit a stamp may be: FINs are stamped on the fine clock
/// (and the agent's seeding on `CLOCK_MONOTONIC`), cookie mode reads the coarse one, which
/// lags by up to a tick and so may still show the previous unit; and a stamp that would be
/// 0 is written as 1, one unit ahead.
const AHEAD_UNITS: u8 = 2;

/// One line of the filter: a cache line of stamps (`stamp`), 0 where nothing was stamped.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClosedLine {
    pub cells: [u8; LINE_CELLS],
}

const _: () = assert!(core::mem::size_of::<ClosedLine>() == 64);

#[cfg(feature = "user")]
// SAFETY: repr(C), integers only, no padding (size asserted above).
unsafe impl aya::Pod for ClosedLine {}

/// Where a flow's stamps go: its line, and its cells in it (`cells`); and where its line's
/// latest stamp is: the entry `latest`, cell `latest_cell` (`ClosedLine::latest_is_recent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClosedSpot {
    pub line: u32,
    first: u32,
    step: u32,
    pub latest: u32,
    latest_cell: u32,
}

impl ClosedSpot {
    /// The flow's cells: distinct, since the step is odd and `LINE_CELLS` a power of two.
    #[inline(always)]
    #[must_use]
    pub fn cells(&self) -> [usize; CELLS_PER_FLOW] {
        [0u32, 1, 2].map(|i| (self.first.wrapping_add(i * self.step) & CELL_MASK) as usize)
    }

    /// The filter's bytes a FIN of this flow writes, as (entry, cell): its line's latest
    /// stamp first, then its cells (the order `stamp_fin` writes them in). How every writer
    /// but the program stamps a FIN: the agent's mapping, the models, the bench.
    #[must_use]
    pub fn fin_bytes(&self) -> [(u32, usize); CELLS_PER_FLOW + 1] {
        let [a, b, c] = self.cells();
        [(self.latest, self.latest_cell as usize), (self.line, a), (self.line, b), (self.line, c)]
    }
}

/// The spot of a client's flow (client as source, this host as destination) in a filter of
/// `1 << line_bits` lines (`line_bits`).
#[inline(always)]
#[must_use]
pub fn spot(flow: &FlowKey, line_bits: u32) -> ClosedSpot {
    // The top `line_bits + 2 * CELL_BITS` bits of the flow's hash: the line from the top
    // `line_bits`, the cells' start and step from the bits below. The shift is masked, so
    // any `line_bits` gives a line below `1 << MAX_LINE_BITS`.
    let h = filter::flow_hash(flow, MAX_LINE_BITS + 2 * CELL_BITS)
        >> (MAX_LINE_BITS.wrapping_sub(line_bits) & 31);
    let line = h >> (2 * CELL_BITS);
    ClosedSpot {
        line,
        first: h & CELL_MASK,
        step: (h >> CELL_BITS & CELL_MASK) | 1,
        // After the `1 << line_bits` lines (the shift masked as above: any value gives an
        // entry, and one past the map is one the program's lookup does not find).
        latest: (1 << (line_bits & 31)) + (line >> CELL_BITS),
        latest_cell: line & CELL_MASK,
    }
}

/// The unit `now_ns` falls in, plus one, as a byte: wraps every 256 units.
#[inline(always)]
#[allow(clippy::cast_possible_truncation, reason = "units wrap by design")]
fn unit(now_ns: u64) -> u8 {
    ((now_ns / UNIT_NS) as u8).wrapping_add(1)
}

/// The value a FIN writes: its unit, never 0 (an unwritten cell).
#[inline(always)]
#[must_use]
pub fn stamp(now_ns: u64) -> u8 {
    unit(now_ns).max(1)
}

/// Whether a cell stamped `cell` may hold a FIN from the last `TIME_WAIT_NS` at `now_ns`.
#[inline(always)]
#[must_use]
pub fn is_recent(cell: u8, now_ns: u64) -> bool {
    let age = unit(now_ns).wrapping_sub(cell);
    cell != 0 && (age <= WINDOW_UNITS || age > u8::MAX - AHEAD_UNITS)
}

impl Default for ClosedLine {
    /// Nothing stamped.
    fn default() -> Self {
        Self::all(0)
    }
}

impl ClosedLine {
    /// Every cell stamped `stamp` (0: nothing stamped).
    #[must_use]
    pub const fn all(stamp: u8) -> Self {
        Self { cells: [stamp; LINE_CELLS] }
    }

    /// Writes a FIN's stamp into the flow's cells (`spot.line` must be this line).
    #[inline(always)]
    pub fn stamp_flow(&mut self, spot: &ClosedSpot, stamp: u8) {
        for cell in spot.cells() {
            self.cells[cell] = stamp;
        }
    }

    /// Writes a FIN's stamp as its line's latest (`spot.latest` must be this entry). Every
    /// FIN stamps both, its line's latest first (`stamp_fin`).
    #[inline(always)]
    pub fn stamp_latest(&mut self, spot: &ClosedSpot, stamp: u8) {
        self.cells[spot.latest_cell as usize] = stamp;
    }

    /// Whether the flow (`spot.line` is this line) may be in `TIME_WAIT` at `now_ns`: all
    /// of its cells recent. A flow whose FIN was stamped always is: nothing clears a cell,
    /// and later stamps are later times.
    #[inline(always)]
    #[must_use]
    pub fn may_be_time_wait(&self, spot: &ClosedSpot, now_ns: u64) -> bool {
        let [a, b, c] = spot.cells();
        is_recent(self.cells[a], now_ns)
            && is_recent(self.cells[b], now_ns)
            && is_recent(self.cells[c], now_ns)
    }

    /// Whether the flow's line (`spot.latest` is this entry) may hold a recent cell at
    /// `now_ns`: its latest stamp is recent. Whenever a cell of the line is, so is the
    /// latest stamp, written with it or after it (a later time; two CPUs' clocks a unit
    /// apart at most, which the window's margin absorbs as it does for the cells).
    #[inline(always)]
    #[must_use]
    pub fn latest_is_recent(&self, spot: &ClosedSpot, now_ns: u64) -> bool {
        is_recent(self.cells[spot.latest_cell as usize], now_ns)
    }
}

/// A FIN of the flow at `spot`, stamped `stamp`, into the filter whose entry `i` is
/// `entry(i)` (`None`: no such entry, nothing to write): its line's latest stamp, then
/// its cells. The latest first, so that a SYN that finds the cells stamped finds the
/// latest stamp too.
#[inline(always)]
pub fn stamp_fin<'a>(spot: &ClosedSpot, stamp: u8, mut entry: impl FnMut(u32) -> Option<&'a mut ClosedLine>) {
    if let Some(latest) = entry(spot.latest) {
        latest.stamp_latest(spot, stamp);
    }
    if let Some(line) = entry(spot.line) {
        line.stamp_flow(spot, stamp);
    }
}

/// Whether the flow at `spot` may be in `TIME_WAIT` at `now_ns`, in the filter whose entry
/// `i` is `entry(i)` (`None`: no such entry, which answers yes, the safe side): its line's
/// latest stamp first, and the line itself only if that is recent.
#[inline(always)]
#[must_use]
pub fn may_be_time_wait<'a>(
    spot: &ClosedSpot,
    now_ns: u64,
    entry: impl Fn(u32) -> Option<&'a ClosedLine>,
) -> bool {
    entry(spot.latest).is_none_or(|latest| latest.latest_is_recent(spot, now_ns))
        && entry(spot.line).is_none_or(|line| line.may_be_time_wait(spot, now_ns))
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, vec::Vec};

    use super::*;

    const SEC: u64 = 1_000_000_000;
    const T: u64 = 5_000 * SEC;
    /// How long a stamp may read as recent at most: the window and the unit it began in.
    const LONGEST: u64 = (WINDOW_UNITS as u64 + 1) * UNIT_NS;

    /// Flow `n`: a client in 198.18.0.0/15 (the lab's range) with a port, to
    /// 198.18.0.1:443; distinct for distinct `n` (17 bits of address, 15 of port).
    fn flow(n: u32) -> FlowKey {
        let [_, high, mid, low] = (0xc612_0000 | n >> 15).to_be_bytes();
        FlowKey {
            src: crate::parse::ipv4_mapped([198, high, mid, low]),
            dst: crate::parse::ipv4_mapped([198, 18, 0, 1]),
            src_port: 32_768 + u16::try_from(n & 0x7fff).unwrap(),
            dst_port: 443,
        }
    }

    /// A filter of `1 << .1` lines as a map of the lines written; unwritten lines are zeroed.
    struct Filter(HashMap<u32, ClosedLine>, u32);

    impl Default for Filter {
        fn default() -> Self {
            Self(HashMap::new(), DEFAULT_LINE_BITS)
        }
    }

    const UNWRITTEN: ClosedLine = ClosedLine::all(0);

    impl Filter {
        fn fin(&mut self, f: &FlowKey, now: u64) {
            for (entry, cell) in spot(f, self.1).fin_bytes() {
                self.0.entry(entry).or_default().cells[cell] = stamp(now);
            }
        }
        fn may_be_time_wait(&self, f: &FlowKey, now: u64) -> bool {
            may_be_time_wait(&spot(f, self.1), now, |i| Some(self.0.get(&i).unwrap_or(&UNWRITTEN)))
        }
    }

    #[test]
    fn a_flow_has_distinct_cells_in_a_line_of_the_filter() {
        for n in 0..10_000 {
            let at = spot(&flow(n), DEFAULT_LINE_BITS);
            assert!(at.line < CLOSED_FILTER_LINES);
            let [a, b, c] = at.cells();
            assert!(a != b && b != c && a != c, "flow {n}: {:?}", at.cells());
            assert!(at.cells().iter().all(|&x| x < LINE_CELLS));
        }
    }

    #[test]
    fn a_fin_marks_its_flow_for_the_time_wait_period() {
        let mut filter = Filter::default();
        assert!(!filter.may_be_time_wait(&flow(1), T), "nothing stamped");
        filter.fin(&flow(1), T);
        assert!(filter.may_be_time_wait(&flow(1), T));
        assert!(
            filter.may_be_time_wait(&flow(1), T + TIME_WAIT_NS),
            "all of TCP_TIMEWAIT_LEN and the margin"
        );
        assert!(!filter.may_be_time_wait(&flow(1), T + LONGEST + 1));
        assert!(!filter.may_be_time_wait(&flow(1), T + 3_600 * SEC));
        // Stamped on the fine clock just past a unit's start, read on the coarse clock a
        // tick behind it: still recent.
        let fine = T + 2 * UNIT_NS + 1_000;
        filter.fin(&flow(2), fine);
        assert!(filter.may_be_time_wait(&flow(2), fine - 4_000_000));
        // Early in boot the +1 keeps a real stamp apart from "never".
        assert!(is_recent(stamp(0), 5));
        assert!(!is_recent(0, 5));
    }

    #[test]
    fn a_fin_is_recent_for_the_whole_window_wherever_it_falls() {
        // FINs at every quarter second of two whole wraps (the wrap of the byte included),
        // read from a tick before to TIME_WAIT_NS after.
        let wrap = 256 * UNIT_NS;
        for q in 0..(2 * wrap / (SEC / 4)) {
            let fin = T + q * (SEC / 4);
            let cell = stamp(fin);
            assert_ne!(cell, 0, "0 is an unwritten cell");
            assert!(is_recent(cell, fin - 4_000_000), "FIN at {fin}, read a tick before");
            for after in (0..=TIME_WAIT_NS).step_by(250_000_000) {
                assert!(is_recent(cell, fin + after), "FIN at {fin}, read {after} ns later");
            }
        }
    }

    #[test]
    fn old_stamps_are_not_recent_for_most_of_a_wrap() {
        // A cell written once reads as recent again only within a window's worth of each
        // 17-minute wrap: a false alarm, never a forgotten FIN.
        let fin = stamp(T);
        let recent = (0..256u64).filter(|&u| is_recent(fin, T + u * UNIT_NS)).count();
        assert_eq!(recent, usize::from(WINDOW_UNITS) + 1 + usize::from(AHEAD_UNITS));
    }

    #[test]
    fn no_stamped_flow_is_forgotten_however_full_the_filter() {
        // 300,000 FINs over 60 s (5,000 a second, more than the kernel's default
        // tcp_max_tw_buckets holds): every one of them still reads as TIME_WAIT.
        let mut filter = Filter::default();
        let n = 300_000u32;
        for i in 0..n {
            filter.fin(&flow(i), T + u64::from(i) * 60 * SEC / u64::from(n));
        }
        let now = T + 60 * SEC;
        let forgotten: Vec<u32> = (0..n).filter(|&i| !filter.may_be_time_wait(&flow(i), now)).collect();
        assert!(forgotten.is_empty(), "{} flows forgotten, e.g. {:?}", forgotten.len(), &forgotten[..3]);
    }

    /// Of 100,000 flows that sent no FIN, the share the filter sends to the lookup after
    /// `closed` other flows' FINs within the window.
    fn false_alarms(closed: u32, line_bits: u32) -> f64 {
        let mut filter = Filter(HashMap::new(), line_bits);
        for i in 0..closed {
            filter.fin(&flow(i), T);
        }
        let others = 100_000u32;
        let alarms = (0..others).filter(|&i| filter.may_be_time_wait(&flow(10_000_000 + i), T + SEC)).count();
        f64::from(u32::try_from(alarms).unwrap()) / f64::from(others)
    }

    #[test]
    fn other_flows_rarely_cover_a_flows_cells() {
        // 1,000 and 4,000 closes a second over the 62 s window. A stamp per bucket sent
        // 1 - e^(-62 r / 65,536) of all SYNs to the lookup: 61 % and 98 %. (Measured 3.2 %
        // and 46 %; 3.5 % and 45 % with another set of flows.)
        let (calm, busy) =
            (false_alarms(62_000, DEFAULT_LINE_BITS), false_alarms(248_000, DEFAULT_LINE_BITS));
        std::eprintln!(
            "false alarms: {:.2} % at 62,000 closed flows, {:.2} % at 248,000",
            calm * 100.0,
            busy * 100.0
        );
        assert!(calm < 0.05, "62,000 closed flows: {:.2} % false alarms", calm * 100.0);
        assert!(busy < 0.5, "248,000 closed flows: {:.2} % false alarms", busy * 100.0);
    }

    #[test]
    fn a_larger_filter_cuts_a_busy_servers_false_alarms() {
        // 4,000 closes a second: each doubling of the lines (`maps.closed_filter_lines`)
        // sends fewer SYNs to the lookup. Figures in docs/cookies.md.
        let shares: Vec<f64> = (DEFAULT_LINE_BITS..=16).map(|bits| false_alarms(248_000, bits)).collect();
        std::eprintln!("false alarms at 248,000 closed flows, 8,192 to 65,536 lines: {shares:.4?}");
        assert!(shares.windows(2).all(|w| w[1] < w[0]), "{shares:?}");
        assert!(shares[3] < 0.05, "65,536 lines: {:.2} % false alarms", shares[3] * 100.0);
    }

    #[test]
    fn every_size_places_a_flow_inside_the_filter_and_a_config_picks_it() {
        let mut cfg = Config::new(100, 0, 1, 1);
        assert_eq!(lines(&cfg), CLOSED_FILTER_LINES, "0 is the default");
        for bits in MIN_LINE_BITS..=MAX_LINE_BITS {
            cfg.closed_filter_extra_bits = extra_bits(bits);
            assert_eq!(lines(&cfg), 1 << bits);
            let mut filter = Filter(HashMap::new(), bits);
            for n in 0..2_000 {
                assert!(spot(&flow(n), bits).line < lines(&cfg));
                // The same spot as from the top `bits + 12` bits of the hash, as every
                // filter placed flows before its size could be chosen: a pinned filter
                // adopted across an upgrade keeps its stamps where the new program looks.
                let h = filter::flow_hash(&flow(n), bits + 2 * CELL_BITS);
                let at = spot(&flow(n), bits);
                let before = (h >> (2 * CELL_BITS), h & CELL_MASK, (h >> CELL_BITS & CELL_MASK) | 1);
                assert_eq!((at.line, at.first, at.step), before, "{bits} bits, flow {n}");
                // Its line's latest stamp in the entries after the lines, inside the map.
                assert!(at.latest >= lines(&cfg) && at.latest < entries(bits), "{bits} bits, flow {n}");
                filter.fin(&flow(n), T);
            }
            assert!((0..2_000).all(|n| filter.may_be_time_wait(&flow(n), T + SEC)), "{bits} bits");
        }
        // A value no agent writes: the line still stays inside the hash.
        for extra in [i8::MIN, -14, -13, 8, i8::MAX] {
            cfg.closed_filter_extra_bits = extra;
            assert!((0..2_000).all(|n| spot(&flow(n), line_bits(&cfg)).line < 1 << MAX_LINE_BITS), "{extra}");
        }
    }

    #[test]
    fn each_line_has_its_own_latest_stamp_after_the_lines() {
        for bits in MIN_LINE_BITS..=MAX_LINE_BITS {
            let n = 1u32 << bits;
            assert_eq!(entries(bits), n + n / 64);
            assert_eq!(line_bits_of_entries(entries(bits)), bits);
        }
        // Every line of the default filter, by a flow placed there: one byte each, all of
        // them in the entries after the lines.
        let mut places = HashMap::new();
        for n in 0..400_000 {
            let at = spot(&flow(n), DEFAULT_LINE_BITS);
            let place = (at.latest, at.latest_cell);
            assert_eq!(*places.entry(at.line).or_insert(place), place, "one place per line");
        }
        let mut bytes: Vec<_> = places.values().copied().collect();
        bytes.sort_unstable();
        bytes.dedup();
        assert_eq!(bytes.len(), places.len(), "no two lines share a byte");
        assert!(bytes
            .iter()
            .all(|&(e, c)| (CLOSED_FILTER_LINES..entries(DEFAULT_LINE_BITS)).contains(&e) && c < 64));
    }

    #[test]
    fn a_flow_closed_within_the_window_is_found_through_its_lines_latest_stamp() {
        // FINs of random flows over 40 minutes (the stamps wrap every 17) into a small
        // filter, so lines are stamped over and over. Each is stamped on a clock up to 1 s
        // behind (another CPU's), so a line's latest stamp may be older than a cell an
        // earlier FIN wrote. After each, every flow closed within `TIME_WAIT_NS` (at the
        // check's time, up to the window's end) must still read as maybe in TIME_WAIT:
        // its line's latest stamp recent, and its cells.
        let mut filter = Filter(HashMap::new(), MIN_LINE_BITS);
        let mut closed: std::collections::VecDeque<(FlowKey, u64)> = std::collections::VecDeque::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut now = T;
        for _ in 0..6_000 {
            now += next() % (800 * 1_000_000);
            let f = flow(u32::try_from(next() >> 40).unwrap() % 3_000_000);
            filter.fin(&f, now - next() % SEC);
            closed.push_back((f, now));
            while closed.front().is_some_and(|&(_, t)| now - t > TIME_WAIT_NS) {
                closed.pop_front();
            }
            for &(f, t) in &closed {
                for at in [now, t + TIME_WAIT_NS] {
                    assert!(filter.may_be_time_wait(&f, at), "a flow closed at {t} forgotten at {at}");
                }
            }
        }
    }

    #[test]
    fn a_line_whose_latest_stamp_is_old_is_not_read() {
        let at = spot(&flow(7), DEFAULT_LINE_BITS);
        let full = ClosedLine::all(stamp(T));
        let old = ClosedLine::all(stamp(T - 5 * 60 * SEC));
        // The filter's entries with `latest` as the line's latest stamp, every read noted.
        let reads = core::cell::RefCell::new(Vec::new());
        let check = |latest: &ClosedLine| {
            reads.borrow_mut().clear();
            may_be_time_wait(&at, T, |i| {
                reads.borrow_mut().push(i);
                Some(if i == at.latest { latest } else { &full })
            })
        };
        // The latest stamp old, or none: the line is not read, whatever it holds.
        for latest in [&old, &UNWRITTEN] {
            assert!(!check(latest));
            assert_eq!(*reads.borrow(), [at.latest], "only the latest stamp read");
        }
        // Recent: the line decides.
        assert!(check(&full));
        assert_eq!(*reads.borrow(), [at.latest, at.line]);
        // A missing entry (a map smaller than the config says): the safe answer.
        assert!(may_be_time_wait(&at, T, |_| None));
        assert!(may_be_time_wait(&at, T, |i| (i == at.latest).then_some(&full)));
    }

    #[test]
    fn a_fully_stamped_line_holds_every_flow_that_hashes_there() {
        let mut filter = Filter::default();
        let at = spot(&flow(7), DEFAULT_LINE_BITS);
        filter.0.insert(at.line, ClosedLine::all(stamp(T)));
        filter.0.insert(at.latest, ClosedLine::all(stamp(T)));
        assert!(filter.may_be_time_wait(&flow(7), T + 30 * SEC));
        assert!(!filter.may_be_time_wait(&flow(7), T + LONGEST + 1));
    }
}
