//! A count-min sketch of SYNs per source: it finds a real source that floods without
//! inserting an entry for every spoofed one, so memory and cost per SYN stay flat however
//! many distinct sources a flood uses. Cookie mode blocks the sources it estimates over
//! the SYN-rate limit, counting a light source in the first row only (`cascade`);
//! tracking gives exact state only to the sources it estimates over
//! `track::promotion_threshold`.
//!
//! `SKETCH_ROWS` rows of `Config::sketch_width` cells in one array map of u64 words
//! (`words`). A later row's cell is a word: the high half is the epoch (about one second)
//! it counts for, the low half the count, so stale cells reset themselves on their first
//! touch in a new epoch and nothing has to sweep the array. The estimate for a source is
//! the minimum over its cells: never below the true count, above it only by collisions.
//!
//! The first row, which every SYN reads, is packed four cells to a word (`FirstCell`, 16
//! bits: the epoch's low bits and a count that stops at its maximum), so that it is a
//! quarter of the memory: 32 KiB at the default width, against 128 KiB as words. Its read
//! was the costliest instruction of an answered SYN, a cache miss (docs/hotpaths.md); a
//! quarter of the lines stay in the cache far better, under a flood that touches all of
//! them. The same columns as before: only where a first-row count is stored changed.

use crate::{config::Config, state::SourceKey, words};

pub const SKETCH_ROWS: u32 = 4;

/// Epochs of 2^30 ns (about 1.07 s): the window the SYN-rate limit is compared against.
pub const EPOCH_SHIFT: u32 = 30;

#[inline(always)]
#[must_use]
#[allow(clippy::cast_possible_truncation, reason = "epochs wrap by design")]
pub fn epoch(now_ns: u64) -> u32 {
    (now_ns >> EPOCH_SHIFT) as u32
}

/// A source's cells, one per row, from one keyed hash of its address (double hashing):
/// row `r` uses column `(h1 + r·h2) mod width`, with `h2` odd.
///
/// Why this keeps count-min's guarantees up to constants: the error bound of a row needs
/// only that two different sources share that row's cell with probability about
/// 1/width, and `h1 + r·h2` is a uniform column for each `r` when `h1` is. Independence
/// across rows is what the bound's "in every row at once" step uses, and double hashing
/// weakens it by a constant only: with a power-of-two width and `h2` odd, two sources that
/// differ in `h1` or `h2` share at most two of the four rows (a shared row pins `h1`'s
/// difference to `r` times `h2`'s, and an even `h2` difference allows one more row only
/// when it is `width/2`), so all four rows collide only when both `h1` and `h2` do:
/// probability 2/width² per pair instead of 1/width⁴, which for the default width (16384)
/// is still one pair in 2^27. Kirsch and Mitzenmacher ("Less hashing, same performance",
/// 2006) show the same for Bloom filters: two hash functions driving k probes keep the
/// false-positive rate of k independent ones asymptotically.
///
/// What the seed buys: `words::keyed_hash` is strongly universal over its keys, so which
/// sources share cells is a property of the seed, not of the addresses. A flood cannot be
/// built offline to land on a given source's four cells; without the seed an attacker
/// only learns collisions by probing the detector, one block decision at a time.
///
/// `h1` is the low bits of the hash's top half and `h2` the bits 16 above them (rotated),
/// so up to a width of 2^16 the two come from disjoint bits; wider, they share bits and
/// all four rows collide only when the whole top half does (2^-32 per pair).
#[derive(Clone, Copy)]
pub struct Rows {
    at: u32,
    step: u32,
    base: u32,
    width: u32,
}

impl Rows {
    #[inline(always)]
    #[must_use]
    #[allow(clippy::cast_possible_truncation, reason = "the top half of the hash")]
    pub fn new(key: &SourceKey, cfg: &Config) -> Self {
        let h =
            (words::keyed_hash(words::address_words(&key.addr), &words::keys(cfg.sketch_seed)) >> 32) as u32;
        Self { at: h, step: h.rotate_right(16) | 1, base: 0, width: cfg.sketch_width }
    }

    /// The current row's cell as a flat index, `row * width + column` (`place` says where
    /// the map stores it); moves on to the next row.
    #[inline(always)]
    pub fn next_cell(&mut self) -> u32 {
        let cell = self.base + (self.at & (self.width - 1));
        self.at = self.at.wrapping_add(self.step);
        self.base += self.width;
        cell
    }
}

/// All of `key`'s cells, row by row, as flat indices (`Rows::next_cell`): for code that is
/// not on the packet path (the agent's offline model, tests), where walking `Rows` by hand
/// buys nothing.
#[must_use]
pub fn cells(key: &SourceKey, cfg: &Config) -> [u32; SKETCH_ROWS as usize] {
    let mut rows = Rows::new(key, cfg);
    [0; SKETCH_ROWS as usize].map(|_| rows.next_cell())
}

/// Where the first row's cells are: `FIRST_LANES` to a word, at the start of the map.
pub const FIRST_LANES: u32 = 4;

/// The map's words for rows of `width` cells: the first row packed (`FIRST_LANES` cells a
/// word), then the later rows, a word a cell. What the agent makes `SKETCH`.
#[must_use]
pub const fn words(width: u32) -> u32 {
    width / FIRST_LANES + (SKETCH_ROWS - 1) * width
}

/// Where the sketch stores a cell (a flat index `row * width + column`, as `Rows` and
/// `cells` give it): the first row's as a word and a lane (16 bits from the word's low
/// end, lane 0 lowest), a later row's as a word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Place {
    First { word: u32, lane: u32 },
    Later(u32),
}

/// `Place` of the cell at flat index `cell` in rows of `width` cells.
#[inline(always)]
#[must_use]
pub const fn place(cell: u32, width: u32) -> Place {
    if cell < width {
        let (word, lane) = first_place(cell);
        Place::First { word, lane }
    } else {
        Place::Later(later_word(cell, width))
    }
}

/// The word and lane of the first row's cell in column `column`.
#[inline(always)]
const fn first_place(column: u32) -> (u32, u32) {
    (column / FIRST_LANES, column % FIRST_LANES)
}

/// The word of a later row's cell at flat index `cell` (at least `width`): the later rows
/// start right after the packed first row.
#[inline(always)]
const fn later_word(cell: u32, width: u32) -> u32 {
    cell - width + width / FIRST_LANES
}

/// A first-row cell: the epoch's low `FIRST_TAG_BITS` bits above a `FIRST_COUNT_BITS`-bit
/// count.
///
/// - The count stops at its maximum, and a stopped cell reports `UNCOUNTED`, more than it
///   can count: such a source is hot (`is_hot`) whatever the mark, and its estimate comes
///   from the later rows (`cascade`). Never below the true count.
/// - The tag tells this epoch from the last fifteen: a cell last counted sixteen epochs
///   ago (about 17 s) or a multiple of that reads as this epoch's and is counted on. That
///   can only add to a count, as a collision does: the estimate stays at or above the true
///   count, and the cascade bounds what it costs a light source the same way (the later
///   rows decide once the first is hot).
pub type FirstCell = u16;
const FIRST_COUNT_BITS: u32 = 12;
const FIRST_TAG_BITS: u32 = 16 - FIRST_COUNT_BITS;
const FIRST_COUNT_MAX: u16 = (1 << FIRST_COUNT_BITS) - 1;
/// What a first-row cell whose count stopped reports.
pub const UNCOUNTED: u32 = u32::MAX;

/// The first-row cell's tag for `epoch`.
#[inline(always)]
#[allow(clippy::cast_possible_truncation, reason = "the low FIRST_TAG_BITS bits")]
const fn first_tag(epoch: u32) -> u16 {
    (epoch & ((1 << FIRST_TAG_BITS) - 1)) as u16
}

/// Counts one SYN in a first-row `cell` for `epoch`; returns its count after it, or
/// `UNCOUNTED` once the count has stopped.
#[inline(always)]
pub fn bump_first(cell: &mut FirstCell, epoch: u32) -> u32 {
    let tag = first_tag(epoch);
    let count = if *cell >> FIRST_COUNT_BITS == tag { (*cell & FIRST_COUNT_MAX) + 1 } else { 1 };
    let count = count.min(FIRST_COUNT_MAX);
    *cell = tag << FIRST_COUNT_BITS | count;
    if count == FIRST_COUNT_MAX {
        UNCOUNTED
    } else {
        u32::from(count)
    }
}

/// A first-row cell's count in `epoch` (0 when its tag is another epoch's), `UNCOUNTED`
/// once stopped: for code that reads the sketch (tests, the bench).
#[must_use]
pub fn first_count(cell: FirstCell, epoch: u32) -> u32 {
    match (cell >> FIRST_COUNT_BITS == first_tag(epoch), cell & FIRST_COUNT_MAX) {
        (false, _) => 0,
        (true, FIRST_COUNT_MAX) => UNCOUNTED,
        (true, count) => u32::from(count),
    }
}

/// Lane `lane` of a map word, as the program sees it through a `u16` pointer on the
/// little-endian machines BPF runs on (x86-64, arm64): bits `16 * lane` and up.
#[must_use]
#[allow(clippy::cast_possible_truncation, reason = "one 16-bit lane")]
pub const fn lane(word: u64, lane: u32) -> FirstCell {
    (word >> (16 * lane)) as u16
}

/// `word` with lane `lane` set to `cell`.
#[must_use]
pub const fn with_lane(word: u64, lane: u32, cell: FirstCell) -> u64 {
    word & !(0xffff << (16 * lane)) | (cell as u64) << (16 * lane)
}

/// Counts one SYN in a later row's `cell` for `epoch`; returns the cell's count after it.
/// Not saturating:
/// the count would carry into the epoch only after 2^32 SYNs in one cell within one epoch
/// (about a second), four billion packets a second.
#[inline(always)]
#[allow(clippy::cast_possible_truncation, reason = "the low half is the count")]
pub fn bump(cell: &mut u64, epoch: u32) -> u32 {
    let fresh = u64::from(epoch) << 32;
    let next = if *cell & !0xffff_ffff == fresh { *cell + 1 } else { fresh | 1 };
    *cell = next;
    next as u32
}

/// The hot mark for a config whose lowest SYN-rate limit in force (the config's own and
/// every port's; 0 = none) is `lowest_limit`: half of it. Cookie mode counts a source in
/// the rows past the first only once its first-row cell holds more SYNs than this in the
/// epoch (`cascade`); 0 counts every SYN in every row.
///
/// Why half: the cascade's estimate exceeds count-min's by at most the mark, and only for a
/// source whose first-row cell is hot. A light source that shares that cell with a heavy
/// one is then estimated at most the mark plus what the later rows hold for it, so with
/// half the limit it needs half the limit again from collisions in every later row to be
/// blocked, where count-min needs the whole limit from collisions in every row.
#[inline(always)]
#[must_use]
pub const fn hot_mark(lowest_limit: u32) -> u32 {
    lowest_limit / 2
}

/// Whether a SYN whose first-row count (after its bump) is `first` is also counted in the
/// later rows, under `hot_mark`.
#[inline(always)]
#[must_use]
pub const fn is_hot(first: u32, hot_mark: u32) -> bool {
    first > hot_mark
}

/// The cascade's estimate for a hot SYN: `first` its first-row count, `rest` the least of
/// its later rows' counts (both after the bumps).
///
/// Never below the source's true count `c` in the epoch, like count-min's: the first-row
/// cell counts every one of the source's SYNs, so it is past the mark from the source's
/// own SYN `mark + 1` on at the latest, and each of those `c - mark` SYNs (or more) was
/// counted in every later row. So `first >= c` and `mark + rest >= c`. Above the true
/// count only by collisions, as count-min, plus up to the mark in the second term.
/// A SYN that is not hot is estimated at `first` (at most the mark, under every limit).
#[inline(always)]
#[must_use]
pub const fn cascade(first: u32, rest: u32, hot_mark: u32) -> u32 {
    let later = hot_mark.saturating_add(rest);
    if first < later {
        first
    } else {
        later
    }
}

/// Counts one more SYN of `key` and returns the source's estimate: the first row always,
/// the later rows once hot (`cascade`). `bump_first(word, lane)` counts the SYN in that
/// first-row cell (`bump_first`), `bump_at(word)` in that later row's word (`bump`); each
/// returns the cell's count, or `None` when there is no such word (then the answer is
/// `None` too). The program's `track::sketch_estimate` passes map words, the agent's
/// offline model and the tests a slice (`count_syn`): one walk of the rows for all.
#[inline(always)]
pub fn count_syn_with(
    key: &SourceKey,
    cfg: &Config,
    hot_mark: u32,
    bump_first: impl FnOnce(u32, u32) -> Option<u32>,
    mut bump_at: impl FnMut(u32) -> Option<u32>,
) -> Option<u32> {
    let mut rows = Rows::new(key, cfg);
    let (word, lane) = first_place(rows.next_cell());
    let first = bump_first(word, lane)?;
    if !is_hot(first, hot_mark) {
        return Some(first);
    }
    let mut rest = u32::MAX;
    for _ in 1..SKETCH_ROWS {
        rest = rest.min(bump_at(later_word(rows.next_cell(), cfg.sketch_width))?);
    }
    Some(cascade(first, rest, hot_mark))
}

/// `count_syn_with` over the map's `words` (`words(width)` of them) in `epoch`, for code
/// that is not on the packet path. Panics when a cell is outside `words` (a width that
/// disagrees with the slice).
#[must_use]
pub fn count_syn(words: &mut [u64], key: &SourceKey, cfg: &Config, epoch: u32, hot_mark: u32) -> u32 {
    // Both closures write the slice; they run one after the other.
    let words = core::cell::RefCell::new(words);
    count_syn_with(
        key,
        cfg,
        hot_mark,
        |word, at| {
            let mut words = words.borrow_mut();
            let slot = words.get_mut(word as usize)?;
            let mut cell = lane(*slot, at);
            let count = bump_first(&mut cell, epoch);
            *slot = with_lane(*slot, at, cell);
            Some(count)
        },
        |word| words.borrow_mut().get_mut(word as usize).map(|w| bump(w, epoch)),
    )
    .expect("every cell inside the sketch")
}

/// `key`'s counts row by row in the map's `words`, for code that reads the sketch (tests,
/// the bench): those of `epoch` (0 for a cell of another), or with `None` whatever epoch
/// each cell counts for (a test whose SYNs may straddle an epoch's end). `None` when a
/// cell is outside `words`.
#[must_use]
pub fn counts(
    words: &[u64],
    key: &SourceKey,
    cfg: &Config,
    epoch: Option<u32>,
) -> Option<[u32; SKETCH_ROWS as usize]> {
    let mut out = [0; SKETCH_ROWS as usize];
    for (count, cell) in out.iter_mut().zip(cells(key, cfg)) {
        *count = match place(cell, cfg.sketch_width) {
            Place::First { word, lane: at } => {
                let cell = lane(*words.get(word as usize)?, at);
                // Read as of the cell's own tag when any epoch will do.
                first_count(cell, epoch.unwrap_or(u32::from(cell >> FIRST_COUNT_BITS)))
            }
            Place::Later(word) => {
                let w = *words.get(word as usize)?;
                #[allow(clippy::cast_possible_truncation, reason = "the low half is the count")]
                if epoch.is_none_or(|e| w >> 32 == u64::from(e)) {
                    w as u32
                } else {
                    0
                }
            }
        };
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    fn cfg() -> Config {
        let mut c = Config::new(100, 0, 1, 3_000_000_000);
        c.sketch_width = 1024;
        c.sketch_seed = 0x5eed;
        c
    }

    fn key(i: u32) -> SourceKey {
        let mut addr = [0u8; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..].copy_from_slice(&(0xc612_0000 | (i & 0xffff)).to_be_bytes());
        SourceKey { addr }
    }

    /// Feeds `syns` per source into a sketch and returns each source's estimate.
    fn estimates(c: &Config, syns: &[(SourceKey, u32)]) -> std::vec::Vec<u32> {
        let mut cells = vec![0u64; (SKETCH_ROWS * c.sketch_width) as usize];
        let mut last = vec![u32::MAX; syns.len()];
        for (i, (k, n)) in syns.iter().enumerate() {
            for _ in 0..*n {
                let mut est = u32::MAX;
                let mut rows = Rows::new(k, c);
                for _ in 0..SKETCH_ROWS {
                    est = est.min(bump(&mut cells[rows.next_cell() as usize], 7));
                }
                last[i] = est;
            }
        }
        last
    }

    #[test]
    fn a_heavy_hitter_stands_out_among_many_light_sources() {
        let c = cfg();
        let mut syns: std::vec::Vec<_> = (0..20_000).map(|i| (key(i), 1)).collect();
        syns.push((key(60_000), 500));
        let est = estimates(&c, &syns);
        assert!(est[20_000] >= 500, "never underestimates");
        let light_over = est[..20_000].iter().filter(|&&e| e > 100).count();
        assert_eq!(light_over, 0, "no light source estimated over the limit");
    }

    #[test]
    fn a_first_row_cell_counts_resets_and_stops() {
        let mut cell: FirstCell = 0;
        assert_eq!(bump_first(&mut cell, 5), 1);
        assert_eq!(bump_first(&mut cell, 5), 2);
        assert_eq!(first_count(cell, 5), 2);
        assert_eq!(first_count(cell, 6), 0, "another epoch's count reads as none");
        assert_eq!(bump_first(&mut cell, 6), 1, "a new epoch starts over");
        for n in 2..4_095 {
            assert_eq!(bump_first(&mut cell, 6), n);
        }
        // At the count's maximum the cell stops and says it cannot count.
        assert_eq!(bump_first(&mut cell, 6), UNCOUNTED);
        assert_eq!(bump_first(&mut cell, 6), UNCOUNTED);
        assert_eq!(first_count(cell, 6), UNCOUNTED);
        assert!(is_hot(UNCOUNTED, u32::MAX - 1) && cascade(UNCOUNTED, 7, 3) == 10);
        // Sixteen epochs on, the tag repeats: counted on (only ever more, never less).
        assert_eq!(bump_first(&mut cell, 7), 1);
        assert_eq!(bump_first(&mut cell, 7 + 16), 2);
    }

    #[test]
    fn every_cell_has_its_own_place_inside_the_map() {
        for width in [1024, 16_384] {
            let mut places = std::collections::BTreeSet::new();
            for cell in 0..SKETCH_ROWS * width {
                let at = place(cell, width);
                match at {
                    Place::First { word, lane } => assert!(cell < width && word < width / 4 && lane < 4),
                    Place::Later(word) => assert!(cell >= width && (width / 4..words(width)).contains(&word)),
                }
                assert!(places.insert(at), "cell {cell} shares {at:?}");
            }
            assert_eq!(places.len(), (SKETCH_ROWS * width) as usize);
        }
        let word = with_lane(with_lane(0, 1, 0xabcd), 3, 0x1234);
        assert_eq!((lane(word, 0), lane(word, 1), lane(word, 2), lane(word, 3)), (0, 0xabcd, 0, 0x1234));
    }

    #[test]
    fn cells_reset_in_a_new_epoch() {
        let mut cell = 0;
        assert_eq!(bump(&mut cell, 1), 1);
        assert_eq!(bump(&mut cell, 1), 2);
        assert_eq!(bump(&mut cell, 2), 1);
    }

    /// A random-looking address (splitmix64 over `i`), IPv6 so all four words vary.
    fn random_key(i: u64) -> SourceKey {
        let mix = |mut z: u64| {
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let mut addr = [0u8; 16];
        addr[..8].copy_from_slice(&mix(2 * i + 1).to_le_bytes());
        addr[8..].copy_from_slice(&mix(2 * i + 2).to_le_bytes());
        SourceKey { addr }
    }

    #[test]
    fn rows_stay_in_bounds_and_differ() {
        let c = cfg();
        for i in 0..10_000 {
            let cells = cells(&key(i), &c);
            for (r, cell) in (0..SKETCH_ROWS).zip(cells) {
                assert!((r * c.sketch_width..(r + 1) * c.sketch_width).contains(&cell), "row {r}: {cell}");
            }
        }
    }

    #[test]
    fn the_estimate_never_undercounts() {
        // A narrow sketch, so collisions are frequent, and uneven counts per source.
        let mut c = cfg();
        c.sketch_width = 256;
        let syns: std::vec::Vec<_> = (0..3_000u32).map(|i| (random_key(u64::from(i)), 1 + i % 7)).collect();
        let est = estimates(&c, &syns);
        let mut over = 0;
        for ((_, n), e) in syns.iter().zip(&est) {
            assert!(e >= n, "estimate {e} under the true count {n}");
            over += usize::from(e > n);
        }
        assert!(over > 0, "3000 sources in 256 columns must collide somewhere");
    }

    /// How many pairs of equal elements `v` holds.
    fn equal_pairs<T: Ord>(v: &mut [T]) -> u64 {
        v.sort_unstable();
        let mut total = 0u64;
        let mut run = 1u64;
        for i in 1..=v.len() {
            if i < v.len() && v[i] == v[i - 1] {
                run += 1;
            } else {
                total += run * (run - 1) / 2;
                run = 1;
            }
        }
        total
    }

    /// Pairs of sources that share their cell in all four rows, and in row 0 alone, among
    /// `n` random addresses: sorting the cell tuples finds them without n² comparisons.
    fn collisions(c: &Config, n: u64) -> (u64, u64) {
        let mut all: std::vec::Vec<_> = (0..n).map(|i| cells(&random_key(i), c)).collect();
        let mut first: std::vec::Vec<_> = all.iter().map(|cells| cells[0]).collect();
        (equal_pairs(&mut all), equal_pairs(&mut first))
    }

    #[test]
    fn rows_collide_together_as_rarely_as_double_hashing_predicts() {
        // Width 1024 and 200,000 sources: about 2·10^10 pairs. One row alone collides with
        // probability 1/1024 (1.95·10^7 pairs expected); all four rows with 2/1024² (double
        // hashing: h1 and h2 both equal), 3.8·10^4 pairs. Independent rows would give
        // 1/1024⁴ (none); a scheme whose rows moved together would give as many as row 0.
        let mut c = cfg();
        c.sketch_width = 1024;
        let n = 200_000u64;
        let pairs = n * (n - 1) / 2;
        let (all, one) = collisions(&c, n);
        #[allow(clippy::cast_precision_loss, reason = "ratios of counts")]
        let (one_ratio, all_ratio) =
            (one as f64 / (pairs as f64 / 1024.0), all as f64 / (pairs as f64 * 2.0 / (1024.0 * 1024.0)));
        assert!((0.95..1.05).contains(&one_ratio), "row 0: {one} pairs, {one_ratio:.3} of 1/width");
        assert!((0.9..1.1).contains(&all_ratio), "all rows: {all} pairs, {all_ratio:.3} of 2/width²");
    }

    #[test]
    fn another_seed_gives_other_cells() {
        let c = cfg();
        let mut other = c;
        other.sketch_seed ^= 1;
        let moved = (0..10_000).filter(|&i| cells(&key(i), &c)[0] != cells(&key(i), &other)[0]).count();
        // A cell stays by chance with probability 1/1024.
        assert!(moved > 9_950, "only {moved} of 10,000 sources moved to another cell");
        // Which sources share a cell changes too, not just where the cells are: a seed
        // that only shifted every column would keep every collision.
        let shared = |c: &Config| {
            let cells: std::vec::Vec<_> = (0..2_000).map(|i| cells(&key(i), c)[0]).collect();
            let mut pairs = std::collections::BTreeSet::new();
            for i in 0..cells.len() {
                for j in i + 1..cells.len() {
                    if cells[i] == cells[j] {
                        pairs.insert((i, j));
                    }
                }
            }
            pairs
        };
        let (a, b) = (shared(&c), shared(&other));
        assert!(a.len() > 1_000 && b.len() > 1_000, "2,000 sources in 1,024 columns collide often");
        let kept = a.intersection(&b).count();
        assert!(
            kept * 50 < a.len(),
            "{kept} of {} colliding pairs collide under the other seed too",
            a.len()
        );
    }
}
