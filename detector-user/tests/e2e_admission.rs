//! End to end in network namespaces: `thresholds.sketch_admission` in the agent. Legit
//! clients below the promotion threshold leave no per-source entry (their handshakes are
//! not tracked), while a single spoofed source that never completes its handshakes is
//! promoted and blocked at its half-open limit. Floods are bounded trafgen runs from a
//! spoofed source inside 198.18.0.0/15.
#![allow(clippy::float_cmp, reason = "metric values compared here are exact counts")]

use std::{net::SocketAddr, path::Path, thread, time::Duration};

use xtask::lab::{in_netns, Agent, ClientReport, Flood, FloodSources, Lab, SERVER_V4};

const AGENT: &str = env!("CARGO_BIN_EXE_syndetector");
const PORT: u16 = 8080;
/// With these limits and the default 3 s timeout the promotion threshold is 20 SYNs per
/// sketch epoch (`track::promotion_threshold`).
const CONFIG: &str = "[thresholds]\nsyn_rate_limit = 200\nhalf_open_limit = 100\nblock_ttl_secs = 60\n\
                      sketch_admission = true\n";

#[test]
fn light_clients_stay_untracked_and_a_half_open_flooder_is_still_blocked() {
    let mut lab = Lab::new().expect("lab");
    lab.start_server(PORT, 128).unwrap();
    let file = lab.scratch().join("admission.toml");
    std::fs::write(&file, CONFIG).unwrap();
    let agent = Agent::start(&lab, Path::new(AGENT), &["--mode", "drop", "--config", file.to_str().unwrap()])
        .unwrap();

    let addr = SocketAddr::from((SERVER_V4, PORT));
    let legit = in_netns(&lab.client_ns, move || ClientReport::run(addr, "/data", 5, Duration::from_secs(3)))
        .unwrap();
    assert_eq!(legit.ok, 5, "legit requests: {legit}");
    thread::sleep(Duration::from_millis(1500));
    let s = agent.scrape().unwrap();
    let value = |series: &str| s.value(series).unwrap_or_else(|e| panic!("{series}: {e}"));
    assert_eq!(value("syndetector_sources_tracked"), 0.0, "5 SYNs are below the threshold: no entry");
    assert_eq!(value("syndetector_handshakes_total{result=\"completed\"}"), 0.0, "untracked handshakes");
    assert_eq!(value("syndetector_packets_total{reason=\"syn\",verdict=\"pass\"}"), 5.0);

    // 300 SYNs at 100/s: under the rate limit, but none completes: half-open reaches 100.
    let flood = Flood {
        v6: false,
        sources: FloodSources::Single(0x4845),
        port: PORT,
        count: 300,
        pps: 100,
        limit: Duration::from_secs(10),
    };
    let report = flood.run(&lab).unwrap();
    assert!(report.sent >= 295, "trafgen sent only {}", report.sent);
    thread::sleep(Duration::from_millis(1500));
    let s = agent.scrape().unwrap();
    let value = |series: &str| s.value(series).unwrap_or_else(|e| panic!("{series}: {e}"));
    let passed = value("syndetector_packets_total{reason=\"syn\",verdict=\"pass\"}") - 5.0;
    println!("flood: {} sent, {passed} passed before the block", report.sent);
    assert_eq!(value("syndetector_source_blocks_total{reason=\"half_open\"}"), 1.0, "{}", agent.log_text());
    // At the 100th when its first 20 SYNs share a sketch epoch; up to 19 later otherwise.
    assert!((100.0..=119.0).contains(&passed), "{passed} flood SYNs passed before the block");
    assert_eq!(value("syndetector_sources_tracked"), 1.0, "only the flooder has an entry");

    let mut agent = agent;
    let status = agent.stop().unwrap();
    assert!(status.success(), "agent exit: {status}\n{}", agent.log_text());
}
