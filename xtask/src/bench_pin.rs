//! Pinning the per-packet timings to one CPU: by default the last one this process may
//! run on, away from CPU 0, which takes most of the kernel's housekeeping.
//!
//! Every test run is timed on the CPU the bench runs on. Unpinned, the bench moves between
//! CPUs: the program then meets another CPU's per-CPU maps cold (the tick anchor, the
//! per-port copy, the renewal slots, the counters), and on CPU 0 it shares the CPU with
//! more of the kernel's own work (on this 2-vCPU VM: the NIC's receive interrupt, and
//! about 45 % more timer interrupts than CPU 1 while idle). In 41 runs of 2026-11-27, the
//! blocked drop read a median of 1.92 × `XDP_DROP` pinned to CPU 1, 2.13 unpinned and 2.15
//! pinned to CPU 0, and a case's rounds moved less on CPU 1; the host's load still moves a
//! whole run more than that (docs/hotpaths.md, "The bench pinned to one CPU"). `--cpu`
//! picks another.
//!
//! Only the timing is pinned: the agent's part and the floods need every CPU (a process
//! spawned while pinned would inherit the mask), so the guard puts the old mask back.
//! Written by hand over `libc`'s affinity calls: a dozen lines, and the crate is already a
//! dependency.

use std::mem::MaybeUninit;

use anyhow::{bail, Context, Result};

/// The CPU the bench pins itself to while timing, and the mask it had before.
pub(crate) struct Pinned {
    pub(crate) cpu: usize,
    /// Why this CPU, for the report.
    pub(crate) why: String,
    before: libc::cpu_set_t,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: a mask read by `sched_getaffinity` for this thread.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const self.before) };
    }
}

/// Pins the calling thread to `cpu`, or to the last CPU it may run on, until the guard is
/// dropped.
pub(crate) fn pin(cpu: Option<usize>) -> Result<Pinned> {
    let before = affinity()?;
    // SAFETY: CPU_ISSET reads a bit of a valid mask.
    let allowed: Vec<usize> =
        (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &before) }).collect();
    let (cpu, why) = match cpu {
        Some(c) if allowed.contains(&c) => (c, "asked for with --cpu".to_owned()),
        Some(c) => bail!("--cpu {c}: not a CPU this process may run on ({allowed:?})"),
        None => (
            *allowed.last().context("no CPU in this process's affinity mask")?,
            format!("the last of the CPUs this process may run on ({allowed:?}); --cpu picks another"),
        ),
    };
    // SAFETY: a zeroed cpu_set_t is an empty mask; CPU_SET sets one bit below CPU_SETSIZE.
    let mut mask: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut mask) };
    // SAFETY: a valid mask for this thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const mask) } != 0 {
        bail!("sched_setaffinity to CPU {cpu}: {}", std::io::Error::last_os_error());
    }
    Ok(Pinned { cpu, why, before })
}

fn affinity() -> Result<libc::cpu_set_t> {
    let mut mask = MaybeUninit::<libc::cpu_set_t>::zeroed();
    // SAFETY: the kernel writes at most size_of::<cpu_set_t>() bytes into the mask.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), mask.as_mut_ptr()) } != 0 {
        bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
    }
    // SAFETY: zeroed, then written by the kernel.
    Ok(unsafe { mask.assume_init() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_outside_the_mask_is_refused_and_the_mask_kept() {
        let before = affinity().unwrap();
        let outside = libc::CPU_SETSIZE as usize - 1;
        // SAFETY: CPU_ISSET reads a bit of a valid mask.
        assert!(!unsafe { libc::CPU_ISSET(outside, &before) }, "this test needs fewer than 1024 CPUs");
        let err = pin(Some(outside)).err().expect("refused");
        assert!(err.to_string().contains("not a CPU this process may run on"), "{err}");
        // SAFETY: as above, on both masks.
        let after = affinity().unwrap();
        assert!((0..outside).all(|c| unsafe { libc::CPU_ISSET(c, &before) == libc::CPU_ISSET(c, &after) }));
    }

    #[test]
    fn pinning_holds_until_the_guard_is_dropped() {
        let before = affinity().unwrap();
        let pinned = pin(None).unwrap();
        let during = affinity().unwrap();
        // SAFETY: CPU_ISSET / CPU_COUNT read valid masks.
        unsafe {
            assert_eq!(libc::CPU_COUNT(&during), 1);
            assert!(libc::CPU_ISSET(pinned.cpu, &during));
        }
        drop(pinned);
        let after = affinity().unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { libc::CPU_COUNT(&after) }, unsafe { libc::CPU_COUNT(&before) });
    }
}
