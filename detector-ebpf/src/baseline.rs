//! Baseline programs for `cargo xtask bench`, which reports our paths as ratios to these:
//! a trivial XDP_PASS (the cost of a test run itself), a trivial XDP_TX that swaps MACs,
//! the "helper floor": listener lookup plus cookie helper and nothing else, the least
//! any socket-bound cookie responder must spend, the "raw floor": the raw cookie
//! helper alone, and the "minimal responder": the raw helper and a SYN-ACK built in place,
//! the least any program that answers a SYN must spend; the "ruled responder": the minimal
//! responder behind our rules' random reads (the source's sketch cells, the closed filter's
//! line), the least a responder that keeps those rules must spend; the "drop floor":
//! one source lookup and the coarse clock (read as ours reads it), the least a drop that
//! accounts the SYN to its blocked source must spend; and the "table drop floor": the same
//! with the source found in a direct-mapped table read in place instead of a hash map,
//! what such an accounting structure would cost. The agent never attaches them.

use core::ffi::c_void;

use detector_common::{
    block_filter,
    blocked_table::{BlockedBucket, BLOCKED_TABLE_BUCKETS},
    checksum,
    closed_filter::{self, ClosedLine},
    config::Config,
    parse::{ipv4_mapped, two_words},
    sketch,
    state::{FlowKey, SourceKey, SourceState},
};

use aya_ebpf::{
    bindings::{iphdr, tcphdr, xdp_action, BPF_F_CURRENT_NETNS},
    helpers::generated::{
        bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_gen_syncookie, bpf_tcp_raw_gen_syncookie_ipv4,
        bpf_xdp_adjust_tail,
    },
    macros::{map, xdp},
    maps::{Array, LruHashMap},
    programs::XdpContext,
};

#[xdp]
pub fn baseline_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn baseline_tx(ctx: XdpContext) -> u32 {
    let data = ctx.data();
    if data + 12 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: 12 bytes checked just above.
    unsafe { crate::packet::swap_macs(data) };
    xdp_action::XDP_TX
}

/// The floors' frames: untagged IPv4 without options, a TCP header of 20..=60 bytes, the
/// frame at least 14 + 20 + 60 bytes long (the bench pads it). The IP and TCP header
/// addresses and the TCP header length; `None` for any other frame.
#[inline(always)]
fn floor_headers(ctx: &XdpContext) -> Option<(usize, usize, u32)> {
    let iph = ctx.data() + 14;
    let th = iph + 20;
    if th + 60 > ctx.data_end() {
        return None;
    }
    // SAFETY: byte 12 of the TCP header is inside the range checked above.
    let doff = core::hint::black_box(unsafe { *((th + 12) as *const u8) } >> 4);
    let th_len = u32::from(doff & 0x0f) * 4;
    (20..=60).contains(&th_len).then_some((iph, th, th_len))
}

/// XDP_TX when a helper made a cookie (`ret` not negative), XDP_PASS otherwise, so the
/// bench can check which path ran.
#[inline(always)]
fn floor_verdict(ret: i64) -> u32 {
    if ret < 0 {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_TX
    }
}

/// The "helper floor": listener lookup plus socket-bound cookie helper, no parsing beyond
/// what the helper needs.
#[xdp]
pub fn baseline_helper_floor(ctx: XdpContext) -> u32 {
    let Some((iph, th, th_len)) = floor_headers(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: reads inside the range `floor_headers` checked; helper calls with the socket
    // released.
    unsafe {
        let ip = core::ptr::read_unaligned(iph as *const [u8; 20]);
        let tcp = core::ptr::read_unaligned(th as *const [u8; 20]);
        let mut tuple: aya_ebpf::bindings::bpf_sock_tuple = core::mem::zeroed();
        tuple.__bindgen_anon_1.ipv4.saddr = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
        tuple.__bindgen_anon_1.ipv4.daddr = u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]);
        tuple.__bindgen_anon_1.ipv4.sport = u16::from_ne_bytes([tcp[0], tcp[1]]);
        tuple.__bindgen_anon_1.ipv4.dport = u16::from_ne_bytes([tcp[2], tcp[3]]);
        #[allow(clippy::cast_sign_loss, reason = "helper ABI: -1 is the current netns")]
        let sk =
            bpf_skc_lookup_tcp(ctx.ctx.cast::<c_void>(), &raw mut tuple, 12, BPF_F_CURRENT_NETNS as u64, 0);
        if sk.is_null() {
            return xdp_action::XDP_PASS;
        }
        let ret = bpf_tcp_gen_syncookie(sk.cast(), iph as *mut c_void, 20, th as *mut tcphdr, th_len);
        bpf_sk_release(sk.cast());
        floor_verdict(ret)
    }
}

/// The "raw floor": the raw helper (`bpf_tcp_raw_gen_syncookie_ipv4`, no socket lookup)
/// and nothing else, on the same frames. What the fast path cannot go below, whatever it
/// does around the helper.
#[xdp]
pub fn baseline_raw_floor(ctx: XdpContext) -> u32 {
    let Some((iph, th, th_len)) = floor_headers(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: the helper reads the IP header and th_len (at most 60) bytes of TCP header,
    // inside the range `floor_headers` checked; it checks th_len against the header's doff.
    floor_verdict(unsafe { bpf_tcp_raw_gen_syncookie_ipv4(iph as *mut iphdr, th as *mut tcphdr, th_len) })
}

/// The "minimal responder": the raw helper's cookie answered with a SYN-ACK built in
/// place (MACs, addresses and ports swapped, an MSS option only, both checksums summed
/// from registers), the frame trimmed to the reply, XDP_TX. No policy, no tracking, no
/// options read: what any program that answers a SYN with a raw cookie must do, written
/// as cheaply as we know how. Not a valid reply for every SYN (no timestamps, a fixed
/// window); the bench only times it.
#[xdp]
pub fn baseline_min_responder(ctx: XdpContext) -> u32 {
    floor_headers(&ctx).map_or(xdp_action::XDP_PASS, |headers| answer_raw(&ctx, headers))
}

/// The ruled responder's sketch width: the bench's for `SKETCH` (16,384 cells a row).
const RULED_WIDTH: u32 = 16_384;

/// The rules' settings the ruled responder uses: a sketch as wide as the bench's, a seed,
/// a SYN-rate limit no bench source reaches, and the hot mark the agent derives from it.
const RULED: Config = {
    let mut c = Config::new(u32::MAX, 0, 0, 0);
    c.sketch_width = RULED_WIDTH;
    c.sketch_seed = 0x5eed_1234;
    c.sketch_hot_mark = sketch::hot_mark(u32::MAX);
    c
};

#[map(name = "RULED_SKETCH")]
static RULED_SKETCH: Array<u64> = Array::with_max_entries(sketch::words(RULED_WIDTH), 0);

#[map(name = "RULED_CLOSED")]
static RULED_CLOSED: Array<ClosedLine> =
    Array::with_max_entries(closed_filter::entries(closed_filter::DEFAULT_LINE_BITS), 0);

/// The "ruled responder": the minimal responder behind the two rules of ours whose reads
/// land at random places, so that under a many-source flood each is a cache miss: the
/// source's sketch cells counted as cookie mode counts them (by our own
/// `track::sketch_estimate` and the hot mark, on a sketch of its own) and the flow's
/// closed filter checked as ours checks it (`closed_filter::may_be_time_wait`: the line's
/// latest stamp, and the line only when that is recent), on the
/// coarse clock as ours reads it.
/// A source over the limit is dropped and a flow that may be in TIME_WAIT passed, as ours
/// does; neither happens in the bench.
/// No parser, no local-address check, no per-port config, no counters, no budget.
#[xdp]
pub fn baseline_ruled_responder(ctx: XdpContext) -> u32 {
    let Some(headers @ (iph, th, _)) = floor_headers(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: `floor_headers` checked th + 60 against the frame's end, and iph + 20 = th.
    let (ip, ports) = unsafe { (crate::packet::load::<20>(iph), crate::packet::load::<4>(th)) };
    let src = ipv4_mapped([ip[12], ip[13], ip[14], ip[15]]);
    let dst = ipv4_mapped([ip[16], ip[17], ip[18], ip[19]]);
    let now = crate::clock::coarse_now();
    let Some(estimate) = crate::track::sketch_estimate(
        &RULED_SKETCH,
        &SourceKey { addr: src },
        &RULED,
        now,
        RULED.sketch_hot_mark,
    ) else {
        return xdp_action::XDP_PASS;
    };
    if estimate > RULED.syn_rate_limit {
        return xdp_action::XDP_DROP;
    }
    let flow = FlowKey {
        src,
        dst,
        src_port: u16::from_be_bytes([ports[0], ports[1]]),
        dst_port: u16::from_be_bytes([ports[2], ports[3]]),
    };
    let at = closed_filter::spot(&flow, closed_filter::DEFAULT_LINE_BITS);
    if closed_filter::may_be_time_wait(&at, now, |i| RULED_CLOSED.get(i)) {
        return xdp_action::XDP_PASS;
    }
    answer_raw(&ctx, headers)
}

/// The minimal responder's answer (see `baseline_min_responder`) to the SYN whose headers
/// `floor_headers` found.
#[inline(always)]
fn answer_raw(ctx: &XdpContext, (iph, th, th_len): (usize, usize, u32)) -> u32 {
    /// Ethernet + IPv4 without options + TCP with the 4-byte MSS option.
    const REPLY_LEN: usize = 14 + 20 + 24;
    // SAFETY: as in `baseline_raw_floor`.
    let ret = unsafe { bpf_tcp_raw_gen_syncookie_ipv4(iph as *mut iphdr, th as *mut tcphdr, th_len) };
    if ret < 0 {
        return xdp_action::XDP_PASS;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "cookie | mss << 32")]
    let (cookie, mss) = (ret as u32, (ret >> 32) as u16);
    // SAFETY: `floor_headers` checked th + 60 against the frame's end, and iph + 20 = th.
    let (ip, tcp) = unsafe { (crate::packet::load::<20>(iph), crate::packet::load::<8>(th)) };

    let mut ip_out = ip;
    ip_out[2..4].copy_from_slice(&(REPLY_LEN as u16 - 14).to_be_bytes());
    ip_out[8] = 64;
    ip_out[10..12].copy_from_slice(&[0, 0]);
    ip_out[12..16].copy_from_slice(&ip[16..20]);
    ip_out[16..20].copy_from_slice(&ip[12..16]);
    let ip_sum = checksum::finish(checksum::add_bytes(0, &ip_out));
    ip_out[10..12].copy_from_slice(&ip_sum.to_be_bytes());

    let client_seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let mut t = [0u8; 24];
    t[0..2].copy_from_slice(&tcp[2..4]);
    t[2..4].copy_from_slice(&tcp[0..2]);
    t[4..8].copy_from_slice(&cookie.to_be_bytes());
    t[8..12].copy_from_slice(&client_seq.wrapping_add(1).to_be_bytes());
    t[12] = 6 << 4;
    t[13] = 0x12; // SYN | ACK
    t[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    t[20..24].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
    // The pseudo-header: both addresses (their sum does not care which is which), the
    // protocol and the TCP length.
    let pseudo =
        checksum::add_bytes(0, &[ip[12], ip[13], ip[14], ip[15], ip[16], ip[17], ip[18], ip[19]]) + 6 + 24;
    let tcp_sum = checksum::finish(checksum::add_bytes(pseudo, &t));
    t[16..18].copy_from_slice(&tcp_sum.to_be_bytes());

    // SAFETY: the MACs, iph..iph + 20 and th..th + 24 are inside the checked range.
    unsafe {
        // From the checked pointer: a fresh `ctx.data()` would be unchecked for the verifier.
        crate::packet::swap_macs(iph - 14);
        crate::packet::store(iph, &ip_out);
        crate::packet::store(th, &t);
    }
    let len = ctx.data_end() - ctx.data();
    if len != REPLY_LEN {
        #[allow(clippy::cast_possible_wrap, clippy::cast_possible_truncation, reason = "a frame's length")]
        let delta = REPLY_LEN as i32 - len as i32;
        // SAFETY: shrinks the frame to the reply, which lies inside it.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
            return xdp_action::XDP_PASS;
        }
    }
    xdp_action::XDP_TX
}

/// The drop floor's sources: the bench fills it with the same blocked sources, key and value
/// types, map kind and size as the real program's `SOURCES`.
#[map(name = "FLOOR_SOURCES")]
static FLOOR_SOURCES: LruHashMap<SourceKey, SourceState> = LruHashMap::with_max_entries(65_536, 0);

/// The "drop floor": what a drop that keeps today's accounting cannot do without. The
/// source read at a fixed offset (untagged IPv4), looked up as `SOURCES` is, its block
/// checked on the coarse clock as ours reads it (`clock::coarse_now`, once per tick), the
/// SYN counted to it, XDP_DROP. No parser, no
/// local-address check, no config, no counters.
#[xdp]
pub fn baseline_drop_floor(ctx: XdpContext) -> u32 {
    let Some(key) = floor_source(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    let Some(state) = FLOOR_SOURCES.get_ptr_mut(&key) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: a live map value.
    let (state, now) = (unsafe { &mut *state }, crate::clock::coarse_now());
    if now >= state.blocked_until_ns {
        return xdp_action::XDP_PASS;
    }
    state.last_seen_ns = now;
    state.syns_total = state.syns_total.saturating_add(1);
    xdp_action::XDP_DROP
}

/// The table drop floor's blocked sources, filled by the bench with the same sources as
/// `FLOOR_SOURCES`, in the block cache's buckets (`blocked_table::BlockedBucket`, at the
/// address's `block_filter::bucket`).
#[map(name = "FLOOR_TABLE")]
static FLOOR_TABLE: Array<BlockedBucket> = Array::with_max_entries(BLOCKED_TABLE_BUCKETS, 0);

/// The "table drop floor": the drop floor with its hash lookup replaced by one read in
/// place, as the block cache (`block_cache.rs`) reads: the source's bucket (one 64-byte
/// line), its two slots compared word by word, the block checked on the same clock, the
/// SYN counted in the slot. A hash map's lookup hashes the key, walks the bucket's list and
/// compares the key with an out-of-line `memcmp` (a call, through the return thunk on this
/// machine): this measures what a table of that shape saves (docs/hotpaths.md).
#[xdp]
pub fn baseline_drop_table_floor(ctx: XdpContext) -> u32 {
    // Through a `SourceKey` (aligned to 8), the hash reads the address as words.
    let Some(key) = floor_source(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    let Some(bucket) = FLOOR_TABLE.get_ptr_mut(block_filter::bucket(&key.addr)) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: a live map value.
    let (bucket, now) = (unsafe { &mut *bucket }, crate::clock::coarse_now());
    let Some(slot) = bucket.find(two_words(key.addr)) else {
        return xdp_action::XDP_PASS;
    };
    if now >= slot.until_ns {
        return xdp_action::XDP_PASS;
    }
    slot.unfolded = slot.unfolded.wrapping_add(1);
    xdp_action::XDP_DROP
}

/// The drop floors' source: the IPv4 source at its fixed offset in an untagged frame,
/// IPv4-mapped as `SOURCES` keys it. `None` for a frame too short to hold it.
#[inline(always)]
fn floor_source(ctx: &XdpContext) -> Option<SourceKey> {
    let data = ctx.data();
    if data + 34 > ctx.data_end() {
        return None;
    }
    // SAFETY: bytes 26..30 (the IPv4 source) are inside the range checked above.
    let src = unsafe { crate::packet::load::<4>(data + 26) };
    Some(SourceKey { addr: ipv4_mapped(src) })
}

/// The floor of any drop path: the bench compares the blocked-source drop with it.
#[xdp]
pub fn baseline_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}
