//! The cookie fast path: when a SYN's cookie may come from the raw helper
//! (`bpf_tcp_raw_gen_syncookie_*`, no socket lookup) instead of the socket-bound one.
//!
//! The kernel accepts a cookie ACK only while its listener carries a fresh "recent
//! overflow" stamp (120 s), and only the socket-bound helper renews that stamp
//! (docs/cookies.md). So each listener, keyed by (local address, port), takes the
//! socket-bound path at least once per `RENEW_EVERY_NS`, and the raw path only in between:
//! a raw cookie is then always less than a second younger than a successful
//! socket-bound call for the same listener, far inside the kernel's window.

/// How long a tuple may stay in `TIME_WAIT` after the server saw the client's FIN
/// (`TCP_TIMEWAIT_LEN`, 60 s), with a margin for the stamps' one-second granularity.
pub const TIME_WAIT_NS: u64 = 62_000_000_000;

/// Buckets of `names::MAP_CLOSED_FILTER` (a power of two): per flow-hash bucket
/// (`filter::bucket`), the `closed_stamp` of the last FIN a client sent to us there.
pub const CLOSED_FILTER_BUCKETS: u32 = 1 << 16;

// `filter::bucket` masks to the pending filter's size: every bucket it returns must be a
// slot of this array too (a write past the end would be lost, and the stamp with it).
const _: () = assert!(CLOSED_FILTER_BUCKETS >= crate::names::PENDING_FILTER_BUCKETS);

const NS_PER_SEC: u64 = 1_000_000_000;

/// The value a client's FIN leaves in its bucket: whole seconds, plus one so that 0 (a
/// zeroed slot) means "no FIN seen".
#[inline(always)]
#[must_use]
#[allow(clippy::cast_possible_truncation, reason = "stamps wrap after 136 years")]
pub fn closed_stamp(now_ns: u64) -> u32 {
    (now_ns / NS_PER_SEC) as u32 + 1
}

/// Whether a tuple whose bucket holds `stamp` may still be in `TIME_WAIT` here at `now_ns`.
/// A SYN that reuses such a tuple must go through the socket lookup, which hands it to the
/// kernel (`cookie_existing_socket`): a raw cookie's ACK would meet the `TIME_WAIT` socket
/// and the connection would stall. Hash collisions only cost that lookup.
#[inline(always)]
#[must_use]
pub fn may_be_time_wait(stamp: u32, now_ns: u64) -> bool {
    stamp != 0 && u64::from(closed_stamp(now_ns).wrapping_sub(stamp)) <= TIME_WAIT_NS / NS_PER_SEC
}

/// How long after a socket-bound answer the same listener may take the raw path. The
/// kernel rewrites the stamp at most once per second (`tcp_synq_overflow`), so renewing
/// more often buys nothing; renewing this often keeps 119 s of the 120 s window in hand.
pub const RENEW_EVERY_NS: u64 = 1_000_000_000;

/// Capacity of `names::MAP_COOKIE_RENEWALS`: listeners (address, port) answered recently.
/// An LRU map: when full, the least recently renewed listener is forgotten and simply
/// takes the socket-bound path once more.
pub const RENEWALS_CAPACITY: u32 = 4_096;

/// Key of `names::MAP_COOKIE_RENEWALS`: the listener a SYN reaches, as the socket lookup
/// sees it (destination address and port). Value: `bpf_ktime_get_ns` of the last
/// socket-bound cookie for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    /// Local address, IPv4-mapped for IPv4, network order.
    pub addr: [u8; 16],
    /// Local port, host order.
    pub port: u16,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<ListenerKey>() == 20);

#[cfg(feature = "user")]
// SAFETY: repr(C), integers only, explicit padding (size asserted above).
unsafe impl aya::Pod for ListenerKey {}

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
/// `may_be_time_wait` for the SYN's tuple. The caller takes the socket-bound path without
/// asking while the filter is not known to be complete (`config::FLAG_RAW_COOKIES` clear).
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

    #[test]
    fn a_fin_marks_its_bucket_for_the_time_wait_period() {
        let fin = closed_stamp(T);
        assert!(!may_be_time_wait(0, T), "a zeroed slot saw no FIN");
        assert!(may_be_time_wait(fin, T));
        assert!(may_be_time_wait(fin, T + 60 * 1_000_000_000 + 999_999_999), "all of TCP_TIMEWAIT_LEN");
        assert!(!may_be_time_wait(fin, T + TIME_WAIT_NS + 1_000_000_000));
        assert!(!may_be_time_wait(fin, T + 3_600 * 1_000_000_000));
        // Early in boot (seconds 0): the +1 keeps a real stamp apart from "never".
        assert!(may_be_time_wait(closed_stamp(0), 5));
    }

    #[test]
    fn a_renewal_in_the_future_is_not_trusted() {
        assert_eq!(cookie_path(Some(T + 1), false, T), CookiePath::SocketBound);
        assert_eq!(cookie_path(Some(u64::MAX), false, T), CookiePath::SocketBound);
    }
}
