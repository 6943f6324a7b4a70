//! End to end, the kernel as the judge, for the cookie fast path and the ACK shield: the
//! agent in cookie mode in front of a real HTTP server (backlog 16, `tcp_syncookies = 0`
//! before the agent sets 2), spoofed floods from trafgen inside 198.18.128.0/17 (bounded).
//!
//! 1. A SYN flood longer than the kernel's 120 s overflow window, legit clients throughout
//!    and again after 130 s of quiet: all connect, the kernel accepts every cookie XDP
//!    answered them with (TcpExtSyncookiesRecv), and the raw helper answered (cookie_fast).
//! 2. A forged-ACK flood: legit cookie connections complete, the kernel checks (and fails)
//!    next to no cookies (TcpExtSyncookiesFailed), the shield's drops are counted.
//!
//! Needs root; the first test takes about five minutes.

use std::{collections::HashMap, net::SocketAddr, path::Path, sync::Mutex, thread, time::Duration};

use xtask::lab::{in_netns, Agent, ClientReport, Flood, FloodSources, Lab, Scrape};
use xtask::objects::test_programs;

const PORT: u16 = 8080;
const AGENT: &str = env!("CARGO_BIN_EXE_syndetector");
/// The floods saturate the 2 CPUs: one scenario at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
const COOKIE_ARGS: &[&str] =
    &["--mode", "cookie", "--poll-interval-ms", "200", "--syn-rate-limit", "0", "--half-open-limit", "0"];
const FAST: &str = "syndetector_packets_total{reason=\"cookie_fast\",verdict=\"tx\"}";
const SOCKET_BOUND: &str = "syndetector_packets_total{reason=\"cookie\",verdict=\"tx\"}";
const SHIELD: &str = "syndetector_packets_total{reason=\"ack_shield\",verdict=\"drop\"}";

fn cookie_lab() -> (Lab, Agent) {
    let mut lab = Lab::new().expect("lab");
    lab.attach_client_xdp(&test_programs(false)).expect("dummy XDP on the client veth");
    lab.sysctl(&lab.server_ns.clone(), "net.ipv4.tcp_syncookies", "0").unwrap();
    lab.start_server(PORT, 16).unwrap();
    let agent = Agent::start(&lab, Path::new(AGENT), COOKIE_ARGS).unwrap();
    // The agent's first policy (listeners, local addresses) is in before it attaches;
    // a moment for cookie mode's sysctls.
    thread::sleep(Duration::from_secs(1));
    (lab, agent)
}

fn legit(lab: &Lab, count: u32) -> ClientReport {
    let addr = SocketAddr::new(Lab::server_addr(false), PORT);
    in_netns(&lab.client_ns, move || ClientReport::run(addr, "/data", count, Duration::from_secs(3))).unwrap()
}

fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>, key: &str) -> u64 {
    after.get(key).copied().unwrap_or(0) - before.get(key).copied().unwrap_or(0)
}

fn value(s: &Scrape, series: &str) -> u64 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "counts")]
    let v = s.get(series).unwrap_or(0.0) as u64;
    v
}

/// SYNs the program passed to the kernel (every pass reason a SYN can have): those legit
/// connects complete the kernel's way, not through an XDP cookie.
fn syns_passed(s: &Scrape) -> u64 {
    let sum: f64 = s
        .text
        .lines()
        .filter(|l| l.starts_with("syndetector_packets_total{") && l.contains("verdict=\"pass\""))
        .filter(|l| {
            ["reason=\"syn\"", "reason=\"cookie_", "reason=\"map_error\""].iter().any(|r| l.contains(r))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "counts")]
    let n = sum as u64;
    n
}

#[test]
fn fast_path_cookies_are_accepted_through_a_long_flood_and_after_a_quiet_period() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let (lab, mut agent) = cookie_lab();
    let flood = Flood {
        v6: false,
        sources: FloodSources::Random,
        port: PORT,
        count: 2_000 * 135,
        pps: 2_000,
        limit: Duration::from_secs(140),
    };
    let first = agent.scrape().unwrap();
    let before = lab.nstat(&lab.server_ns).unwrap();
    let (sent, during) = thread::scope(|scope| {
        let f = scope.spawn(|| flood.run(&lab).expect("flood"));
        // Legit clients every 5 s for 130 s: past the 120 s the first renewal alone covers.
        let mut total = ClientReport::default();
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(130) {
            let r = legit(&lab, 10);
            total.ok += r.ok;
            total.failed += r.failed;
            total.latencies.extend(r.latencies);
            total.first_error = total.first_error.or(r.first_error);
            thread::sleep(Duration::from_secs(5));
        }
        (f.join().unwrap().sent, total)
    });
    let mid = lab.nstat(&lab.server_ns).unwrap();
    let mid_scrape = agent.scrape().unwrap();
    println!(
        "{sent} spoofed SYNs over the flood; legit {during}; fast {} socket-bound {}",
        value(&mid_scrape, FAST),
        value(&mid_scrape, SOCKET_BOUND)
    );
    assert!(sent >= 2_000 * 121, "the flood must outlast the 120 s window: {sent} sent");
    assert_eq!(during.failed, 0, "legit connects under the flood: {during}");

    // Quiet for longer than the overflow window: the listener's stamp expires.
    thread::sleep(Duration::from_secs(130));
    let quiet_scrape = agent.scrape().unwrap();
    let after_quiet = legit(&lab, 20);
    let after = lab.nstat(&lab.server_ns).unwrap();
    thread::sleep(Duration::from_millis(400));
    let last = agent.scrape().unwrap();
    println!("after 130 s of quiet: legit {after_quiet}");
    assert_eq!(after_quiet.failed, 0, "legit connects after the quiet period: {after_quiet}");

    let legit_ok = u64::from(during.ok + after_quiet.ok);
    let handed_to_kernel = syns_passed(&last) - syns_passed(&first);
    let xdp_answered = legit_ok.saturating_sub(handed_to_kernel);
    let recv = delta(&before, &after, "TcpExtSyncookiesRecv");
    let failed = delta(&before, &after, "TcpExtSyncookiesFailed");
    println!(
        "legit {legit_ok} ({handed_to_kernel} handed to the kernel); SyncookiesRecv +{recv}, Failed +{failed}; \
         fast {} socket-bound {}",
        value(&last, FAST),
        value(&last, SOCKET_BOUND)
    );
    assert!(xdp_answered > 0);
    // Between the two nstat readings the test scrapes the agent twice (mid_scrape,
    // quiet_scrape): with tcp_syncookies = 2 the kernel answers those connections with its
    // own cookies, and counts them in SyncookiesRecv too.
    let scrapes = 2;
    assert!(
        (xdp_answered..=legit_ok + scrapes).contains(&recv),
        "TcpExtSyncookiesRecv +{recv} must count every legit handshake XDP answered ({xdp_answered})"
    );
    assert!(value(&mid_scrape, FAST) > value(&first, FAST), "the raw helper answered during the flood");
    // After the quiet period, the first SYN renews (socket-bound), the rest go fast.
    assert!(value(&last, SOCKET_BOUND) > value(&quiet_scrape, SOCKET_BOUND), "a renewal after the quiet");
    assert!(value(&last, FAST) > value(&quiet_scrape, FAST), "the fast path after the quiet");
    assert_eq!(delta(&before, &mid, "TcpExtListenOverflows"), 0);
    assert!(agent.stop().unwrap().success(), "{}", agent.log_text());
}

#[test]
fn a_forged_ack_flood_stops_in_xdp_and_legit_cookie_connections_complete() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let (lab, mut agent) = cookie_lab();
    let flood = Flood {
        v6: false,
        sources: FloodSources::Random,
        port: PORT,
        count: 60_000,
        pps: 5_000,
        limit: Duration::from_secs(15),
    };
    let first = agent.scrape().unwrap();
    let before = lab.nstat(&lab.server_ns).unwrap();
    let (sent, report) = thread::scope(|scope| {
        let f = scope.spawn(|| flood.run_acks(&lab).expect("ACK flood"));
        thread::sleep(Duration::from_secs(2));
        let report = legit(&lab, 500);
        (f.join().unwrap().sent, report)
    });
    let after = lab.nstat(&lab.server_ns).unwrap();
    thread::sleep(Duration::from_millis(400));
    let last = agent.scrape().unwrap();
    let failed = delta(&before, &after, "TcpExtSyncookiesFailed");
    let recv = delta(&before, &after, "TcpExtSyncookiesRecv");
    let drops = value(&last, SHIELD) - value(&first, SHIELD);
    let handed_to_kernel = syns_passed(&last) - syns_passed(&first);
    let xdp_answered = u64::from(report.ok).saturating_sub(handed_to_kernel);
    println!(
        "{sent} forged ACKs: shield drops {drops}; legit {report}; SyncookiesRecv +{recv}, Failed +{failed}"
    );
    assert_eq!(report.failed, 0, "legit connects under the ACK flood: {report}");
    assert!(
        (xdp_answered..=u64::from(report.ok)).contains(&recv),
        "TcpExtSyncookiesRecv +{recv} must count every legit handshake XDP answered ({xdp_answered})"
    );
    // Without the shield every forged ACK is a failed kernel check; with it, near none.
    assert!(failed * 1000 <= sent, "TcpExtSyncookiesFailed +{failed} for {sent} forged ACKs");
    assert!(drops * 100 >= sent * 99, "the shield dropped {drops} of {sent} forged ACKs");
    assert!(agent.stop().unwrap().success(), "{}", agent.log_text());
}

/// A client in the client namespace: `GET /data` from `198.18.0.2:port` (0: any port);
/// prints the bytes received, or the error. The server (HTTP/1.0) closes first, so its
/// side of each tuple stays in TIME_WAIT for 60 s.
const CLIENT: &str = r#"
import socket, sys
def get(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(3)
    s.bind(("198.18.0.2", port))
    s.connect(("198.18.0.1", 8080))
    s.sendall(b"GET /data HTTP/1.0\r\n\r\n")
    n = 0
    while True:
        b = s.recv(65536)
        if not b:
            break
        n += len(b)
    s.close()
    return n
for port in sys.argv[1:]:
    try:
        print(port, get(int(port)), flush=True)
    except Exception as e:
        print(port, "error", e, flush=True)
"#;

/// The client port the TIME_WAIT test reuses.
const REUSED: u16 = 40_123;

fn clients(lab: &Lab, ports: &[u16]) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.client_ns, "python3", "-c", CLIENT])
        .args(ports.iter().map(ToString::to_string))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_tuple_in_time_wait_from_before_the_agent_started_is_not_answered_raw() {
    // The program never saw this tuple's FIN (no program ran then); the agent seeds the
    // closed filter from the kernel's TIME_WAIT sockets after attaching. Without that, the
    // SYN reusing the tuple right after a renewal would get a raw cookie whose ACK the
    // TIME_WAIT socket drops: the client would time out.
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    time_wait_tuple_goes_to_the_kernel(None);
}

#[test]
fn with_a_larger_closed_filter_the_agent_and_the_program_place_flows_alike() {
    // `maps.closed_filter_lines` other than the default: the agent's seeding and the
    // program's lookup must agree on the flow's line in the larger map, or the reused
    // tuple would get a raw cookie.
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    time_wait_tuple_goes_to_the_kernel(Some("[maps]\nclosed_filter_lines = 65536\n"));
}

/// A tuple left in TIME_WAIT before the agent starts (with `config`, if given, as its
/// configuration file), reused right after a renewal: the kernel gets it.
fn time_wait_tuple_goes_to_the_kernel(config: Option<&str>) {
    let mut lab = Lab::new().expect("lab");
    lab.attach_client_xdp(&test_programs(false)).expect("dummy XDP on the client veth");
    lab.start_server(PORT, 16).unwrap();
    let before = clients(&lab, &[REUSED]);
    assert!(before.starts_with("40123 65"), "the first connection, before the agent: {before}");
    let mut args = COOKIE_ARGS.iter().map(ToString::to_string).collect::<Vec<_>>();
    if let Some(text) = config {
        let path = lab.scratch().join("syndetector.toml");
        std::fs::write(&path, text).unwrap();
        args.extend(["--config".to_owned(), path.display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::start(&lab, Path::new(AGENT), &args).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !agent.log_text().contains("closed_filter_seeded")
        || agent.scrape().unwrap().get("syndetector_cookies_active") != Some(1.0)
    {
        assert!(std::time::Instant::now() < deadline, "no seeding logged: {}", agent.log_text());
        thread::sleep(Duration::from_millis(100));
    }
    // A poll later the program config has FLAG_RAW_COOKIES.
    thread::sleep(Duration::from_millis(500));
    let first = agent.scrape().unwrap();
    assert_eq!(first.get("syndetector_reconciled{what=\"closed_filter\"}"), Some(1.0));
    // Port 0 first: a socket-bound cookie renews the listener, so the raw helper would
    // answer the next SYN, the reused tuple's, were its bucket not stamped.
    let out = clients(&lab, &[0, REUSED, 0, 0]);
    // The counters are the agent's as of its last poll (every 200 ms).
    thread::sleep(Duration::from_millis(500));
    let last = agent.scrape().unwrap();
    let existing = "syndetector_packets_total{reason=\"cookie_existing_socket\",verdict=\"pass\"}";
    println!(
        "{out}cookie {} -> {}, cookie_fast {} -> {}, existing socket {} -> {}",
        value(&first, SOCKET_BOUND),
        value(&last, SOCKET_BOUND),
        value(&first, FAST),
        value(&last, FAST),
        value(&first, existing),
        value(&last, existing)
    );
    let verdicts: Vec<&str> = last
        .text
        .lines()
        .filter(|l| l.starts_with("syndetector_packets_total{") && !l.ends_with(" 0"))
        .collect();
    println!("{}", verdicts.join("\n"));
    for line in out.lines() {
        assert!(line.split_whitespace().nth(1).is_some_and(|n| n.starts_with("65")), "{out}");
    }
    assert!(
        value(&last, existing) > value(&first, existing),
        "the reused tuple's SYN went to the kernel; agent log:\n{}",
        agent.log_text()
    );
    assert!(value(&last, FAST) > value(&first, FAST), "the other connections took the raw path");
    assert!(agent.stop().unwrap().success(), "{}", agent.log_text());
}
