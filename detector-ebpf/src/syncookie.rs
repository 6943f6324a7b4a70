//! The kernel's half of a cookie: find the listener for a SYN and ask the socket-bound
//! helper (`bpf_tcp_gen_syncookie`) for its cookie and MSS; read the client's options.

use core::{ffi::c_void, hint::black_box, mem::size_of};

use aya_ebpf::{
    bindings::{
        bpf_sock, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 as TupleV4,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 as TupleV6, tcphdr, BPF_F_CURRENT_NETNS, BPF_TCP_LISTEN,
    },
    helpers::generated::{bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_gen_syncookie, bpf_xdp_load_bytes},
    macros::map,
    maps::PerCpuArray,
    programs::XdpContext,
};
use detector_common::{
    counters::Counter,
    packet::Packet,
    parse::{IpVersion, TcpSegment},
    synack::{parse_syn_options_with, OptionScratch, SynOptions, MAX_OPTIONS_LEN},
    synopts::{linux_options, LINUX_LEN},
};

use crate::packet::{opaque, XdpPacket, MAX_L3, MAX_L4};

const ENOENT: i64 = 2;
const EINVAL: i64 = 22;

/// Where the option walk keeps the bytes it reads and its state between steps.
#[map(name = "OPTION_WALK")]
static OPTION_WALK: PerCpuArray<OptionScratch> = PerCpuArray::with_max_entries(1, 0);

/// The option walk over `scratch.bytes[..len]`, its state passed through `scratch.walk` at
/// every step: the verifier does not track map values, so every step starts from one
/// state, and the code after the walk is verified once, not once per combination of
/// options found (see `parse_syn_options_with`, docs/verifier.md).
#[inline(always)]
fn walk_options(scratch: *mut OptionScratch, len: usize) -> SynOptions {
    // SAFETY: a per-CPU map value only this CPU touches while the program runs.
    let (bytes, walk) = unsafe { (&*(&raw const (*scratch).bytes), &raw mut (*scratch).walk) };
    parse_syn_options_with(bytes, len, |w| {
        // SAFETY: as above; volatile, so that the round trip is kept.
        unsafe {
            core::ptr::write_volatile(walk, w);
            core::ptr::read_volatile(walk)
        }
    })
}

/// What the kernel gave for one SYN.
#[derive(Default)]
pub struct Cookie {
    pub cookie: u32,
    pub mss: u16,
    pub opts: SynOptions,
}

/// Reads the client's options into `out`. Called only for a reply that uses them
/// (`synopts::reply_reads_options`, checked by the caller).
///
/// Read first, before anything forks on the IP version, so that the walk is verified once
/// rather than once for IPv4 and once for IPv6 (docs/verifier.md, lesson 3). It was a
/// BPF-to-BPF call of its own for that; inlined into the cookie answer, it still comes before
/// the fork, saves the call and its return on every reply with timestamps (2-4 %,
/// `bench --compare`, docs/hotpaths.md) and costs the verifier 86,775 -> 98,694
/// instructions.
#[inline(always)]
pub fn read_options(ctx: &XdpContext, seg: &TcpSegment, out: &mut SynOptions) -> Result<(), Counter> {
    // Bounded on the length itself, through black_box (docs/verifier.md, lesson 2).
    let opt_len = black_box(usize::from(seg.tcp_header_len).wrapping_sub(20));
    if opt_len > MAX_OPTIONS_LEN {
        return Err(Counter::PassCookieHelperError);
    }
    // Nothing to find: `out` stays as it is (no options).
    if opt_len == 0 {
        return Ok(());
    }
    // Linux's layout, read straight from the frame: 20 bytes in three loads, one bounds
    // check, no helper call and no scratch (docs/hotpaths.md). Any other layout, or one of
    // that length that is not Linux's, takes the copy and the walk below.
    if opt_len == LINUX_LEN {
        // Opaque: LLVM would otherwise bound `l4_offset` and add 20 again after the check,
        // a sum the verifier no longer knows to be small enough for a packet range.
        let at = opaque(usize::from(seg.l4_offset) + 20);
        let area = XdpPacket::new(ctx).read::<LINUX_LEN>(at);
        if let Some(found) = area.as_ref().and_then(linux_options) {
            *out = found;
            return Ok(());
        }
    }
    let Some(scratch) = OPTION_WALK.get_ptr_mut(0) else {
        // Cannot happen (a one-slot array); the kernel answers instead.
        return Err(Counter::PassMapError);
    };
    // Copied by the kernel in one helper call (kernel >= 5.18, as is bpf_xdp_get_buff_len),
    // whatever their length: an inline copy loop ends at one of eleven iterations, and each
    // end would carry its own bounds on `opt_len` through everything after it
    // (docs/verifier.md). The parser has checked that the options are inside the frame.
    #[allow(clippy::cast_possible_truncation, reason = "offsets and lengths below 600")]
    // SAFETY: a helper call on our own context, writing at most MAX_OPTIONS_LEN bytes into
    // the scratch's `bytes` (the verifier checks the bound too).
    let ret = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            (usize::from(seg.l4_offset) + 20) as u32,
            (&raw mut (*scratch).bytes).cast(),
            opt_len as u32,
        )
    };
    if ret != 0 {
        return Err(Counter::PassCookieHelperError);
    }
    // Past `opt_len` the scratch still holds an earlier SYN's bytes; the walk's result
    // depends on `bytes[..opt_len]` only (a host test checks it). Linux's layout was tried
    // above, on the frame itself.
    *out = walk_options(scratch, opt_len);
    Ok(())
}

/// Looks up the listener and asks the kernel for a cookie (`out.opts` is `read_options`'
/// business). A BPF-to-BPF call from the cookie answer (inlined into the entry point), so
/// that the socket tuple and the lookup's registers do not sit in the entry point's frame.
#[inline(never)]
pub fn gen_cookie(ctx: &XdpContext, seg: &TcpSegment, out: &mut Cookie) -> Result<(), Counter> {
    let ip_len = match seg.version {
        IpVersion::V4 => 20,
        IpVersion::V6 => 40,
    };
    // Pointers re-derived after the tail adjustment, every offset bounded for the verifier.
    let (iph, th, end) = header_pointers(ctx, seg).ok_or(Counter::PassCookieHelperError)?;
    let opt_len = options_len(seg).ok_or(Counter::PassCookieHelperError)?;
    // SAFETY: helper calls; the socket is released on every path below.
    unsafe {
        let sk = lookup_socket(ctx, seg);
        if sk.is_null() {
            return Err(Counter::PassCookieNoListener);
        }
        if (*sk).state != BPF_TCP_LISTEN {
            // An existing socket owns this exact tuple (TIME_WAIT after a client reused
            // its port, or a live connection): the kernel decides.
            bpf_sk_release(sk.cast());
            return Err(Counter::PassCookieExistingSocket);
        }
        #[allow(clippy::cast_possible_truncation, reason = "20 or 40")]
        let ip_len = ip_len as u32;
        // The helper's th_len must be a constant the verifier can check against the
        // frame, and a SYN's header is one of eleven lengths: one call per length. (The
        // alternative, growing the frame to th + 60, fails on frames without tailroom.)
        let ret = match opt_len {
            0 => syncookie::<20>(sk.cast(), iph, ip_len, th, end),
            4 => syncookie::<24>(sk.cast(), iph, ip_len, th, end),
            8 => syncookie::<28>(sk.cast(), iph, ip_len, th, end),
            12 => syncookie::<32>(sk.cast(), iph, ip_len, th, end),
            16 => syncookie::<36>(sk.cast(), iph, ip_len, th, end),
            20 => syncookie::<40>(sk.cast(), iph, ip_len, th, end),
            24 => syncookie::<44>(sk.cast(), iph, ip_len, th, end),
            28 => syncookie::<48>(sk.cast(), iph, ip_len, th, end),
            32 => syncookie::<52>(sk.cast(), iph, ip_len, th, end),
            36 => syncookie::<56>(sk.cast(), iph, ip_len, th, end),
            40 => syncookie::<60>(sk.cast(), iph, ip_len, th, end),
            _ => -EINVAL,
        };
        bpf_sk_release(sk.cast());
        if ret < 0 {
            return Err(if ret == -ENOENT {
                Counter::PassCookieNotArmed
            } else {
                Counter::PassCookieHelperError
            });
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "cookie | mss << 32")]
        {
            out.cookie = ret as u32;
            out.mss = (ret >> 32) as u16;
        }
        Ok(())
    }
}

/// `bpf_tcp_gen_syncookie` with a TCP header length the verifier sees as the constant
/// `TH_LEN`, checked against the frame here. The caller releases `sk`.
#[inline(always)]
unsafe fn syncookie<const TH_LEN: usize>(
    sk: *mut c_void,
    iph: usize,
    ip_len: u32,
    th: usize,
    end: usize,
) -> i64 {
    if th + TH_LEN > end {
        return -EINVAL;
    }
    #[allow(clippy::cast_possible_truncation, reason = "<= 60")]
    // SAFETY: iph + 40 and th + TH_LEN are inside the frame; sk is a live listener.
    unsafe {
        bpf_tcp_gen_syncookie(sk, iph as *mut c_void, ip_len, th as *mut tcphdr, TH_LEN as u32)
    }
}

/// The IP and TCP header addresses of `seg` in the frame and the frame's end, or `None`
/// when a header lies past `MAX_L3`/`MAX_L4` or the first 40 bytes from the IP header or 20
/// from the TCP header run past the end. Each pointer is range-checked as the very value
/// handed to a helper: the verifier tracks ranges per pointer and does not know that
/// l4 = l3 + ip_len, and black_box keeps LLVM from recomputing them (a recomputed pointer
/// carries no range). Inlined, so the checked values stay in the caller's registers.
#[inline(always)]
pub fn header_pointers(ctx: &XdpContext, seg: &TcpSegment) -> Option<(usize, usize, usize)> {
    let l3 = usize::from(seg.l3_offset);
    let l4 = usize::from(seg.l4_offset);
    let data = ctx.data();
    let end = ctx.data_end();
    if l3 > MAX_L3 || l4 > MAX_L4 {
        return None;
    }
    let iph = black_box(data + l3);
    let th = black_box(data + l4);
    if iph + 40 > end || th + 20 > end {
        return None;
    }
    Some((iph, th, end))
}

/// The SYN's options length, bounded on the length itself, through black_box: a range
/// check that LLVM folds into `x - 20 <= 40` bounds only a temporary for the verifier
/// (docs/verifier.md, lesson 2).
#[inline(always)]
pub fn options_len(seg: &TcpSegment) -> Option<usize> {
    let opt_len = black_box(usize::from(seg.tcp_header_len).wrapping_sub(20));
    (opt_len <= MAX_OPTIONS_LEN).then_some(opt_len)
}

/// `bpf_skc_lookup_tcp` for the segment's listener tuple (`listener_tuple`): a socket the
/// caller must release, or null.
///
/// # Safety
/// A non-null result holds a reference: `bpf_sk_release` it on every path.
#[inline(always)]
pub unsafe fn lookup_socket(ctx: &XdpContext, seg: &TcpSegment) -> *mut bpf_sock {
    let mut tuple = listener_tuple(seg);
    let tuple_size = match seg.version {
        IpVersion::V4 => size_of::<TupleV4>(),
        IpVersion::V6 => size_of::<TupleV6>(),
    };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "helper ABI")]
    // SAFETY: the tuple outlives the call; the caller releases what it returns.
    unsafe {
        bpf_skc_lookup_tcp(
            ctx.ctx.cast::<c_void>(),
            &raw mut tuple,
            tuple_size as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    }
}

/// The listener's view of the SYN: its source is the client, its destination us.
#[inline(always)]
pub fn listener_tuple(seg: &TcpSegment) -> bpf_sock_tuple {
    // SAFETY: plain old data; every byte the lookup reads is written below.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let sport = seg.src_port.to_be();
    let dport = seg.dst_port.to_be();
    match seg.version {
        IpVersion::V4 => {
            tuple.__bindgen_anon_1.ipv4 = TupleV4 {
                saddr: u32::from_ne_bytes([seg.src[12], seg.src[13], seg.src[14], seg.src[15]]),
                daddr: u32::from_ne_bytes([seg.dst[12], seg.dst[13], seg.dst[14], seg.dst[15]]),
                sport,
                dport,
            };
        }
        IpVersion::V6 => {
            tuple.__bindgen_anon_1.ipv6 =
                TupleV6 { saddr: words(&seg.src), daddr: words(&seg.dst), sport, dport };
        }
    }
    tuple
}

/// An address as the four network-order words the tuple wants.
#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}
