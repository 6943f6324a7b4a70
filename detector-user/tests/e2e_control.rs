//! End to end in network namespaces, through the CLI binary and the control socket: an
//! allowed source flooding above its limits is never blocked, a denied source's SYNs never
//! reach the server (its passive opens stay unchanged) until `deny del`, an IPv6 prefix
//! denied while the same client's IPv4 passes, `block`/`unblock` (operator blocks, and a
//! block the program made itself) and an expiring `block --ttl`, the kill switch
//! (`mode off`: a blocked source connects,
//! the program still attached; `mode cookie` brings the block back), bad requests and a
//! peer without permission get error replies and change nothing, the socket is 0600, and
//! runtime list changes survive a restart, into an agent started with `--mode off` (the
//! configured kill switch). Needs root.
//!
//! One agent serves the steps in turn (each start costs seconds of verifier time).
#![allow(clippy::float_cmp, reason = "metric values compared here are exact counts")]

use std::{
    io::{Read, Write},
    net::SocketAddr,
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::Duration,
};

use xtask::lab::{in_netns, Agent, ClientReport, Flood, FloodSources, Lab, SERVER_V4, SERVER_V6};
use xtask::objects::test_programs;

const PORT: u16 = 8080;
const AGENT: &str = env!("CARGO_BIN_EXE_syndetector");
/// The lab's client (`xtask::lab::CLIENT_V4`): the source blocked and denied here.
const CLIENT: &str = "198.18.0.2";

struct Rig {
    lab: Lab,
    socket: PathBuf,
}

impl Rig {
    fn agent(&self, mode: &str) -> Agent {
        let socket = self.socket.to_str().unwrap();
        let args = [
            "--mode",
            mode,
            "--syn-rate-limit",
            "100",
            "--half-open-limit",
            "50",
            "--block-ttl",
            "60",
            "--poll-interval-ms",
            "200",
            "--control-socket",
            socket,
        ];
        Agent::start(&self.lab, Path::new(AGENT), &args).expect("agent")
    }

    /// `syndetector ARGS --socket SOCKET`.
    fn cli(&self, args: &[&str]) -> Output {
        let out = Command::new(AGENT).args(args).arg("--socket").arg(&self.socket).output().unwrap();
        println!(
            "$ syndetector {}: {}\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "syndetector {args:?} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn legit(&self, count: u32) -> ClientReport {
        let addr = SocketAddr::from((SERVER_V4, PORT));
        in_netns(&self.lab.client_ns, move || ClientReport::run(addr, "/data", count, Duration::from_secs(2)))
            .unwrap()
    }

    fn legit_v6(&self, count: u32) -> ClientReport {
        let addr = SocketAddr::from((SERVER_V6, PORT));
        in_netns(&self.lab.client_ns, move || ClientReport::run(addr, "/data", count, Duration::from_secs(2)))
            .unwrap()
    }

    fn passive_opens(&self) -> u64 {
        self.lab.nstat(&self.lab.server_ns).unwrap()["TcpPassiveOpens"]
    }

    /// One raw request line (any bytes) and the reply, as the socket gives them.
    fn raw(&self, request: &[u8]) -> serde_json::Value {
        let mut s = UnixStream::connect(&self.socket).unwrap();
        // A write may fail once the agent has refused an oversized request and closed.
        let _ = s.write_all(request);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        serde_json::from_str(reply.trim()).unwrap_or_else(|e| panic!("reply {reply:?}: {e}"))
    }
}

/// Waits for a couple of polls (200 ms each): the reconcile applies list changes.
fn settle() {
    thread::sleep(Duration::from_millis(700));
}

#[test]
fn live_control_through_the_cli() {
    let mut lab = Lab::new().expect("lab");
    lab.start_server(PORT, 128).unwrap();
    // Cookie mode answers from XDP: a veth delivers XDP_TX only to a peer with XDP too.
    lab.attach_client_xdp(&test_programs(false)).unwrap();
    let socket = lab.scratch().join("ctl.sock");
    let rig = Rig { lab, socket };
    let agent = rig.agent("drop");

    // The socket: 0600, owned by the agent (root here).
    let meta = std::fs::metadata(&rig.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket mode");
    let status = rig.ok(&["status"]);
    assert!(status.contains("\"drop\"") && status.contains(&rig.lab.server_if), "status:\n{status}");
    allowed_flood_is_never_blocked(&rig, &agent);
    denied_and_blocked_sources(&rig, &agent);
    kill_switch(&rig, &agent);
    unblock_and_expiry(&rig, &agent);
    bad_requests_change_nothing(&rig, &agent);
    a_peer_without_permission_is_refused(&rig, &agent);
    changes_survive_a_restart(&rig, agent);
}

/// Leaves the allow list empty.
fn allowed_flood_is_never_blocked(rig: &Rig, agent: &Agent) {
    // Allowed: a spoofed source inside 198.18.0.0/16 flooding far above 50 half-open and
    // 100 SYN/s is never blocked, and the (allowed) client's requests succeed meanwhile.
    rig.ok(&["allow", "add", "198.18.0.0/16"]);
    settle();
    let flood = Flood {
        v6: false,
        sources: FloodSources::Single(0x4842),
        port: PORT,
        count: 3000,
        pps: 1500,
        limit: Duration::from_secs(10),
    };
    let (report, during) = thread::scope(|s| {
        let f = s.spawn(|| flood.run(&rig.lab).expect("flood"));
        let during = rig.legit(10);
        (f.join().unwrap(), during)
    });
    settle();
    let m = agent.scrape().unwrap();
    assert!(report.sent >= 2900, "trafgen sent {}", report.sent);
    assert_eq!(during.ok, 10, "the allowed client during the flood: {during}");
    assert_eq!(m.value("syndetector_sources_blocked").unwrap(), 0.0, "an allowed source was blocked");
    assert!(m.value("syndetector_packets_total{reason=\"allowed\",verdict=\"pass\"}").unwrap() >= 2900.0);
    assert_eq!(m.value("syndetector_list_entries{family=\"ipv4\",list=\"allow\"}").unwrap(), 1.0);
    rig.ok(&["allow", "del", "198.18.0.0/16"]);
}

/// Leaves the client blocked (for `kill_switch`).
fn denied_and_blocked_sources(rig: &Rig, agent: &Agent) {
    // Denied: the client's SYNs never reach the server, then `deny del` restores it.
    rig.ok(&["deny", "add", CLIENT]);
    settle();
    let opens = rig.passive_opens();
    let denied = rig.legit(1);
    assert_eq!(denied.ok, 0, "a denied client got through: {denied}");
    assert_eq!(rig.passive_opens(), opens, "the server accepted a connection from a denied source");
    assert!(
        agent
            .scrape()
            .unwrap()
            .value("syndetector_packets_total{reason=\"denied\",verdict=\"drop\"}")
            .unwrap()
            >= 1.0
    );
    rig.ok(&["deny", "del", CLIENT]);
    settle();
    assert_eq!(rig.legit(3).ok, 3, "after deny del");
    // IPv6: the client's v6 address denied by prefix; its IPv4 is not.
    rig.ok(&["deny", "add", "2001:2::/120"]);
    settle();
    assert_eq!(rig.legit_v6(1).ok, 0, "a denied IPv6 client got through");
    assert_eq!(rig.legit(1).ok, 1, "its IPv4 address is not denied");
    rig.ok(&["deny", "del", "2001:2::/120"]);
    settle();
    assert_eq!(rig.legit_v6(1).ok, 1, "IPv6 after deny del");

    // block / unblock, and a block that expires.
    rig.ok(&["block", CLIENT, "--ttl", "600"]);
    settle();
    assert_eq!(rig.legit(1).ok, 0, "blocked client got through");
    let blocks = rig.ok(&["deny", "list"]);
    assert!(blocks.contains("198.18.0.2/32") && blocks.contains("block"), "deny list:\n{blocks}");
}

/// Expects the client blocked; leaves it blocked, in cookie mode.
fn kill_switch(rig: &Rig, agent: &Agent) {
    // The kill switch: everything passes, the program stays attached; cookie mode brings
    // the block back.
    rig.ok(&["mode", "off"]);
    settle();
    assert_eq!(rig.legit(3).ok, 3, "mode off: the blocked client must connect");
    let link = rig.lab.server_link_details().unwrap();
    assert!(link.contains("xdp"), "mode off detached the program:\n{link}");
    settle();
    let m = agent.scrape().unwrap();
    let off = m.value("syndetector_packets_total{reason=\"off\",verdict=\"pass\"}").unwrap();
    assert!(off >= 3.0, "packets counted as passed by the kill switch: {off}");
    assert_eq!(m.value("syndetector_mode{mode=\"off\"}").unwrap(), 1.0);
    rig.ok(&["mode", "cookie"]);
    settle();
    assert_eq!(rig.legit(1).ok, 0, "mode cookie: the block applies again");
}

/// Leaves the client unblocked, in drop mode; a short block expires by itself, and
/// `unblock` ends a block the program made itself.
fn unblock_and_expiry(rig: &Rig, agent: &Agent) {
    rig.ok(&["mode", "drop"]);
    rig.ok(&["unblock", CLIENT]);
    settle();
    assert_eq!(rig.legit(2).ok, 2, "after unblock");
    // Expiries are whole wall-clock seconds: 4 s is at least 3, longer than the client's
    // 2 s attempt with its one SYN retransmission.
    rig.ok(&["block", CLIENT, "--ttl", "4"]);
    settle();
    assert_eq!(rig.legit(1).ok, 0, "blocked for 4 s");
    thread::sleep(Duration::from_secs(4));
    assert_eq!(rig.legit(2).ok, 2, "the 4 s block expired");

    // 300 SYNs that never complete: over the half-open limit (50), blocked by the program.
    let flood = Flood {
        v6: false,
        sources: FloodSources::Single(0x4842),
        port: PORT,
        count: 300,
        pps: 1000,
        limit: Duration::from_secs(5),
    };
    flood.run(&rig.lab).unwrap();
    settle();
    assert!(agent.scrape().unwrap().value("syndetector_sources_blocked").unwrap() >= 1.0);
    let spoofed = Flood::single_v4(0x4842).to_string();
    assert!(rig.ok(&["unblock", &spoofed]).contains("own block of it ended"));
    settle();
    assert_eq!(agent.scrape().unwrap().value("syndetector_sources_blocked").unwrap(), 0.0);
    assert_eq!(rig.cli(&["unblock", &spoofed]).status.code(), Some(1), "nothing left to unblock");
}

/// Leaves 2001:2::99 denied (for `changes_survive_a_restart`).
fn bad_requests_change_nothing(rig: &Rig, agent: &Agent) {
    // Bad requests: error replies, nothing changed.
    rig.ok(&["deny", "add", "2001:2::99"]);
    let lists_before = (rig.ok(&["deny", "list"]), rig.ok(&["allow", "list"]));
    for (request, why) in [
        (b"garbage\n".to_vec(), "bad request"),
        (vec![b'x'; 70 * 1024], "larger than"),
        (b"{\"command\":\"format_disk\"}\n".to_vec(), "unknown variant"),
        (b"{\"command\":\"deny_add\",\"cidr\":\"198.18.0.0/33\"}\n".to_vec(), "not an address"),
        (b"{\"command\":\"deny_del\",\"cidr\":\"198.18.9.9\"}\n".to_vec(), "not on the deny list"),
    ] {
        let reply = rig.raw(&request);
        assert_eq!(reply["ok"], false, "{reply}");
        assert!(reply["message"].as_str().unwrap().contains(why), "{reply}");
    }
    let bad = rig.cli(&["allow", "add", "not-a-prefix"]);
    assert_eq!(bad.status.code(), Some(1), "a refused request exits 1");
    assert_eq!(
        (rig.ok(&["deny", "list"]), rig.ok(&["allow", "list"])),
        lists_before,
        "bad requests changed the lists"
    );
    let m = agent.scrape().unwrap();
    assert!(
        m.value("syndetector_control_requests_total{command=\"invalid\",result=\"error\"}").unwrap() >= 3.0
    );
}

fn a_peer_without_permission_is_refused(rig: &Rig, agent: &Agent) {
    // A peer without permission: the file mode stops it; with the mode opened up, the
    // peer-credential check still refuses it.
    let setpriv = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", AGENT])
            .args(args)
            .arg("--socket")
            .arg(&rig.socket)
            .output()
            .unwrap()
    };
    let out = setpriv(&["deny", "add", "198.18.0.77"]);
    assert_eq!(out.status.code(), Some(2), "nobody reached the socket: {out:?}");
    let scratch_mode = std::fs::metadata(rig.lab.scratch()).unwrap().permissions().mode();
    std::fs::set_permissions(rig.lab.scratch(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&rig.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = setpriv(&["deny", "add", "198.18.0.77"]);
    std::fs::set_permissions(&rig.socket, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(rig.lab.scratch(), std::fs::Permissions::from_mode(scratch_mode)).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr.contains("permission denied: uid 65534"), "{stderr}");
    assert!(!rig.ok(&["deny", "list"]).contains("198.18.0.77"), "a refused peer changed the list");
    let m = agent.scrape().unwrap();
    assert_eq!(
        m.value("syndetector_control_requests_total{command=\"invalid\",result=\"forbidden\"}").unwrap(),
        1.0
    );
    assert!(rig.ok(&["reload"]).contains("reloaded"));
}

/// Stops the agent for good.
fn changes_survive_a_restart(rig: &Rig, mut agent: Agent) {
    // Runtime changes survive a restart; the socket file goes with the agent.
    let status = agent.stop().unwrap();
    assert!(status.success(), "agent exit: {status}\n{}", agent.log_text());
    assert!(!rig.socket.exists(), "the socket file was left behind");
    let gone = rig.cli(&["deny", "list"]);
    assert_eq!(gone.status.code(), Some(2), "no agent: exit 2");
    // Started with the kill switch in its configuration (`--mode off`): even a denied
    // source passes, until the mode is switched over the socket.
    let mut agent = rig.agent("off");
    assert!(rig.ok(&["deny", "list"]).contains("2001:2::99/128"), "lost over a restart");
    rig.ok(&["deny", "add", CLIENT]);
    settle();
    assert_eq!(rig.legit(2).ok, 2, "--mode off: a denied client passes");
    rig.ok(&["mode", "drop"]);
    settle();
    assert_eq!(rig.legit(1).ok, 0, "mode drop: the deny applies");
    rig.ok(&["deny", "del", CLIENT]);
    let status = agent.stop().unwrap();
    assert!(status.success(), "agent exit: {status}\n{}", agent.log_text());
    let link = rig.lab.server_link_details().unwrap();
    assert!(!link.contains("prog/xdp") && !link.contains(" xdp"), "XDP left attached:\n{link}");
}
