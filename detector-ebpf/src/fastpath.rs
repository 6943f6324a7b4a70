//! The cookie fast path: the raw helper (`bpf_tcp_raw_gen_syncookie_ipv4/6`, no socket
//! lookup) answers for a listener within a second of a socket-bound answer for it, which
//! renewed the listener's overflow stamp (`detector_common::fastpath`, docs/cookies.md).
//! Needs kernel >= 6.0 for the raw helpers.

use aya_ebpf::{
    bindings::{iphdr, ipv6hdr, tcphdr, BPF_F_MMAPABLE},
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_tcp_raw_gen_syncookie_ipv4, bpf_tcp_raw_gen_syncookie_ipv6},
    },
    macros::map,
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use detector_common::{
    closed_filter::{self, ClosedLine, ClosedSpot},
    config::{Config, FLAG_RAW_COOKIES},
    counters::Counter,
    fastpath::{cookie_path, renewal_index, CookiePath, RenewalSlot, RENEWAL_SLOTS},
    parse::{tcp_flags, IpVersion, TcpSegment},
    synopts::{mss_first_offset_byte, MSS_FIRST_HEADER_LEN},
};

use crate::{
    packet::{load, reread},
    syncookie::{header_pointers, options_len, Cookie},
};

const EINVAL: i64 = 22;

/// Per slot (`fastpath::renewal_index` of a listener's address and port): the listener last
/// renewed there and when. A direct-mapped array, not a hash map: the verifier inlines an
/// array lookup into a few instructions (kernel >= 6.11 for per-CPU arrays, x86-64 and
/// arm64 JITs), where a hash map costs a helper call and a jhash. Per CPU on purpose: XDP
/// runs to completion on one CPU, so no other writer can tear a slot between its key and
/// its stamp; each CPU renews a listener once a second for itself, and any renewal
/// refreshes the kernel listener's stamp for every CPU.
#[map(name = "COOKIE_RENEWALS")]
static COOKIE_RENEWALS: PerCpuArray<RenewalSlot> = PerCpuArray::with_max_entries(RENEWAL_SLOTS, 0);

/// The closed-connection filter (`detector_common::closed_filter`): lines of stamps, in
/// which each client FIN stamps its flow's cells, then the lines' latest stamps. Tuples
/// that may be in `TIME_WAIT` here, which the raw path must not answer. Pinned, so a
/// restarted agent keeps what the old program saw; the agent also stamps the cells of the
/// kernel's TIME_WAIT sockets after attaching (FINs from before the program ran), through
/// a shared mapping of the array (`BPF_F_MMAPABLE`): byte stores like the program's, which
/// cannot undo its own.
#[map(name = "CLOSED_FILTER")]
static CLOSED_FILTER: Array<ClosedLine> =
    Array::with_max_entries(closed_filter::entries(closed_filter::DEFAULT_LINE_BITS), BPF_F_MMAPABLE);

/// The flow's spot in a filter of the configured size: the agent made the map
/// `closed_filter::entries` long for `closed_filter::lines(cfg)` lines when it loaded the
/// program (`maps.closed_filter_lines`).
#[inline(always)]
fn spot(seg: &TcpSegment, cfg: &Config) -> ClosedSpot {
    closed_filter::spot(&seg.flow(), closed_filter::line_bits(cfg))
}

/// For every segment that is not a SYN: a client's FIN may leave the tuple in `TIME_WAIT`
/// on this host (when the server closed first), so its flow is stamped. Three stores into
/// its line and one into the line's latest stamp per FIN (and a clock read), nothing for
/// other segments.
#[inline(always)]
pub fn on_segment(seg: &TcpSegment, cfg: &Config) {
    if seg.flags & tcp_flags::FIN != 0 {
        saw_fin(seg, cfg);
    }
}

/// A BPF-to-BPF call: the flow key it hashes sits in its own stack frame, not in the
/// entry point's, which the deepest SYN path's frames sit on top of (docs/verifier.md, 7).
#[inline(never)]
fn saw_fin(seg: &TcpSegment, cfg: &Config) {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    closed_filter::stamp_fin(&spot(seg, cfg), closed_filter::stamp(now), |i| {
        // SAFETY: an entry of the array. Other CPUs may stamp it at the same time: every
        // store is a recent time, so none can undo another (`closed_filter`).
        CLOSED_FILTER.get_ptr_mut(i).map(|entry| unsafe { &mut *entry })
    });
}

/// Which helper answers this SYN. Until the agent says the closed filter is complete
/// (`FLAG_RAW_COOKIES`), always the socket-bound one, without looking anything up.
#[inline(always)]
pub fn path(seg: &TcpSegment, cfg: &Config, now: u64) -> CookiePath {
    if !cfg.has(FLAG_RAW_COOKIES) {
        return CookiePath::SocketBound;
    }
    // The line's latest stamp first: on a server that closed no connection in its line
    // within the window, the line is not read (`closed_filter`, a cache miss saved). A
    // missing entry cannot happen (an array); if it did, the lookup path is the safe one.
    let time_wait = closed_filter::may_be_time_wait(&spot(seg, cfg), now, |i| CLOSED_FILTER.get(i));
    // A missing slot cannot happen either (the index is masked to the array); if it did,
    // no renewal is the safe answer.
    let slot = COOKIE_RENEWALS.get(renewal_index(&seg.dst, seg.dst_port));
    // The address is read again for the comparison: kept in registers across the lookup,
    // its four words were spilled, and the cookie answer's frame grew past the stack limit.
    let again = reread(seg);
    let last = slot.and_then(|slot| slot.renewal_of(&again.dst, again.dst_port));
    let path = cookie_path(last, false, now);
    if path == CookiePath::Raw && time_wait {
        // What the filter costs: a SYN the raw helper would have answered (the operator's
        // `syndetector_closed_filter_lookups_total`).
        crate::stats::count(Counter::ClosedFilterLookup);
        return CookiePath::SocketBound;
    }
    path
}

/// The socket-bound helper answered for this SYN's listener at `now`: its slot now holds
/// it, whichever listener it held before.
#[inline(always)]
pub fn renewed(seg: &TcpSegment, now: u64) {
    if let Some(slot) = COOKIE_RENEWALS.get_ptr_mut(renewal_index(&seg.dst, seg.dst_port)) {
        // SAFETY: a slot of this CPU's copy of the array, which nothing else writes while
        // the program runs here.
        unsafe { *slot = RenewalSlot::renewed(&seg.dst, seg.dst_port, now) };
    }
}

/// The raw helper's cookie and MSS for the SYN. Inlined into the cookie answer (8 bytes of
/// stack): a BPF-to-BPF call costs 4-12 ns here (docs/hotpaths.md).
#[inline(always)]
pub fn raw_cookie(ctx: &XdpContext, seg: &TcpSegment, out: &mut Cookie) -> Result<(), Counter> {
    let (iph, th, end) = header_pointers(ctx, seg).ok_or(Counter::PassCookieHelperError)?;
    let v6 = matches!(seg.version, IpVersion::V6);
    // A SYN whose options begin with its MSS (nearly all) is shown to the helper as a
    // header that ends there, so that the kernel's walk for the MSS reads one option
    // instead of all of them (`synopts::mss_first_offset_byte`); the SYN's own byte is
    // written back at once, before anything else can read or pass the frame. A header
    // without options may still have 24 bytes in the frame (padding): the pure function
    // reads its data offset and declines it.
    if th + MSS_FIRST_HEADER_LEN <= end {
        // SAFETY: th + 24 is inside the frame (just checked), so are bytes 12 and 20..24.
        let (offset_byte, first_option) = unsafe { (*((th + 12) as *const u8), load::<4>(th + 20)) };
        if let Some(shown) = mss_first_offset_byte(offset_byte, first_option) {
            // SAFETY: as above; the helper reads th + 24, checked in `raw`.
            let ret = unsafe {
                *((th + 12) as *mut u8) = shown;
                let ret = raw::<MSS_FIRST_HEADER_LEN>(v6, iph, th, end);
                *((th + 12) as *mut u8) = offset_byte;
                ret
            };
            return cookie_from(ret, out);
        }
    }
    cookie_from(raw_any_length(ctx, seg), out)
}

/// The raw helper for a SYN whose options do not begin with its MSS (rare): a call of its
/// own, so that its eleven helper calls per IP version stay out of the answer call's hot
/// code. The header length must be a constant the verifier checks against the frame: one
/// call per length, as for the socket-bound helper (docs/verifier.md, lesson 1).
#[inline(never)]
fn raw_any_length(ctx: &XdpContext, seg: &TcpSegment) -> i64 {
    let Some((iph, th, end)) = header_pointers(ctx, seg) else { return -EINVAL };
    let Some(opt_len) = options_len(seg) else { return -EINVAL };
    let v6 = matches!(seg.version, IpVersion::V6);
    // SAFETY: each call checks th + TH_LEN against the frame; iph + 40 is checked above.
    unsafe {
        match opt_len {
            0 => raw::<20>(v6, iph, th, end),
            4 => raw::<24>(v6, iph, th, end),
            8 => raw::<28>(v6, iph, th, end),
            12 => raw::<32>(v6, iph, th, end),
            16 => raw::<36>(v6, iph, th, end),
            20 => raw::<40>(v6, iph, th, end),
            24 => raw::<44>(v6, iph, th, end),
            28 => raw::<48>(v6, iph, th, end),
            32 => raw::<52>(v6, iph, th, end),
            36 => raw::<56>(v6, iph, th, end),
            40 => raw::<60>(v6, iph, th, end),
            _ => -EINVAL,
        }
    }
}

/// The raw helper's answer (`cookie | mss << 32`, or a negative error) into `out`.
#[inline(always)]
fn cookie_from(ret: i64, out: &mut Cookie) -> Result<(), Counter> {
    if ret < 0 {
        return Err(Counter::PassCookieHelperError);
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "cookie | mss << 32")]
    {
        out.cookie = ret as u32;
        out.mss = (ret >> 32) as u16;
    }
    Ok(())
}

/// The raw helper for the IP version, with a TCP header length the verifier sees as the
/// constant `TH_LEN`, checked against the frame here.
#[inline(always)]
unsafe fn raw<const TH_LEN: usize>(v6: bool, iph: usize, th: usize, end: usize) -> i64 {
    if th + TH_LEN > end {
        return -EINVAL;
    }
    #[allow(clippy::cast_possible_truncation, reason = "<= 60")]
    // SAFETY: iph + 40 and th + TH_LEN are inside the frame (checked by the caller and above).
    unsafe {
        if v6 {
            bpf_tcp_raw_gen_syncookie_ipv6(iph as *mut ipv6hdr, th as *mut tcphdr, TH_LEN as u32)
        } else {
            bpf_tcp_raw_gen_syncookie_ipv4(iph as *mut iphdr, th as *mut tcphdr, TH_LEN as u32)
        }
    }
}
