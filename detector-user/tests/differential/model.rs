//! The model side: what the XDP program must do with each frame, computed on the host by
//! detector-common's functions (`parse_tcp`, `track::*`, `filter`, `policy`, `synack`),
//! step by step as detector-ebpf/src/main.rs, track.rs and cookie.rs call them.
//!
//! Deterministic by construction: the block TTL and handshake timeout are so long that no
//! block or pending handshake expires during a run, the pending filter always answers
//! "recent", cookie mode runs without a sketch or SYN-ACK budget in play
//! (`syn_rate_limit = 0`, a budget no run reaches), and the policy maps hold what the
//! sequence's `Policy` says. What
//! is left is decided by counts: SYNs per source, half-open handshakes, pending flows. The
//! SYN-rate window (1 s, from `bpf_ktime_get_ns`) is the one clock in play: the model is
//! given `CLOCK_MONOTONIC` (the same clock) read just before each run.

use std::collections::{HashMap, HashSet};

use detector_common::{
    config::{
        Config, FLAG_COOKIES, FLAG_COOKIE_ECN, FLAG_COOKIE_TIMESTAMPS, FLAG_ENFORCE, FLAG_LISTED_PORTS_ONLY,
    },
    counters::{Counter, COUNTER_SLOTS},
    filter,
    parse::{parse_tcp, IpVersion, TcpSegment, ETH_HEADER_LEN, MAX_VLAN_TAGS, VLAN_TAG_LEN},
    policy::{cookie_policy, IFACE_VLAN_STRIPPED, PORT_DEFAULT},
    state::{FlowKey, PendingFlow, SourceState},
    synack::{
        build_ipv4_reply, build_ipv6_reply, build_synack, parse_syn_options, ReplySettings, MAX_OPTIONS_LEN,
    },
    track::{self, BlockReason, SynVerdict},
};

use crate::gen::{Mode, Policy, LISTEN_PORT, SERVER4, SERVER6};

/// Long enough that nothing expires in a run; short enough that `now + TTL` and the
/// filter's horizon (`4 × timeout / 3`) stay far from overflowing.
pub const FOREVER_NS: u64 = 3 << 60;
/// Never reached: 100k packets per run at most.
const COOKIE_BUDGET: u32 = 1_000_000_000;
/// The deepest IP header the responder answers for (detector-ebpf/src/cookie.rs `MAX_L3`).
const MAX_L3: usize = ETH_HEADER_LEN + MAX_VLAN_TAGS * VLAN_TAG_LEN;

/// The program's config for a mode.
pub fn config(mode: Mode) -> Config {
    let (syn_rate, half_open, flags) = match mode {
        Mode::Track { syn_rate, half_open } => (syn_rate, half_open, FLAG_ENFORCE),
        Mode::Monitor { syn_rate, half_open } => (syn_rate, half_open, 0),
        Mode::Cookie { timestamps, ecn, policy } => (
            0,
            0,
            FLAG_ENFORCE
                | FLAG_COOKIES
                | if timestamps { FLAG_COOKIE_TIMESTAMPS } else { 0 }
                | if ecn { FLAG_COOKIE_ECN } else { 0 }
                | if policy.listed_only { FLAG_LISTED_PORTS_ONLY } else { 0 },
        ),
    };
    let mut c = Config::new(syn_rate, half_open, FOREVER_NS, FOREVER_NS);
    c.flags = flags;
    c.sketch_width = 16_384;
    c.sketch_seed = 7;
    c.cookie_budget_per_second = COOKIE_BUDGET;
    c.synack_wscale = 5;
    c.synack_window = 65_535;
    c
}

/// What one frame must do: the verdict slot that rises by one, how much each event slot
/// rises, and for an answered SYN what the reply is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub counter: Counter,
    /// Rise of every slot, in `Counter::ALL` order (the verdict slot included).
    pub deltas: Vec<u64>,
    pub reply: Option<ReplyPlan>,
}

/// An answered SYN: the parsed segment, and the options and settings the reply carries.
/// The cookie, the MSS the helper chose, and the timestamp's clock bits come from the
/// kernel's reply; everything else must be what `synack::build_synack` makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyPlan {
    pub seg: TcpSegment,
    pub options: [u8; MAX_OPTIONS_LEN],
    pub options_len: usize,
    pub settings: ReplySettings,
}

impl ReplyPlan {
    /// The reply frame the program must send for a SYN `syn`, given what only the kernel
    /// knows: the cookie and MSS (from the helper) and the millisecond clock.
    pub fn frame(&self, syn: &[u8], cookie: u32, mss: u16, now_ms: u32) -> Vec<u8> {
        let opts = parse_syn_options(&self.options, self.options_len);
        let tcp = build_synack(&self.seg, &opts, cookie, mss, now_ms, &self.settings);
        let l3 = usize::from(self.seg.l3_offset);
        let mut out = syn[..l3].to_vec();
        out[..6].copy_from_slice(&syn[6..12]);
        out[6..12].copy_from_slice(&syn[..6]);
        match self.seg.version {
            IpVersion::V4 => out.extend_from_slice(&build_ipv4_reply(&self.seg, tcp.len)),
            IpVersion::V6 => out.extend_from_slice(&build_ipv6_reply(&self.seg, tcp.len)),
        }
        out.extend_from_slice(&tcp.bytes[..usize::from(tcp.len)]);
        out
    }
}

/// The program's state as the model keeps it: maps that never evict.
pub struct Model {
    cfg: Config,
    policy: Policy,
    sources: HashMap<[u8; 16], SourceState>,
    pending: HashMap<FlowKey, PendingFlow>,
    /// Buckets of the pending filter stamped in this sequence. With `FOREVER_NS` every
    /// stamp is recent; a bucket the kernel kept from an earlier sequence only leads to a
    /// `PENDING` lookup that misses (the map is emptied between sequences), as here.
    filter: HashSet<u32>,
}

impl Model {
    pub fn new(mode: Mode) -> Self {
        let policy = if let Mode::Cookie { policy, .. } = mode { policy } else { Policy::default() };
        Self {
            cfg: config(mode),
            policy,
            sources: HashMap::new(),
            pending: HashMap::new(),
            filter: HashSet::new(),
        }
    }

    /// detector-ebpf/src/main.rs `decide`, for a frame of at least an Ethernet header.
    pub fn step(&mut self, frame: &[u8], now: u64) -> Expected {
        let mut deltas = vec![0u64; COUNTER_SLOTS as usize];
        let mut reply = None;
        let counter = self.decide(frame, now, &mut deltas, &mut reply);
        deltas[counter as usize] += 1;
        Expected { counter, deltas, reply }
    }

    fn decide(&mut self, frame: &[u8], now: u64, ev: &mut [u64], reply: &mut Option<ReplyPlan>) -> Counter {
        let seg = match parse_tcp(frame) {
            Ok(seg) => seg,
            Err(reason) => return reason.into(),
        };
        if !self.cfg.is_usable() {
            return Counter::PassNoConfig;
        }
        if seg.is_syn() {
            if seg.dst != detector_common::parse::ipv4_mapped(SERVER4) && seg.dst != SERVER6 {
                return Counter::PassNotLocal;
            }
            // detector-ebpf/src/ports.rs: no per-port policy is generated, so every port is
            // protected with the config's limits.
            assert!(!detector_common::ports::needs_lookup(&self.cfg), "the model has no port table");
            let counter = if self.cfg.has(FLAG_COOKIES) {
                self.screen_for_cookie(&seg, now)
                    .or_else(|| self.policy(&seg))
                    .unwrap_or_else(|| self.answer_syn(&seg, frame, reply))
            } else {
                self.on_syn(&seg, now, ev)
            };
            return if self.cfg.has(FLAG_ENFORCE) { counter } else { counter.monitored() };
        }
        if seg.may_complete_handshake() {
            self.on_ack(&seg, now, ev);
        }
        Counter::PassTcp
    }

    /// detector-ebpf/src/track.rs `on_syn`. The generated limits (at most 5, timeouts that
    /// never expire) make every source tracked from its first SYN, so the sketch that holds
    /// sources back from exact state is never consulted (and its epoch clock stays out).
    fn on_syn(&mut self, seg: &TcpSegment, now: u64, ev: &mut [u64]) -> Counter {
        let cfg = self.cfg;
        assert_eq!(track::promotion_threshold(&cfg), 1, "the model has no sketch");
        let state = self.sources.entry(seg.src).or_insert_with(|| SourceState::promoted(now, &cfg, 1));
        ev[Counter::HandshakeFailed as usize] += u64::from(state.age(now, &cfg));
        if state.is_blocked(now) {
            let _ = track::on_syn(state, now, &cfg, false);
            return Counter::DropBlocked;
        }
        let flow = flow_of(seg);
        let new_flow = !self.pending.contains_key(&flow);
        if new_flow {
            self.pending.insert(flow, PendingFlow { syn_ns: now, isn: seg.seq, _pad: 0 });
        } else {
            ev[Counter::SynRetransmit as usize] += 1;
        }
        match track::on_syn(state, now, &cfg, new_flow) {
            SynVerdict::Pass => {
                self.filter.insert(filter::bucket(&flow));
                Counter::PassSyn
            }
            SynVerdict::DropBlocked => Counter::DropBlocked,
            SynVerdict::DropNewlyBlocked(reason) => {
                if new_flow {
                    self.pending.remove(&flow);
                }
                ev[match reason {
                    BlockReason::SynRate => Counter::BlockedSynRate,
                    BlockReason::HalfOpen => Counter::BlockedHalfOpen,
                } as usize] += 1;
                Counter::DropOverLimit
            }
        }
    }

    /// detector-ebpf/src/track.rs `screen_for_cookie`, with `syn_rate_limit = 0` (no
    /// sketch): only a source blocked earlier is dropped.
    fn screen_for_cookie(&mut self, seg: &TcpSegment, now: u64) -> Option<Counter> {
        let cfg = self.cfg;
        if let Some(state) = self.sources.get_mut(&seg.src) {
            if state.is_blocked(now) {
                let _ = track::on_syn(state, now, &cfg, false);
                return Some(Counter::DropBlocked);
            }
        }
        assert_eq!(cfg.syn_rate_limit, 0, "the model has no sketch");
        None
    }

    /// detector-ebpf/src/policy.rs `leave_to_kernel`: the maps as `Kernel::start` fills
    /// them for this policy.
    fn policy(&self, seg: &TcpSegment) -> Option<Counter> {
        let p = self.policy;
        let port_slot = if seg.dst_port == LISTEN_PORT { p.listen_port_slot } else { PORT_DEFAULT };
        cookie_policy(
            &self.cfg,
            port_slot,
            seg.vlan_tags,
            || p.kernel_dest6 && seg.dst == SERVER6,
            || if p.vlan_stripped { IFACE_VLAN_STRIPPED } else { 0 },
        )
    }

    /// detector-ebpf/src/cookie.rs `answer_syn` and syncookie.rs `gen_cookie`: SYNs with IP
    /// options or extension headers are left to the kernel; the listener is on
    /// `LISTEN_PORT` only; the helper must then answer every SYN the parser accepted.
    fn answer_syn(&self, seg: &TcpSegment, frame: &[u8], reply: &mut Option<ReplyPlan>) -> Counter {
        let l3 = usize::from(seg.l3_offset);
        let l4 = usize::from(seg.l4_offset);
        let ip_len = if seg.version == IpVersion::V4 { 20 } else { 40 };
        if l4 != l3 + ip_len || l3 > MAX_L3 {
            return Counter::PassCookieUnsupported;
        }
        if seg.dst_port != LISTEN_PORT {
            return Counter::PassCookieNoListener;
        }
        let options_len = usize::from(seg.tcp_header_len) - 20;
        let mut options = [0u8; MAX_OPTIONS_LEN];
        options[..options_len].copy_from_slice(&frame[l4 + 20..l4 + 20 + options_len]);
        *reply = Some(ReplyPlan {
            seg: *seg,
            options,
            options_len,
            settings: ReplySettings {
                timestamps: self.cfg.has(FLAG_COOKIE_TIMESTAMPS),
                ecn: self.cfg.has(FLAG_COOKIE_ECN),
                wscale: self.cfg.synack_wscale,
                window: self.cfg.synack_window,
            },
        });
        Counter::TxCookie
    }

    /// detector-ebpf/src/track.rs `on_ack`.
    fn on_ack(&mut self, seg: &TcpSegment, now: u64, ev: &mut [u64]) {
        let flow = flow_of(seg);
        if !self.filter.contains(&filter::bucket(&flow)) {
            return;
        }
        let Some(pending) = self.pending.get(&flow).copied() else { return };
        if seg.seq != pending.isn.wrapping_add(1) {
            return;
        }
        self.pending.remove(&flow);
        let cfg = self.cfg;
        let on_time = match self.sources.get_mut(&seg.src) {
            Some(state) => {
                ev[Counter::HandshakeFailed as usize] += u64::from(state.age(now, &cfg));
                track::on_handshake_complete(state, pending.syn_ns, now, &cfg)
            }
            None => true,
        };
        if on_time {
            ev[Counter::HandshakeCompleted as usize] += 1;
        }
    }
}

fn flow_of(seg: &TcpSegment) -> FlowKey {
    FlowKey { src: seg.src, dst: seg.dst, src_port: seg.src_port, dst_port: seg.dst_port }
}
