//! End to end in network namespaces: per-port limits from the config file. The agent runs
//! in drop mode with a high default SYN-rate limit and a low one for one port; a source
//! flooding that port is blocked while the same rate from another source to the other port
//! passes; the block holds on every port (it is per source); a SIGHUP that lowers the other
//! port's limit takes effect without a restart. Floods are bounded trafgen runs from
//! spoofed single sources inside 198.18.0.0/15.
#![allow(clippy::float_cmp, reason = "metric values compared here are exact counts")]

use std::{fmt::Write, path::Path, thread, time::Duration};

use xtask::lab::{Agent, Flood, FloodSources, Lab, Scrape};

const AGENT: &str = env!("CARGO_BIN_EXE_syndetector");
const STRICT: u16 = 8081;
const OTHER: u16 = 8080;

fn config(other_limit: Option<u32>) -> String {
    let mut text = String::from(
        "[thresholds]\nsyn_rate_limit = 1000\nhalf_open_limit = 0\nblock_ttl_secs = 60\n\
         [ports.\"8081\"]\nsyn_rate_limit = 20\n",
    );
    if let Some(limit) = other_limit {
        writeln!(text, "[ports.\"8080\"]\nsyn_rate_limit = {limit}").unwrap();
    }
    text
}

/// 300 SYNs at 100/s from one spoofed source to `port`: over 20 SYN/s, under 1000.
fn flood(host: u16, port: u16) -> Flood {
    Flood {
        v6: false,
        sources: FloodSources::Single(host),
        port,
        count: 300,
        pps: 100,
        limit: Duration::from_secs(10),
    }
}

fn value(s: &Scrape, series: &str) -> f64 {
    s.value(series).unwrap_or_else(|e| panic!("{series}: {e}"))
}

const BLOCKS: &str = "syndetector_source_blocks_total{reason=\"syn_rate\"}";
const PASSED: &str = "syndetector_packets_total{reason=\"syn\",verdict=\"pass\"}";
const BLOCKED: &str = "syndetector_packets_total{reason=\"blocked\",verdict=\"drop\"}";
const OVER: &str = "syndetector_packets_total{reason=\"over_limit\",verdict=\"drop\"}";

/// Runs `f`, waits for the agent's next poll, returns (blocks, passed, dropped) deltas.
fn deltas(agent: &Agent, f: impl FnOnce()) -> (f64, f64, f64) {
    let before = agent.scrape().unwrap();
    f();
    thread::sleep(Duration::from_millis(1500));
    let after = agent.scrape().unwrap();
    let d = |series| value(&after, series) - value(&before, series);
    (d(BLOCKS), d(PASSED), d(BLOCKED) + d(OVER))
}

#[test]
fn a_port_with_a_lower_limit_blocks_a_rate_another_port_lets_through() {
    let mut lab = Lab::new().expect("lab");
    lab.start_server(OTHER, 128).unwrap();
    lab.start_server(STRICT, 128).unwrap();
    let file = lab.scratch().join("ports.toml");
    std::fs::write(&file, config(None)).unwrap();
    let agent = Agent::start(&lab, Path::new(AGENT), &["--mode", "drop", "--config", file.to_str().unwrap()])
        .unwrap();
    let s = agent.scrape().unwrap();
    assert_eq!(value(&s, "syndetector_reconciled{what=\"port_limits\"}"), 1.0, "PORT_LIMITS written");

    let (blocks, passed, dropped) =
        deltas(&agent, || assert!(flood(0x4842, STRICT).run(&lab).unwrap().sent >= 295));
    println!("strict port {STRICT}: blocks {blocks}, passed {passed}, dropped {dropped}");
    assert_eq!(blocks, 1.0, "the source over the strict port's 20 SYN/s is blocked once");
    assert!(passed <= 21.0 && dropped >= 275.0, "passed {passed}, dropped {dropped}");

    let (blocks, passed, dropped) =
        deltas(&agent, || assert!(flood(0x4843, OTHER).run(&lab).unwrap().sent >= 295));
    println!("other port {OTHER}: blocks {blocks}, passed {passed}, dropped {dropped}");
    assert_eq!((blocks, dropped), (0.0, 0.0), "the same rate to the other port is within its limit");
    assert!(passed >= 295.0, "passed {passed}");

    // A block is per source: the first flooder is dropped on the other port too.
    let (_, passed, dropped) = deltas(&agent, || {
        Flood { count: 5, pps: 10, ..flood(0x4842, OTHER) }.run(&lab).unwrap();
    });
    assert_eq!((passed, dropped), (0.0, 5.0), "the blocked source on the other port");

    // SIGHUP with a lower limit for the other port: applied at once, no restart.
    std::fs::write(&file, config(Some(20))).unwrap();
    agent.signal(libc::SIGHUP).unwrap();
    thread::sleep(Duration::from_millis(1500));
    let s = agent.scrape().unwrap();
    assert_eq!(
        value(&s, "syndetector_config_reloads_total{result=\"success\"}"),
        1.0,
        "{}",
        agent.log_text()
    );
    let (blocks, _, dropped) =
        deltas(&agent, || assert!(flood(0x4844, OTHER).run(&lab).unwrap().sent >= 295));
    println!("other port after the reload: blocks {blocks}, dropped {dropped}");
    assert_eq!(blocks, 1.0, "the reloaded limit blocks");
    assert!(dropped >= 275.0, "dropped {dropped}");

    let mut agent = agent;
    let status = agent.stop().unwrap();
    assert!(status.success(), "agent exit: {status}\n{}", agent.log_text());
}
