//! End to end on the real-host topologies where cookie mode used to break traffic that was
//! not ours (docs/real-hosts.md), IPv4 and IPv6, with the agent
//! on the middle host's client-facing veth in cookie mode, and in monitor mode as a sanity
//! check of the topology itself.
//!
//! - Forwarding: client — router — backend. The router has a wildcard listener on the same
//!   port as the backend's server. Every connection to the backend's address must reach the
//!   backend; connections to the router's own address still get XDP cookies, which the
//!   router's kernel accepts (TcpExtSyncookiesRecv).
//! - DNAT: client — host — backend. The host publishes the port by an nftables DNAT rule to
//!   the backend while a local process listens on it too (a userland proxy). Every
//!   connection to the host's address on that port must reach the backend; a local listener
//!   on another port still gets XDP cookies.
//!
//! Who answered is told by the body: the backend serves `/data` with `BACKEND_BODY` bytes,
//! the middle host's listeners with `MIDDLE_BODY`. Needs root; filter with `e2e_real`.
#![allow(clippy::float_cmp, reason = "metric values compared here are exact counts")]

use std::{collections::HashMap, net::SocketAddr, path::Path, sync::Mutex, thread, time::Duration};

use xtask::lab::{http_get, in_netns, Agent, Scrape, ThreeHosts};
use xtask::objects::test_programs;

const PORT: u16 = 8080;
/// A local listener on the DNAT host that is not published: cookies must still protect it.
const LOCAL_PORT: u16 = 8081;
const BACKEND_BODY: usize = 4321;
const MIDDLE_BODY: usize = 65_536;
const CONNECTIONS: u32 = 10;
/// Per connection: connect, GET and the whole body.
const TIMEOUT: Duration = Duration::from_secs(3);
const AGENT: &str = env!("CARGO_BIN_EXE_syndetector");
/// One agent start-up at a time: loading the program is seconds of verifier CPU, and two
/// at once on a busy 2-CPU machine can exceed the lab's 20 s start-up limit.
static AGENT_START: Mutex<()> = Mutex::new(());
/// SYN-ACKs from XDP: the socket-bound helper's and the fast path's (raw helper).
const TX_COOKIE: &str = "syndetector_packets_total{reason=\"cookie\",verdict=\"tx\"}";
const TX_COOKIE_FAST: &str = "syndetector_packets_total{reason=\"cookie_fast\",verdict=\"tx\"}";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Cookie,
    Monitor,
}

fn start_agent(hosts: &ThreeHosts, mode: Mode) -> Agent {
    let mode = match mode {
        Mode::Cookie => "cookie",
        Mode::Monitor => "monitor",
    };
    // Per-source limits off: one client opening connections back to back is legit here.
    let args =
        ["--mode", mode, "--poll-interval-ms", "200", "--syn-rate-limit", "0", "--half-open-limit", "0"];
    let _one = AGENT_START.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    Agent::start(&hosts.lab, Path::new(AGENT), &args).expect("starting the agent")
}

/// What `CONNECTIONS` sequential connections to one address achieved: each a real TCP
/// connect and an HTTP GET of `/data` with its own timeout, counted as reached only when
/// the body says the expected server answered.
struct Outcomes {
    target: SocketAddr,
    reached: u32,
    errors: Vec<String>,
}

impl Outcomes {
    fn collect(client_ns: &str, target: SocketAddr, expected_body: usize) -> Self {
        let results = in_netns(client_ns, move || {
            (0..CONNECTIONS).map(|_| http_get(target, "/data", TIMEOUT)).collect::<Vec<_>>()
        })
        .expect("running the clients in the client namespace");
        let mut outcomes = Self { target, reached: 0, errors: Vec::new() };
        for result in results {
            match result {
                Ok(len) if len == expected_body => outcomes.reached += 1,
                Ok(len) => outcomes.errors.push(format!(
                    "answered with a {len}-byte body (the {} server), not the {expected_body}-byte one",
                    if len == MIDDLE_BODY { "middle host's own" } else { "wrong" }
                )),
                Err(e) => outcomes.errors.push(format!("{e:#}")),
            }
        }
        outcomes
    }

    fn failed(&self) -> u32 {
        CONNECTIONS - self.reached
    }

    /// Distinct failures with how often each happened, in order of first appearance.
    fn failures(&self) -> String {
        let mut distinct: Vec<(&str, u32)> = Vec::new();
        for e in &self.errors {
            match distinct.iter_mut().find(|(d, _)| *d == e.as_str()) {
                Some((_, n)) => *n += 1,
                None => distinct.push((e, 1)),
            }
        }
        distinct.iter().map(|(e, n)| format!("{n}x {e}")).collect::<Vec<_>>().join("; ")
    }

    /// Panics unless every connection reached the expected server; `to` says where they
    /// went, e.g. "backend 198.18.1.2:8080 through the router".
    fn assert_all_reached(&self, to: &str) {
        assert!(
            self.failed() == 0,
            "{} of {CONNECTIONS} connections to {to} failed: {}",
            self.failed(),
            self.failures()
        );
    }
}

impl std::fmt::Display for Outcomes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of {CONNECTIONS} to {} reached", self.reached, self.target)?;
        if self.failed() > 0 {
            write!(f, " ({})", self.failures())?;
        }
        Ok(())
    }
}

/// Connections to the middle host's own listener, bracketed by the agent's XDP cookie
/// counter and the middle namespace's kernel counters.
struct OwnAddress {
    outcomes: Outcomes,
    xdp_cookies: f64,
    syncookies_recv: u64,
}

fn to_own_address(hosts: &ThreeHosts, agent: &Agent, target: SocketAddr) -> OwnAddress {
    // The agent's counters lag by up to one poll (200 ms): wait one out before each scrape.
    // Kernel counters are read inside the scrapes: with tcp_syncookies = 2 (cookie mode)
    // the kernel answers the scrapes' own connections (on lo) with cookies too.
    thread::sleep(Duration::from_millis(400));
    let first = agent.scrape().expect("scrape");
    let before = hosts.lab.nstat(hosts.middle_ns()).expect("nstat");
    let outcomes = Outcomes::collect(&hosts.lab.client_ns, target, MIDDLE_BODY);
    let after = hosts.lab.nstat(hosts.middle_ns()).expect("nstat");
    thread::sleep(Duration::from_millis(400));
    let last = agent.scrape().expect("scrape");
    OwnAddress {
        outcomes,
        xdp_cookies: tx_cookies(&last) - tx_cookies(&first),
        syncookies_recv: delta(&before, &after, "TcpExtSyncookiesRecv"),
    }
}

fn tx_cookies(scrape: &Scrape) -> f64 {
    scrape.get(TX_COOKIE).unwrap_or(0.0) + scrape.get(TX_COOKIE_FAST).unwrap_or(0.0)
}

fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>, key: &str) -> u64 {
    after.get(key).copied().unwrap_or(0) - before.get(key).copied().unwrap_or(0)
}

/// In cookie mode every SYN to the middle host's own listener is answered from XDP and
/// completes through a cookie its kernel accepts; in monitor mode none is.
fn assert_own_address(own: &OwnAddress, mode: Mode, host: &str) {
    own.outcomes.assert_all_reached(&format!("the {host}'s own address {}", own.outcomes.target));
    match mode {
        Mode::Cookie => {
            assert!(
                own.xdp_cookies >= f64::from(CONNECTIONS),
                "{TX_COOKIE} and {TX_COOKIE_FAST} rose by {} for {CONNECTIONS} connections to the {host}'s own address {}: \
                 every SYN must be answered from XDP in cookie mode",
                own.xdp_cookies,
                own.outcomes.target
            );
            assert_eq!(
                own.syncookies_recv,
                u64::from(CONNECTIONS),
                "the {host}'s TcpExtSyncookiesRecv must rise by the {CONNECTIONS} connections to {}",
                own.outcomes.target
            );
        }
        Mode::Monitor => assert_eq!(own.xdp_cookies, 0.0, "no XDP cookies in monitor mode"),
    }
}

fn ip_version(v6: bool) -> u8 {
    if v6 {
        6
    } else {
        4
    }
}

/// Client — router — backend; the router has its own wildcard listener on `PORT`.
fn through_a_router(v6: bool, mode: Mode) {
    let mut hosts = ThreeHosts::new(&test_programs(false)).expect("three namespaces");
    hosts.route_client_to_backend().expect("client route via the router");
    hosts.start_middle_listener(PORT, MIDDLE_BODY).expect("the router's wildcard listener");
    hosts.start_backend_server(PORT, BACKEND_BODY).expect("the backend's server");
    let backend = SocketAddr::new(ThreeHosts::backend_addr(v6), PORT);
    let router = SocketAddr::new(ThreeHosts::middle_addr(v6), PORT);
    let client_ns = hosts.lab.client_ns.clone();
    assert_eq!(
        in_netns(&client_ns, move || http_get(backend, "/data", TIMEOUT).ok()).unwrap(),
        Some(BACKEND_BODY),
        "topology: the backend {backend} must be reachable through the router before the agent starts"
    );

    let mut agent = start_agent(&hosts, mode);
    let own = to_own_address(&hosts, &agent, router);
    let first = agent.scrape().expect("scrape");
    let forwarded = Outcomes::collect(&client_ns, backend, BACKEND_BODY);
    thread::sleep(Duration::from_millis(400));
    let forwarded_cookies = tx_cookies(&agent.scrape().expect("scrape")) - tx_cookies(&first);
    println!(
        "IPv{} router, agent in {mode:?} mode: to the backend through the router: {forwarded}; \
         XDP cookie SYN-ACKs for them: {forwarded_cookies}. To the router's own address: {}; \
         XDP cookie SYN-ACKs {}, router's TcpExtSyncookiesRecv +{}",
        ip_version(v6),
        own.outcomes,
        own.xdp_cookies,
        own.syncookies_recv
    );

    forwarded.assert_all_reached(&format!("backend {backend} through the router"));
    assert_eq!(
        forwarded_cookies, 0.0,
        "SYNs for the backend {backend} are not the router's: XDP must leave them to the kernel"
    );
    assert_own_address(&own, mode, "router");
    let status = agent.stop().expect("stopping the agent");
    assert!(status.success(), "the agent exited with {status}:\n{}", agent.log_text());
}

/// Client — host — backend; the host publishes `PORT` by DNAT to the backend and also
/// listens on it locally, and has a local service on `LOCAL_PORT`.
fn through_dnat(v6: bool, mode: Mode) {
    let mut hosts = ThreeHosts::new(&test_programs(false)).expect("three namespaces");
    // Listeners first: their readiness check connects to the host's address.
    hosts.start_middle_listener(PORT, MIDDLE_BODY).expect("the host's userland-proxy listener");
    hosts.start_middle_listener(LOCAL_PORT, MIDDLE_BODY).expect("the host's local service");
    hosts.start_backend_server(PORT, BACKEND_BODY).expect("the backend's server");
    hosts.dnat_to_backend(PORT).expect("the DNAT rules");
    let published = SocketAddr::new(ThreeHosts::middle_addr(v6), PORT);
    let local = SocketAddr::new(ThreeHosts::middle_addr(v6), LOCAL_PORT);
    let client_ns = hosts.lab.client_ns.clone();
    assert_eq!(
        in_netns(&client_ns, move || http_get(published, "/data", TIMEOUT).ok()).unwrap(),
        Some(BACKEND_BODY),
        "topology: {published} must be DNAT'd to the backend before the agent starts; ruleset:\n{}",
        hosts.middle_ruleset().unwrap_or_else(|e| format!("{e:#}"))
    );

    let mut agent = start_agent(&hosts, mode);
    let first = agent.scrape().expect("scrape");
    let dnat = Outcomes::collect(&client_ns, published, BACKEND_BODY);
    thread::sleep(Duration::from_millis(400));
    let dnat_cookies = tx_cookies(&agent.scrape().expect("scrape")) - tx_cookies(&first);
    let own = to_own_address(&hosts, &agent, local);
    println!(
        "IPv{} DNAT host, agent in {mode:?} mode: to the published port {published}: {dnat}; \
         XDP cookie SYN-ACKs for them: {dnat_cookies}. To the host's unpublished local port: {}; \
         XDP cookie SYN-ACKs {}, host's TcpExtSyncookiesRecv +{}",
        ip_version(v6),
        own.outcomes,
        own.xdp_cookies,
        own.syncookies_recv
    );

    let backend = SocketAddr::new(ThreeHosts::backend_addr(v6), PORT);
    dnat.assert_all_reached(&format!("{published} (published by DNAT to backend {backend})"));
    assert_eq!(
        dnat_cookies, 0.0,
        "SYNs to {published} are DNAT'd to the backend: XDP must leave them to the kernel"
    );
    assert_own_address(&own, mode, "host");
    let status = agent.stop().expect("stopping the agent");
    assert!(status.success(), "the agent exited with {status}:\n{}", agent.log_text());
}

/// Named `e2e_real_*` so that `cargo xtask test -- e2e_real` selects them.
mod e2e_real_forwarding {
    use super::{through_a_router, Mode};

    #[test]
    fn ipv4_cookie_mode_connections_through_the_router_reach_the_backend_and_its_own_address_gets_xdp_cookies(
    ) {
        through_a_router(false, Mode::Cookie);
    }

    #[test]
    fn ipv6_cookie_mode_connections_through_the_router_reach_the_backend_and_its_own_address_gets_xdp_cookies(
    ) {
        through_a_router(true, Mode::Cookie);
    }

    #[test]
    fn ipv4_monitor_mode_connections_through_the_router_reach_the_backend() {
        through_a_router(false, Mode::Monitor);
    }

    #[test]
    fn ipv6_monitor_mode_connections_through_the_router_reach_the_backend() {
        through_a_router(true, Mode::Monitor);
    }
}

mod e2e_real_dnat {
    use super::{through_dnat, Mode};

    #[test]
    fn ipv4_cookie_mode_connections_to_a_dnat_published_port_reach_the_backend_and_local_ports_get_xdp_cookies(
    ) {
        through_dnat(false, Mode::Cookie);
    }

    #[test]
    fn ipv6_cookie_mode_connections_to_a_dnat_published_port_reach_the_backend_and_local_ports_get_xdp_cookies(
    ) {
        through_dnat(true, Mode::Cookie);
    }

    #[test]
    fn ipv4_monitor_mode_connections_to_a_dnat_published_port_reach_the_backend() {
        through_dnat(false, Mode::Monitor);
    }

    #[test]
    fn ipv6_monitor_mode_connections_to_a_dnat_published_port_reach_the_backend() {
        through_dnat(true, Mode::Monitor);
    }
}
