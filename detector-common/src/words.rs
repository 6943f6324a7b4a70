//! Addresses read as 32-bit words, and the multiply-and-fold hash the flow filters and the
//! renewal table index with.
//!
//! Both hashes sit on the SYN and ACK paths of the XDP program, where a byte-at-a-time
//! hash (FNV-1a: one dependent multiply per byte) cost 24 multiplies in a chain. Here each
//! word is multiplied once, as a 64-bit value, by its own odd constant; the products are
//! independent (the CPU overlaps them) and folded by XOR. The index is taken from the top
//! bits of the result: bit `k` of a word moves bits `k..64` of its product, so with words of
//! at most 32 bits the top bits depend on every bit of every word, and a word that counts
//! up (a port, the last byte of an address) walks the top bits like Fibonacci hashing. Not
//! keyed: a flood aimed at one bucket only costs its own packets the slower path, as with
//! any unkeyed filter.
//!
//! Addresses are read in 4-byte words, never 8: the BPF target has no unaligned loads,
//! a `FlowKey` and a `RenewalSlot`'s address are only 4-byte aligned, and LLVM turns an
//! 8-byte pattern over them into single-byte loads (and spills them), where each 4-byte
//! word is one load. (The parser's `TcpSegment` is 8-byte aligned, but the hashes' values
//! are shared with the agent and pinned maps: changing them would be a layout change.)

/// Odd multipliers, one per word position, so that the same value in two positions gives
/// unrelated products: the `murmur3` and `splitmix64` finalisers' constants and the 64-bit
/// golden ratio. The last two are chosen for how evenly their top 16 bits spread values
/// that count up: the golden ratio puts 65,536 consecutive ports (the last word of
/// `filter::bucket`) into 58,483 of 65,536 buckets, the fourth constant 100,000
/// consecutive IPv4 clients (the fourth word) into all of them, where random buckets
/// would fill 41,427 and 51,288.
const K: [u64; 5] = [
    0xc4ce_b9fe_1a85_ec53,
    0xbf58_476d_1ce4_e5b9,
    0x94d0_49bb_1331_11eb,
    0xff51_afd7_ed55_8ccd,
    0x9e37_79b9_7f4a_7c15,
];

/// Bytes `at..at + 4` of an address as a big-endian word: an address's last bytes, those
/// that differ between neighbouring hosts, land in the low bits. `at` is a constant
/// multiple of 4 once inlined (the index checks then fold away).
#[inline(always)]
#[must_use]
pub fn be32(addr: &[u8; 16], at: usize) -> u32 {
    let w = &addr[at..at + 4];
    u32::from_be_bytes([w[0], w[1], w[2], w[3]])
}

/// The four words of an address, widened for `hash`.
#[inline(always)]
#[must_use]
pub fn address_words(addr: &[u8; 16]) -> [u64; 4] {
    [be32(addr, 0), be32(addr, 4), be32(addr, 8), be32(addr, 12)].map(u64::from)
}

/// Whether two addresses' words are equal, as one OR of XORs: `==` on the arrays became a
/// call to an out-of-line, byte-at-a-time `memcmp` in the XDP program (64 loads and 32
/// branches for 32 bytes).
#[inline(always)]
#[must_use]
pub const fn same(a: [u64; 4], b: [u64; 4]) -> bool {
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) == 0
}

/// The top `bits` bits (1..=32) of the mixed words: an address's four words and one more
/// (ports, or a port and another address's word).
#[inline(always)]
#[must_use]
#[allow(clippy::cast_possible_truncation, reason = "at most 32 bits remain after the shift")]
pub const fn hash(addr: [u64; 4], last: u64, bits: u32) -> u32 {
    let h = addr[0].wrapping_mul(K[0])
        ^ addr[1].wrapping_mul(K[1])
        ^ addr[2].wrapping_mul(K[2])
        ^ addr[3].wrapping_mul(K[3])
        ^ last.wrapping_mul(K[4]);
    (h >> (64 - bits)) as u32
}

/// Multipliers and an offset for `keyed_hash`, drawn from a 32-bit seed. Each is the seed
/// XORed into one constant and multiplied by another: distinct seeds give distinct keys
/// (an odd multiply is a bijection), and the five products are independent of one another
/// and of the packet, so the CPU overlaps them.
#[inline(always)]
#[must_use]
pub const fn keys(seed: u32) -> [u64; 5] {
    let s = seed as u64;
    [
        (s ^ K[0]).wrapping_mul(K[1]),
        (s ^ K[1]).wrapping_mul(K[2]),
        (s ^ K[2]).wrapping_mul(K[3]),
        (s ^ K[3]).wrapping_mul(K[4]),
        (s ^ K[4]).wrapping_mul(K[0]),
    ]
}

/// A keyed hash of an address: Thorup's vector multiply-shift, `(Σ a_i·x_i + b) mod 2^64`
/// over 32-bit words `x_i`. With `a_i` and `b` uniform and independent, its top 32 bits
/// are strongly universal: for two different addresses, the pair of results is uniform,
/// so any bits of the top half collide with probability 2^-bits whatever the addresses.
/// Unlike `hash` (products folded by XOR, where a key XORed in would cancel out of every
/// collision), the keys sit inside the products, so which addresses collide depends on
/// them. Callers use the top 32 bits only: the low bits see only the words' low bits.
#[inline(always)]
#[must_use]
pub const fn keyed_hash(addr: [u64; 4], keys: &[u64; 5]) -> u64 {
    addr[0]
        .wrapping_mul(keys[0])
        .wrapping_add(addr[1].wrapping_mul(keys[1]))
        .wrapping_add(addr[2].wrapping_mul(keys[2]))
        .wrapping_add(addr[3].wrapping_mul(keys[3]))
        .wrapping_add(keys[4])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_mapped_address_keeps_its_last_byte_in_the_low_bits() {
        let a = crate::parse::ipv4_mapped([198, 18, 0, 7]);
        assert_eq!(address_words(&a), [0, 0, 0xffff, 0xc612_0007]);
    }

    #[test]
    fn the_result_has_the_bits_asked_for() {
        for bits in [1, 10, 16, 32] {
            for i in 0..1_000u64 {
                let h = hash([i, 0, i << 20, !i & 0xffff_ffff], i, bits);
                assert!(bits == 32 || h < 1 << bits, "{h} from {bits} bits");
            }
        }
    }

    #[test]
    fn the_same_value_in_another_position_hashes_differently() {
        let same = (1..1_000u64).filter(|&v| hash([v, 0, 0, 0], 0, 16) == hash([0, v, 0, 0], 0, 16)).count();
        assert!(same < 5, "{same} of 999 values hash the same in positions 0 and 1");
        let same = (1..1_000u64).filter(|&v| hash([0, 0, 0, v], 0, 16) == hash([0, 0, 0, 0], v, 16)).count();
        assert!(same < 5, "{same} of 999 values hash the same in positions 3 and 4");
    }
}
