//! The kernel side: the real XDP object, one BPF_PROG_TEST_RUN (repeat = 1) per frame, the
//! per-CPU `COUNTERS` summed, and the tracking maps emptied between sequences so that each
//! sequence starts from the state the model starts from.

use std::{cell::RefCell, collections::HashSet};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray, PerCpuValues},
    programs::{ProgramError, TestRun, TestRunOptions, Xdp},
};
use detector_common::{
    block_filter,
    blocked_table::BlockedBucket,
    closed_filter::{self, ClosedLine},
    fastpath::{RenewalSlot, RENEWAL_SLOTS},
    names,
    parse::{parse_tcp, tcp_flags, IpVersion},
    policy::{IFACE_VLAN_STRIPPED, PORT_NO_LISTENER},
    state::{FlowKey, PendingFlow, SourceKey, SourceState},
};

use crate::{
    common::{Detector, TEST_RUN_IFINDEX},
    gen::{Mode, Policy, CLOSED_PORT, LISTEN_PORT, SERVER6},
    model,
};

/// What BPF_PROG_TEST_RUN made of a frame.
pub enum Run {
    /// The program ran: its verdict and the frame it left.
    Ran(u32, Vec<u8>),
    /// The syscall refused the frame (errno): frames shorter than an Ethernet header.
    Refused(i32),
}

pub struct Kernel {
    det: Detector,
    /// `CLOSED_FILTER` entries a frame may have stamped (any parsed segment with FIN: its
    /// line and the line's latest stamp),
    /// zeroed by `start`: the array has 8,192 lines, too many to clear one by one. The
    /// modes' configs leave its size at the default (`closed_filter_extra_bits` 0), as the
    /// model does.
    stamped: RefCell<HashSet<u32>>,
}

impl Kernel {
    /// The test object loaded once (about 4 s of verification), with the probe that checks
    /// cookies (only the test object has it: `common::Detector::load_without_config`).
    pub fn load() -> Self {
        Self {
            det: Detector::load(
                model::config(Mode::Track { syn_rate: 0, half_open: 0 }),
                &["probe_check_cookie"],
            ),
            stamped: RefCell::new(HashSet::new()),
        }
    }

    /// What the verifier processed for the program (kernel >= 5.16): the budget figure
    /// of docs/verifier.md, printed so that a run shows the object it compared.
    pub fn verified_insns(&self) -> Option<u32> {
        let prog: &Xdp = self.det.ebpf.program(names::PROGRAM).unwrap().try_into().unwrap();
        prog.info().ok()?.verified_instruction_count()
    }

    /// Starts a sequence: the mode's config, and no source or pending flow left from the
    /// previous one (counters are compared as differences, so they stay).
    pub fn start(&mut self, mode: Mode) {
        self.det.set_config(model::config(mode));
        let policy = if let Mode::Cookie { policy, .. } = mode { policy } else { Policy::default() };
        self.det.set_port_policy(LISTEN_PORT, policy.listen_port_slot);
        self.det.set_port_policy(CLOSED_PORT, if policy.closed_no_listener { PORT_NO_LISTENER } else { 0 });
        // The fast path's state: no listener renewed, no FIN seen.
        let mut renewals: PerCpuArray<_, RenewalSlot> =
            PerCpuArray::try_from(self.det.ebpf.map_mut(names::MAP_COOKIE_RENEWALS).unwrap()).unwrap();
        let cpus = aya::util::nr_cpus().unwrap();
        for slot in 0..RENEWAL_SLOTS {
            let empty = PerCpuValues::try_from(vec![RenewalSlot::default(); cpus]).unwrap();
            renewals.set(slot, empty, 0).unwrap();
        }
        let mut closed: Array<_, ClosedLine> =
            Array::try_from(self.det.ebpf.map_mut(names::MAP_CLOSED_FILTER).unwrap()).unwrap();
        for line in self.stamped.borrow_mut().drain() {
            closed.set(line, ClosedLine::default(), 0).unwrap();
        }
        self.det
            .set_iface_flags(TEST_RUN_IFINDEX, if policy.vlan_stripped { IFACE_VLAN_STRIPPED } else { 0 });
        let mut dests: LpmTrie<_, [u8; 16], u32> =
            LpmTrie::try_from(self.det.ebpf.map_mut(names::MAP_KERNEL_DESTS).unwrap()).unwrap();
        let server6 = Key::new(128, SERVER6);
        if policy.kernel_dest6 {
            dests.insert(&server6, 1, 0).unwrap();
        } else {
            // Absent already, or removed now: either way not there.
            let _ = dests.remove(&server6);
        }
        let mut sources: HashMap<_, SourceKey, SourceState> =
            HashMap::try_from(self.det.ebpf.map_mut(names::MAP_SOURCES).unwrap()).unwrap();
        let keys: Vec<SourceKey> = sources.keys().map(Result::unwrap).collect();
        for k in &keys {
            sources.remove(k).unwrap();
        }
        // The block cache holds only sources that had an entry: their buckets emptied, no
        // block outlives its entry into the next sequence.
        let mut cache: Array<_, BlockedBucket> =
            Array::try_from(self.det.ebpf.map_mut(names::MAP_BLOCKED_TABLE).unwrap()).unwrap();
        for k in &keys {
            cache.set(block_filter::bucket(&k.addr), BlockedBucket::default(), 0).unwrap();
        }
        let mut pending: HashMap<_, FlowKey, PendingFlow> =
            HashMap::try_from(self.det.ebpf.map_mut(names::MAP_PENDING).unwrap()).unwrap();
        let keys: Vec<FlowKey> = pending.keys().map(Result::unwrap).collect();
        for k in keys {
            pending.remove(&k).unwrap();
        }
    }

    pub fn run(&self, program: &str, frame: &[u8]) -> Run {
        if program == names::PROGRAM {
            if let Ok(seg) = parse_tcp(frame) {
                if seg.flags & tcp_flags::FIN != 0 {
                    let at = closed_filter::spot(&seg.flow(), closed_filter::DEFAULT_LINE_BITS);
                    self.stamped.borrow_mut().extend([at.line, at.latest]);
                }
            }
        }
        let prog: &Xdp = self.det.ebpf.program(program).unwrap().try_into().unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        match prog.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        }) {
            Ok(result) => {
                out.truncate(result.data_size_out as usize);
                Run::Ran(result.return_value, out)
            }
            Err(ProgramError::SyscallError(e)) => Run::Refused(e.io_error.raw_os_error().unwrap_or(0)),
            Err(e) => panic!("BPF_PROG_TEST_RUN: {e}"),
        }
    }

    /// Every counter slot summed over CPUs, in `Counter::ALL` order.
    pub fn counters(&self) -> Vec<u64> {
        self.det.counters()
    }

    /// Whether the kernel accepts the cookie of `reply`: the client's ACK for it, run
    /// through `probe_check_cookie` (`bpf_tcp_check_syncookie` for the listener).
    pub fn accepts_cookie(&self, reply: &[u8]) -> Result<bool, String> {
        let seg = parse_tcp(reply).map_err(|e| format!("the reply does not parse: {e:?}"))?;
        let l3 = usize::from(seg.l3_offset);
        // The ACK: the reply's Ethernet header and tags with the MACs swapped back, a plain
        // IP header from the client, and a 20-byte TCP header acking the cookie.
        let mut ack = reply[..l3].to_vec();
        ack[..6].copy_from_slice(&reply[6..12]);
        ack[6..12].copy_from_slice(&reply[..6]);
        match seg.version {
            IpVersion::V4 => {
                let mut ip = [0u8; 20];
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&40u16.to_be_bytes());
                ip[8] = 64;
                ip[9] = 6;
                ip[12..16].copy_from_slice(&seg.dst[12..]);
                ip[16..20].copy_from_slice(&seg.src[12..]);
                ack.extend_from_slice(&ip);
            }
            IpVersion::V6 => {
                ack.extend_from_slice(&[0x60, 0, 0, 0, 0, 20, 6, 64]);
                ack.extend_from_slice(&seg.dst);
                ack.extend_from_slice(&seg.src);
            }
        }
        let mut tcp = [0u8; 20];
        tcp[0..2].copy_from_slice(&seg.dst_port.to_be_bytes());
        tcp[2..4].copy_from_slice(&seg.src_port.to_be_bytes());
        tcp[4..8].copy_from_slice(&seg.ack_seq.to_be_bytes());
        tcp[8..12].copy_from_slice(&seg.seq.wrapping_add(1).to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x10;
        tcp[14..16].copy_from_slice(&502u16.to_be_bytes());
        ack.extend_from_slice(&tcp);
        match self.run("probe_check_cookie", &ack) {
            Run::Ran(3, _) => Ok(true),
            Run::Ran(1, _) => Ok(false),
            Run::Ran(v, _) => Err(format!("probe_check_cookie could not check (verdict {v})")),
            Run::Refused(errno) => Err(format!("probe_check_cookie refused (errno {errno})")),
        }
    }
}
