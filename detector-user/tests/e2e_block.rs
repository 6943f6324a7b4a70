//! End to end in network namespaces: a real HTTP server behind the agent in drop mode,
//! real clients, and a bounded single-source SYN flood (trafgen, spoofed source inside
//! 198.18.0.0/15). The source gets blocked while other clients keep succeeding, the block
//! expires after its TTL, and the agent leaves nothing attached when it stops.
#![allow(clippy::float_cmp, reason = "metric values compared here are exact counts")]

use std::{net::SocketAddr, path::Path, thread, time::Duration};

use xtask::lab::{in_netns, Agent, ClientReport, Flood, FloodSources, Lab, SERVER_V4};

const PORT: u16 = 8080;
const AGENT: &str = env!("CARGO_BIN_EXE_syndetector");

fn object() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../detector-ebpf/target/bpfel-unknown-none/debug/detector-ebpf"
    ))
}

fn legit(lab: &Lab, count: u32) -> ClientReport {
    let addr = SocketAddr::from((SERVER_V4, PORT));
    in_netns(&lab.client_ns, move || ClientReport::run(addr, "/data", count, Duration::from_secs(3))).unwrap()
}

#[test]
fn single_source_flood_is_blocked_then_released_while_legit_clients_succeed() {
    let mut lab = Lab::new().expect("lab");
    lab.start_server(PORT, 128).unwrap();
    let mut agent = Agent::start(
        &lab,
        Path::new(AGENT),
        &[
            "--mode",
            "drop",
            "--log-format",
            "json",
            "--syn-rate-limit",
            "100",
            "--half-open-limit",
            "50",
            "--block-ttl",
            "5",
            "--handshake-timeout-ms",
            "1000",
        ],
    )
    .unwrap();
    let _ = object();

    let before = legit(&lab, 20);
    assert_eq!(before.ok, 20, "legit requests before the flood: {before}");
    thread::sleep(Duration::from_millis(1500));
    let s = agent.scrape().unwrap();
    let completed = s.value("syndetector_handshakes_total{result=\"completed\"}").unwrap();
    assert!(completed >= 20.0, "the agent saw {completed} completed handshakes of 20");

    let flood = Flood {
        v6: false,
        sources: FloodSources::Single(0x4842),
        port: PORT,
        count: 6000,
        pps: 2000,
        limit: Duration::from_secs(10),
    };
    let (report, during, top) = thread::scope(|scope| {
        let f = scope.spawn(|| flood.run(&lab).expect("flood"));
        let during = legit(&lab, 20);
        // `top` shows the rates of the agent's last poll: ask while the flood is on.
        thread::sleep(Duration::from_millis(1200));
        let top = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.server_ns, AGENT, "top", "--metrics-addr", "127.0.0.1:9787"])
            .output()
            .unwrap();
        assert!(top.status.success(), "syndetector top: {}", String::from_utf8_lossy(&top.stderr));
        (f.join().unwrap(), during, String::from_utf8_lossy(&top.stdout).into_owned())
    });
    println!("flood: {} SYNs from {} in {:?}", report.sent, Flood::single_v4(0x4842), report.elapsed);
    assert!(report.sent >= 5900, "trafgen sent only {}", report.sent);
    thread::sleep(Duration::from_millis(1500));
    let s = agent.scrape().unwrap();
    let dropped = s.value("syndetector_packets_total{reason=\"blocked\",verdict=\"drop\"}").unwrap()
        + s.value("syndetector_packets_total{reason=\"over_limit\",verdict=\"drop\"}").unwrap();
    println!("legit during the flood: {during}; flood SYNs dropped: {dropped} of {}", report.sent);
    #[allow(clippy::cast_precision_loss)]
    let expected = 0.8 * (report.sent as f64 - 100.0);
    assert!(dropped >= expected, "dropped {dropped}, expected at least {expected}");
    assert!(s.value("syndetector_sources_blocked").unwrap() >= 1.0);
    // Whichever limit it crossed first (half-open 50 comes before 100 SYN/s here).
    let blocks = s.value("syndetector_source_blocks_total{reason=\"syn_rate\"}").unwrap()
        + s.value("syndetector_source_blocks_total{reason=\"half_open\"}").unwrap();
    assert!(blocks >= 1.0, "no block counted");
    assert_eq!(during.ok, during.total(), "legit requests during the flood: {during}");
    let after = legit(&lab, 20);
    assert_eq!(after.ok, 20, "legit requests after the flood: {after}");
    // One structured JSON event per block, and the source at the top of `syndetector top`.
    let events: Vec<serde_json::Value> =
        agent.log_text().lines().map(|l| serde_json::from_str(l).expect("JSON log line")).collect();
    assert!(
        events.iter().any(|e| e["event"] == "source_blocked" && e["source"] == "198.18.200.66"),
        "a source_blocked event:\n{}",
        agent.log_text()
    );
    println!("syndetector top during the flood:\n{top}");
    assert!(top.contains("198.18.200.66") && top.contains("blocked"), "syndetector top:\n{top}");

    // The block expires after its TTL (5 s) and the same source's SYNs pass again.
    thread::sleep(Duration::from_secs(6));
    let s = agent.scrape().unwrap();
    assert_eq!(s.value("syndetector_sources_blocked").unwrap(), 0.0, "block expired");
    let passed_before = s.value("syndetector_packets_total{reason=\"syn\",verdict=\"pass\"}").unwrap();
    Flood { count: 5, pps: 10, ..flood }.run(&lab).unwrap();
    thread::sleep(Duration::from_millis(1500));
    let s = agent.scrape().unwrap();
    let passed_after = s.value("syndetector_packets_total{reason=\"syn\",verdict=\"pass\"}").unwrap();
    assert_eq!(passed_after - passed_before, 5.0, "SYNs from the released source pass");
    assert!(agent.log_text().contains("\"event\":\"source_unblocked\""));

    let status = agent.stop().unwrap();
    assert!(status.success(), "agent exit: {status}\n{}", agent.log_text());
    let link = lab.server_link_details().unwrap();
    assert!(!link.contains("prog/xdp") && !link.contains(" xdp"), "XDP left attached:\n{link}");
}
