//! The host's TCP listening ports, from the kernel's socket diagnostics (NETLINK_SOCK_DIAG,
//! `inet_diag` with a LISTEN-only state filter, so the kernel walks its listening table
//! only, not every connection as /proc/net/tcp would). Ports without a listener get
//! `policy::PORT_NO_LISTENER`: their SYNs pass without a socket lookup.

use std::{collections::BTreeSet, io};

use netlink_sys::{constants::NETLINK_SOCK_DIAG, Socket, SocketAddr};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCP_LISTEN: u32 = 10;
const NLMSG_HDR_LEN: usize = 16;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then a 48-byte sockid.
const REQ_LEN: usize = 56;

/// The local ports of every TCP listener (IPv4 and IPv6) in the caller's network namespace.
pub fn listening_ports() -> io::Result<BTreeSet<u16>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut ports = BTreeSet::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "2 and 10")]
        socket.send(&request(family as u8), 0)?;
        dump(&socket, &mut ports)?;
    }
    Ok(ports)
}

/// A dump request for one address family's TCP sockets in LISTEN.
fn request(family: u8) -> [u8; NLMSG_HDR_LEN + REQ_LEN] {
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
    msg[20..24].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    msg
}

/// Reads datagrams until NLMSG_DONE, adding each listener's port to `ports`.
fn dump(socket: &Socket, ports: &mut BTreeSet<u16>) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = socket.recv(&mut &mut buf[..], 0)?;
        if parse(&buf[..n.min(buf.len())], ports)? {
            return Ok(());
        }
    }
}

/// Adds the ports of the `inet_diag_msg`s in one datagram; `Ok(true)` at NLMSG_DONE.
pub fn parse(mut data: &[u8], ports: &mut BTreeSet<u16>) -> io::Result<bool> {
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
            // inet_diag_msg: family, state, timer, retrans, then the sockid whose first
            // field is the source (local) port, network order.
            SOCK_DIAG_BY_FAMILY if len >= NLMSG_HDR_LEN + 6 => {
                ports.insert(u16::from_be_bytes([data[20], data[21]]));
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
    use std::net::TcpListener;

    use super::*;
    use crate::test_netns::TestNs;

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
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

    #[test]
    fn ports_come_from_each_message_until_done() {
        let mut diag = vec![2u8, 10, 0, 0, 0x1f, 0x90, 0, 0];
        diag.resize(72, 0);
        let mut data = message(SOCK_DIAG_BY_FAMILY, &diag);
        diag[4..6].copy_from_slice(&443u16.to_be_bytes());
        data.extend(message(SOCK_DIAG_BY_FAMILY, &diag));
        let mut ports = BTreeSet::new();
        assert!(!parse(&data, &mut ports).unwrap(), "no DONE yet");
        assert_eq!(ports, BTreeSet::from([443, 8080]));
        assert!(parse(&message(NLMSG_DONE, &[0; 4]), &mut ports).unwrap());
    }

    #[test]
    fn an_error_message_or_a_truncated_one_is_an_error() {
        let mut ports = BTreeSet::new();
        let err = parse(&message(NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes()), &mut ports).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        let mut short = message(SOCK_DIAG_BY_FAMILY, &[0; 8]);
        short[0] = 200;
        assert!(parse(&short, &mut ports).is_err());
    }

    #[test]
    fn the_kernel_reports_listeners_of_both_families_and_not_connections() {
        let ns = TestNs::new("lis");
        let ports = ns.run(|| {
            let v4 = TcpListener::bind("127.0.0.1:18081").unwrap();
            let v6 = TcpListener::bind("[::1]:18082").unwrap();
            // A connection: its local port (ephemeral) must not show up.
            let _client = std::net::TcpStream::connect("127.0.0.1:18081").unwrap();
            let found = listening_ports().expect("sock_diag");
            drop((v4, v6));
            found
        });
        assert_eq!(ports, BTreeSet::from([18081, 18082]));
    }
}
