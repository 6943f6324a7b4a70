//! BPF_MAP_LOOKUP_BATCH for array maps (aya 0.14 has no batch operations): reads a whole
//! array in a few syscalls instead of one per slot.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

/// `BPF_MAP_LOOKUP_BATCH` from linux/bpf.h (kernel 5.6+).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// All `len` values of an `Array<u32>` (keys are u32 indexes).
pub fn lookup_array_u32(fd: BorrowedFd<'_>, len: usize) -> io::Result<Vec<u32>> {
    let mut keys = vec![0u32; len];
    let mut values = vec![0u32; len];
    let map_fd = u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut got = 0usize;
    let mut token = 0u32;
    while got < len {
        let mut attr = BatchAttr {
            in_batch: if got == 0 { 0 } else { (&raw const token) as u64 },
            out_batch: (&raw mut token) as u64,
            keys: keys[got..].as_mut_ptr() as u64,
            values: values[got..].as_mut_ptr() as u64,
            count: u32::try_from(len - got).unwrap_or(u32::MAX),
            map_fd,
            ..BatchAttr::default()
        };
        // SAFETY: attr points at buffers of `count` u32 keys and values and a u32 token,
        // all alive across the call; the kernel writes at most that much.
        let rc = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &raw mut attr, size_of::<BatchAttr>())
        };
        let error = (rc < 0).then(io::Error::last_os_error);
        got += attr.count as usize;
        match error {
            None => {}
            // ENOENT: the end of the map was reached; `count` says how many came.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Some(e) => return Err(e),
        }
        if attr.count == 0 {
            break;
        }
    }
    if got != len {
        return Err(io::Error::other(format!("batch lookup returned {got} of {len} slots")));
    }
    // Array batches come in index order; check rather than assume.
    if keys.iter().zip(0u32..).any(|(&k, i)| k != i) {
        return Err(io::Error::other("batch lookup returned slots out of order"));
    }
    Ok(values)
}
