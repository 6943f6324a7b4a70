//! Packet samples (docs/samples.md): 1 in `Config::sample_one_in` frames is copied into a
//! per-CPU scratch slot before the verdict (a cookie answer rewrites the frame in place),
//! and handed to the agent through the `SAMPLES` ring buffer if it was dropped or answered.
//!
//! Whether a frame was captured lives in the scratch slot (`cap_len != 0`), not in a value
//! carried across `decide`: a flag in a register would make the verifier walk `decide`
//! once per value of the flag.

use aya_ebpf::{
    helpers::{
        bpf_get_prandom_u32, bpf_ktime_get_ns,
        generated::{bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    },
    macros::map,
    maps::{PerCpuArray, RingBuf},
    programs::XdpContext,
};
use detector_common::{
    config::Config,
    counters::Counter,
    sample::{capture_len, chosen, SampleRecord, RING_BYTES, SNAP_LEN_U32},
};

#[map(name = "SAMPLES")]
static SAMPLES: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

#[map(name = "SAMPLES_LOST")]
static SAMPLES_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "SAMPLE_SCRATCH")]
static SCRATCH: PerCpuArray<SampleRecord> = PerCpuArray::with_max_entries(1, 0);

/// The sampling rate, read from the config's memory each time it is needed. Volatile:
/// otherwise LLVM keeps the first read in a register across `decide`, and the verifier,
/// which knows that register is 0 on one way in and not on the other, verifies `decide`
/// twice (past the 1M-instruction limit, measured).
#[inline(always)]
pub fn one_in(cfg: &Config) -> u32 {
    // SAFETY: a reference to an aligned u32 in map memory.
    unsafe { core::ptr::read_volatile(&raw const cfg.sample_one_in) }
}

/// Before the verdict, with sampling on: fills the scratch slot with this frame if the
/// draw picks it, and empties it otherwise (so a slot left over from before a config
/// change is never sent as this frame's). A call of its own: its registers are dead when
/// it returns, so both ways into `decide` look the same to the verifier.
#[inline(never)]
pub fn capture(ctx: &XdpContext, one_in: u32) {
    let Some(slot) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU value, only this CPU touches it while the program runs.
    let slot = unsafe { &mut *slot };
    slot.cap_len = 0;
    // SAFETY: helpers without pointer arguments.
    if !chosen(one_in, unsafe { bpf_get_prandom_u32() }) {
        return;
    }
    // SAFETY: a helper call on our own context.
    #[allow(clippy::cast_possible_truncation, reason = "a frame is far below 4 GiB")]
    let frame_len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as u32;
    // The helper's length must be provably within 1..=SNAP_LEN for the verifier. The
    // frame length goes through a 64-bit black_box first: LLVM otherwise knows the
    // minimum below is at most SNAP_LEN and drops the checks the verifier needs, or folds
    // them into one `len - 1 < SNAP_LEN` that leaves no lower bound (docs/verifier.md).
    let len = core::hint::black_box(u64::from(capture_len(frame_len)));
    if len == 0 || len > u64::from(SNAP_LEN_U32) {
        return;
    }
    #[allow(clippy::cast_possible_truncation, reason = "at most SNAP_LEN, checked above")]
    let len = len as u32;
    // SAFETY: `data` is SNAP_LEN bytes of map memory and `len` is at most that; the helper
    // checks `0..len` against the frame (fragments included).
    let copied = unsafe { bpf_xdp_load_bytes(ctx.ctx, 0, slot.data.as_mut_ptr().cast(), len) };
    if copied != 0 {
        return;
    }
    // SAFETY: a helper without arguments.
    slot.ts_ns = unsafe { bpf_ktime_get_ns() };
    slot.frame_len = frame_len;
    slot.cap_len = len;
}

/// After a drop or an answer, with sampling on: sends the captured frame, if this packet
/// was drawn, and empties the slot. A full ring loses the sample and counts it. (A slot
/// left filled by a passed packet is emptied or refilled by the next `capture`.)
#[inline(never)]
pub fn emit(counter: Counter) {
    let Some(slot) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU value, only this CPU touches it while the program runs.
    let slot = unsafe { &mut *slot };
    if slot.cap_len == 0 {
        return;
    }
    slot.counter = counter as u32;
    if SAMPLES.output::<SampleRecord>(&*slot, 0).is_err() {
        if let Some(lost) = SAMPLES_LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU value, as above.
            unsafe { *lost += 1 };
        }
    }
    slot.cap_len = 0;
}
