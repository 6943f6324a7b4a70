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
//! given `CLOCK_MONOTONIC` (the same clock) read just before each run. The same clock
//! drives the cookie fast path (a listener's raw answers within `RENEW_EVERY_NS` of its
//! last socket-bound one) and the FIN filter (a tuple stays "maybe in `TIME_WAIT`" for
//! 62 s): a sequence lasts milliseconds and both maps are emptied between sequences, so
//! only a stall of a second inside one sequence could split model and kernel.
//!
//! The ACK shield: in the test's namespace the only socket is the listener on
//! `LISTEN_PORT` (BPF_PROG_TEST_RUN delivers nothing to the stack), so an ACK's lookup
//! finds that listener or nobody. Its cookie is valid when it acknowledges a cookie the
//! kernel issued in this sequence for the same tuple and client ISN (`issued`, read from
//! the kernel's replies). An unrelated ACK value passes the kernel's check by chance with
//! a probability of about 3e-9 (the check accepts 4 MSS indexes of 2^24 and 3 of 256
//! minute counters); the model calls every such ACK invalid.

use std::collections::{HashMap, HashSet};

use detector_common::{
    ackshield::{self, Owner},
    closed_filter::{self, ClosedLine},
    config::{
        Config, FLAG_COOKIES, FLAG_COOKIE_ECN, FLAG_COOKIE_TIMESTAMPS, FLAG_ENFORCE, FLAG_LISTED_PORTS_ONLY,
        FLAG_NO_IFACE_POLICY, FLAG_NO_KERNEL_DESTS, FLAG_RAW_COOKIES,
    },
    counters::{Counter, COUNTER_SLOTS},
    fastpath::{cookie_path, renewal_index, CookiePath, RenewalSlot},
    filter,
    parse::{parse_tcp, tcp_flags, IpVersion, TcpSegment, ETH_HEADER_LEN, MAX_VLAN_TAGS, VLAN_TAG_LEN},
    policy::{cookie_policy, IFACE_VLAN_STRIPPED, PORT_DEFAULT, PORT_NO_LISTENER},
    reply_frame::{reply_frame, ReplyFrame},
    state::{FlowKey, PendingFlow, SourceState},
    synack::{
        build_ipv4_reply, build_ipv6_reply, build_synack, parse_syn_options, ReplySettings, MAX_OPTIONS_LEN,
    },
    track::{self, BlockReason, SynVerdict},
};

use crate::gen::{Mode, Policy, CLOSED_PORT, LISTEN_PORT, SERVER4, SERVER6};

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
                | if policy.listed_only { FLAG_LISTED_PORTS_ONLY } else { 0 }
                | if policy.filter_unseeded { 0 } else { FLAG_RAW_COOKIES }
                // As the agent says it: a map that holds nothing is not looked up.
                | if policy.kernel_dest6 { 0 } else { FLAG_NO_KERNEL_DESTS }
                | if policy.vlan_stripped { 0 } else { FLAG_NO_IFACE_POLICY },
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
        out.extend_from_slice(&tcp.bytes()[..usize::from(tcp.len)]);
        // The frame is the SYN's, with a zeroed trailer, when the SYN's headers end it and
        // the reply is shorter; otherwise exactly the reply (`reply_frame`).
        let headers_end_frame =
            syn.len() == usize::from(self.seg.l4_offset) + usize::from(self.seg.tcp_header_len);
        if let ReplyFrame::Keep { trailer_words } = reply_frame(syn.len(), headers_end_frame, out.len()) {
            out.resize(out.len() + 4 * usize::from(trailer_words), 0);
        }
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
    /// `COOKIE_RENEWALS` of the one CPU the test runs on: per slot, the listener last
    /// renewed there and when (an absent slot is a zeroed one).
    renewals: HashMap<u32, RenewalSlot>,
    /// `CLOSED_FILTER`: the entries client FINs stamped, lines and latest stamps (an absent
    /// entry is a zeroed one).
    closed: HashMap<u32, ClosedLine>,
    /// Cookies the kernel answered SYNs with in this sequence: per tuple, (client ISN,
    /// cookie) pairs, as `issued` was told them.
    cookies: HashMap<FlowKey, Vec<(u32, u32)>>,
    /// Paths no counter tells apart, counted so the run can show it reached them.
    pub reached: Reached,
}

/// Paths of the fast path and the shield that share a counter with others.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reached {
    /// Cookie ACKs the shield checked and found valid (passed as `tcp`).
    pub valid_cookie_acks: u64,
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
            renewals: HashMap::new(),
            closed: HashMap::new(),
            cookies: HashMap::new(),
            reached: Reached::default(),
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
            if !is_local(&seg) {
                return Counter::PassNotLocal;
            }
            // detector-ebpf/src/ports.rs: no per-port policy is generated, so every port is
            // protected with the config's limits.
            assert!(!detector_common::ports::needs_lookup(&self.cfg), "the model has no port table");
            let counter = if self.cfg.has(FLAG_COOKIES) {
                self.screen_for_cookie(&seg, now)
                    .or_else(|| self.policy(&seg))
                    .unwrap_or_else(|| self.answer_syn(&seg, frame, now, ev, reply))
            } else {
                self.on_syn(&seg, now, ev)
            };
            return if self.cfg.has(FLAG_ENFORCE) { counter } else { counter.monitored() };
        }
        // main.rs `on_segment`: the FIN filter (fastpath.rs `on_segment`), handshake
        // completion, the ACK shield.
        if seg.flags & tcp_flags::FIN != 0 {
            let at = closed_filter::spot(&seg.flow(), closed_filter::line_bits(&self.cfg));
            for (entry, cell) in at.fin_bytes() {
                self.closed.entry(entry).or_default().cells[cell] = closed_filter::stamp(now);
            }
        }
        if seg.may_complete_handshake() {
            self.on_ack(&seg, now, ev);
        }
        if ackshield::screens(&self.cfg, seg.flags) {
            if let Some(drop) = self.screen_ack(&seg, frame) {
                return drop;
            }
        }
        Counter::PassTcp
    }

    /// The cookie the kernel last answered a SYN of `seg`'s flow with in this sequence, for
    /// the client ISN `seg.seq - 1` (what a `Kind::CookieAck` acknowledges).
    pub fn cookie_for(&self, seg: &TcpSegment) -> Option<u32> {
        let isn = seg.seq.wrapping_sub(1);
        self.cookies.get(&seg.flow())?.iter().rev().find(|(i, _)| *i == isn).map(|(_, c)| *c)
    }

    /// The kernel answered the SYN `seg` with `cookie` (read from its reply).
    pub fn issued(&mut self, seg: &TcpSegment, cookie: u32) {
        self.cookies.entry(seg.flow()).or_default().push((seg.seq, cookie));
    }

    /// detector-ebpf/src/ackshield.rs `screen_ack`.
    fn screen_ack(&mut self, seg: &TcpSegment, frame: &[u8]) -> Option<Counter> {
        if !is_local(seg) || self.policy(seg).is_some() {
            return None;
        }
        let (l3, l4) = (usize::from(seg.l3_offset), usize::from(seg.l4_offset));
        let ip_len = if seg.version == IpVersion::V4 { 20 } else { 40 };
        if l4 != l3 + ip_len || l3 > MAX_L3 || l3 + 40 > frame.len() || l4 + 20 > frame.len() {
            return None;
        }
        // The listener on `LISTEN_PORT` (any address, both versions) is the only socket.
        let owner = if seg.dst_port == LISTEN_PORT { Owner::Listener } else { Owner::Nobody };
        let reached = &mut self.reached;
        ackshield::verdict(owner, || {
            // bpf_tcp_raw_check_syncookie_*: ack_seq - 1 is a cookie for this tuple and
            // the client ISN seq - 1.
            let valid = self.cookies.get(&seg.flow()).is_some_and(|issued| {
                issued.contains(&(seg.seq.wrapping_sub(1), seg.ack_seq.wrapping_sub(1)))
            });
            reached.valid_cookie_acks += u64::from(valid);
            valid
        })
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
        let flow = seg.flow();
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
        let port_slot = match seg.dst_port {
            LISTEN_PORT => p.listen_port_slot,
            CLOSED_PORT if p.closed_no_listener => PORT_NO_LISTENER,
            _ => PORT_DEFAULT,
        };
        cookie_policy(
            &self.cfg,
            port_slot,
            seg.vlan_tags,
            || p.kernel_dest6 && seg.dst == SERVER6,
            || if p.vlan_stripped { IFACE_VLAN_STRIPPED } else { 0 },
        )
    }

    /// detector-ebpf/src/cookie.rs `answer_syn`/`respond`, fastpath.rs `path` and
    /// syncookie.rs `gen_cookie`: SYNs with IP options or extension headers are left to the
    /// kernel; within a second of a socket-bound answer for the same listener (and not for a
    /// tuple behind a recent FIN) the raw helper answers without a lookup; else the lookup
    /// finds the listener on `LISTEN_PORT` only, and the helper must then answer every SYN
    /// the parser accepted, renewing the listener.
    fn answer_syn(
        &mut self,
        seg: &TcpSegment,
        frame: &[u8],
        now: u64,
        ev: &mut [u64],
        reply: &mut Option<ReplyPlan>,
    ) -> Counter {
        let l3 = usize::from(seg.l3_offset);
        let l4 = usize::from(seg.l4_offset);
        let ip_len = if seg.version == IpVersion::V4 { 20 } else { 40 };
        if l4 != l3 + ip_len || l3 > MAX_L3 {
            return Counter::PassCookieUnsupported;
        }
        let slot = renewal_index(&seg.dst, seg.dst_port);
        let last_renewal = self.renewals.get(&slot).and_then(|s| s.renewal_of(&seg.dst, seg.dst_port));
        let at = closed_filter::spot(&seg.flow(), closed_filter::line_bits(&self.cfg));
        let unwritten = ClosedLine::default();
        let time_wait =
            closed_filter::may_be_time_wait(&at, now, |i| Some(self.closed.get(&i).unwrap_or(&unwritten)));
        let path = if self.cfg.has(FLAG_RAW_COOKIES) {
            cookie_path(last_renewal, time_wait, now)
        } else {
            CookiePath::SocketBound
        };
        let answered = match path {
            CookiePath::Raw => Counter::TxCookieFast,
            CookiePath::SocketBound => {
                if time_wait
                    && self.cfg.has(FLAG_RAW_COOKIES)
                    && cookie_path(last_renewal, false, now) == CookiePath::Raw
                {
                    ev[Counter::ClosedFilterLookup as usize] += 1;
                }
                if seg.dst_port != LISTEN_PORT {
                    return Counter::PassCookieNoListener;
                }
                self.renewals.insert(slot, RenewalSlot::renewed(&seg.dst, seg.dst_port, now));
                Counter::TxCookie
            }
        };
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
        answered
    }

    /// detector-ebpf/src/track.rs `on_ack`.
    fn on_ack(&mut self, seg: &TcpSegment, now: u64, ev: &mut [u64]) {
        let flow = seg.flow();
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

/// detector-ebpf/src/policy.rs `is_local`: `LOCAL_TABLE` (and `LOCAL_ADDRS`) hold the two
/// server addresses.
fn is_local(seg: &TcpSegment) -> bool {
    seg.dst == detector_common::parse::ipv4_mapped(SERVER4) || seg.dst == SERVER6
}
