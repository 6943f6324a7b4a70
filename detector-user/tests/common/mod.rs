//! Shared by the BPF_PROG_TEST_RUN suites: the real object, loaded fresh per test.
#![allow(dead_code, reason = "each suite uses a different part")]

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use detector_common::{
    config::Config,
    counters::Counter,
    names,
    state::{FlowKey, PendingFlow, SourceKey, SourceState},
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

pub fn assert_root() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "these tests load BPF programs: run them as root");
}

pub fn object() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../detector-ebpf/target/bpfel-unknown-none/debug/detector-ebpf"
    );
    std::fs::read(path).unwrap_or_else(|e| {
        panic!("the XDP object is missing at {path} ({e}): build it with `cargo xtask build-ebpf`")
    })
}

pub struct Detector {
    pub ebpf: Ebpf,
}

impl Detector {
    /// A fresh instance of the object (fresh maps), the detector and `extra` programs
    /// verified, `cfg` written (unless `None`-like zeroed configs are wanted: see `load_raw`).
    pub fn load(cfg: Config, extra: &[&str]) -> Self {
        let mut det = Self::load_without_config(extra);
        let mut map: Array<_, Config> =
            Array::try_from(det.ebpf.map_mut(names::MAP_CONFIG).unwrap()).unwrap();
        map.set(0, cfg, 0).unwrap();
        det
    }

    /// As `load`, but the config slot stays as the kernel created it: zeroed.
    pub fn load_without_config(extra: &[&str]) -> Self {
        assert_root();
        let mut ebpf = EbpfLoader::new().load(&object()).expect("loading the object");
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
}
