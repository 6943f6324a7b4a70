//! Slots of the per-CPU `COUNTERS` array: one per verdict reason and per event.

use crate::parse::NotTcp;

/// What the program did with a packet, as exported in `syndetector_packets_total{verdict}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
    Tx,
}

impl Verdict {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Drop => "drop",
            Verdict::Tx => "tx",
        }
    }
}

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident = $idx:literal, $verdict:expr, $label:literal; )*) => {
        /// Index into the per-CPU counter array. Every packet increments exactly one slot
        /// whose `verdict()` is `Some`; event slots (`verdict() == None`) count things that
        /// happen besides the verdict.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $( $(#[$doc])* $name = $idx, )*
        }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$name,)*];

            /// The verdict this slot counts, or `None` for an event slot.
            #[must_use]
            pub const fn verdict(self) -> Option<Verdict> {
                match self { $(Counter::$name => $verdict,)* }
            }

            /// The `reason` label of a verdict slot, or the event's name.
            #[must_use]
            pub const fn label(self) -> &'static str {
                match self { $(Counter::$name => $label,)* }
            }
        }
    };
}

counters! {
    /// Not IPv4/IPv6.
    PassNotIp = 0, Some(Verdict::Pass), "not_ip";
    /// IP but not TCP.
    PassNotTcp = 1, Some(Verdict::Pass), "not_tcp";
    PassFragment = 2, Some(Verdict::Pass), "fragment";
    PassTruncated = 3, Some(Verdict::Pass), "truncated";
    PassMalformed = 4, Some(Verdict::Pass), "malformed";
    /// Too many VLAN tags or IPv6 extension headers.
    PassTooDeep = 5, Some(Verdict::Pass), "too_deep";
    /// No usable config written by the agent yet: fail open.
    PassNoConfig = 6, Some(Verdict::Pass), "no_config";
    /// A map lookup or insert failed: fail open.
    PassMapError = 7, Some(Verdict::Pass), "map_error";
    /// TCP that is not a connection request (established traffic, handshake ACKs, RST...).
    PassTcp = 8, Some(Verdict::Pass), "tcp";
    /// A SYN from a source within its limits.
    PassSyn = 9, Some(Verdict::Pass), "syn";
    /// A SYN from a source that is blocked.
    DropBlocked = 10, Some(Verdict::Drop), "blocked";
    /// The SYN that pushed its source over a threshold (the source is now blocked).
    DropOverLimit = 11, Some(Verdict::Drop), "over_limit";
    /// A handshake's third packet arrived for a pending flow.
    HandshakeCompleted = 12, None, "handshake_completed";
    /// Pending handshakes that timed out, counted as the program ages a source.
    HandshakeFailed = 13, None, "handshake_failed";
    /// A source crossed its SYN-rate limit and was blocked.
    BlockedSynRate = 14, None, "blocked_syn_rate";
    /// A source crossed its half-open limit and was blocked.
    BlockedHalfOpen = 15, None, "blocked_half_open";
    /// A SYN for a flow already pending (a retransmission): counted once as half-open.
    SynRetransmit = 16, None, "syn_retransmit";
    /// A SYN answered from XDP with a cookie SYN-ACK.
    TxCookie = 17, Some(Verdict::Tx), "cookie";
    /// A SYN beyond this CPU's SYN-ACK budget for the second: dropped, never reflected.
    DropCookieBudget = 18, Some(Verdict::Drop), "cookie_budget";
    /// A SYN to a port with no local listener: the kernel answers (with a RST).
    PassCookieNoListener = 19, Some(Verdict::Pass), "cookie_no_listener";
    /// A SYN the responder does not rewrite (IPv4 options, IPv6 extension headers).
    PassCookieUnsupported = 20, Some(Verdict::Pass), "cookie_unsupported";
    /// The cookie helper failed for another reason.
    PassCookieHelperError = 21, Some(Verdict::Pass), "cookie_helper_error";
    /// Monitor mode: the SYN would have been dropped, its source being blocked.
    PassMonitorBlocked = 22, Some(Verdict::Pass), "monitor_blocked";
    /// Monitor mode: the SYN would have been dropped for crossing a limit.
    PassMonitorOverLimit = 23, Some(Verdict::Pass), "monitor_over_limit";
    /// The cookie helper declined (-ENOENT): `tcp_syncookies` is not 2 and the listener's
    /// SYN queue is not full. The agent sets the sysctl; this counts the gap.
    PassCookieNotArmed = 24, Some(Verdict::Pass), "cookie_not_armed";
    /// A SYN shorter than its SYN-ACK, in a buffer without tailroom to grow: the kernel
    /// answers it (with its own cookie, as `tcp_syncookies = 2` is set while answering).
    PassCookieNoRoom = 25, Some(Verdict::Pass), "cookie_no_room";
    /// A SYN whose exact tuple belongs to an existing socket (typically `TIME_WAIT`, when a
    /// client reuses a port): only the kernel can decide it; a cookie ACK would hit that
    /// socket instead of the listener.
    PassCookieExistingSocket = 26, Some(Verdict::Pass), "cookie_existing_socket";
    /// An IP length field disagrees with the frame (IPv4 total length below the headers
    /// or beyond the frame, IPv6 payload length beyond the frame or zero): the kernel's IP
    /// layer discards it, so it is neither tracked nor answered.
    PassBadLength = 27, Some(Verdict::Pass), "bad_length";
    /// A SYN to an address that is not one of the host's own (forwarded or routed
    /// traffic): another machine's handshake, never tracked or answered here.
    PassNotLocal = 28, Some(Verdict::Pass), "not_local";
    /// A SYN to a port or destination left to the kernel (published by DNAT/redirect rules,
    /// or by the operator's policy): netfilter must see it before any answer.
    PassCookieKernelPolicy = 29, Some(Verdict::Pass), "cookie_kernel_policy";
    /// An untagged SYN on an interface whose NIC strips VLAN tags: it may have been tagged,
    /// and a reply from XDP would leave untagged.
    PassCookieVlanOffload = 30, Some(Verdict::Pass), "cookie_vlan_offload";
    /// The kill switch is on (`mode off`): passed before parsing.
    PassOff = 31, Some(Verdict::Pass), "off";
    /// A packet from a source on the allow list: never dropped nor answered.
    PassAllowed = 32, Some(Verdict::Pass), "allowed";
    /// A packet from a source on the deny list (or blocked by the operator): dropped.
    DropDenied = 33, Some(Verdict::Drop), "denied";
    /// Monitor mode: the packet would have been dropped, its source being denied.
    PassMonitorDenied = 34, Some(Verdict::Pass), "monitor_denied";
    /// A SYN to a port the operator did not list as protected (`protected_ports`).
    PassUnprotectedPort = 35, Some(Verdict::Pass), "unprotected_port";
    /// A SYN answered from XDP with a cookie from the raw helper (no socket lookup), within
    /// a second of a socket-bound answer for the same listener (`fastpath`).
    TxCookieFast = 36, Some(Verdict::Tx), "cookie_fast";
    /// While cookies are on: an ACK that only a listener would take, whose cookie the
    /// kernel's check refuses (a forged cookie ACK), dropped before the kernel checks it.
    DropAckShield = 37, Some(Verdict::Drop), "ack_shield";
    /// A SYN the raw helper would have answered that the closed filter sent to the socket
    /// lookup instead: its tuple may be in `TIME_WAIT` here (a client reusing a port, or
    /// other flows' FINs covering its cells, `closed_filter`).
    ClosedFilterLookup = 38, None, "closed_filter_lookup";
}

/// Number of slots in the counter array.
pub const COUNTER_SLOTS: u32 = 39;

const _: () = assert!(Counter::ALL.len() == COUNTER_SLOTS as usize);

impl Counter {
    /// Whether this slot's packets are connection requests: the SYN rate is their sum.
    #[must_use]
    pub const fn is_syn(self) -> bool {
        matches!(
            self,
            Counter::PassMapError
                | Counter::PassSyn
                | Counter::DropBlocked
                | Counter::DropOverLimit
                | Counter::TxCookie
                | Counter::TxCookieFast
                | Counter::DropCookieBudget
                | Counter::PassCookieNoListener
                | Counter::PassCookieUnsupported
                | Counter::PassCookieHelperError
                | Counter::PassMonitorBlocked
                | Counter::PassMonitorOverLimit
                | Counter::PassCookieNotArmed
                | Counter::PassCookieNoRoom
                | Counter::PassCookieExistingSocket
                | Counter::PassNotLocal
                | Counter::PassCookieKernelPolicy
                | Counter::PassCookieVlanOffload
                | Counter::PassUnprotectedPort
        )
    }

    /// Whether this slot's SYNs count towards host-wide attack detection: SYNs that
    /// reached the decision for a local listener. Not those of sources already blocked
    /// (one flooder being dropped is handled), nor SYNs for other machines.
    #[must_use]
    pub const fn counts_toward_detection(self) -> bool {
        self.is_syn()
            && !matches!(
                self,
                Counter::DropBlocked
                    | Counter::PassMonitorBlocked
                    | Counter::PassNotLocal
                    | Counter::PassUnprotectedPort
            )
    }

    /// What monitor mode counts instead: every drop becomes a pass that says what would
    /// have happened. (The agent never sets cookies without enforcement, so no TX here.)
    #[inline(always)]
    #[must_use]
    pub fn monitored(self) -> Counter {
        match self {
            Counter::DropBlocked => Counter::PassMonitorBlocked,
            Counter::DropOverLimit | Counter::DropCookieBudget => Counter::PassMonitorOverLimit,
            Counter::DropDenied => Counter::PassMonitorDenied,
            other => other,
        }
    }
}

impl From<NotTcp> for Counter {
    #[inline(always)]
    fn from(reason: NotTcp) -> Self {
        match reason {
            NotTcp::NotIp => Counter::PassNotIp,
            NotTcp::OtherProtocol => Counter::PassNotTcp,
            NotTcp::Fragment => Counter::PassFragment,
            NotTcp::Truncated => Counter::PassTruncated,
            NotTcp::Malformed => Counter::PassMalformed,
            NotTcp::TooDeep => Counter::PassTooDeep,
            NotTcp::BadLength => Counter::PassBadLength,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_dense_and_in_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{c:?} is out of place");
        }
    }

    #[test]
    fn labels_are_unique_snake_case() {
        for (i, a) in Counter::ALL.iter().enumerate() {
            assert!(a.label().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            for b in &Counter::ALL[i + 1..] {
                assert!(
                    a.label() != b.label() || a.verdict() != b.verdict(),
                    "{a:?} and {b:?} share a label"
                );
            }
        }
    }
}
