//! BPF_MAP_LOOKUP_BATCH (aya 0.14 has no batch operations): walks a map a few thousand
//! entries per syscall instead of one lookup per key (kernel 5.6+).

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

use aya::Pod;

/// `BPF_MAP_LOOKUP_BATCH` from linux/bpf.h.
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

/// Walks the map behind `fd`, `batch` entries per syscall, handing each batch to `f`.
/// Fails (before calling `f`) only if the first call fails, so the caller can fall back
/// to key-by-key reads; a later failure (e.g. a hash bucket larger than a batch) ends the
/// walk with what was seen.
pub fn walk<K: Pod, V: Pod>(fd: BorrowedFd<'_>, batch: u32, f: &mut dyn FnMut(&[K], &[V])) -> io::Result<()> {
    // SAFETY: Pod types are plain integers and byte arrays: all-zero is a valid value.
    let (zero_key, zero_value) = unsafe { (std::mem::zeroed::<K>(), std::mem::zeroed::<V>()) };
    let mut keys = vec![zero_key; batch as usize];
    let mut values = vec![zero_value; batch as usize];
    let map_fd = u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // The token is a bucket index (hash) or a u32 key (array); 8 bytes leave room.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { (&raw const token_in) as u64 },
            out_batch: (&raw mut token_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: batch,
            map_fd,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a valid bpf_attr prefix for this command; the key and value
        // buffers hold `count` elements of the map's key and value types (the Pod types
        // the map was created with), and the tokens are 8 writable bytes; all outlive it.
        let rc = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &raw mut attr, size_of::<BatchAttr>())
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        let done = match &err {
            None => false,
            // ENOENT: the end of the map; `count` says how many came with it.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Some(e) if first => return Err(io::Error::new(e.kind(), e.to_string())),
            Some(_) => true,
        };
        let n = attr.count as usize;
        if n > 0 {
            f(&keys[..n], &values[..n]);
        }
        if done || n == 0 {
            return Ok(());
        }
        token_in = token_out;
        first = false;
    }
}

/// All `len` values of an `Array<u32>`, in index order.
pub fn lookup_array_u32(fd: BorrowedFd<'_>, len: usize) -> io::Result<Vec<u32>> {
    let mut values = Vec::with_capacity(len);
    let mut in_order = true;
    let batch = u32::try_from(len).unwrap_or(u32::MAX).min(16_384);
    walk(fd, batch, &mut |keys: &[u32], batch_values: &[u32]| {
        // Array batches come in index order; check rather than assume.
        in_order &= keys.iter().zip(values.len()..).all(|(&k, i)| k as usize == i);
        values.extend_from_slice(batch_values);
    })?;
    if !in_order {
        return Err(io::Error::other("batch lookup returned slots out of order"));
    }
    if values.len() != len {
        return Err(io::Error::other(format!("batch lookup returned {} of {len} slots", values.len())));
    }
    Ok(values)
}
