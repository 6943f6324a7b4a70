//! `parse_tcp` over any byte string: never panics, and what it accepts is consistent with
//! the frame (every header it reports lies inside it, within the verifier's bounds).
#![no_main]

use detector_common::parse::{parse_tcp, MAX_L4_OFFSET, MAX_VLAN_TAGS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| {
    let Ok(seg) = parse_tcp(frame) else { return };
    let (l3, l4, th) =
        (usize::from(seg.l3_offset), usize::from(seg.l4_offset), usize::from(seg.tcp_header_len));
    assert!(usize::from(seg.vlan_tags) <= MAX_VLAN_TAGS);
    assert_eq!(l3, 14 + 4 * usize::from(seg.vlan_tags));
    assert!((20..=60).contains(&th) && th % 4 == 0, "TCP header length {th}");
    assert!(l4 >= l3 + 20 && l4 <= MAX_L4_OFFSET, "l4 {l4}");
    assert!(l4 + th <= frame.len(), "the TCP header ends past the frame");
    // The fields come from where the offsets say.
    assert_eq!(seg.src_port, u16::from_be_bytes([frame[l4], frame[l4 + 1]]));
    assert_eq!(seg.flags, frame[l4 + 13]);
});
