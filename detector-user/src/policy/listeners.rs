//! The host's TCP listening ports, from the kernel's socket diagnostics (`sock_diag` with a
//! LISTEN-only state filter, so the kernel walks its listening table only). Ports without
//! a listener get `policy::PORT_NO_LISTENER`: their SYNs pass without a socket lookup.

use std::{collections::BTreeSet, io};

use super::sock_diag::{dump_tcp, TCP_LISTEN};

/// The local ports of every TCP listener (IPv4 and IPv6) in the caller's network namespace.
pub fn listening_ports() -> io::Result<BTreeSet<u16>> {
    let mut ports = BTreeSet::new();
    dump_tcp(1 << TCP_LISTEN, |s| {
        ports.insert(s.local_port);
    })?;
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;
    use crate::test_netns::TestNs;

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
