//! Tests of `control::sources`: what one walk reports, and the same from a walk in parts.

use super::*;

const SEC: u64 = 1_000_000_000;

fn cfg() -> KernelConfig {
    KernelConfig::new(0, 0, 60 * SEC, 3 * SEC)
}

fn key(n: u8) -> SourceKey {
    let mut addr = [0u8; 16];
    addr[10] = 0xff;
    addr[11] = 0xff;
    addr[12] = 198;
    addr[15] = n;
    SourceKey { addr }
}

fn poll(t: &mut SourceTracker, entries: &[(SourceKey, SourceState)], now: u64) -> SourceSummary {
    t.poll(
        &|_, f| {
            let (keys, states): (Vec<_>, Vec<_>) = entries.iter().copied().unzip();
            f(&keys, &states);
        },
        now,
        &cfg(),
        1.0,
        3,
    )
}

#[test]
fn a_kernel_blocked_entry_is_never_modified_by_a_poll() {
    let c = cfg();
    let mut s = SourceState::new(0, &c);
    s.pending = [5, 0, 0, 0];
    s.blocked_until_ns = 100 * SEC;
    s.syns_total = 500;
    let entries = [(key(1), s)];
    let before = entries;
    let mut t = SourceTracker::default();
    let summary = poll(&mut t, &entries, 10 * SEC);
    assert_eq!(entries, before, "the walk sees entries by shared reference only");
    assert_eq!((summary.blocked, summary.failed, summary.half_open), (1, 5, 0));
    assert!(summary.top[0].blocked);
    assert_eq!(summary.top[0].half_open, 0, "expired in the copy");
    assert!((summary.top[0].block_left_seconds - 90.0).abs() < 1e-9);
}

#[test]
fn failures_are_counted_once_whether_the_agent_or_the_kernel_aged_them() {
    let c = cfg();
    let mut s = SourceState::new(0, &c);
    s.pending = [3, 0, 0, 0];
    let mut t = SourceTracker::default();
    assert_eq!(poll(&mut t, &[(key(1), s)], SEC).failed, 0, "not expired yet");
    assert_eq!(poll(&mut t, &[(key(1), s)], 5 * SEC).failed, 3, "expired in the copy");
    assert_eq!(poll(&mut t, &[(key(1), s)], 6 * SEC).failed, 0, "the same ones again");
    // The kernel now ages the source itself (it sent again) and two more fail later.
    s.age(7 * SEC, &c);
    assert_eq!(poll(&mut t, &[(key(1), s)], 7 * SEC).failed, 0, "kernel-aged: already reported");
    s.failed += 2;
    assert_eq!(poll(&mut t, &[(key(1), s)], 8 * SEC).failed, 2);
}

#[test]
fn top_k_keeps_the_highest_rates_in_order_and_forgets_gone_sources() {
    let c = cfg();
    let mut t = SourceTracker::default();
    let entries: Vec<_> = (1..=10u8)
        .map(|n| {
            let mut s = SourceState::new(0, &c);
            s.syns_total = u64::from(n) * 100;
            (key(n), s)
        })
        .collect();
    let summary = poll(&mut t, &entries, SEC);
    let top: Vec<String> = summary.top.iter().map(|s| s.source.to_string()).collect();
    assert_eq!(top, ["198.0.0.10", "198.0.0.9", "198.0.0.8"]);
    assert_eq!(t.remembered(), 10);
    poll(&mut t, &entries[..2], 2 * SEC);
    assert_eq!(t.remembered(), 2);
}

type Digest = (u64, u64, u64, u64, u64, Vec<(String, u64, bool, u32)>);

/// What a summary says, comparable.
fn digest(s: &SourceSummary) -> Digest {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "test rates")]
    let top = s
        .top
        .iter()
        .map(|t| (t.source.to_string(), (t.syns_per_second * 1000.0) as u64, t.blocked, t.half_open))
        .collect();
    (s.tracked, s.live, s.blocked, s.half_open, s.failed, top)
}

#[test]
fn a_map_walked_in_parts_gives_the_summary_of_one_walk() {
    let c = cfg();
    let mut entries: Vec<_> = (1..=250u8)
        .map(|n| {
            let mut s = SourceState::new(0, &c);
            s.pending = [u32::from(n % 4), 0, 0, 0];
            if n % 50 == 0 {
                s.blocked_until_ns = 100 * SEC;
            }
            (key(n), s)
        })
        .collect();
    let mut one = SourceTracker::default();
    let mut four = SourceTracker::with_capacity(250, 4);
    for round in 1..=4u64 {
        for (i, (_, s)) in (0u64..).zip(entries.iter_mut()) {
            // Rates that cross each other from round to round.
            s.syns_total += (i * 7919 + round * 104_729) % 1000;
        }
        let now = round * 2 * SEC;
        let whole = one.poll(
            &|_, f| {
                let (keys, states): (Vec<_>, Vec<_>) = entries.iter().copied().unzip();
                f(&keys, &states);
            },
            now,
            &c,
            2.0,
            10,
        );
        // Each source always in the same part (as the kernel's hash keeps it in one
        // bucket), in small batches.
        let parted = four.poll(
            &|part, f| {
                let mine: Vec<_> =
                    entries.iter().copied().filter(|(k, _)| u32::from(k.addr[15] % 4) == part).collect();
                for chunk in mine.chunks(7) {
                    let (keys, states): (Vec<_>, Vec<_>) = chunk.iter().copied().unzip();
                    f(&keys, &states);
                }
            },
            now,
            &c,
            2.0,
            10,
        );
        assert_eq!(digest(&whole), digest(&parted), "round {round}");
        assert_eq!(whole.top.len(), 10);
    }
    assert_eq!(four.remembered(), 250);
}

#[test]
fn the_top_list_of_a_walk_in_parts_is_the_head_of_a_full_sort() {
    let c = cfg();
    // 3000 sources with pseudo-random SYN counts (many ties), a source's part by its hash.
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let entries: Vec<_> = (0..3000u32)
        .map(|n| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&[0x20, 0x01, 0x00, 0x02]);
            addr[12..].copy_from_slice(&n.to_be_bytes());
            let mut s = SourceState::new(0, &c);
            s.syns_total = x % 500;
            (SourceKey { addr }, s)
        })
        .collect();
    let (dt, k) = (1.0, 25);
    let mut t = SourceTracker::with_capacity(entries.len(), 4);
    let summary = t.poll(
        &|part, f| {
            let mine: Vec<_> =
                entries.iter().copied().filter(|(key, _)| u32::from(key.addr[15] % 4) == part).collect();
            for chunk in mine.chunks(100) {
                let (keys, states): (Vec<_>, Vec<_>) = chunk.iter().copied().unzip();
                f(&keys, &states);
            }
        },
        SEC,
        &c,
        dt,
        k,
    );
    // The reference: every source's first smoothed rate, fully sorted (rate down, address up).
    let alpha = 1.0 - (-dt / TOP_WINDOW_SECS).exp();
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        reason = "as the tracker computes it"
    )]
    let mut all: Vec<(f32, [u8; 16])> =
        entries.iter().map(|(key, s)| ((alpha * (s.syns_total as f64 / dt)) as f32, key.addr)).collect();
    all.retain(|(rate, _)| *rate >= 0.01);
    all.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let expected: Vec<String> =
        all[..k].iter().map(|(_, addr)| source_ip(&SourceKey { addr: *addr }).to_string()).collect();
    let got: Vec<String> = summary.top.iter().map(|s| s.source.to_string()).collect();
    assert_eq!(got, expected);
}
