//! The TCP option walk of a SYN over any option bytes and any declared length: never
//! panics, its answer does not depend on bytes past `len`, and a window scale it reports
//! is a legal one.
#![no_main]

use detector_common::synack::{parse_syn_options, MAX_OPTIONS_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: the declared length (any value, also past 40); the rest: the bytes.
    let Some((&len, bytes)) = data.split_first() else { return };
    let mut buf = [0u8; MAX_OPTIONS_LEN];
    let n = bytes.len().min(MAX_OPTIONS_LEN);
    buf[..n].copy_from_slice(&bytes[..n]);
    let len = usize::from(len);
    let opts = parse_syn_options(&buf, len);
    assert!(opts.wscale.is_none_or(|w| w <= 14));
    // What lies past the declared length must not matter.
    let mut poisoned = buf;
    for b in poisoned.iter_mut().skip(len.min(MAX_OPTIONS_LEN)) {
        *b = 0xa5;
    }
    assert_eq!(parse_syn_options(&poisoned, len), opts, "bytes past len changed the answer");
});
