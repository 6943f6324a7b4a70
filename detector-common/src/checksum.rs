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

/// Adds a 32-bit word (its big-endian value) to a wide running sum. The one's-complement
/// sum over 32-bit words, carries folded at the end, equals the sum over their 16-bit
/// halves (RFC 1071, "byte order independence" and "parallel summation"): one add per
/// four bytes instead of four shifts, ors and two adds.
#[inline(always)]
#[must_use]
pub fn add_word(sum: u64, word: u32) -> u64 {
    sum + u64::from(word)
}

/// Folds a wide running sum (of at most 2^32 words) into the final checksum field value.
#[inline(always)]
#[must_use]
#[allow(clippy::cast_possible_truncation, reason = "folded to 32 bits first")]
pub fn finish_wide(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    finish(sum as u32)
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

    #[test]
    fn words_sum_as_their_halves() {
        // Carries out of bit 31 and bit 15 both occur here.
        let words = [0xffff_fffe_u32, 0x8000_ffff, 0xffff_0001, 0x1234_5678];
        let mut bytes = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
        }
        let wide = words.iter().fold(0, |s, &w| add_word(s, w));
        assert_eq!(finish_wide(wide), finish(add_bytes(0, &bytes)));
    }
}
