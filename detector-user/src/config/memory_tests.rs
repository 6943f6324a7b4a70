//! Tests of `memory`.

use super::*;
use crate::config::FileConfig;

fn cfg(text: &str) -> Config {
    let mut file: FileConfig = toml::from_str(text).unwrap();
    file.interfaces = vec!["lo".into()];
    Config { file }
}

#[test]
fn per_entry_costs_follow_the_kernel_formulas() {
    let lru = MapShape { name: "x", kind: Kind::LruHash, key_size: 16, value_size: 72, max_entries: 1000 };
    // 48 + 16 + 72 per element, 1024 buckets of 16 B, 8 locks of 4 B per CPU.
    assert_eq!(lru.bytes(2), HTAB_STRUCT + 16 * 1024 + 64 + 136 * 1000);
    let hash = MapShape { kind: Kind::Hash, ..lru };
    assert_eq!(hash.bytes(2), HTAB_STRUCT + 16 * 1024 + 64 + 136 * 1002 + 16);
    let array = MapShape { name: "a", kind: Kind::Array, key_size: 4, value_size: 4, max_entries: 10 };
    assert_eq!(array.bytes(4), ARRAY_STRUCT + 80, "values round up to 8 bytes");
    let percpu = MapShape { kind: Kind::PerCpuArray, ..array };
    assert_eq!(percpu.bytes(4), ARRAY_STRUCT + 10 * (8 + 8 * 4));
}

#[test]
fn the_largest_allowed_maps_take_gigabytes() {
    let big = cfg("[maps]\nsources = 16777216\npending = 16777216\nsketch_width = 1048576\n");
    let total: u64 = maps(&big).iter().map(|m| m.bytes(2)).sum();
    assert!((4_000_000_000..5_000_000_000).contains(&total), "{total}");
    let small: u64 = maps(&cfg("")).iter().map(|m| m.bytes(2)).sum();
    assert!((20_000_000..40_000_000).contains(&small), "defaults: {small}");
}

#[test]
fn the_report_names_each_map_and_the_total() {
    let r = report(&cfg(""), 2);
    for m in maps(&cfg("")) {
        assert!(r.contains(m.name), "{r}");
    }
    assert!(r.lines().last().unwrap().trim_start().starts_with("total"), "{r}");
}

/// The kernel's own count (`memlock` in fdinfo) for each map of the loaded object.
fn kernel_memlock(ebpf: &aya::Ebpf) -> Vec<(String, aya::maps::MapInfo, u64)> {
    use std::os::fd::{AsFd, AsRawFd};
    ebpf.maps()
        .map(|(name, map)| {
            let (aya::maps::Map::Array(data)
            | aya::maps::Map::PerCpuArray(data)
            | aya::maps::Map::HashMap(data)
            | aya::maps::Map::LruHashMap(data)
            | aya::maps::Map::LpmTrie(data)
            | aya::maps::Map::RingBuf(data)) = map
            else {
                panic!("{name}: a map type this module does not estimate")
            };
            let memlock = memlock_of(data.fd().as_fd().as_raw_fd());
            (name.to_owned(), data.info().unwrap(), memlock)
        })
        .collect()
}

/// Root: loads the object with non-default map sizes and compares each map's estimate
/// (and its shape) with what the kernel reports.
#[test]
fn the_estimate_matches_the_kernel_within_10_percent() {
    assert!(nix_root(), "needs root (loads the XDP object): run with `cargo xtask test`");
    let cfg = cfg("[maps]\nsources = 200000\npending = 300000\nsketch_width = 65536\n");
    let (mut ebpf, logger) = crate::loader::load(&cfg, None).expect("loading the object");
    let cpus = possible_cpus();
    let trie_nodes: u8 = 100;
    for trie in [names::MAP_KERNEL_DESTS, names::MAP_ALLOW, names::MAP_DENY] {
        let map = ebpf.map_mut(trie).unwrap();
        let mut trie = aya::maps::LpmTrie::<_, [u8; 16], u32>::try_from(map).unwrap();
        for i in 0..trie_nodes {
            let mut addr = [0u8; 16];
            addr[0] = 0x20;
            addr[1] = i;
            trie.insert(&aya::maps::lpm_trie::Key::new(16, addr), 1, 0).unwrap();
        }
    }
    let shapes = maps(&cfg);
    let (mut estimated, mut measured) = (0, 0);
    let loaded = kernel_memlock(&ebpf);
    let mut sections = 0;
    for (name, info, memlock) in &loaded {
        if name.starts_with('.') {
            // The object's data sections (.rodata, .bss): one small array each.
            eprintln!("{name:<15} (data section)    kernel {memlock:>10}");
            sections += memlock;
            continue;
        }
        let shape =
            shapes.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("{name} is not estimated"));
        assert_eq!(
            (info.key_size(), info.value_size(), info.max_entries()),
            (shape.key_size, shape.value_size, shape.max_entries),
            "{name}: the shape differs from the object's"
        );
        let estimate = shape.bytes_with(cpus, u64::from(trie_nodes));
        eprintln!("{name:<15} estimate {estimate:>10}  kernel {memlock:>10}");
        assert!(within_10_percent(estimate, *memlock), "{name}: estimate {estimate}, kernel {memlock}");
        estimated += estimate;
        measured += memlock;
    }
    eprintln!("total           estimate {estimated:>10}  kernel {measured:>10}");
    assert!(sections < 64 * 1024, "data sections: {sections} B");
    if let Some(logger) = &logger {
        use std::os::fd::AsRawFd;
        let ring = shapes.iter().find(|s| s.kind == Kind::RingBuf).unwrap();
        let memlock = memlock_of(logger.as_raw_fd());
        let estimate = ring.bytes(cpus);
        eprintln!("{:<15} estimate {estimate:>10}  kernel {memlock:>10}", ring.name);
        assert!(within_10_percent(estimate, memlock), "{}: estimate {estimate}, kernel {memlock}", ring.name);
    }
    let named = loaded.iter().filter(|(name, ..)| !name.starts_with('.')).count();
    assert_eq!(named, shapes.len() - 1, "every map but the log ring (the logger took it) is loaded");
}

fn memlock_of(fd: std::os::fd::RawFd) -> u64 {
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .unwrap_or_else(|| panic!("no memlock in {fdinfo}"))
        .trim()
        .parse()
        .unwrap()
}

fn within_10_percent(estimate: u64, kernel: u64) -> bool {
    estimate.abs_diff(kernel) * 10 <= kernel
}

fn nix_root() -> bool {
    // SAFETY: no arguments, no memory.
    unsafe { libc::geteuid() == 0 }
}
