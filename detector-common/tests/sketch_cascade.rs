//! The sketch's cascade (`sketch::cascade`, `sketch::count_syn`): the first row counts every
//! SYN, the later rows only those past the hot mark. Checked against count-min itself: the
//! same guarantee (never below the true count), the same answer with mark 0, one row
//! touched per light source, and few more false blocks among light sources beside heavy
//! ones.

use detector_common::{
    config::Config,
    sketch::{self, SKETCH_ROWS},
    state::SourceKey,
};

const EPOCH: u32 = 7;

fn cfg(width: u32) -> Config {
    let mut c = Config::new(100, 0, 1, 3_000_000_000);
    c.sketch_width = width;
    c.sketch_seed = 0x5eed;
    c
}

/// A random-looking IPv6 address (splitmix64 over `i`).
fn key(i: u64) -> SourceKey {
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut addr = [0u8; 16];
    addr[..2].copy_from_slice(&[0x20, 0x01]);
    addr[2..8].copy_from_slice(&mix(2 * i + 1).to_le_bytes()[..6]);
    addr[8..].copy_from_slice(&mix(2 * i + 2).to_le_bytes());
    SourceKey { addr }
}

/// Count-min as tracking counts it: every row, the least of them, a u64 word per cell
/// (`cells` is `SKETCH_ROWS * width` words, unpacked).
fn count_min(cells: &mut [u64], key: &SourceKey, c: &Config) -> u32 {
    sketch::cells(key, c).iter().map(|&cell| sketch::bump(&mut cells[cell as usize], EPOCH)).min().unwrap()
}

/// The cascade over unpacked rows, a u64 word per cell: what `count_syn` computed before
/// the first row was packed.
fn unpacked_cascade(cells: &mut [u64], key: &SourceKey, c: &Config, mark: u32) -> u32 {
    let [first, later @ ..] = sketch::cells(key, c);
    let first = sketch::bump(&mut cells[first as usize], EPOCH);
    if !sketch::is_hot(first, mark) {
        return first;
    }
    let rest = later.iter().map(|&cell| sketch::bump(&mut cells[cell as usize], EPOCH)).min().unwrap();
    sketch::cascade(first, rest, mark)
}

/// SYNs of `counts.len()` sources, `counts[i]` each, interleaved in a fixed pseudo-random
/// order (a source's SYNs spread over the whole run, as in a flood).
fn interleaved(counts: &[u32]) -> Vec<usize> {
    let mut order: Vec<usize> =
        counts.iter().enumerate().flat_map(|(i, &n)| std::iter::repeat_n(i, n as usize)).collect();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for i in (1..order.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        #[allow(clippy::cast_possible_truncation, reason = "an index below the length")]
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    order
}

/// Each source's last estimate, and whether every estimate along the way was at least the
/// source's count so far. With a mark, by `count_syn` on the map's layout (`sketch::words`);
/// without, count-min on unpacked rows.
fn run(c: &Config, counts: &[u32], mark: Option<u32>) -> (Vec<u32>, bool) {
    let keys: Vec<SourceKey> = (0..counts.len() as u64).map(key).collect();
    let mut words = vec![0u64; sketch::words(c.sketch_width) as usize];
    let mut cells = vec![0u64; (SKETCH_ROWS * c.sketch_width) as usize];
    let mut seen = vec![0u32; counts.len()];
    let mut last = vec![0u32; counts.len()];
    let mut never_under = true;
    for i in interleaved(counts) {
        seen[i] += 1;
        last[i] = match mark {
            Some(mark) => sketch::count_syn(&mut words, &keys[i], c, EPOCH, mark),
            None => count_min(&mut cells, &keys[i], c),
        };
        never_under &= last[i] >= seen[i];
    }
    (last, never_under)
}

#[test]
fn the_cascade_never_undercounts() {
    // A narrow sketch, so collisions are frequent, and counts from 1 to 60 per source, and
    // two sources past what a first-row cell counts (4,094): their cells stop, and the
    // later rows count for them.
    let c = cfg(256);
    let mut counts: Vec<u32> = (0..3_000u32).map(|i| 1 + (i * 7) % 60).collect();
    counts.extend([5_000, 9_000]);
    for mark in [0, 1, 5, 20, 50, 5_000] {
        let (estimates, never_under) = run(&c, &counts, Some(mark));
        assert!(never_under, "mark {mark}: an estimate fell under its source's count");
        assert!(estimates[3_000] >= 5_000 && estimates[3_001] >= 9_000);
    }
}

#[test]
fn the_packed_first_row_counts_as_a_word_per_cell_did() {
    // The same SYNs through the map's layout and through unpacked rows: the same estimate
    // for every SYN, at every mark, while no first-row cell reaches its maximum.
    let c = cfg(256);
    let counts: Vec<u32> = (0..3_000u32).map(|i| 1 + (i * 7) % 60).collect();
    let keys: Vec<SourceKey> = (0..counts.len() as u64).map(key).collect();
    for mark in [0, 5, 50] {
        let mut words = vec![0u64; sketch::words(c.sketch_width) as usize];
        let mut cells = vec![0u64; (SKETCH_ROWS * c.sketch_width) as usize];
        for i in interleaved(&counts) {
            assert_eq!(
                sketch::count_syn(&mut words, &keys[i], &c, EPOCH, mark),
                unpacked_cascade(&mut cells, &keys[i], &c, mark),
                "mark {mark}, source {i}"
            );
        }
        for k in &keys {
            let unpacked =
                sketch::cells(k, &c).map(|cell| u32::try_from(cells[cell as usize] & 0xffff_ffff).unwrap());
            let rows = sketch::counts(&words, k, &c, Some(EPOCH)).unwrap();
            assert_eq!(rows[0], unpacked[0], "the first row's count read back");
            assert_eq!(rows[1..], unpacked[1..]);
        }
    }
}

#[test]
fn with_mark_0_the_cascade_is_count_min() {
    let c = cfg(256);
    let counts: Vec<u32> = (0..2_000u32).map(|i| 1 + i % 13).collect();
    assert_eq!(run(&c, &counts, Some(0)).0, run(&c, &counts, None).0);
}

#[test]
fn a_source_alone_is_counted_exactly_and_light_ones_in_the_first_row_only() {
    let c = cfg(16_384);
    let mut cells = vec![0u64; sketch::words(c.sketch_width) as usize];
    let heavy = key(1);
    // Alone in its cells: exact, below the mark and past it.
    for n in 1..=300 {
        assert_eq!(sketch::count_syn(&mut cells, &heavy, &c, EPOCH, 50), n);
    }
    let first_row_words = (c.sketch_width / sketch::FIRST_LANES) as usize;
    let later = |cells: &[u64]| cells[first_row_words..].iter().filter(|&&v| v != 0).count();
    assert_eq!(later(&cells), 3, "the heavy source in each later row");
    // 5,000 light sources of 10 SYNs each under a mark of 50: nothing in the later rows
    // but the heavy source's cells.
    for i in 2..5_002 {
        for _ in 0..10 {
            let _ = sketch::count_syn(&mut cells, &key(i), &c, EPOCH, 50);
        }
    }
    assert_eq!(later(&cells), 3, "light sources touch the first row only");
}

/// Light sources beside heavy hitters: how many light ones each scheme puts over the limit
/// (false blocks), at loads of a third to three quarters of the limit per cell (at the
/// latter, most first-row cells are past the mark). The cascade's estimate may exceed count-min's by the mark
/// where a light source shares a hot first-row cell, so it may block a few more; half the
/// limit as the mark keeps that small.
#[test]
fn light_sources_beside_heavy_ones_are_rarely_put_over_the_limit() {
    let c = cfg(1_024);
    let limit = 100;
    for (light, per_light) in [(5_000u32, 8u32), (12_000, 8), (15_000, 8)] {
        // 40 heavy hitters of 300 SYNs, light sources of 1 to `per_light`.
        let counts: Vec<u32> =
            (0..40 + light).map(|i| if i < 40 { 300 } else { 1 + i % per_light }).collect();
        let per_cell = counts.iter().sum::<u32>() / c.sketch_width;
        let (cm, _) = run(&c, &counts, None);
        let (cascade, never_under) = run(&c, &counts, Some(sketch::hot_mark(limit)));
        assert!(never_under);
        let over = |est: &[u32]| est[40..].iter().filter(|&&e| e > limit).count();
        let (cm_over, cascade_over) = (over(&cm), over(&cascade));
        println!(
            "{per_cell} SYNs a cell: light sources over the limit of {limit}: count-min {cm_over}, cascade \
             {cascade_over} of {light}"
        );
        assert!(cm[..40].iter().chain(&cascade[..40]).all(|&e| e >= 300), "every heavy hitter over");
        assert!(
            cascade_over <= cm_over + light as usize / 1_000,
            "cascade {cascade_over} against count-min {cm_over} of {light}"
        );
    }
}
