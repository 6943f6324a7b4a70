//! Tests of `local_table`: placement, probing, and the bucket rewrites seen half-done.

use std::{collections::BTreeSet, vec::Vec};

use super::*;
use crate::parse::ipv4_mapped;

fn v4(last: u8) -> [u8; 16] {
    ipv4_mapped([198, 18, 0, last])
}

fn v6(last: u16) -> [u8; 16] {
    let mut a = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    a[14..].copy_from_slice(&last.to_be_bytes());
    a
}

/// What the program concludes: the bucket, then `LOCAL_ADDRS` (`map`) when asked.
fn lookup(
    table: &std::collections::BTreeMap<u32, LocalBucket>,
    map: &BTreeSet<[u8; 16]>,
    a: &[u8; 16],
) -> bool {
    let w = words(a);
    match probe(&table.get(&bucket_of(w)).copied().unwrap_or_default(), w) {
        Probe::Local => true,
        Probe::NotLocal => false,
        Probe::AskMap => map.contains(a),
    }
}

/// Addresses whose first `n` share one bucket (searched, since the hash is fixed).
fn same_bucket(n: usize) -> Vec<[u8; 16]> {
    let target = bucket_of(words(&v6(0)));
    (0..=u16::MAX).map(v6).filter(|a| bucket_of(words(a)) == target).take(n).collect()
}

#[test]
fn every_placed_address_probes_local_and_absent_ones_never_do() {
    let placed: Vec<[u8; 16]> = (1..=200).map(v4).chain((1..=200).map(v6)).collect();
    let table = place(&placed);
    let map: BTreeSet<_> = placed.iter().copied().collect();
    for a in &placed {
        let w = words(a);
        let got = probe(&table[&bucket_of(w)], w);
        assert!(got == Probe::Local || got == Probe::AskMap, "{a:?}: {got:?}");
        assert!(lookup(&table, &map, a));
    }
    for a in (201..=255).map(v4).chain((201..=400).map(v6)).chain([[0; 16], ipv4_mapped([198, 19, 0, 1])]) {
        let w = words(&a);
        let got = probe(&table.get(&bucket_of(w)).copied().unwrap_or_default(), w);
        assert_ne!(got, Probe::Local, "{a:?} is not placed");
        assert!(!lookup(&table, &map, &a));
    }
}

#[test]
fn one_subnet_spreads_over_the_buckets() {
    // A host with a /24 and a run of IPv6 addresses: few buckets should overflow.
    let placed: Vec<[u8; 16]> = (0..=255).map(v4).chain((0..256).map(v6)).collect();
    let table = place(&placed);
    let overflowed = table.values().filter(|b| b.overflow != 0).count();
    assert!(overflowed <= 2, "{overflowed} buckets overflowed for 512 addresses");
    assert!(table.len() > 350, "only {} buckets used", table.len());
}

#[test]
fn the_valid_bits_decide_not_the_bytes() {
    let zero = LocalBucket::default();
    assert_eq!(probe(&zero, words(&[0; 16])), Probe::NotLocal);
    let stale = LocalBucket { addrs: [words(&v4(1)); WAYS], ..LocalBucket::default() };
    assert_eq!(probe(&stale, words(&v4(1))), Probe::NotLocal);
    assert_eq!(probe(&LocalBucket { valid: 0b100, ..stale }, words(&v4(1))), Probe::Local);
}

#[test]
fn more_than_ways_addresses_in_a_bucket_overflow() {
    let addrs = same_bucket(WAYS + 2);
    assert_eq!(addrs.len(), WAYS + 2, "the search found enough colliding addresses");
    let full = place(&addrs[..WAYS]);
    assert_eq!(full.len(), 1);
    let bucket = full.values().next().unwrap();
    assert_eq!((bucket.valid, bucket.overflow), (0b1111, 0));

    let table = place(&addrs);
    let bucket = table.values().next().unwrap();
    assert_eq!((bucket.valid, bucket.overflow), (0b1111, 1));
    let map: BTreeSet<_> = addrs.iter().copied().collect();
    let asked = addrs.iter().filter(|a| probe(bucket, words(a)) == Probe::AskMap).count();
    assert_eq!(asked, 2, "the two beyond the ways go to LOCAL_ADDRS");
    assert!(addrs.iter().all(|a| lookup(&table, &map, a)));
    // Deterministic whatever the order given.
    let reversed: Vec<_> = addrs.iter().rev().copied().collect();
    assert_eq!(place(&reversed), table);
}

/// Every way a reader can see a bucket while it is rewritten from `a` to `b`: each
/// field (each way's bytes, `valid`, `overflow`) old or new, independently.
fn torn(a: &LocalBucket, b: &LocalBucket) -> Vec<LocalBucket> {
    let fields = WAYS + 2;
    (0..1u32 << fields)
        .map(|mask| {
            let pick = |i: usize| mask & (1 << i) != 0;
            let mut m = *a;
            for way in 0..WAYS {
                if pick(way) {
                    m.addrs[way] = b.addrs[way];
                }
            }
            if pick(WAYS) {
                m.valid = b.valid;
            }
            if pick(WAYS + 1) {
                m.overflow = b.overflow;
            }
            m
        })
        .collect()
}

#[test]
fn no_half_written_bucket_says_local_for_an_address_it_never_held() {
    let pool = same_bucket(8);
    // Sets of the colliding addresses: adds, removes, moves between ways, overflows.
    let sets: [&[usize]; 7] =
        [&[], &[1], &[0, 1], &[1, 2, 3], &[0, 1, 2, 3], &[0, 2, 4, 5, 6], &[3, 4, 5, 6, 7]];
    for from in sets {
        for to in sets {
            let (old_set, new_set): (BTreeSet<_>, BTreeSet<_>) =
                (from.iter().map(|&i| pool[i]).collect(), to.iter().map(|&i| pool[i]).collect());
            let old = place(&old_set).values().next().copied().unwrap_or_default();
            let new = place(&new_set).values().next().copied().unwrap_or_default();
            let (before, after) = transition(&old, &new);
            // LOCAL_ADDRS as the agent has it: the old set during `before`, then the
            // addresses both keep, then the new set during `after`.
            let kept: BTreeSet<_> = old_set.intersection(&new_set).copied().collect();
            let mut states = Vec::from([(old, old_set.clone())]);
            states.extend(before.iter().map(|b| (*b, old_set.clone())));
            states.push((states.last().unwrap().0, kept.clone()));
            states.push((states.last().unwrap().0, new_set.clone()));
            states.extend(after.iter().map(|b| (*b, new_set.clone())));
            assert_eq!(states.last().unwrap().0, new, "{from:?} -> {to:?} ends at the new bucket");
            for pair in states.windows(2) {
                let ((a, _), (b, map)) = (&pair[0], &pair[1]);
                for seen in torn(a, b) {
                    for addr in &pool {
                        let w = words(addr);
                        let local = match probe(&seen, w) {
                            Probe::Local => true,
                            Probe::NotLocal => false,
                            Probe::AskMap => map.contains(addr),
                        };
                        if local {
                            assert!(
                                old_set.contains(addr) || new_set.contains(addr),
                                "{from:?} -> {to:?}: {seen:?} says local for {addr:?}"
                            );
                        }
                        if kept.contains(addr) {
                            assert!(local, "{from:?} -> {to:?}: {seen:?} lost {addr:?}, kept throughout");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn no_change_no_writes() {
    let b = place(&[v4(1)]).values().next().copied().unwrap();
    assert_eq!(transition(&b, &b), (Vec::new(), Vec::new()));
}
