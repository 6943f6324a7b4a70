//! The kernel's own TCP counters for the namespace the agent runs in (/proc/net/netstat
//! and /proc/net/snmp), exported beside ours so a dashboard can set the cookies XDP sent
//! against the cookie ACKs the kernel accepted.

use std::collections::HashMap;

use detector_common::procnet;

/// (section, field in /proc, metric name, help).
pub const EXPORTED: &[(&str, &str, &str, &str)] = &[
    (
        "TcpExt",
        "SyncookiesSent",
        "syndetector_kernel_syncookies_sent_total",
        "SYN cookies the kernel itself sent (XDP cookies are not counted here).",
    ),
    (
        "TcpExt",
        "SyncookiesRecv",
        "syndetector_kernel_syncookies_recv_total",
        "Cookie ACKs the kernel accepted, from XDP cookies and its own.",
    ),
    (
        "TcpExt",
        "SyncookiesFailed",
        "syndetector_kernel_syncookies_failed_total",
        "ACKs with a cookie the kernel rejected.",
    ),
    (
        "TcpExt",
        "ListenOverflows",
        "syndetector_kernel_listen_overflows_total",
        "Handshakes completed while the accept queue was full.",
    ),
    (
        "TcpExt",
        "ListenDrops",
        "syndetector_kernel_listen_drops_total",
        "SYNs or ACKs a listener dropped for any reason.",
    ),
    (
        "TcpExt",
        "TCPReqQFullDrop",
        "syndetector_kernel_reqq_full_drops_total",
        "SYNs dropped because the SYN queue was full and cookies were off.",
    ),
    (
        "TcpExt",
        "TCPReqQFullDoCookies",
        "syndetector_kernel_reqq_full_do_cookies_total",
        "SYNs answered with cookies because the SYN queue was full (also counts cookie helper calls).",
    ),
    ("Tcp", "ActiveOpens", "syndetector_kernel_tcp_active_opens_total", "Connections this host opened."),
    (
        "Tcp",
        "PassiveOpens",
        "syndetector_kernel_tcp_passive_opens_total",
        "Connections this host accepted (SYN_RECV reached).",
    ),
];

/// Reads both files; a missing file (not Linux, or no /proc) gives what the other has.
pub fn read() -> HashMap<(String, String), u64> {
    let mut out = HashMap::new();
    for path in ["/proc/net/netstat", "/proc/net/snmp"] {
        if let Ok(text) = std::fs::read_to_string(path) {
            procnet::parse(&text, &mut out);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_kernel_has_every_exported_field() {
        let m = read();
        for (section, field, _, _) in EXPORTED {
            assert!(m.contains_key(&((*section).into(), (*field).into())), "{section} {field} missing");
        }
    }
}
