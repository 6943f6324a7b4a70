//! The ACK shield: while cookies are on, an ACK that no socket owns and that reaches a
//! listener is a cookie ACK, real or forged; the kernel would compute and compare a cookie
//! for each one. The program checks it first (`bpf_tcp_raw_check_syncookie_*`, the same
//! secret and function as the kernel's check) and drops the invalid ones, so a forged-ACK
//! flood stops in XDP. Valid ones pass and the kernel completes the handshake.

use crate::{
    config::{Config, FLAG_COOKIES, FLAG_ENFORCE},
    counters::Counter,
    parse::tcp_flags,
};

/// Whether a segment with these TCP flags is screened under `cfg`: cookies on (the shield
/// costs a socket lookup per ACK, so only while answering with cookies), verdicts applied,
/// and a segment the kernel would take as a cookie ACK in a listener (ACK set, SYN and RST
/// clear; `cookie_v4_check`, `tcp_v4_cookie_check`).
#[inline(always)]
#[must_use]
pub fn screens(cfg: &Config, flags: u8) -> bool {
    cfg.has(FLAG_COOKIES)
        && cfg.has(FLAG_ENFORCE)
        && flags & (tcp_flags::ACK | tcp_flags::SYN | tcp_flags::RST) == tcp_flags::ACK
}

/// What the socket lookup found for the ACK's tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// No socket at all: the kernel answers with a RST, no cookie is computed.
    Nobody,
    /// Only the listener: the kernel would check the ACK as a cookie.
    Listener,
    /// A connection, a request socket or a TIME_WAIT socket owns it: not a cookie ACK.
    Connection,
}

/// `Some(DropAckShield)` when the ACK reaches a listener and `cookie_valid` (the raw check,
/// called only then) says its cookie is not one the kernel made; `None` to pass it.
#[inline(always)]
#[must_use]
pub fn verdict(owner: Owner, cookie_valid: impl FnOnce() -> bool) -> Option<Counter> {
    match owner {
        Owner::Listener if !cookie_valid() => Some(Counter::DropAckShield),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(flags: u32) -> Config {
        let mut c = Config::new(0, 0, 1, 3);
        c.flags = flags;
        c
    }

    #[test]
    fn only_acks_while_cookies_are_answered_and_enforced() {
        let on = cfg(FLAG_ENFORCE | FLAG_COOKIES);
        assert!(screens(&on, tcp_flags::ACK));
        assert!(screens(&on, tcp_flags::ACK | tcp_flags::PSH), "a cookie ACK may carry data");
        assert!(screens(&on, tcp_flags::ACK | tcp_flags::FIN), "the kernel checks FIN|ACK too");
        assert!(!screens(&on, tcp_flags::SYN | tcp_flags::ACK));
        assert!(!screens(&on, tcp_flags::RST | tcp_flags::ACK));
        assert!(!screens(&on, tcp_flags::SYN));
        assert!(!screens(&cfg(FLAG_ENFORCE), tcp_flags::ACK), "calm: no lookup per ACK");
        assert!(!screens(&cfg(FLAG_COOKIES), tcp_flags::ACK), "monitor mode drops nothing");
    }

    #[test]
    fn only_acks_reaching_a_listener_are_checked_and_only_invalid_ones_dropped() {
        let never = || -> bool { panic!("cookie checked") };
        assert_eq!(verdict(Owner::Nobody, never), None);
        assert_eq!(verdict(Owner::Connection, never), None);
        assert_eq!(verdict(Owner::Listener, || true), None);
        assert_eq!(verdict(Owner::Listener, || false), Some(Counter::DropAckShield));
    }
}
