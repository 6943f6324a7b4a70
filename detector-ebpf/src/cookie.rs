//! The cookie responder: answer a SYN to a local listener with a SYN-ACK built in place
//! (XDP_TX), its cookie from the kernel's socket-bound helper or, within a second of one
//! such answer for the same listener, from the raw helper (`fastpath`).
//!
//! The socket-bound `bpf_tcp_gen_syncookie` marks the listener as recently overflowed,
//! which is what makes the kernel accept the returning cookie ACK without netfilter; the
//! raw helpers leave no mark, so they only answer while a recent socket-bound call keeps
//! it fresh (docs/cookies.md). The helper calls live in `syncookie` and `fastpath`. Needs
//! kernel >= 6.0 and, for the helper to answer at all, `net.ipv4.tcp_syncookies = 2` (set
//! by the agent while cookies are on).

use core::{
    hint::black_box,
    intrinsics::{atomic_xadd, AtomicOrdering},
};

use aya_ebpf::{
    helpers::generated::{bpf_xdp_adjust_tail, bpf_xdp_get_buff_len},
    macros::map,
    maps::Array,
    programs::XdpContext,
};
use detector_common::{
    config::{Config, FLAG_COOKIE_ECN, FLAG_COOKIE_TIMESTAMPS},
    counters::Counter,
    fastpath::CookiePath,
    parse::{IpVersion, TcpSegment, ETH_HEADER_LEN},
    reply_frame::{reply_frame, ReplyFrame, MAX_TRAILER_WORDS},
    synack::{
        build_synack_into, ipv4_reply_words, ipv6_reply_words, synack_len, ReplySettings,
        SYNACK_LEN_MSS_ONLY, SYNACK_LEN_WITH_TS, SYNACK_WORDS_MSS_ONLY,
    },
    synopts::reply_reads_options,
};

use crate::{
    fastpath,
    packet::{opaque, reread, store, store_word, store_words, swap_macs, MAX_L3, MAX_L4},
    syncookie::{gen_cookie, read_options, Cookie},
};

const NS_PER_SEC: u64 = 1_000_000_000;
const NS_PER_MS: u64 = 1_000_000;

/// One slot shared by all CPUs: [start of the current second, SYN-ACKs sent in it], so
/// that `cookie_budget_per_second` holds host-wide (see `answer_syn`).
#[map(name = "COOKIE_BUDGET")]
static COOKIE_BUDGET: Array<[u64; 2]> = Array::with_max_entries(1, 0);

/// What cookie mode's answer (`cookie_syn` in main.rs) leaves to the entry point: a
/// counter, or the rare step that is a BPF-to-BPF call of its own, blocking a heavy source.
pub enum CookieStep {
    Done(Counter),
    /// The sketch put the source over its limit: `track::block_heavy_source`.
    BlockSource,
}

/// Answers a SYN with a cookie, from the raw helper or the socket-bound one, or says why
/// not. The caller has already screened the source (blocked, heavy hitter) and the
/// policy; inlined into the entry point (`cookie_syn`).
#[inline(always)]
pub fn answer_syn(ctx: &XdpContext, seg: &TcpSegment, cfg: &Config, now: u64) -> Counter {
    let sent = match budget_left(cfg, now) {
        Ok(sent) => sent,
        Err(reason) => return reason,
    };
    // A failure leaves the frame at the SYN's length: only `send_reply` resizes it, and
    // puts it back itself if the reply cannot be written.
    match respond(ctx, seg, cfg, now) {
        Ok(answered) => {
            // SAFETY: `budget_left`'s pointer into the budget's map value.
            unsafe { atomic_add(sent, 1) };
            answered
        }
        Err(reason) => reason,
    }
}

/// The budget's two words, [start of the current second, SYN-ACKs sent in it]; `None`
/// cannot happen (slot 0 of an array).
#[inline(always)]
fn budget_words() -> Option<(*mut u64, *mut u64)> {
    let window_start = COOKIE_BUDGET.get_ptr_mut(0)?.cast::<u64>();
    // SAFETY: the second u64 of the two-u64 map value.
    Some((window_start, unsafe { window_start.add(1) }))
}

/// If this second's budget has room for one more SYN-ACK, the word that counts them, to
/// add the answer to once it is built (`atomic_add`). `Err`: over budget, or (unreachable)
/// no budget slot, which fails open as before.
#[inline(always)]
fn budget_left(cfg: &Config, now: u64) -> Result<*mut u64, Counter> {
    // Shared by all CPUs: plain (volatile) loads and stores, single instructions that are
    // never torn, and one atomic add for the count. (LLVM's bpf backend has no atomic
    // loads or stores below cpu v4, hence not `AtomicU64`.)
    let (window_start, sent) = budget_words().ok_or(Counter::PassMapError)?;
    // Window reset, racy but benign: a CPU that saw the second expired and resets it may
    // wipe what other CPUs counted between its load and its store. XDP runs without
    // preemption, so that is an instant: a few SYN-ACKs over budget once per second at
    // worst, never compounding. A lock or a compare-and-swap on every SYN would cost more.
    // SAFETY: a live, 8-byte aligned array map value (so are the accesses below).
    if now.wrapping_sub(unsafe { window_start.read_volatile() }) >= NS_PER_SEC {
        // SAFETY: as above.
        unsafe {
            window_start.write_volatile(now);
            sent.write_volatile(0);
        }
    }
    // Checked now, counted once the reply is built: CPUs answering at the same moment can
    // each pass the check, so the budget may be overshot by up to one per CPU.
    // SAFETY: as above.
    if unsafe { sent.read_volatile() } >= u64::from(cfg.cookie_budget_per_second) {
        return Err(Counter::DropCookieBudget);
    }
    Ok(sent)
}

/// `*dst += n`, atomically, result unused: one BPF atomic add (`lock xadd`, any kernel).
/// The bpf target has no compare-and-swap, so core leaves `AtomicU64::fetch_add` out;
/// the intrinsic it would call is what LLVM lowers to that instruction.
///
/// # Safety
/// `dst` must be valid and 8-byte aligned.
#[inline(always)]
unsafe fn atomic_add(dst: *mut u64, n: u64) {
    // SAFETY: upheld by the caller.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(dst, n) };
}

/// Whether the frame is exactly `len` bytes long, by two pointer comparisons: the
/// common case of a SYN that ends with its TCP header then costs no helper call
/// (`frame_len`: the call and its return about 12 ns, perf in docs/hotpaths.md). The
/// program is not multi-buffer aware (no `xdp.frags`), so the frame is `data..data_end`
/// whole.
#[inline(always)]
fn frame_is(ctx: &XdpContext, len: usize) -> bool {
    // Bounded for the verifier (a packet pointer plus a scalar below 64 KiB).
    if len > MAX_L4 + 60 {
        return false;
    }
    let end = ctx.data_end();
    // Opaque: LLVM would otherwise fold the two comparisons into one `==` between packet
    // pointers, which the verifier refuses without pointer-leak rights.
    let at = opaque(ctx.data() + len);
    at <= end && opaque(at + 1) > end
}

/// The frame's length. From the helper (kernel >= 5.18), because `data_end - data` is
/// arithmetic on the packet-end pointer, which the verifier refuses.
#[inline(always)]
fn frame_len(ctx: &XdpContext) -> usize {
    // SAFETY: a helper call on our own context.
    #[allow(clippy::cast_possible_truncation, reason = "a frame is far below 4 GiB")]
    unsafe {
        bpf_xdp_get_buff_len(ctx.ctx) as usize
    }
}

/// Resizes the frame by `delta` bytes; false if the kernel refused (only growth can fail).
/// Not called at all when the frame is kept (`reply_frame`: a reply as long as the SYN,
/// or shorter than a SYN that ends with its headers): a helper call saved.
#[inline(always)]
fn adjust_tail(ctx: &XdpContext, delta: i32) -> bool {
    // SAFETY: a helper call on our own context.
    unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) == 0 }
}

/// Answers the SYN: `TxCookieFast` with the raw helper's cookie, `TxCookie` with the
/// socket-bound helper's (the listener's renewal, or a flow the closed filter may hold in
/// TIME_WAIT). One reply builder for both.
#[inline(always)]
fn respond(ctx: &XdpContext, seg: &TcpSegment, cfg: &Config, now: u64) -> Result<Counter, Counter> {
    let mut cookie = Cookie::default();
    // First, before anything below forks on the IP version (see `read_options`). Only
    // for a reply that uses them: a reply without timestamps reads none, and the call
    // (a return through the kernel's return thunk) is saved.
    if reply_reads_options(cfg) {
        read_options(ctx, seg, &mut cookie.opts)?;
    }
    let l3 = usize::from(seg.l3_offset);
    let l4 = usize::from(seg.l4_offset);
    let ip_len = match seg.version {
        IpVersion::V4 => 20,
        IpVersion::V6 => 40,
    };
    // IPv4 options or IPv6 extension headers would have to be stripped or echoed: leave
    // such (rare) SYNs to the kernel.
    if l4 != l3 + ip_len || l3 > MAX_L3 {
        return Err(Counter::PassCookieUnsupported);
    }
    // The raw helper within a second of a socket-bound answer for this listener, else
    // the socket-bound one, which renews the listener's overflow stamp (fastpath.rs).
    let answered = match fastpath::path(seg, cfg, now) {
        CookiePath::Raw => {
            fastpath::raw_cookie(ctx, seg, &mut cookie)?;
            Counter::TxCookieFast
        }
        CookiePath::SocketBound => {
            // A BPF-to-BPF call, its socket tuple in its own frame (docs/verifier.md).
            gen_cookie(ctx, seg, &mut cookie)?;
            fastpath::renewed(seg, now);
            Counter::TxCookie
        }
    };
    send_reply(ctx, seg, cfg, &cookie, now)?;
    Ok(answered)
}

/// Makes the frame the SYN-ACK's length, or keeps the SYN's with a zeroed trailer
/// (`reply_frame`), and builds the SYN-ACK over the SYN.
/// One copy for both helpers' answers, inlined: as a BPF-to-BPF call its return cost 1-4 %
/// of an answered SYN (docs/hotpaths.md).
#[inline(always)]
fn send_reply(
    ctx: &XdpContext,
    seg: &TcpSegment,
    cfg: &Config,
    cookie: &Cookie,
    now: u64,
) -> Result<(), Counter> {
    // Inlined after the lookups and the helper: without this, LLVM kept the address words
    // the closed filter's hash loaded for the reply, spilled (the answer's frame
    // grew to 400 bytes).
    let seg = reread(seg);
    let settings = ReplySettings {
        timestamps: cfg.has(FLAG_COOKIE_TIMESTAMPS),
        ecn: cfg.has(FLAG_COOKIE_ECN),
        wscale: cfg.synack_wscale,
        window: cfg.synack_window,
    };
    let tcp_len = synack_len(&cookie.opts, &settings);
    let l4 = usize::from(seg.l4_offset);
    // Resized first, so that the headers are written straight into the frame as they
    // are built (drops the grown tail and any SYN payload).
    let target = l4 + usize::from(tcp_len);
    // A SYN that ends with its TCP header (no payload, no padding: what Linux and most
    // clients send) has a known length, and only a longer frame costs the helper.
    let syn_len = l4 + usize::from(seg.tcp_header_len);
    let headers_end_frame = frame_is(ctx, syn_len);
    let frame = if headers_end_frame { syn_len } else { frame_len(ctx) };
    // A reply shorter than such a SYN keeps its length: no resize, a trailer instead.
    let (delta, trailer_words) = match reply_frame(frame, headers_end_frame, target) {
        ReplyFrame::Keep { trailer_words } => (0, trailer_words),
        ReplyFrame::Resize { delta } => (delta, 0),
    };
    // Only growth can fail: a SYN shorter than its reply, in a buffer without tailroom.
    // The kernel answers it instead.
    if delta != 0 && !adjust_tail(ctx, delta) {
        return Err(Counter::PassCookieNoRoom);
    }
    // Hidden from LLVM, which otherwise threaded the `delta != 0` test of the failure path
    // below back to this one and built the whole reply twice (send_reply 439 -> 806
    // instructions).
    let delta = black_box(delta);
    #[allow(clippy::cast_possible_truncation, reason = "the TCP millisecond clock wraps")]
    let now_ms = (now / NS_PER_MS) as u32;
    if write_reply(ctx, seg, cookie, &settings, now_ms, tcp_len).is_none() {
        // Cannot happen (the kernel set the length just checked); if it did, the kernel
        // gets the SYN back at its length: a SYN with data (TCP Fast Open) cut short would
        // reach it without its data and be retransmitted by the client.
        if delta != 0 {
            adjust_tail(ctx, -delta);
        }
        return Err(Counter::PassCookieHelperError);
    }
    zero_trailer(ctx, target, trailer_words);
    Ok(())
}

/// Zeroes `words` 4-byte words from `from` bytes into the frame: the SYN's bytes left
/// after a reply shorter than it (`reply_frame`). The frame is the SYN's, so they are
/// inside it; each store still checks the end itself, for the verifier. Two words to a
/// store, then an odd one: the trailer of a Linux SYN answered MSS-only, four words, is
/// two checks and two stores instead of four of each (docs/hotpaths.md).
#[inline(always)]
fn zero_trailer(ctx: &XdpContext, from: usize, words: u8) {
    // Bounded for the verifier, as in `frame_is`.
    if words == 0 || from > MAX_L4 + usize::from(SYNACK_LEN_WITH_TS) {
        return;
    }
    let start = ctx.data() + from;
    let end = ctx.data_end();
    let words = usize::from(words);
    for pair in 0..MAX_TRAILER_WORDS / 2 {
        let at = start + 8 * pair;
        if 2 * pair + 2 > words || at + 8 > end {
            break;
        }
        // SAFETY: inside the frame, checked just above.
        unsafe { store(at, &[0; 8]) };
    }
    if words % 2 == 1 {
        // Opaque: LLVM would otherwise compute `start + 4 * words` for the check and a
        // pointer 4 bytes below it for the store, which the verifier cannot tie together.
        let at = start + 4 * black_box(words - 1);
        if at + 4 <= end {
            // SAFETY: inside the frame, checked just above.
            unsafe { store_word(at, 0) };
        }
    }
}

/// Writes the reply over the SYN: MACs swapped, new IP and TCP headers, each TCP word
/// stored as `build_synack_into` makes it. VLAN tags between the MACs and the IP header stay as they
/// are. `None` only if the frame is not the length just set, which the kernel guarantees
/// it is.
#[inline(always)]
fn write_reply(
    ctx: &XdpContext,
    seg: &TcpSegment,
    cookie: &Cookie,
    settings: &ReplySettings,
    now_ms: u32,
    tcp_len: u8,
) -> Option<()> {
    let l3 = usize::from(seg.l3_offset);
    let l4 = usize::from(seg.l4_offset);
    let data = ctx.data();
    let end = ctx.data_end();
    if l3 > MAX_L3 || l4 > MAX_L4 {
        return None;
    }
    // Every pointer written through is range-checked itself (see gen_cookie).
    let iph = black_box(data + l3);
    let th = black_box(data + l4);
    if data + ETH_HEADER_LEN > end
        || iph + 40 > end
        || th + usize::from(SYNACK_LEN_MSS_ONLY) > end
        || th + usize::from(tcp_len) > end
    {
        return None;
    }
    // SAFETY: every write below is inside data..end, checked above (an IPv4 reply is
    // l3 + 44 bytes or more, so 40 bytes from iph are inside it for both versions).
    // Headers go out as words from registers (docs/hotpaths.md, "The cookie path").
    unsafe {
        swap_macs(data);
        match seg.version {
            IpVersion::V4 => store_words(iph, &ipv4_reply_words(seg, tcp_len)),
            IpVersion::V6 => store_words(iph, &ipv6_reply_words(seg, tcp_len)),
        }
    }
    // The words past the MSS option only exist in the longer layout. The verifier cannot
    // link the builder's choice of layout to the length checked above, so the first of
    // them checks the end itself, once: one fork for the verifier, not one per word.
    let mut tail_fits = None;
    build_synack_into(seg, &cookie.opts, cookie.cookie, cookie.mss, now_ms, settings, |i, w| {
        // `i` is a constant at each call: these branches fold away where they can.
        if i >= SYNACK_WORDS_MSS_ONLY
            && !*tail_fits.get_or_insert_with(|| th + usize::from(SYNACK_LEN_WITH_TS) <= end)
        {
            return;
        }
        // SAFETY: inside the frame: below th + 24 (checked above) or th + 40 (just checked).
        unsafe { store_word(th + 4 * i, w) };
    });
    (tail_fits != Some(false)).then_some(())
}
