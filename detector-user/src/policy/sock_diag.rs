//! The kernel's socket diagnostics (NETLINK_SOCK_DIAG, `inet_diag`) for TCP sockets in a
//! set of states: the kernel walks only the tables those states live in (the listening
//! table for LISTEN, the established hash for TIME_WAIT), not every socket as
//! /proc/net/tcp would. Used for the listening ports (`listeners`) and the TIME_WAIT
//! tuples (`control::time_wait`).

use std::io;

use netlink_sys::{constants::NETLINK_SOCK_DIAG, Socket, SocketAddr};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDR_LEN: usize = 16;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then a 48-byte sockid.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg` up to the end of its sockid (family, state, timer, retrans,
/// sport, dport, src[16], dst[16], if, cookie[2]).
const MSG_ID_END: usize = 48;

/// TCP states (`include/net/tcp_states.h`), as the `states` bit numbers.
pub const TCP_FIN_WAIT2: u32 = 5;
pub const TCP_TIME_WAIT: u32 = 6;
pub const TCP_LISTEN: u32 = 10;

/// One socket of the dump, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    pub state: u8,
    /// Local and remote port, host order.
    pub local_port: u16,
    pub remote_port: u16,
    /// Local and remote address: 4 bytes used for IPv4, 16 for IPv6, network order.
    pub local: [u8; 16],
    pub remote: [u8; 16],
}

/// Calls `each` for every TCP socket (IPv4 and IPv6) in one of `states` (a bit per
/// `TCP_*` state) in the caller's network namespace.
pub fn dump_tcp(states: u32, mut each: impl FnMut(&DiagSocket)) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut buf = vec![0u8; 64 * 1024];
    for family in [libc::AF_INET, libc::AF_INET6] {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "2 and 10")]
        socket.send(&request(family as u8, states), 0)?;
        loop {
            let n = socket.recv(&mut &mut buf[..], 0)?;
            if parse(&buf[..n.min(buf.len())], &mut each)? {
                break;
            }
        }
    }
    Ok(())
}

/// A dump request for one address family's TCP sockets in `states`.
fn request(family: u8, states: u32) -> [u8; NLMSG_HDR_LEN + REQ_LEN] {
    let mut msg = [0u8; NLMSG_HDR_LEN + REQ_LEN];
    #[allow(clippy::cast_possible_truncation, reason = "72 bytes")]
    msg[0..4].copy_from_slice(&((NLMSG_HDR_LEN + REQ_LEN) as u32).to_ne_bytes());
    msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg[16] = family;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "IPPROTO_TCP = 6")]
    {
        msg[17] = libc::IPPROTO_TCP as u8;
    }
    msg[20..24].copy_from_slice(&states.to_ne_bytes());
    msg
}

/// Hands each `inet_diag_msg` of one datagram to `each`; `Ok(true)` at NLMSG_DONE.
pub fn parse(mut data: &[u8], each: &mut impl FnMut(&DiagSocket)) -> io::Result<bool> {
    while data.len() >= NLMSG_HDR_LEN {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if len < NLMSG_HDR_LEN || len > data.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "sock_diag: truncated message"));
        }
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = data.get(16..20).map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                return Err(io::Error::from_raw_os_error(-errno));
            }
            SOCK_DIAG_BY_FAMILY => {
                let msg = &data[NLMSG_HDR_LEN..len];
                if msg.len() < MSG_ID_END {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "sock_diag: short inet_diag_msg"));
                }
                let field = |at: usize| -> [u8; 16] { msg[at..at + 16].try_into().unwrap_or_default() };
                each(&DiagSocket {
                    family: msg[0],
                    state: msg[1],
                    local_port: u16::from_be_bytes([msg[4], msg[5]]),
                    remote_port: u16::from_be_bytes([msg[6], msg[7]]),
                    local: field(8),
                    remote: field(24),
                });
            }
            _ => {}
        }
        // Messages are 4-byte aligned.
        let next = (len + 3) & !3;
        data = data.get(next..).unwrap_or_default();
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        #[allow(clippy::cast_possible_truncation, reason = "tiny")]
        m.extend_from_slice(&((NLMSG_HDR_LEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn collect(data: &[u8]) -> io::Result<(bool, Vec<DiagSocket>)> {
        let mut found = Vec::new();
        let done = parse(data, &mut |s: &DiagSocket| found.push(*s))?;
        Ok((done, found))
    }

    #[test]
    fn each_message_is_one_socket_until_done() {
        let mut diag = vec![2u8, 6, 0, 0, 0x1f, 0x90, 0xc3, 0x50, 198, 18, 0, 1];
        diag.resize(24, 0);
        diag.extend_from_slice(&[198, 18, 0, 2]);
        diag.resize(72, 0);
        let mut data = message(SOCK_DIAG_BY_FAMILY, &diag);
        diag[4..6].copy_from_slice(&443u16.to_be_bytes());
        data.extend(message(SOCK_DIAG_BY_FAMILY, &diag));
        let (done, found) = collect(&data).unwrap();
        assert!(!done, "no DONE yet");
        assert_eq!(found.len(), 2);
        assert_eq!((found[0].local_port, found[0].remote_port, found[0].state), (8080, 50_000, 6));
        assert_eq!(
            (&found[0].local[..4], &found[0].remote[..4]),
            (&[198, 18, 0, 1][..], &[198, 18, 0, 2][..])
        );
        assert_eq!(found[1].local_port, 443);
        assert!(collect(&message(NLMSG_DONE, &[0; 4])).unwrap().0);
    }

    #[test]
    fn an_error_a_truncated_or_a_short_message_is_an_error() {
        let err = collect(&message(NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes())).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        let mut truncated = message(SOCK_DIAG_BY_FAMILY, &[0; 8]);
        truncated[0] = 200;
        assert!(collect(&truncated).is_err());
        assert!(collect(&message(SOCK_DIAG_BY_FAMILY, &[0; 8])).is_err(), "shorter than a sockid");
    }
}
