//! End to end: the agent in cookie mode with `[samples] one_in = 1` under a bounded
//! spoofed SYN flood (trafgen, sources inside 198.18.128.0/17). tshark finds the flood's
//! SYNs, with their spoofed sources and a "tx cookie" (or "tx cookie_fast") comment, in the sample files; the
//! files are 0600 in a 0700 directory and the size and count caps hold. Needs root.
#![allow(clippy::float_cmp, reason = "metric values compared here are exact counts")]
#![allow(clippy::cast_precision_loss, reason = "packet counts far below 2^52")]

use std::{
    collections::BTreeSet, net::Ipv4Addr, os::unix::fs::PermissionsExt, path::Path, process::Command,
    time::Duration,
};

use xtask::lab::{Agent, Flood, FloodSources, Lab, ATTACK_V4};
use xtask::objects::test_programs;

const PORT: u16 = 8080;
const AGENT: &str = env!("CARGO_BIN_EXE_syndetector");
const MAX_FILE_BYTES: u64 = 16_384;
const MAX_FILES: usize = 3;

/// `tshark -T fields` over one file: one line per matching packet.
fn tshark(file: &Path, filter: &str, field: &str) -> Vec<String> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(["-T", "fields", "-e", field, "-Y", filter])
        .output()
        .expect("tshark (Debian package tshark; `cargo xtask setup` installs it)");
    assert!(out.status.success(), "tshark -r {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

#[test]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn a_spoofed_floods_syns_are_found_in_the_sample_files() {
    let mut lab = Lab::new().expect("lab");
    lab.attach_client_xdp(&test_programs(false)).expect("dummy XDP on the client veth");
    lab.start_server(PORT, 128).unwrap();
    let dir = lab.scratch().join("samples");
    let config = lab.scratch().join("samples.toml");
    std::fs::write(
        &config,
        format!(
            "[samples]\none_in = 1\ndir = \"{}\"\nmax_file_bytes = {MAX_FILE_BYTES}\nmax_files = {MAX_FILES}\n",
            dir.display()
        ),
    )
    .unwrap();
    let mut agent = Agent::start(
        &lab,
        Path::new(AGENT),
        &[
            "--config",
            config.to_str().unwrap(),
            "--mode",
            "cookie",
            "--syn-rate-limit",
            "0",
            "--half-open-limit",
            "0",
        ],
    )
    .unwrap();
    let mode =
        std::fs::metadata(&dir).expect("the agent creates the sample directory at start").permissions();
    assert_eq!(mode.mode() & 0o777, 0o700, "the sample directory is 0700");

    let flood = Flood {
        v6: false,
        sources: FloodSources::Random,
        port: PORT,
        count: 3_000,
        pps: 1_000,
        limit: Duration::from_secs(10),
    };
    let sent = flood.run(&lab).expect("flood").sent;
    std::thread::sleep(Duration::from_secs(2));
    let scrape = agent.scrape().unwrap();
    let cookies = scrape.value("syndetector_cookies_sent_total").unwrap_or(0.0);
    let written = scrape.value("syndetector_samples_written_total").unwrap_or(0.0);
    let lost = scrape.value("syndetector_samples_lost_total").unwrap_or(-1.0);
    let errors = scrape.value("syndetector_sample_write_errors_total").unwrap_or(-1.0);

    // A reload turns sampling off: more answers, no more samples.
    std::fs::write(&config, std::fs::read_to_string(&config).unwrap().replace("one_in = 1", "one_in = 0"))
        .unwrap();
    agent.signal(libc::SIGHUP).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let sent_after = Flood { count: 500, ..flood }.run(&lab).expect("flood").sent;
    std::thread::sleep(Duration::from_secs(2));
    let after = agent.scrape().unwrap();
    let cookies_after = after.value("syndetector_cookies_sent_total").unwrap();
    assert!(
        cookies_after >= cookies + 0.9 * sent_after as f64,
        "still answering: {cookies} then {cookies_after}"
    );
    assert_eq!(
        after.value("syndetector_samples_written_total").unwrap(),
        written,
        "one_in = 0 after SIGHUP: no more samples\n{}",
        agent.log_text()
    );
    assert!(agent.stop().unwrap().success(), "clean stop:\n{}", agent.log_text());
    println!("{sent} spoofed SYNs sent, {cookies} answered, {written} samples written, {lost} lost, {errors} errors");
    assert!(cookies >= 0.9 * sent as f64, "cookie mode answers the flood: {cookies} of {sent}");
    assert!(written >= 0.9 * cookies, "one_in = 1 samples every answer: {written} of {cookies}");
    assert_eq!(errors, 0.0, "no write errors");

    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    // The flood wrote far more than the caps allow (a sample's block is over 100 bytes):
    // they must have been enforced.
    assert!(
        written * 100.0 > (MAX_FILE_BYTES * MAX_FILES as u64) as f64,
        "the flood should overrun the caps"
    );
    assert_eq!(files.len(), MAX_FILES, "at most max_files, and the flood filled them: {files:?}");
    let (attack, prefix) = (u32::from(ATTACK_V4.0), ATTACK_V4.1);
    let mut sources = BTreeSet::new();
    for file in &files {
        let meta = std::fs::metadata(file).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{} is 0600", file.display());
        assert!(meta.len() <= MAX_FILE_BYTES, "{} is {} bytes", file.display(), meta.len());
        let srcs = tshark(file, "tcp.flags.syn==1 && tcp.flags.ack==0", "ip.src");
        assert!(!srcs.is_empty(), "{} holds SYNs", file.display());
        let all = tshark(file, "frame", "frame.number");
        assert_eq!(
            srcs.len(),
            all.len(),
            "{}: every sample is the SYN as received, not a SYN-ACK",
            file.display()
        );
        for src in srcs {
            let addr: Ipv4Addr = src.parse().unwrap_or_else(|e| panic!("{src:?}: {e}"));
            assert_eq!(u32::from(addr) >> (32 - prefix), attack >> (32 - prefix), "{addr} is a flood source");
            sources.insert(addr);
        }
        let comments = tshark(file, "frame", "frame.comment");
        // Answered by the socket-bound helper or by the fast path (raw helper).
        assert!(
            comments.iter().all(|c| c == "tx cookie" || c == "tx cookie_fast"),
            "{}: comments {comments:?}",
            file.display()
        );
    }
    assert!(sources.len() > 100, "the spoofed sources are many: {}", sources.len());
}
