//! Fixed sequences that cross each limit by counts alone, in each mode: the same
//! comparison as the generated ones, plus a tally proving each limit was crossed.

use detector_common::counters::Counter;

use crate::{
    check_case,
    gen::{Case, Dest, FrameSpec, Kind, Mode, Mutation, Policy},
    in_private_netns,
    kernel::Kernel,
    write_pcap, Tally,
};

fn spec(source: u8, sport: u16, kind: Kind) -> FrameSpec {
    FrameSpec {
        v6: false,
        source,
        sport,
        dest: Dest::Listener,
        kind,
        tcp_options: vec![2, 4, 5, 0xb4],
        ip_options: Vec::new(),
        ext_headers: Vec::new(),
        vlan: Vec::new(),
        payload_len: 0,
        mutation: Mutation::None,
    }
}

/// Sequences that cross each limit by counts alone, in each mode; the same comparison,
/// plus the tally proving the limit was crossed.
#[test]
fn limits_crossed_by_count_agree() {
    in_private_netns(|| {
        let mut kernel = Kernel::load();
        let half_open: Vec<FrameSpec> = (0..5).map(|p| spec(3, 40_000 + p, Kind::Syn)).collect();
        let mut completed = vec![spec(4, 40_000, Kind::Syn), spec(4, 40_000, Kind::Ack)];
        completed.extend((1..4).map(|p| spec(4, 40_000 + p, Kind::Syn)));
        let retransmits: Vec<FrameSpec> = (0..5).map(|_| spec(5, 40_000, Kind::Syn)).collect();
        let tagged_v6 = FrameSpec { v6: true, vlan: vec![0x88a8, 0x8100], ..spec(6, 40_000, Kind::Syn) };
        let cases = [
            (
                Mode::Track { syn_rate: 0, half_open: 3 },
                half_open.clone(),
                Counter::BlockedHalfOpen,
                Counter::DropBlocked,
            ),
            (
                Mode::Track { syn_rate: 0, half_open: 3 },
                completed,
                Counter::HandshakeCompleted,
                Counter::PassSyn,
            ),
            (
                Mode::Track { syn_rate: 3, half_open: 0 },
                retransmits,
                Counter::BlockedSynRate,
                Counter::SynRetransmit,
            ),
            (
                Mode::Monitor { syn_rate: 0, half_open: 3 },
                half_open,
                Counter::PassMonitorOverLimit,
                Counter::PassMonitorBlocked,
            ),
            (
                Mode::Cookie { timestamps: true, ecn: true, policy: Policy::default() },
                vec![tagged_v6.clone()],
                Counter::TxCookie,
                Counter::TxCookie,
            ),
            (
                Mode::Cookie { timestamps: false, ecn: false, policy: Policy::default() },
                vec![tagged_v6],
                Counter::TxCookie,
                Counter::TxCookie,
            ),
        ];
        for (mode, frames, must, also) in cases {
            let mut tally = Tally::new();
            let case = Case { mode, frames };
            if let Err(e) = check_case(&mut kernel, &case, &mut tally) {
                let path = write_pcap(&case, "limits");
                panic!("model and kernel disagree ({}):\n{e}", path.display());
            }
            assert!(
                tally.slots[must as usize] > 0 && tally.slots[also as usize] > 0,
                "{mode:?}: {}",
                tally.summary()
            );
        }
        // The completed handshake freed room: no block in that sequence.
    });
}

/// The fast path and the shield on a fixed sequence (generated ones reach the FIN filter
/// and valid cookie ACKs only a few times per run): a socket-bound answer, a raw one for
/// the same listener, a FIN that sends its tuple's next SYN back to the socket-bound
/// helper, valid cookie ACKs for both kinds of cookie passed, a forged one dropped, and a
/// SYN to a port marked as having no listener passed without a lookup.
#[test]
fn fast_path_and_shield_agree() {
    in_private_netns(|| {
        let mut kernel = Kernel::load();
        let policy = Policy { closed_no_listener: true, ..Policy::default() };
        for (v6, timestamps) in [(false, true), (true, false)] {
            let s = |sport, kind| FrameSpec { v6, ..spec(7, sport, kind) };
            let frames = vec![
                s(40_000, Kind::Syn),
                s(40_001, Kind::Syn),
                s(40_001, Kind::CookieAck),
                s(40_002, Kind::Fin),
                s(40_002, Kind::Syn),
                s(40_002, Kind::CookieAck),
                s(40_000, Kind::Ack),
                s(40_000, Kind::CookieAck),
                FrameSpec { dest: Dest::Closed, ..s(40_003, Kind::Syn) },
            ];
            let mut tally = Tally::new();
            let case = Case { mode: Mode::Cookie { timestamps, ecn: false, policy }, frames };
            if let Err(e) = check_case(&mut kernel, &case, &mut tally) {
                let path = write_pcap(&case, "fast-path");
                panic!("model and kernel disagree ({}):\n{e}", path.display());
            }
            let n = |c: Counter| tally.slots[c as usize];
            assert!(
                n(Counter::TxCookie) == 2
                    && n(Counter::TxCookieFast) == 1
                    // The forged ACK, and the FIN (a FIN|ACK without a cookie is screened
                    // too; its bucket is stamped before the shield drops it).
                    && n(Counter::DropAckShield) == 2
                    && n(Counter::PassCookieNoListener) == 1
                    && tally.reached.valid_cookie_acks == 3
                    // The SYN after the FIN: sent to the socket-bound helper by the filter.
                    && n(Counter::ClosedFilterLookup) == 1,
                "v6 {v6}: {}",
                tally.summary()
            );
        }
    });
}
