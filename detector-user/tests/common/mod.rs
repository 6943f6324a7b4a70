//! Shared by the BPF_PROG_TEST_RUN suites: the real objects, loaded fresh per test.
#![allow(dead_code, reason = "each suite uses a different part")]

use std::net::Ipv6Addr;

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use detector_common::{
    block_filter,
    blocked_table::{BlockedBucket, BlockedSlot},
    config::Config,
    counters::Counter,
    local_table::{self, LocalBucket},
    names,
    parse::{ipv4_mapped, two_words},
    policy::IfacePolicy,
    state::{FlowKey, PendingFlow, SourceKey, SourceState},
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// The fixtures' server addresses (198.18.0.1 and 2001:2::1), local in every loaded
/// instance: `Detector::load` puts them in `LOCAL_ADDRS` and `LOCAL_TABLE`.
pub const SERVER4: [u8; 4] = [198, 18, 0, 1];
pub const SERVER6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// BPF_PROG_TEST_RUN without a context runs the program as if received on the loopback
/// device of the caller's network namespace, which is always ifindex 1.
pub const TEST_RUN_IFINDEX: u32 = 1;

pub fn assert_root() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "these tests load BPF programs: run them as root");
}

/// The object the agent embeds and the package ships: `syndetector` alone.
pub fn object() -> Vec<u8> {
    read(&xtask::objects::shipped(false))
}

/// The same program plus the test-only ones (`probe_check_cookie`, `baseline_*`).
pub fn test_object() -> Vec<u8> {
    read(&xtask::objects::test_programs(false))
}

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "the XDP object is missing at {} ({e}): build it with `cargo xtask build-ebpf`",
            path.display()
        )
    })
}

pub struct Detector {
    pub ebpf: Ebpf,
}

impl Detector {
    /// A fresh instance of the object (fresh maps), the detector and `extra` programs
    /// verified, `cfg` written (unless `None`-like zeroed configs are wanted: see `load_raw`),
    /// and the fixture servers' addresses (`SERVER4`, `SERVER6`) made local.
    /// The closed filter's map is made as large as `cfg` says, as the agent makes it.
    pub fn load(cfg: Config, extra: &[&str]) -> Self {
        let mut det = Self::load_sized(extra, detector_common::closed_filter::line_bits(&cfg));
        det.set_config(cfg);
        det.set_local(ipv4_mapped(SERVER4), true);
        det.set_local(SERVER6, true);
        det
    }

    /// Replaces the config, as the agent does when it switches modes.
    pub fn set_config(&mut self, cfg: Config) {
        let mut map: Array<_, Config> =
            Array::try_from(self.ebpf.map_mut(names::MAP_CONFIG).unwrap()).unwrap();
        map.set(0, cfg, 0).unwrap();
    }

    /// Adds an address (IPv4-mapped for IPv4) to `LOCAL_ADDRS`, or removes it, and
    /// rewrites its `LOCAL_TABLE` bucket as the agent places it (`local_table::place`
    /// over every address in `LOCAL_ADDRS`). Nothing runs the program meanwhile, so the
    /// bucket is written at once, not in the agent's careful steps.
    pub fn set_local(&mut self, addr: [u8; 16], local: bool) {
        let mut map: HashMap<_, [u8; 16], u32> =
            HashMap::try_from(self.ebpf.map_mut(names::MAP_LOCAL_ADDRS).unwrap()).unwrap();
        if local {
            map.insert(addr, 1, 0).unwrap();
        } else {
            map.remove(&addr).unwrap();
        }
        let all: Vec<[u8; 16]> = map.keys().map(Result::unwrap).collect();
        let bucket = local_table::bucket_of(local_table::words(&addr));
        let placed = local_table::place(&all).get(&bucket).copied().unwrap_or_default();
        self.set_local_bucket(bucket, placed);
    }

    /// Writes one `LOCAL_TABLE` bucket as given (tests of what the program makes of it).
    pub fn set_local_bucket(&mut self, index: u32, bucket: LocalBucket) {
        let mut table: Array<_, LocalBucket> =
            Array::try_from(self.ebpf.map_mut(names::MAP_LOCAL_TABLE).unwrap()).unwrap();
        table.set(index, bucket, 0).unwrap();
    }

    /// Sets a port's `PORT_POLICY` slot (a `policy::PORT_*` value).
    pub fn set_port_policy(&mut self, port: u16, value: u32) {
        let mut map: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut(names::MAP_PORT_POLICY).unwrap()).unwrap();
        map.set(u32::from(port), value, 0).unwrap();
    }

    /// Adds a prefix to `KERNEL_DESTS`: an IPv6 address and its prefix length, or an
    /// IPv4-mapped one with 96 + the IPv4 prefix length.
    pub fn add_kernel_dest(&mut self, addr: Ipv6Addr, prefix_len: u32) {
        let mut map: LpmTrie<_, [u8; 16], u32> =
            LpmTrie::try_from(self.ebpf.map_mut(names::MAP_KERNEL_DESTS).unwrap()).unwrap();
        map.insert(&Key::new(prefix_len, addr.octets()), 1, 0).unwrap();
    }

    /// Sets an interface's `IFACES` entry (`policy::IFACE_*` bits).
    pub fn set_iface_flags(&mut self, ifindex: u32, flags: u32) {
        let mut map: HashMap<_, u32, IfacePolicy> =
            HashMap::try_from(self.ebpf.map_mut(names::MAP_IFACES).unwrap()).unwrap();
        map.insert(ifindex, IfacePolicy { flags }, 0).unwrap();
    }

    /// As `load`, but the config slot stays as the kernel created it: zeroed.
    ///
    /// Without `extra` programs this is the shipped object, so the fixtures prove the code
    /// that ships (LLVM may compile shared code differently when the test programs sit
    /// beside it); with them, the test object, the only one that has them.
    pub fn load_without_config(extra: &[&str]) -> Self {
        Self::load_sized(extra, detector_common::closed_filter::DEFAULT_LINE_BITS)
    }

    /// The object with a closed filter of `1 << line_bits` lines (and their latest stamps).
    fn load_sized(extra: &[&str], line_bits: u32) -> Self {
        assert_root();
        let bytes = if extra.is_empty() { object() } else { test_object() };
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::MAP_CLOSED_FILTER, detector_common::closed_filter::entries(line_bits))
            .load(&bytes)
            .expect("loading the object");
        for name in std::iter::once(&names::PROGRAM).chain(extra) {
            let prog: &mut Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
            prog.load().unwrap_or_else(|e| panic!("verifying {name}: {e:#}"));
        }
        Self { ebpf }
    }

    /// Runs `program` once on `frame`; returns the verdict and the frame it left.
    pub fn run(&self, program: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog: &Xdp = self.ebpf.program(program).unwrap().try_into().unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        let (verdict, len) = (result.return_value, result.data_size_out as usize);
        assert_ne!(verdict, 0, "XDP_ABORTED must never happen");
        out.truncate(len);
        (verdict, out)
    }

    /// Every counter slot's value, summed over CPUs, in `Counter::ALL` order.
    pub fn counters(&self) -> Vec<u64> {
        Counter::ALL.iter().map(|c| self.counter(*c)).collect()
    }

    pub fn counter(&self, counter: Counter) -> u64 {
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(names::MAP_COUNTERS).unwrap()).unwrap();
        map.get(&(counter as u32), 0).unwrap().iter().sum()
    }

    pub fn sources(&self) -> HashMap<&MapData, SourceKey, SourceState> {
        HashMap::try_from(self.ebpf.map(names::MAP_SOURCES).unwrap()).unwrap()
    }

    pub fn pending(&self) -> HashMap<&MapData, FlowKey, PendingFlow> {
        HashMap::try_from(self.ebpf.map(names::MAP_PENDING).unwrap()).unwrap()
    }

    /// The block cache's slot for `addr`, if it caches one (`BLOCKED_TABLE`).
    pub fn cached_block(&self, addr: &[u8; 16]) -> Option<BlockedSlot> {
        let table: Array<_, BlockedBucket> =
            Array::try_from(self.ebpf.map(names::MAP_BLOCKED_TABLE).unwrap()).unwrap();
        let mut bucket = table.get(&block_filter::bucket(addr), 0).unwrap();
        bucket.find(two_words(*addr)).copied()
    }

    /// Sets the block cache's copy of `addr`'s block end (the slot must exist).
    pub fn set_cached_block_end(&mut self, addr: &[u8; 16], until_ns: u64) {
        let at = block_filter::bucket(addr);
        let mut table: Array<_, BlockedBucket> =
            Array::try_from(self.ebpf.map_mut(names::MAP_BLOCKED_TABLE).unwrap()).unwrap();
        let mut bucket = table.get(&at, 0).unwrap();
        bucket.find(two_words(*addr)).expect("a cached block").until_ns = until_ns;
        table.set(at, bucket, 0).unwrap();
    }
}

/// `CLOCK_MONOTONIC` in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// `CLOCK_MONOTONIC_COARSE` in ns: the time `bpf_ktime_get_coarse_ns` returns, which
/// cookie mode runs on (the fine clock may read a little ahead of it).
pub fn coarse_monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a timespec to write.
    assert_eq!(unsafe { libc::clock_gettime(clock, &raw mut ts) }, 0);
    u64::try_from(ts.tv_sec).unwrap() * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap()
}
