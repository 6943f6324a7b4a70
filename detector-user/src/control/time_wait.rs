//! Seeding the closed-connection filter (`CLOSED_FILTER`, docs/cookies.md) from the
//! kernel's TIME_WAIT sockets, as a reconcile step.
//!
//! The program stamps a tuple's cells when the client's FIN passes it, and the raw cookie
//! helper never answers a SYN whose cells are all stamped: a raw cookie's ACK would meet
//! the TIME_WAIT socket, which drops it, and the connection would stall. FINs that passed
//! before the program ran (a first start, or fresh maps after a layout change) left no
//! stamp, so after attaching the agent stamps every tuple the kernel holds in TIME_WAIT
//! (and in the FIN_WAIT2 timewait substate), through a shared mapping of the filter and
//! with the same byte stores as the program (`closed_lines`): only those tuples' cells, so
//! a restart on a busy server does not send every SYN to the lookup for a minute. A FIN
//! after the attach is the program's to see, so one dump after the attach completes the
//! filter; until it has succeeded the program config lacks `FLAG_RAW_COOKIES` and every
//! cookie takes the socket lookup.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use aya::maps::Map;
use detector_common::{closed_filter, config::FLAG_RAW_COOKIES, names, parse::ipv4_mapped, state::FlowKey};
use tracing::info;

use super::{closed_lines::ClosedLines, reconcile::Reconciler};
use crate::{
    error::LoadError,
    maps::monotonic_ns,
    metrics::WHAT_CLOSED_FILTER,
    policy::sock_diag::{dump_tcp, DiagSocket, TCP_FIN_WAIT2, TCP_TIME_WAIT},
};

pub struct TimeWaitStep {
    lines: ClosedLines,
    /// Set by the agent once every interface runs this program (or its pinned link was
    /// switched to it): from then on the program sees every FIN.
    attached: Arc<AtomicBool>,
    seeded: bool,
}

impl TimeWaitStep {
    /// Takes the map from the loaded object and maps its lines.
    pub fn take(ebpf: &mut aya::Ebpf, attached: Arc<AtomicBool>) -> Result<Self, LoadError> {
        let map_error = |source| LoadError::Map { map: names::MAP_CLOSED_FILTER, source };
        let map = match ebpf.take_map(names::MAP_CLOSED_FILTER) {
            Some(Map::Array(map)) => map,
            Some(_) => return Err(map_error(aya::maps::MapError::InvalidMapType { map_type: 0 })),
            None => return Err(LoadError::Missing(names::MAP_CLOSED_FILTER)),
        };
        let lines = ClosedLines::map(&map)
            .map_err(|io_error| map_error(aya::sys::SyscallError { call: "mmap", io_error }.into()))?;
        Ok(Self { lines, attached, seeded: false })
    }
}

impl Reconciler for TimeWaitStep {
    fn what(&self) -> &'static str {
        WHAT_CLOSED_FILTER
    }

    fn reconcile(&mut self) -> Result<(), String> {
        // Before the attach a dump would miss the FINs between it and the attach.
        if self.seeded || !self.attached.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut flows = Vec::new();
        dump_tcp(1 << TCP_TIME_WAIT | 1 << TCP_FIN_WAIT2, |s| flows.push(client_flow(s)))
            .map_err(|e| format!("listing the TIME_WAIT sockets (sock_diag): {e}"))?;
        let stamp = closed_filter::stamp(monotonic_ns());
        for flow in &flows {
            self.lines.stamp_flow(&closed_filter::spot(flow, self.lines.line_bits()), stamp);
        }
        info!(
            event = "closed_filter_seeded",
            flows = flows.len(),
            "closed-connection filter seeded from the kernel's TIME_WAIT sockets; the raw cookie helper may answer"
        );
        self.seeded = true;
        Ok(())
    }

    fn program_flags(&self) -> u32 {
        if self.seeded {
            FLAG_RAW_COOKIES
        } else {
            0
        }
    }
}

/// The flow a client's segment on this socket's tuple carries, as the program keys it:
/// the client (remote) as source, this host (local) as destination.
fn client_flow(s: &DiagSocket) -> FlowKey {
    let addr = |a: &[u8; 16]| {
        if i32::from(s.family) == libc::AF_INET {
            ipv4_mapped([a[0], a[1], a[2], a[3]])
        } else {
            *a
        }
    };
    FlowKey { src: addr(&s.remote), dst: addr(&s.local), src_port: s.remote_port, dst_port: s.local_port }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::{TcpListener, TcpStream},
    };

    use super::*;
    use crate::test_netns::TestNs;

    #[test]
    fn an_ipv4_socket_keys_like_the_clients_segments() {
        let mut s = DiagSocket {
            family: 2,
            state: 6,
            local_port: 8080,
            remote_port: 50_000,
            local: [0; 16],
            remote: [0; 16],
        };
        s.local[..4].copy_from_slice(&[198, 18, 0, 1]);
        s.remote[..4].copy_from_slice(&[198, 18, 0, 2]);
        let flow = client_flow(&s);
        assert_eq!(flow.src, ipv4_mapped([198, 18, 0, 2]));
        assert_eq!(flow.dst, ipv4_mapped([198, 18, 0, 1]));
        assert_eq!((flow.src_port, flow.dst_port), (50_000, 8080));
        s.family = 10;
        s.remote = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        assert_eq!(client_flow(&s).src, s.remote, "IPv6 as it is");
    }

    #[test]
    fn the_kernel_reports_a_tuple_the_server_closed_first_as_time_wait() {
        let ns = TestNs::new("tw");
        let found = ns.run(|| {
            let listener = TcpListener::bind("127.0.0.1:18090").unwrap();
            let mut client = TcpStream::connect("127.0.0.1:18090").unwrap();
            let client_port = client.local_addr().unwrap().port();
            let (mut server, _) = listener.accept().unwrap();
            // The server closes first: its side goes to TIME_WAIT once the client's FIN
            // arrives.
            server.write_all(b"bye").unwrap();
            drop(server);
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).unwrap();
            drop(client);
            std::thread::sleep(std::time::Duration::from_millis(100));
            let mut found = Vec::new();
            dump_tcp(1 << TCP_TIME_WAIT | 1 << TCP_FIN_WAIT2, |s| found.push(*s)).expect("sock_diag");
            (client_port, found)
        });
        let (client_port, sockets) = found;
        let server_side = sockets
            .iter()
            .find(|s| s.local_port == 18090 && s.remote_port == client_port)
            .unwrap_or_else(|| panic!("no TIME_WAIT socket for the server's side: {sockets:?}"));
        assert_eq!(u32::from(server_side.state), TCP_TIME_WAIT);
        assert!(
            sockets.iter().all(|s| s.local_port != client_port),
            "the client closed second: no TIME_WAIT"
        );
    }
}
