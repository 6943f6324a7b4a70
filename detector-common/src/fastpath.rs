//! The cookie fast path: when a SYN's cookie may come from the raw helper
//! (`bpf_tcp_raw_gen_syncookie_*`, no socket lookup) instead of the socket-bound one.
//!
//! The kernel accepts a cookie ACK only while its listener carries a fresh "recent
//! overflow" stamp (120 s), and only the socket-bound helper renews that stamp
//! (docs/cookies.md). So each listener, keyed by (local address, port), takes the
//! socket-bound path at least once per `RENEW_EVERY_NS`, and the raw path only in between:
//! a raw cookie is then always less than a second younger than a successful
//! socket-bound call for the same listener, far inside the kernel's window.

use crate::words;

/// How long after a socket-bound answer the same listener may take the raw path. The
/// kernel rewrites the stamp at most once per second (`tcp_synq_overflow`), so renewing
/// more often buys nothing; renewing this often keeps 119 s of the 120 s window in hand.
pub const RENEW_EVERY_NS: u64 = 1_000_000_000;

/// Slots of `names::MAP_COOKIE_RENEWALS` (a power of two), a direct-mapped table: a
/// listener's slot is `renewal_index` of its key, and holds the last listener renewed there.
/// Two listeners sharing a slot take turns: each finds the other's key and renews (the
/// socket-bound path), which is correct and only slower; with a few dozen listeners a
/// shared slot is rare.
pub const RENEWAL_SLOTS: u32 = 1_024;
const _: () = assert!(RENEWAL_SLOTS.is_power_of_two());

/// Value of `names::MAP_COOKIE_RENEWALS`: the listener last renewed in this slot, and when
/// (`bpf_ktime_get_ns` of its socket-bound cookie). A zeroed slot holds no renewal: its
/// stamp is 0, which `cookie_path` never trusts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenewalSlot {
    /// Local address, IPv4-mapped for IPv4, network order.
    pub addr: [u8; 16],
    /// Local port, host order.
    pub port: u16,
    /// Explicit padding up to the stamp's 8-byte alignment.
    pub _pad: [u8; 6],
    pub stamp_ns: u64,
}

const _: () = assert!(core::mem::size_of::<RenewalSlot>() == 32);

#[cfg(feature = "user")]
// SAFETY: repr(C), integers only, explicit padding (size asserted above).
unsafe impl aya::Pod for RenewalSlot {}

impl RenewalSlot {
    /// The slot after the socket-bound path answered at `now_ns` for the listener on
    /// `addr` (IPv4-mapped, network order) and `port` (host order).
    #[inline(always)]
    #[must_use]
    pub const fn renewed(addr: &[u8; 16], port: u16, now_ns: u64) -> Self {
        Self { addr: *addr, port, _pad: [0; 6], stamp_ns: now_ns }
    }

    /// When the listener was last renewed, if this slot holds it (`None`: never, or another
    /// listener sharing the slot renewed since): the first argument of `cookie_path`.
    #[inline(always)]
    #[must_use]
    pub fn renewal_of(&self, addr: &[u8; 16], port: u16) -> Option<u64> {
        self.holds(addr, port).then_some(self.stamp_ns)
    }

    /// Whether the slot's listener is this one: same port, same address, compared in
    /// 4-byte words (`words::be32`: one load each in the XDP program, not four).
    #[inline(always)]
    #[must_use]
    pub fn holds(&self, addr: &[u8; 16], port: u16) -> bool {
        self.port == port && words::same(self.address_words(), words::address_words(addr))
    }

    /// `words::address_words` of the slot's address, read as aligned words: in the XDP
    /// program the slot comes from a map lookup whose alignment LLVM cannot see, and the
    /// byte-wise reads of `words::be32` would stay single-byte loads there.
    #[inline(always)]
    #[allow(clippy::cast_ptr_alignment, reason = "aligned by the struct, see below")]
    fn address_words(&self) -> [u64; 4] {
        let p = self.addr.as_ptr().cast::<u32>();
        // SAFETY: `addr` is the first field of a repr(C) struct aligned to 8 (its u64), so
        // 4-byte aligned, and 16 bytes long: four u32 reads inside it.
        let w = unsafe { [p.read(), p.add(1).read(), p.add(2).read(), p.add(3).read()] };
        w.map(|x| u64::from(u32::from_be(x)))
    }
}

/// log2 of `RENEWAL_SLOTS`: the bits of `words::hash` a slot index takes.
const SLOT_BITS: u32 = RENEWAL_SLOTS.trailing_zeros();

/// The slot of `names::MAP_COOKIE_RENEWALS` the listener a SYN reaches renews in: its
/// destination address and port (as the socket lookup sees them) mixed by `words::hash`
/// (independent multiplies, no map helper). Taken by reference to the parser's fields, not
/// as a key struct: a copy of the address is split into single bytes by LLVM.
#[inline(always)]
#[must_use]
pub fn renewal_index(addr: &[u8; 16], port: u16) -> u32 {
    words::hash(words::address_words(addr), u64::from(port), SLOT_BITS)
}

/// Which helper makes a SYN's cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookiePath {
    /// Socket lookup + `bpf_tcp_gen_syncookie`: renews the listener's overflow stamp.
    SocketBound,
    /// `bpf_tcp_raw_gen_syncookie_*`: no lookup, no renewal.
    Raw,
}

/// The path for a SYN to a listener last answered by the socket-bound path at
/// `last_renewal_ns` (`None`: never, or forgotten), now `now_ns`; `time_wait` is
/// `closed_filter::ClosedLine::may_be_time_wait` for the SYN's tuple. The caller takes the
/// socket-bound path without asking while the filter is not known to be complete
/// (`config::FLAG_RAW_COOKIES` clear).
///
/// Raw only within `RENEW_EVERY_NS` after a renewal, and never for a tuple that may be in
/// `TIME_WAIT`. A renewal stamped in the future (a value the program did not write) is not
/// trusted.
#[inline(always)]
#[must_use]
pub fn cookie_path(last_renewal_ns: Option<u64>, time_wait: bool, now_ns: u64) -> CookiePath {
    match last_renewal_ns {
        Some(last) if !time_wait && last != 0 && last <= now_ns && now_ns - last < RENEW_EVERY_NS => {
            CookiePath::Raw
        }
        _ => CookiePath::SocketBound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 500 * RENEW_EVERY_NS;

    #[test]
    fn a_listener_never_answered_takes_the_socket_bound_path() {
        assert_eq!(cookie_path(None, false, T), CookiePath::SocketBound);
        assert_eq!(cookie_path(Some(0), false, T), CookiePath::SocketBound, "a zeroed value is no renewal");
    }

    #[test]
    fn within_a_second_of_a_renewal_the_raw_path_answers() {
        assert_eq!(cookie_path(Some(T), false, T), CookiePath::Raw);
        assert_eq!(cookie_path(Some(T), false, T + RENEW_EVERY_NS - 1), CookiePath::Raw);
    }

    #[test]
    fn a_second_after_the_renewal_the_socket_bound_path_renews_again() {
        assert_eq!(cookie_path(Some(T), false, T + RENEW_EVERY_NS), CookiePath::SocketBound);
        assert_eq!(cookie_path(Some(T), false, T + 200 * RENEW_EVERY_NS), CookiePath::SocketBound);
    }

    #[test]
    fn a_tuple_that_may_be_in_time_wait_takes_the_socket_bound_path() {
        assert_eq!(cookie_path(Some(T), true, T), CookiePath::SocketBound);
    }

    fn listener(last: u8, port: u16) -> ([u8; 16], u16) {
        (crate::parse::ipv4_mapped([198, 18, 0, last]), port)
    }

    /// What the program does with a SYN to a listener (no FIN seen): the path, and on the
    /// socket-bound one the slot renewed.
    fn syn(table: &mut [RenewalSlot], (addr, port): &([u8; 16], u16), now: u64) -> CookiePath {
        let slot = &mut table[renewal_index(addr, *port) as usize];
        let path = cookie_path(slot.renewal_of(addr, *port), false, now);
        if path == CookiePath::SocketBound {
            *slot = RenewalSlot::renewed(addr, *port, now);
        }
        path
    }

    #[test]
    fn a_renewed_listener_takes_the_raw_path_from_its_slot() {
        let mut table = std::vec![RenewalSlot::default(); RENEWAL_SLOTS as usize];
        let key = listener(1, 443);
        assert_eq!(
            table[renewal_index(&key.0, key.1) as usize].renewal_of(&key.0, key.1),
            None,
            "a zeroed slot"
        );
        assert_eq!(syn(&mut table, &key, T), CookiePath::SocketBound);
        assert_eq!(syn(&mut table, &key, T + 1), CookiePath::Raw);
        assert_eq!(syn(&mut table, &key, T + RENEW_EVERY_NS), CookiePath::SocketBound, "renews again");
        assert_eq!(syn(&mut table, &key, T + RENEW_EVERY_NS + 1), CookiePath::Raw);
    }

    #[test]
    fn two_listeners_sharing_a_slot_take_turns() {
        let a = listener(1, 443);
        let b = (1..=u16::MAX)
            .map(|port| listener(2, port))
            .find(|b| renewal_index(&b.0, b.1) == renewal_index(&a.0, a.1))
            .expect("some port of another address shares the slot");
        let mut table = std::vec![RenewalSlot::default(); RENEWAL_SLOTS as usize];
        for i in 0..4 {
            assert_eq!(syn(&mut table, &a, T + 2 * i), CookiePath::SocketBound, "a finds b's key");
            assert_eq!(syn(&mut table, &b, T + 2 * i + 1), CookiePath::SocketBound, "b finds a's key");
        }
        assert_eq!(syn(&mut table, &b, T + 9), CookiePath::Raw, "b still holds the slot");
    }

    #[test]
    fn a_slot_never_matches_another_port_or_address() {
        let addr = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let slot = RenewalSlot::renewed(&addr, 443, T);
        assert!(slot.holds(&addr, 443));
        assert_eq!(slot.renewal_of(&addr, 443), Some(T));
        for port in (0..=u16::MAX).filter(|&p| p != 443) {
            assert!(!slot.holds(&addr, port), "port {port}");
        }
        for i in 0..16 {
            for bit in 0..8 {
                let mut other = addr;
                other[i] ^= 1 << bit;
                assert!(!slot.holds(&other, 443), "address byte {i} bit {bit}");
                assert_eq!(slot.renewal_of(&other, 443), None);
            }
        }
    }

    #[test]
    fn listeners_spread_over_the_slots() {
        // 64 ports on each of 16 addresses: the slots they use, against 1,024 × (1 - e^-1)
        // (647) for random slots.
        let mut used = std::collections::BTreeSet::new();
        for last in 1..=16 {
            for port in 8_000..8_064 {
                let (addr, port) = listener(last, port);
                let i = renewal_index(&addr, port);
                assert!(i < RENEWAL_SLOTS);
                used.insert(i);
            }
        }
        assert!(used.len() > 600, "1,024 listeners use {} slots", used.len());
    }

    #[test]
    fn a_renewal_in_the_future_is_not_trusted() {
        assert_eq!(cookie_path(Some(T + 1), false, T), CookiePath::SocketBound);
        assert_eq!(cookie_path(Some(u64::MAX), false, T), CookiePath::SocketBound);
    }
}
