//! The cookie fast path: when a SYN's cookie may come from the raw helper
//! (`bpf_tcp_raw_gen_syncookie_*`, no socket lookup) instead of the socket-bound one.
//!
//! The kernel accepts a cookie ACK only while its listener carries a fresh "recent
//! overflow" stamp (120 s), and only the socket-bound helper renews that stamp
//! (docs/cookies.md). So each listener, keyed by (local address, port), takes the
//! socket-bound path at least once per `RENEW_EVERY_NS`, and the raw path only in between:
//! a raw cookie is then always less than a second younger than a successful
//! socket-bound call for the same listener, far inside the kernel's window.

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
/// `last_renewal_ns` (`None`: never, or forgotten), now `now_ns`.
///
/// Raw only within `RENEW_EVERY_NS` after a renewal. A renewal stamped in the future (a
/// value the program did not write) is not trusted.
#[inline(always)]
#[must_use]
pub fn cookie_path(last_renewal_ns: Option<u64>, now_ns: u64) -> CookiePath {
    match last_renewal_ns {
        Some(last) if last != 0 && last <= now_ns && now_ns - last < RENEW_EVERY_NS => CookiePath::Raw,
        _ => CookiePath::SocketBound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 500 * RENEW_EVERY_NS;

    #[test]
    fn a_listener_never_answered_takes_the_socket_bound_path() {
        assert_eq!(cookie_path(None, T), CookiePath::SocketBound);
        assert_eq!(cookie_path(Some(0), T), CookiePath::SocketBound, "a zeroed value is no renewal");
    }

    #[test]
    fn within_a_second_of_a_renewal_the_raw_path_answers() {
        assert_eq!(cookie_path(Some(T), T), CookiePath::Raw);
        assert_eq!(cookie_path(Some(T), T + RENEW_EVERY_NS - 1), CookiePath::Raw);
    }

    #[test]
    fn a_second_after_the_renewal_the_socket_bound_path_renews_again() {
        assert_eq!(cookie_path(Some(T), T + RENEW_EVERY_NS), CookiePath::SocketBound);
        assert_eq!(cookie_path(Some(T), T + 200 * RENEW_EVERY_NS), CookiePath::SocketBound);
    }

    #[test]
    fn a_renewal_in_the_future_is_not_trusted() {
        assert_eq!(cookie_path(Some(T + 1), T), CookiePath::SocketBound);
        assert_eq!(cookie_path(Some(u64::MAX), T), CookiePath::SocketBound);
    }
}
