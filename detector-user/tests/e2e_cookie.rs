//! End to end, the kernel as the judge: a spoofed random-source SYN flood (trafgen, sources
//! inside 198.18.128.0/17 or 2001:2:0:8000::/64, bounded) against a real HTTP server with
//! a listen backlog of 16 and `tcp_syncookies = 0` in its namespace.
//!
//! Without the detector legit connects fail; with it in auto mode it enters cookie mode,
//! answers SYNs from XDP, and legit connects and transfers succeed, the kernel accepting
//! the cookies (TcpExtSyncookiesRecv) without listen overflows. Needs root.
#![allow(clippy::float_cmp, reason = "metric values compared here are exact counts")]

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    thread,
    time::Duration,
};

use xtask::lab::{in_netns, Agent, ClientReport, Flood, FloodSources, Lab, Scrape};
use xtask::objects::test_programs;

const PORT: u16 = 8080;
const BACKLOG: u32 = 16;
const AGENT: &str = env!("CARGO_BIN_EXE_syndetector");
/// The floods saturate the 2 CPUs: one scenario at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Auto mode reacting quickly; per-source limits off, since the one legit client opens
/// hundreds of connections per second.
const AUTO_ARGS: &[&str] = &[
    "--mode",
    "auto",
    "--poll-interval-ms",
    "200",
    "--enter-syn-rate",
    "2000",
    "--exit-syn-rate",
    "500",
    "--hold",
    "3",
    "--syn-rate-limit",
    "0",
    "--half-open-limit",
    "0",
];

/// A lab whose server has a small backlog and no kernel cookies, ready for XDP_TX.
fn flood_lab() -> Lab {
    let mut lab = Lab::new().expect("lab");
    lab.attach_client_xdp(&test_programs(false)).expect("dummy XDP on the client veth");
    lab.sysctl(&lab.server_ns.clone(), "net.ipv4.tcp_syncookies", "0").unwrap();
    lab.start_server(PORT, BACKLOG).unwrap();
    lab
}

fn random_flood(v6: bool) -> Flood {
    Flood {
        v6,
        sources: FloodSources::Random,
        port: PORT,
        count: 100_000,
        pps: 5_000,
        limit: Duration::from_secs(20),
    }
}

fn server(v6: bool) -> SocketAddr {
    SocketAddr::new(Lab::server_addr(v6), PORT)
}

fn legit(lab: &Lab, v6: bool, count: u32, timeout: Duration) -> ClientReport {
    let addr = server(v6);
    in_netns(&lab.client_ns, move || ClientReport::run(addr, "/data", count, timeout)).unwrap()
}

fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>, key: &str) -> u64 {
    after.get(key).copied().unwrap_or(0) - before.get(key).copied().unwrap_or(0)
}

/// Runs `during` while the flood is under way (after `warmup`), then lets the flood end.
fn under_flood<T: Send>(
    lab: &Lab,
    flood: Flood,
    warmup: Duration,
    during: impl FnOnce() -> T + Send,
) -> (u64, T) {
    thread::scope(|scope| {
        let f = scope.spawn(|| flood.run(lab).expect("flood"));
        thread::sleep(warmup);
        let result = during();
        (f.join().unwrap().sent, result)
    })
}

#[test]
fn without_the_detector_a_spoofed_flood_breaks_legit_connects() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let lab = flood_lab();
    let flood = Flood { count: 200_000, pps: 20_000, limit: Duration::from_secs(14), ..random_flood(false) };
    // One connect every half second across the flood: the kernel's SYN queue is full
    // except for brief moments when it prunes old entries, so most attempts time out.
    let addr = server(false);
    let (sent, report) = under_flood(&lab, flood, Duration::from_secs(1), || {
        in_netns(&lab.client_ns, move || {
            let mut total = ClientReport::default();
            for _ in 0..16 {
                let started = std::time::Instant::now();
                let one = ClientReport::run(addr, "/data", 1, Duration::from_secs(1));
                total.ok += one.ok;
                total.failed += one.failed;
                total.latencies.extend(one.latencies);
                total.first_error = total.first_error.or(one.first_error);
                thread::sleep(Duration::from_millis(500).saturating_sub(started.elapsed()));
            }
            total
        })
        .unwrap()
    });
    println!("no detector, {sent} spoofed SYNs: legit {report}");
    // The queue frees up briefly whenever the kernel prunes old entries, and a connect
    // landing then succeeds: about half fail here. Protected, all but 0.1 % must succeed.
    assert!(report.failed * 4 >= report.total(), "the flood should break legit connects: {report}");
}

/// The flood scenario with the agent in auto mode; returns what an operator would report.
fn protected(v6: bool) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let lab = flood_lab();
    let mut agent = Agent::start(&lab, Path::new(AGENT), AUTO_ARGS).unwrap();
    let (sent, (report, before, after, first_scrape, during_scrape)) =
        under_flood(&lab, random_flood(v6), Duration::from_secs(3), || {
            // Scrape, then kernel counters, then the clients, then counters, then scrape: with
            // tcp_syncookies = 2 the kernel answers the scrapes' own connections with cookies.
            // The agent's counters lag by up to one poll (200 ms): wait one out before each
            // scrape so that the scrapes bracket the same window as the kernel counters.
            thread::sleep(Duration::from_millis(400));
            let first_scrape = agent.scrape().unwrap();
            let before = lab.nstat(&lab.server_ns).unwrap();
            let report = legit(&lab, v6, 2000, Duration::from_secs(3));
            // Kernel counters before the scrape: with tcp_syncookies = 2 the kernel answers
            // the scrape's own connection with a cookie too.
            let after = lab.nstat(&lab.server_ns).unwrap();
            thread::sleep(Duration::from_millis(400));
            (report, before, after, first_scrape, agent.scrape().unwrap())
        });
    let recv = delta(&before, &after, "TcpExtSyncookiesRecv");
    let overflows = delta(&before, &after, "TcpExtListenOverflows");
    let cookies = during_scrape.value("syndetector_cookies_sent_total").unwrap();
    for line in during_scrape
        .text
        .lines()
        .filter(|l| l.starts_with("syndetector_packets_total") && !l.ends_with(" 0"))
    {
        println!("  {line}");
    }
    println!(
        "IPv{} with the detector, {sent} spoofed SYNs: legit {report}; XDP cookies sent {cookies}; \
         kernel SyncookiesRecv +{recv}, ListenOverflows +{overflows}",
        if v6 { 6 } else { 4 }
    );
    assert_eq!(during_scrape.value("syndetector_under_attack").unwrap(), 1.0, "auto mode saw the attack");
    assert_eq!(during_scrape.value("syndetector_cookies_active").unwrap(), 1.0);
    assert!(report.success_ratio() >= 0.999, "legit success under flood: {report}");
    assert_eq!(report.bytes, u64::from(report.ok) * 65_536, "every transfer complete");
    // Every legit handshake XDP answered completed through a cookie the kernel accepted;
    // spoofed sources never answer, so nothing else raises the count. SYNs the program
    // handed to the kernel instead (a port reused while its old connection is in
    // TIME_WAIT) complete the kernel's way, with or without its own cookie.
    let handed_to_kernel = syns_passed(&during_scrape) - syns_passed(&first_scrape);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let xdp_answered = u64::from(report.ok) - handed_to_kernel as u64;
    println!("  legit SYNs handed to the kernel: {handed_to_kernel}; completed through XDP cookies: {xdp_answered}");
    // The cookies sent between the two scrapes include the flood's (thousands per second),
    // so this bound is weak on its own: comparing the total since start with the legit
    // count, as before, could not fail. The per-handshake proof is SyncookiesRecv below.
    let cookies_in_window = cookies - first_scrape.value("syndetector_cookies_sent_total").unwrap();
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let answered = xdp_answered as f64;
    assert!(
        cookies_in_window >= answered,
        "XDP sent {cookies_in_window} cookies while {xdp_answered} legit handshakes completed through one"
    );
    assert!(
        (xdp_answered..=u64::from(report.ok)).contains(&recv),
        "TcpExtSyncookiesRecv +{recv} must count every handshake XDP answered ({xdp_answered})"
    );
    assert_eq!(overflows, 0, "no listen overflows");
    let status = agent.stop().unwrap();
    assert!(status.success(), "{}", agent.log_text());
}

#[test]
fn ipv4_flood_with_the_detector_in_auto_mode() {
    protected(false);
}

#[test]
fn ipv6_flood_with_the_detector_in_auto_mode() {
    protected(true);
}

/// SYNs the program passed to the kernel so far (every pass reason of a SYN).
fn syns_passed(s: &Scrape) -> f64 {
    s.text
        .lines()
        .filter(|l| l.starts_with("syndetector_packets_total{") && l.contains("verdict=\"pass\""))
        .filter(|l| {
            ["reason=\"syn\"", "reason=\"cookie_", "reason=\"monitor_", "reason=\"map_error\""]
                .iter()
                .any(|r| l.contains(r))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn sysctl_in(lab: &Lab, key: &str) -> String {
    lab.sysctl_get(&lab.server_ns, key).unwrap()
}

#[test]
fn auto_mode_enters_and_leaves_cookie_mode_and_restores_sysctls() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let lab = flood_lab();
    let timestamps_before = sysctl_in(&lab, "net.ipv4.tcp_timestamps");
    let mut agent = Agent::start(&lab, Path::new(AGENT), AUTO_ARGS).unwrap();
    let calm = agent.scrape().unwrap();
    assert_eq!(calm.value("syndetector_under_attack").unwrap(), 0.0);
    assert_eq!(sysctl_in(&lab, "net.ipv4.tcp_syncookies"), "0", "untouched while calm");

    let flood = Flood { count: 15_000, limit: Duration::from_secs(10), ..random_flood(false) };
    let (_, (during, syncookies, timestamps)) = under_flood(&lab, flood, Duration::from_secs(2), || {
        (
            agent.scrape().unwrap(),
            sysctl_in(&lab, "net.ipv4.tcp_syncookies"),
            sysctl_in(&lab, "net.ipv4.tcp_timestamps"),
        )
    });
    assert_eq!(during.value("syndetector_under_attack").unwrap(), 1.0);
    assert_eq!(during.value("syndetector_attack_transitions_total{to=\"attack\"}").unwrap(), 1.0);
    assert_eq!((syncookies.as_str(), timestamps.as_str()), ("2", "2"), "cookie sysctls set while mitigating");

    // The flood is over: after the hold time (3 s) the agent goes back to pass-through.
    // Waited for on the cookies, which the poll switches off (sysctls first) after it
    // publishes the calm state: a scrape between the two saw calm with cookies still on.
    let calm_again = wait_for(&agent, "syndetector_cookies_active", 0.0, Duration::from_secs(15));
    assert_eq!(calm_again.value("syndetector_under_attack").unwrap(), 0.0);
    assert_eq!(calm_again.value("syndetector_attack_transitions_total{to=\"calm\"}").unwrap(), 1.0);
    assert_eq!(calm_again.value("syndetector_cookies_active").unwrap(), 0.0);
    assert_eq!(sysctl_in(&lab, "net.ipv4.tcp_syncookies"), "0", "restored when mitigation ends");
    assert_eq!(sysctl_in(&lab, "net.ipv4.tcp_timestamps"), timestamps_before);
    assert!(agent.log_text().contains("SYN flood detected") && agent.log_text().contains("SYN flood over"));
    assert!(agent.stop().unwrap().success());
}

fn wait_for(agent: &Agent, series: &str, value: f64, limit: Duration) -> Scrape {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let s = agent.scrape().unwrap();
        if s.get(series) == Some(value) {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} did not reach {value} within {limit:?}:\n{}",
            agent.log_text()
        );
        thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn cookie_connections_keep_window_scaling_and_sack_with_timestamps() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut lab = flood_lab();
    // Receive buffers unlike the defaults (and unlike each other), set before the agent
    // reads them: a scale hard-coded anywhere (the agent, the program, this test) shows.
    let (server_ns, client_ns) = (lab.server_ns.clone(), lab.client_ns.clone());
    lab.sysctl(&server_ns, "net.ipv4.tcp_rmem", "4096 131072 8388608").unwrap();
    lab.sysctl(&client_ns, "net.ipv4.tcp_rmem", "4096 131072 134217728").unwrap();
    let server_wscale = kernel_wscale(&lab, &server_ns);
    let client_wscale = kernel_wscale(&lab, &client_ns);
    println!("window scales from the namespaces' sysctls: server {server_wscale}, client {client_wscale}");
    assert_ne!(
        server_wscale, client_wscale,
        "the two sides must differ for the checks below to mean anything"
    );
    let mut agent = Agent::start(
        &lab,
        Path::new(AGENT),
        &["--mode", "cookie", "--poll-interval-ms", "200", "--syn-rate-limit", "0", "--half-open-limit", "0"],
    )
    .unwrap();
    // The test itself is the server here, so it can ask the kernel (TCP_INFO) what the
    // accepted socket negotiated. It listens before the wait below: the agent marks ports
    // without a listener once per poll (their SYNs pass without a lookup), so a listener
    // opened just before the connect could still be marked and its SYN left to the kernel.
    let listener =
        in_netns(&lab.server_ns, || std::net::TcpListener::bind(("0.0.0.0", INFO_PORT)).unwrap()).unwrap();
    // Capture the SYN-ACK on the client side while one connection is made and held open.
    let (tshark, pcap) = capture_synack(&mut lab, INFO_PORT);
    // (`ss -ti` from iproute2 6.1 does not print ts/sack on this kernel even for plain
    // connections; it is printed below for people.)
    let addr = SocketAddr::new(IpAddr::V4(xtask::lab::SERVER_V4), INFO_PORT);
    let client =
        in_netns(&lab.client_ns, move || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)))
            .unwrap()
            .expect("connect through a cookie");
    let (accepted, _) = listener.accept().unwrap();
    let info = tcp_info(&accepted);
    let ss = Command::new("ip")
        .args(["netns", "exec", &lab.server_ns, "ss", "-tin", "state", "established"])
        .output()
        .unwrap();
    println!("server side ss -ti:\n{}", String::from_utf8_lossy(&ss.stdout));
    println!(
        "server side TCP_INFO: options {:#x}, snd_wscale {}, rcv_wscale {}",
        info.options, info.snd_wscale, info.rcv_wscale
    );
    assert!(info.options & TCPI_OPT_TIMESTAMPS != 0, "timestamps kept");
    assert!(info.options & TCPI_OPT_SACK != 0, "SACK kept");
    assert!(info.options & TCPI_OPT_WSCALE != 0, "window scaling kept");
    assert_eq!(info.snd_wscale, client_wscale, "the client's scale, decoded from the echoed timestamp");
    assert_eq!(info.rcv_wscale, server_wscale, "the kernel's own scale for the accepted socket");
    drop((client, accepted));
    thread::sleep(Duration::from_millis(500));
    let s = agent.scrape().unwrap();
    assert!(s.value("syndetector_cookies_sent_total").unwrap() >= 1.0, "the SYN was answered from XDP");
    // tshark exits after its one packet. Neither the file's header nor a wait proves its
    // filter was attached before that connection's SYN-ACK went by (CI saw it miss one on a
    // busy machine), so until it exits, one more connection every 500 ms: each is answered
    // from XDP with the same options, which is all the checks below read.
    let again = || {
        let c = in_netns(&lab.client_ns, move || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        })
        .unwrap()
        .expect("another connection through a cookie");
        drop((c, listener.accept().unwrap()));
    };
    let fields = wait_for_tshark(
        tshark,
        &pcap,
        again,
        &["tcp.options.timestamp.tsval", "tcp.options.wscale.shift", "tcp.options.sack_perm"],
    );
    println!("tshark, SYN-ACK seen by the client: TSval, window scale shift, SACK permitted = {fields}");
    let fields: Vec<&str> = fields.trim().split('\t').collect();
    assert!(
        fields.len() == 3 && fields.iter().all(|f| !f.is_empty()),
        "the SYN-ACK carries TS, WS and SACK-permitted: {fields:?}"
    );
    let shift: u8 = fields[1].parse().unwrap();
    assert_eq!(
        shift, info.rcv_wscale,
        "the SYN-ACK from XDP advertised shift {shift}, the kernel scales the connection by {}",
        info.rcv_wscale
    );
    let tsval: u32 = fields[0].parse().unwrap();
    assert_eq!(
        tsval & 0x3f,
        u32::from(client_wscale) | 0x10,
        "TSval low bits: the client's wscale {client_wscale} and SACK"
    );
    assert!(agent.stop().unwrap().success());
}

/// Cookies without timestamps, to a Linux client whose SYN carries 20 bytes of options:
/// the MSS-only SYN-ACK keeps the SYN's 74-byte frame, its last 16 bytes a zeroed
/// Ethernet trailer past the IP length (`reply_frame`: no resize), and the client's
/// kernel takes it as the 44-byte packet its IP header says. The connection completes
/// through the cookie and carries data both ways, without timestamps.
#[test]
fn mss_only_cookies_reach_a_linux_client_with_the_syns_frame_and_a_zeroed_trailer() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut lab = flood_lab();
    let config = lab.scratch().join("mss-only.toml");
    std::fs::write(&config, "[cookies]\ntimestamps = false\necn = false\n").unwrap();
    let mut agent = Agent::start(
        &lab,
        Path::new(AGENT),
        &[
            "--mode",
            "cookie",
            "--poll-interval-ms",
            "200",
            "--syn-rate-limit",
            "0",
            "--half-open-limit",
            "0",
            "--config",
            config.to_str().unwrap(),
        ],
    )
    .unwrap();
    // Listening before the capture's wait, for the reason given in the test above.
    // Dual-stack (`bindv6only` is 0 in a new namespace): IPv4 and IPv6 clients.
    let listener =
        in_netns(&lab.server_ns, || std::net::TcpListener::bind(("::", TRAILER_PORT)).unwrap()).unwrap();
    let (tshark, pcap) = capture_synack(&mut lab, TRAILER_PORT);
    let v4 = SocketAddr::new(IpAddr::V4(xtask::lab::SERVER_V4), TRAILER_PORT);
    let connect = |addr: SocketAddr| {
        use std::io::{Read, Write};
        let mut client = in_netns(&lab.client_ns, move || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        })
        .unwrap()
        .expect("connect through an MSS-only cookie");
        let (mut accepted, _) = listener.accept().unwrap();
        client.write_all(b"ping").unwrap();
        let mut got = [0; 4];
        accepted.read_exact(&mut got).unwrap();
        accepted.write_all(b"pong").unwrap();
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong", "data both ways");
        tcp_info(&client)
    };
    let info = connect(v4);
    assert_eq!(info.options & TCPI_OPT_TIMESTAMPS, 0, "no timestamps: the SYN-ACK carried the MSS only");
    let fields = wait_for_tshark(
        tshark,
        &pcap,
        || {
            let _ = connect(v4);
        },
        &[
            "frame.len",
            "ip.len",
            "tcp.hdr_len",
            "tcp.options.timestamp.tsval",
            "eth.padding",
            "eth.trailer",
            "eth.fcs",
        ],
    );
    println!("tshark, SYN-ACK seen by the client: frame, IP, TCP header lengths, TSval, padding, trailer, FCS = {fields}");
    let fields: Vec<&str> = fields.trim_end_matches('\n').split('\t').collect();
    assert_eq!(fields.len(), 7, "{fields:?}");
    assert_eq!(
        (fields[0], fields[1], fields[2]),
        ("74", "44", "24"),
        "the SYN's frame (14 + 20 + 40), the IP packet of an MSS-only SYN-ACK (20 + 24)"
    );
    assert!(fields[3].is_empty(), "no timestamp option: {:?}", fields[3]);
    // Wireshark names the 16 bytes after the IP packet in three parts: padding up to
    // Ethernet's 60-byte minimum, a trailer, and what it takes for the frame check
    // sequence (veth frames have none). All of them are the zeroed trailer.
    let after_ip: String = fields[4..].iter().map(|f| f.trim_start_matches("0x").replace(':', "")).collect();
    assert!(
        after_ip.len() == 32 && after_ip.bytes().all(|b| b == b'0'),
        "16 zeroed bytes after the IP packet: {:?}",
        &fields[4..]
    );
    // IPv6: the reply keeps the SYN's 94-byte frame, the payload length says 24.
    let sent = || agent.scrape().unwrap().value("syndetector_cookies_sent_total").unwrap();
    let before = sent();
    assert!(before >= 1.0, "the IPv4 SYNs were answered from XDP");
    let info = connect(SocketAddr::new(IpAddr::V6(xtask::lab::SERVER_V6), TRAILER_PORT));
    assert_eq!(info.options & TCPI_OPT_TIMESTAMPS, 0, "IPv6: the SYN-ACK carried the MSS only");
    thread::sleep(Duration::from_millis(500));
    assert!(sent() > before, "the IPv6 SYN was answered from XDP");
    assert!(agent.stop().unwrap().success());
}

/// The receive window scale the kernel picks for a connection in `ns`
/// (`tcp_select_initial_window`): `clamp(ilog2(max(tcp_rmem[2], rmem_max)) - 15, 0, 14)`.
fn kernel_wscale(lab: &Lab, ns: &str) -> u8 {
    let rmem = lab.sysctl_get(ns, "net.ipv4.tcp_rmem").unwrap();
    let tcp_max: u32 = rmem.split_whitespace().nth(2).unwrap().parse().unwrap();
    let core_max: u32 = lab.sysctl_get(ns, "net.core.rmem_max").unwrap().parse().unwrap();
    let space = tcp_max.max(core_max);
    u8::try_from(space.ilog2().saturating_sub(15).min(14)).unwrap()
}

const INFO_PORT: u16 = 8081;
const TRAILER_PORT: u16 = 8082;
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;

struct TcpInfo {
    options: u8,
    snd_wscale: u8,
    rcv_wscale: u8,
}

/// The first bytes of `struct tcp_info`: state, ca_state, retransmits, probes, backoff,
/// options, then snd_wscale (low 4 bits) and rcv_wscale (high 4 bits).
fn tcp_info(stream: &std::net::TcpStream) -> TcpInfo {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 256];
    let mut len = libc::socklen_t::try_from(buf.len()).unwrap();
    // SAFETY: a valid socket, a buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt(TCP_INFO): {}", std::io::Error::last_os_error());
    TcpInfo { options: buf[5], snd_wscale: buf[6] & 0x0f, rcv_wscale: buf[6] >> 4 }
}

/// Starts tshark in the client's namespace, to capture the first SYN-ACK from `port`;
/// returns once its capture file exists. Its pid and that file.
fn capture_synack(lab: &mut Lab, port: u16) -> (u32, PathBuf) {
    let pcap = lab.scratch().join(format!("synack-{port}.pcap"));
    let tshark = lab
        .spawn(
            &lab.client_ns.clone(),
            Command::new("tshark")
                .args(["-q", "-i", &lab.client_if.clone(), "-c", "1", "-w"])
                .arg(&pcap)
                .args([
                    "-f",
                    &format!(
                        "tcp src port {port} and tcp[tcpflags] & (tcp-syn|tcp-ack) == (tcp-syn|tcp-ack)"
                    ),
                ]),
        )
        .unwrap();
    thread::sleep(Duration::from_secs(2));
    // tshark writes the capture file's header once it captures: on a busy machine its start
    // can take longer than the wait above.
    for _ in 0..100 {
        if std::fs::metadata(&pcap).is_ok_and(|m| m.len() > 0) {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(200));
    (tshark, pcap)
}

/// Waits up to 10 s for tshark to exit with its one packet, calling `again` every 500 ms
/// meanwhile to send it another, then reads `fields` of the packet, tab-separated.
fn wait_for_tshark(pid: u32, pcap: &Path, again: impl Fn(), fields: &[&str]) -> String {
    // tshark exits once it wrote its one packet (a zombie until the lab reaps it). The
    // file's header alone is no sign: tshark writes it when the capture starts.
    let exited = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
    };
    let mut sent_again = 0;
    for tick in 1..=100 {
        if exited() {
            break;
        }
        if tick % 5 == 0 {
            again();
            sent_again += 1;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        exited(),
        "tshark captured no SYN-ACK within 10 s and {sent_again} more connections ({})",
        pcap.display()
    );
    println!("tshark had its SYN-ACK after {sent_again} more connections");
    let out = Command::new("tshark")
        .args(["-r"])
        .arg(pcap)
        .args(["-T", "fields"])
        .args(fields.iter().flat_map(|f| ["-e", f]))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
