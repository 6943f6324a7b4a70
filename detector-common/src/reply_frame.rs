//! How the SYN's frame becomes the SYN-ACK's: kept at the SYN's length with the bytes
//! after the reply zeroed (an Ethernet trailer), or resized to the reply.
//!
//! Why keep it: resizing is a helper call (`bpf_xdp_adjust_tail`) and a return through
//! the kernel's return thunk, about a tenth of an MSS-only answer (docs/hotpaths.md). A
//! reply shorter than the SYN is the usual case for an MSS-only reply: a Linux SYN carries
//! 20 bytes of options (MSS, SACK-permitted, timestamps, window scale), a Windows SYN 12,
//! the MSS-only reply only the MSS's 4.
//!
//! Why it is safe: the IP header's length field (IPv4 total length, IPv6 payload length)
//! says where the packet ends, and receivers trim what follows it as link-layer padding
//! (Linux: `ip_rcv_core` and `ipv6_rcv`, through `pskb_trim_rcsum`), as they trim the
//! padding of every Ethernet frame under 60 bytes. The TCP checksum covers the segment the
//! IP length gives, not the trailer. The trailer is zeroed: left as it was it would carry
//! the SYN's own option bytes back to their sender, harmless, but scanners flag non-zero
//! padding as a memory leak (Etherleak, CVE-2003-0001).
//!
//! Bounded: a frame is kept only when it ends with the SYN's headers (its length then
//! known by pointer comparison, without a helper), so at most the SYN's options beyond the
//! reply's become trailer: 36 bytes, 9 words. A frame with padding or data after its
//! headers (a TCP Fast Open SYN) is resized, as is a SYN shorter than its reply.

use crate::synack::SYNACK_LEN_MSS_ONLY;

/// The longest TCP header (60 bytes) less the shortest reply's, in 4-byte words.
pub const MAX_TRAILER_WORDS: usize = (60 - SYNACK_LEN_MSS_ONLY as usize) / 4;

/// What to do with the SYN's frame before the reply is written over it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyFrame {
    /// Keep the frame's length; after the reply's last byte, zero this many 4-byte words.
    Keep { trailer_words: u8 },
    /// Resize the frame by this many bytes (never 0).
    Resize { delta: i32 },
}

/// The frame is `frame_len` bytes, the reply `reply_len` (from the frame's start to the
/// SYN-ACK's last TCP byte); `headers_end_frame` says that the frame ends with the SYN's
/// TCP header (nothing after it).
#[inline(always)]
#[must_use]
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, reason = "frame lengths")]
pub fn reply_frame(frame_len: usize, headers_end_frame: bool, reply_len: usize) -> ReplyFrame {
    if reply_len == frame_len {
        return ReplyFrame::Keep { trailer_words: 0 };
    }
    if headers_end_frame && reply_len < frame_len {
        let excess = frame_len - reply_len;
        // TCP headers are whole words, so the excess of one over the other is too.
        if excess.is_multiple_of(4) && excess / 4 <= MAX_TRAILER_WORDS {
            return ReplyFrame::Keep { trailer_words: (excess / 4) as u8 };
        }
    }
    ReplyFrame::Resize { delta: reply_len as i32 - frame_len as i32 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synack::SYNACK_LEN_WITH_TS;

    /// An Ethernet + IPv4 frame whose TCP header is `tcp` bytes long.
    fn v4(tcp: u8) -> usize {
        14 + 20 + usize::from(tcp)
    }

    #[test]
    fn a_reply_as_long_as_the_syn_keeps_the_frame_as_it_is() {
        assert_eq!(reply_frame(v4(40), true, v4(SYNACK_LEN_WITH_TS)), ReplyFrame::Keep { trailer_words: 0 });
        // Even when the frame's end was only known from the helper.
        assert_eq!(
            reply_frame(v4(24), false, v4(SYNACK_LEN_MSS_ONLY)),
            ReplyFrame::Keep { trailer_words: 0 }
        );
    }

    #[test]
    fn a_shorter_reply_to_a_syn_that_ends_its_frame_leaves_the_rest_as_a_trailer() {
        // Linux's SYN (MSS, SACK-permitted, timestamps, window scale) answered MSS-only.
        assert_eq!(reply_frame(v4(40), true, v4(SYNACK_LEN_MSS_ONLY)), ReplyFrame::Keep { trailer_words: 4 });
        // Windows' (MSS, window scale, SACK-permitted, no timestamps).
        assert_eq!(reply_frame(v4(32), true, v4(SYNACK_LEN_MSS_ONLY)), ReplyFrame::Keep { trailer_words: 2 });
        // The longest header TCP allows, answered with timestamps or without.
        assert_eq!(reply_frame(v4(60), true, v4(SYNACK_LEN_WITH_TS)), ReplyFrame::Keep { trailer_words: 5 });
        assert_eq!(
            reply_frame(v4(60), true, v4(SYNACK_LEN_MSS_ONLY)),
            ReplyFrame::Keep { trailer_words: 9 },
            "{MAX_TRAILER_WORDS} words at most"
        );
        assert_eq!(MAX_TRAILER_WORDS, 9);
    }

    #[test]
    fn padding_data_or_a_short_syn_resize_the_frame() {
        // Padded to Ethernet's 60-byte minimum, or data after the headers: the frame's end
        // is not the headers', and what follows them may be long.
        assert_eq!(reply_frame(60, false, v4(SYNACK_LEN_MSS_ONLY)), ReplyFrame::Resize { delta: -2 });
        assert_eq!(
            reply_frame(v4(40) + 1000, false, v4(SYNACK_LEN_WITH_TS)),
            ReplyFrame::Resize { delta: -1000 }
        );
        // A SYN without options grows to the MSS-only reply.
        assert_eq!(reply_frame(v4(20), true, v4(SYNACK_LEN_MSS_ONLY)), ReplyFrame::Resize { delta: 4 });
    }

    #[test]
    fn a_trailer_is_whole_words_and_never_longer_than_a_tcp_header_allows() {
        // Neither can come from a SYN that ends its frame; refused all the same.
        assert_eq!(reply_frame(v4(24) + 2, true, v4(SYNACK_LEN_MSS_ONLY)), ReplyFrame::Resize { delta: -2 });
        assert_eq!(
            reply_frame(v4(24) + 40, true, v4(SYNACK_LEN_MSS_ONLY)),
            ReplyFrame::Resize { delta: -40 }
        );
    }
}
