//! The Internet checksum (RFC 1071) over headers built on the stack.

/// Adds `bytes` as big-endian 16-bit words to a running one's-complement sum.
#[inline(always)]
#[must_use]
pub fn add_bytes<const N: usize>(mut sum: u32, bytes: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    if N % 2 == 1 {
        sum += u32::from(bytes[N - 1]) << 8;
    }
    sum
}

/// Folds a running sum into the final checksum field value.
#[inline(always)]
#[must_use]
#[allow(clippy::cast_possible_truncation, reason = "folded to 16 bits first")]
pub fn finish(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: words 0001 f203 f4f5 f6f7 sum to ddf2 (before complement).
        let sum = add_bytes(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
        assert_eq!(finish(sum), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(finish(add_bytes(0, &[0x12, 0x34, 0x56])), finish(add_bytes(0, &[0x12, 0x34, 0x56, 0])));
    }
}
