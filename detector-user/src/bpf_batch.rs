//! BPF_MAP_LOOKUP_BATCH (aya 0.14 has no batch operations): walks a map many entries per
//! syscall instead of one lookup per key (kernel 5.6+).

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
pub fn walk<K: Pod + PartialEq, V: Pod>(
    fd: BorrowedFd<'_>,
    batch: u32,
    f: &mut dyn FnMut(&[K], &[V]),
) -> io::Result<()> {
    walk_buckets(fd, 0..u32::MAX, batch, f)
}

/// Whether the kernel does batch reads of this map (one call of one entry; a bucket
/// holding more, ENOSPC, answers yes too).
pub fn supported<K: Pod, V: Pod>(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: as in `walk_buckets`.
    let (mut key, mut value) = unsafe { ([std::mem::zeroed::<K>()], [std::mem::zeroed::<V>()]) };
    let Ok(map_fd) = u32::try_from(fd.as_raw_fd()) else { return false };
    match lookup(map_fd, None, &mut key, &mut value) {
        Ok(_) => true,
        Err(e) => e.raw_os_error() == Some(libc::ENOSPC),
    }
}

/// One batch call: where it ended and what it brought.
struct Call {
    /// Entries copied into the buffers.
    n: usize,
    /// The bucket the next call starts at (hash maps: the first one not read).
    next: u64,
    /// The map's end was reached.
    done: bool,
}

/// Like `walk`, over the hash buckets in `buckets` only, so that several threads can walk
/// disjoint parts of one map at once (each entry lives in one bucket, chosen by the
/// kernel's hash of its key). Bucket numbers past the map's last bucket are fine.
///
/// The kernel hands out whole buckets and cannot be told where to stop, so the call that
/// crosses `buckets.end` also brings entries of the next part. Those are a suffix of its
/// batch, and the first of them is the first entry the kernel returns when asked to start
/// at `buckets.end`: one more call finds where to cut. (An entry added or removed in that
/// bucket between the two calls may then be seen twice or not at all, as an entry changed
/// during any walk may be.)
pub fn walk_buckets<K: Pod + PartialEq, V: Pod>(
    fd: BorrowedFd<'_>,
    buckets: std::ops::Range<u32>,
    batch: u32,
    f: &mut dyn FnMut(&[K], &[V]),
) -> io::Result<()> {
    // SAFETY: Pod types are plain integers and byte arrays: all-zero is a valid value.
    let (zero_key, zero_value) = unsafe { (std::mem::zeroed::<K>(), std::mem::zeroed::<V>()) };
    let mut keys = vec![zero_key; batch as usize];
    let mut values = vec![zero_value; batch as usize];
    let map_fd = u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let end = u64::from(buckets.end);
    // None: from the start (for an array the token is the last key read, so a zero there
    // would skip key 0; for a hash, bucket 0 either way).
    let mut at = (buckets.start > 0).then_some(u64::from(buckets.start));
    let mut first = true;
    loop {
        let call = match lookup(map_fd, at, &mut keys, &mut values) {
            Ok(call) => call,
            Err(e) if first => return Err(e),
            // E.g. a bucket larger than a batch: end the walk with what was seen.
            Err(_) => return Ok(()),
        };
        first = false;
        let n = if call.next > end { cut::<K, V>(map_fd, end, &keys[..call.n]) } else { call.n };
        if n > 0 {
            f(&keys[..n], &values[..n]);
        }
        if call.done || call.n == 0 || call.next >= end {
            return Ok(());
        }
        at = Some(call.next);
    }
}

/// Entries at the head of `batch` that lie before bucket `end`: the rest start with the
/// first entry the kernel returns from `end` on. A bucket there with more entries than
/// the probe holds (never seen at a map's usual load of about one entry per bucket) is
/// not cut: its entries may then be seen twice.
fn cut<K: Pod + PartialEq, V: Pod>(map_fd: u32, end: u64, batch: &[K]) -> usize {
    const PROBE: usize = 64;
    // SAFETY: as in `walk_buckets`.
    let (zero_key, zero_value) = unsafe { (std::mem::zeroed::<K>(), std::mem::zeroed::<V>()) };
    let (mut keys, mut values) = (vec![zero_key; PROBE], vec![zero_value; PROBE]);
    // One entry is enough unless that bucket holds more (ENOSPC).
    let probe = lookup(map_fd, Some(end), &mut keys[..1], &mut values[..1])
        .or_else(|_| lookup(map_fd, Some(end), &mut keys, &mut values));
    match probe {
        Ok(probe) if probe.n > 0 => batch.iter().position(|k| *k == keys[0]).unwrap_or(batch.len()),
        _ => batch.len(),
    }
}

/// One `BPF_MAP_LOOKUP_BATCH` from token `at` (None: the map's start), at most
/// `keys.len()` entries.
fn lookup<K: Pod, V: Pod>(
    map_fd: u32,
    at: Option<u64>,
    keys: &mut [K],
    values: &mut [V],
) -> io::Result<Call> {
    // The token is a bucket index (hash) or a u32 key (array); 8 bytes leave room. The
    // kernel writes only the bytes it uses: the rest stays zero.
    let token_in = at.unwrap_or(0);
    let mut token_out = 0u64;
    let mut attr = BatchAttr {
        in_batch: if at.is_some() { (&raw const token_in) as u64 } else { 0 },
        out_batch: (&raw mut token_out) as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: u32::try_from(keys.len().min(values.len())).unwrap_or(u32::MAX),
        map_fd,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` is a valid bpf_attr prefix for this command; the key and value
    // buffers hold `count` elements of the map's key and value types (the Pod types the
    // map was created with), and the tokens are 8 writable bytes; all outlive it.
    let rc =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &raw mut attr, size_of::<BatchAttr>()) };
    let done = if rc < 0 {
        let e = io::Error::last_os_error();
        // ENOENT: the end of the map; `count` says how many came with it.
        if e.raw_os_error() != Some(libc::ENOENT) {
            return Err(io::Error::new(e.kind(), e.to_string()));
        }
        true
    } else {
        false
    };
    Ok(Call { n: attr.count as usize, next: token_out, done })
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

#[cfg(test)]
#[path = "bpf_batch_tests.rs"]
mod tests;
