//! `syndetector analyze` on a real capture: dumpcap (tshark) in the lab's server namespace
//! records real clients and a bounded single-source SYN flood (trafgen, spoofed source
//! inside 198.18.0.0/15), with no XDP program attached; the replay must find every
//! handshake of the clients and block the flooder. Needs root (network namespaces).

use std::{net::SocketAddr, process::Command, thread, time::Duration};

use serde_json::Value;
use xtask::lab::{in_netns, ClientReport, Flood, FloodSources, Lab, CLIENT_V4, SERVER_V4};

const PORT: u16 = 8080;
const AGENT: &str = env!("CARGO_BIN_EXE_syndetector");

#[test]
fn a_lab_capture_shows_the_flooder_blocked_and_the_clients_complete() {
    let mut lab = Lab::new().expect("lab");
    lab.start_server(PORT, 128).unwrap();
    let capture = lab.scratch().join("lab.pcapng");
    let mut dumpcap = Command::new("dumpcap");
    dumpcap.args(["-q", "-i", &lab.server_if.clone(), "-f", "tcp", "-a", "duration:30", "-w"]).arg(&capture);
    let pid = lab.spawn(&lab.server_ns.clone(), &mut dumpcap).expect("dumpcap (package tshark)");
    let markers = wait_until_capturing(&lab, &capture);

    let addr = SocketAddr::from((SERVER_V4, PORT));
    let legit =
        in_netns(&lab.client_ns, move || ClientReport::run(addr, "/data", 20, Duration::from_secs(3)))
            .unwrap();
    assert_eq!(legit.ok, 20, "{legit}");
    let flood = Flood {
        v6: false,
        sources: FloodSources::Single(0x4842),
        port: PORT,
        count: 600,
        pps: 1000,
        limit: Duration::from_secs(10),
    };
    let sent = flood.run(&lab).expect("flood").sent;
    assert!(sent >= 590, "trafgen sent only {sent}");
    thread::sleep(Duration::from_millis(500));
    // SAFETY: a signal to the process this test spawned; dumpcap closes the file on SIGINT.
    assert_eq!(unsafe { libc::kill(libc::pid_t::try_from(pid).unwrap(), libc::SIGINT) }, 0);
    thread::sleep(Duration::from_secs(1));

    // KEEP_CAPTURE=FILE keeps a copy for a look with tshark (the lab's scratch goes away).
    if let Ok(keep) = std::env::var("KEEP_CAPTURE") {
        std::fs::copy(&capture, keep).unwrap();
    }
    let out = Command::new(AGENT)
        .args(["analyze", "--json", "--syn-rate-limit", "100", "--half-open-limit", "50"])
        .arg(&capture)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let source = |addr: String| {
        report["sources"].as_array().unwrap().iter().find(|s| s["address"] == addr.as_str()).cloned()
    };
    let flooder = source(Flood::single_v4(0x4842).to_string()).expect("the flooder in the report");
    println!("flooder: {flooder}");
    assert_eq!(flooder["syns"].as_u64(), Some(sent));
    assert_eq!(flooder["blocked_by"], "half_open", "50 half-open come before 100 SYN/s at 1000/s");
    // trafgen picks random source ports: two SYNs of the flood may share a tuple, and the
    // second counts as a retransmit, not as another half-open, so the block can come a
    // SYN later for each.
    let retransmits = flooder["retransmits"].as_u64().unwrap();
    let dropped = flooder["dropped"].as_u64().unwrap();
    assert!(
        (sent - 50 - retransmits..=sent - 50).contains(&dropped),
        "dropped {dropped} of {sent} with {retransmits} retransmits"
    );
    let client = source(CLIENT_V4.to_string()).expect("the client in the report");
    println!("client: {client}");
    assert_eq!(client["completed"], 20);
    assert_eq!((client["half_open"].as_u64(), client["blocked"].as_bool()), (Some(0), Some(false)));
    assert_eq!(client["syn_acks"], 20);
    let server = source(SERVER_V4.to_string()).expect("the start markers' source in the report");
    println!("server (start markers): {server}");
    // Markers sent before the filter was attached are not in the file.
    let syns = server["syns"].as_u64().unwrap();
    assert!((1..=markers).contains(&syns), "{syns} marker SYNs in the capture, {markers} sent");
    assert_eq!(server["blocked"].as_bool(), Some(false));
}

/// Waits until dumpcap captures, and returns how many marker SYNs were sent. Its file's
/// header only says it started: its filter can be attached later, and packets reach the
/// file in blocks, up to about a second late. So until the file grows past the header,
/// the server connects to a closed port of the client every 250 ms (a SYN and the client's
/// RST, both captured); the report shows them as the server's SYNs.
fn wait_until_capturing(lab: &Lab, capture: &std::path::Path) -> u64 {
    let size = || std::fs::metadata(capture).map_or(0, |m| m.len());
    for _ in 0..50 {
        if size() > 0 {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let header = size();
    assert!(header > 0, "dumpcap wrote no capture file in 5 s");
    let closed = SocketAddr::from((CLIENT_V4, 9));
    for markers in 1..=40 {
        in_netns(&lab.server_ns, move || {
            let _ = std::net::TcpStream::connect_timeout(&closed, Duration::from_millis(200));
        })
        .unwrap();
        thread::sleep(Duration::from_millis(250));
        if size() > header {
            println!("dumpcap captures: {markers} marker SYNs");
            return markers;
        }
    }
    panic!("dumpcap wrote no packet in 10 s of marker SYNs ({})", capture.display());
}
