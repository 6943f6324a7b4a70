//! Tests of `bpf_batch` on real hash maps created standalone (needs root): walks split
//! into parts see every entry exactly once, whatever the batch size.

use std::os::fd::AsFd;

use aya::maps::{HashMap, Map, MapData};

use super::*;
use crate::maps::part_buckets;

/// From linux/bpf.h `enum bpf_map_type`.
const HASH: u32 = 1;
const LRU_HASH: u32 = 9;

/// A map of `n` u32 keys (value: the key times 3) with room for `capacity`.
fn filled(map_type: u32, capacity: u32, n: u32) -> Map {
    crate::test_netns::assert_root();
    let obj = aya_obj::Map::new_from_params(map_type, 4, 8, capacity, 0);
    let data = MapData::create(obj, "sd_batch_test", None).expect("creating a BPF map (needs root)");
    let mut map = Map::from_map_data(data).unwrap();
    let mut typed = HashMap::<&mut MapData, u32, u64>::try_from(&mut map).unwrap();
    for k in 0..n {
        typed.insert(k, u64::from(k) * 3, 0).unwrap();
    }
    map
}

fn fd(map: &Map) -> BorrowedFd<'_> {
    match map {
        Map::HashMap(d) | Map::LruHashMap(d) => d.fd().as_fd(),
        _ => unreachable!("created as a hash"),
    }
}

/// How often each key was seen over a walk of every part.
fn seen_in_parts(map: &Map, capacity: u32, parts: u32, batch: u32) -> Vec<u32> {
    let mut seen = vec![0u32; capacity as usize];
    let buckets = capacity.next_power_of_two();
    for part in 0..parts {
        let (start, end) = part_buckets(buckets, part, parts);
        walk_buckets(fd(map), start..end, batch, &mut |keys: &[u32], values: &[u64]| {
            for (k, v) in keys.iter().zip(values) {
                assert_eq!(*v, u64::from(*k) * 3, "key and value out of step");
                seen[*k as usize] += 1;
            }
        })
        .unwrap();
    }
    seen
}

#[test]
fn every_entry_is_seen_once_however_the_map_is_split() {
    for map_type in [HASH, LRU_HASH] {
        let (capacity, n) = (8192, 6000);
        let map = filled(map_type, capacity, n);
        for parts in [1, 2, 3, 4, 7] {
            // Batches of 16 cross part boundaries mid-batch nearly every time.
            for batch in [16, 100, 4096] {
                let seen = seen_in_parts(&map, capacity, parts, batch);
                let wrong: Vec<_> = seen
                    .iter()
                    .enumerate()
                    .filter(|&(k, &c)| c != u32::from(k < n as usize))
                    .take(5)
                    .collect();
                assert!(
                    wrong.is_empty(),
                    "type {map_type}, {parts} parts, batch {batch}: (key, times) {wrong:?}"
                );
            }
        }
    }
}

#[test]
fn parts_with_no_entries_and_parts_past_the_last_bucket_see_nothing() {
    // 3 entries in 4096 buckets: most of 64 parts are empty.
    let map = filled(HASH, 4096, 3);
    let seen = seen_in_parts(&map, 4096, 64, 4096);
    assert_eq!(&seen[..4], &[1, 1, 1, 0]);
    let mut n = 0;
    walk_buckets(fd(&map), 5000..u32::MAX, 16, &mut |keys: &[u32], _: &[u64]| n += keys.len()).unwrap();
    assert_eq!(n, 0, "beyond the map's buckets");
    assert!(supported::<u32, u64>(fd(&map)));
}

#[test]
fn parts_cover_every_bucket_once() {
    for (buckets, parts) in [(1 << 20, 2), (1 << 20, 4), (1024, 3), (1, 4)] {
        let mut next = 0;
        for part in 0..parts {
            let (start, end) = part_buckets(buckets, part, parts);
            assert_eq!(start, next, "{buckets} buckets, part {part} of {parts}");
            assert!(end > start || (end == start && buckets < parts));
            next = end;
        }
        assert_eq!(next, u32::MAX, "the last part runs to the end");
    }
}
