//! A count-min sketch of SYNs per source: it finds a real source that floods without
//! inserting an entry for every spoofed one, so memory and cost per SYN stay flat however
//! many distinct sources a flood uses. Cookie mode blocks the sources it estimates over
//! the SYN-rate limit; tracking gives exact state only to the sources it estimates over
//! `track::promotion_threshold`.
//!
//! `SKETCH_ROWS` rows of `Config::sketch_width` cells in one array map. A cell is a u64:
//! the high half is the epoch (about one second) it counts for, the low half the count,
//! so stale cells reset themselves on their first touch in a new epoch and nothing has to
//! sweep the array. The estimate for a source is the minimum over its cells: never below
//! the true count, above it only by collisions.

use crate::{config::Config, state::SourceKey};

pub const SKETCH_ROWS: u32 = 4;

/// Epochs of 2^30 ns (about 1.07 s): the window the SYN-rate limit is compared against.
pub const EPOCH_SHIFT: u32 = 30;

#[inline(always)]
#[must_use]
#[allow(clippy::cast_possible_truncation, reason = "epochs wrap by design")]
pub fn epoch(now_ns: u64) -> u32 {
    (now_ns >> EPOCH_SHIFT) as u32
}

/// The flat array index of `key`'s cell in `row`.
#[inline(always)]
#[must_use]
pub fn cell_index(key: &SourceKey, row: u32, cfg: &Config) -> u32 {
    let mut h = cfg.sketch_seed ^ row.wrapping_mul(0x9e37_79b9);
    for word in key.addr.chunks_exact(4) {
        h = (h ^ u32::from_ne_bytes([word[0], word[1], word[2], word[3]])).wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
    }
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    row * cfg.sketch_width + (h & (cfg.sketch_width - 1))
}

/// Counts one SYN in `cell` for `epoch`; returns the cell's count after it.
#[inline(always)]
#[allow(clippy::cast_possible_truncation, reason = "the low half is the count")]
pub fn bump(cell: &mut u64, epoch: u32) -> u32 {
    let count = if (*cell >> 32) as u32 == epoch { (*cell as u32).saturating_add(1) } else { 1 };
    *cell = u64::from(epoch) << 32 | u64::from(count);
    count
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
                for row in 0..SKETCH_ROWS {
                    est = est.min(bump(&mut cells[cell_index(k, row, c) as usize], 7));
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
    fn cells_reset_in_a_new_epoch() {
        let mut cell = 0;
        assert_eq!(bump(&mut cell, 1), 1);
        assert_eq!(bump(&mut cell, 1), 2);
        assert_eq!(bump(&mut cell, 2), 1);
    }

    #[test]
    fn rows_hash_differently_and_stay_in_bounds() {
        let c = cfg();
        let k = key(1);
        let idx: std::vec::Vec<_> = (0..SKETCH_ROWS).map(|r| cell_index(&k, r, &c)).collect();
        for (r, i) in idx.iter().enumerate() {
            let r = u32::try_from(r).unwrap();
            assert!((r * c.sketch_width..(r + 1) * c.sketch_width).contains(i));
        }
        let mut other = c;
        other.sketch_seed ^= 1;
        assert_ne!(cell_index(&k, 0, &c), cell_index(&k, 0, &other), "the seed keys the hash");
    }
}
