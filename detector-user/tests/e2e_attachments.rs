//! The agent's attachments in lab namespaces (root): an attached veth deleted while the
//! agent runs shows as detached and unhealthy, and is attached again when it returns
//! (without pins, and with them: the defunct link's pin is replaced by the new link's); an
//! interface that already has an XDP program is refused naming that program; a missing
//! capability is named before anything is loaded.
#![allow(clippy::float_cmp, reason = "interface_attached is exactly 0 or 1")]

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use aya::{
    programs::{Xdp, XdpMode},
    Ebpf,
};
use xtask::lab::{in_netns, Agent, Lab, Scrape};
use xtask::objects::test_programs;

const AGENT: &str = env!("CARGO_BIN_EXE_syndetector");

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// `GET /healthz` from inside the agent's namespace: (status line, body).
fn healthz(agent: &Agent, ns: &str) -> (String, String) {
    let addr = agent.metrics_addr;
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        write!(s, "GET /healthz HTTP/1.0\r\nHost: lab\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (head.lines().next().unwrap_or("").to_owned(), body.to_owned())
    })
    .unwrap()
}

/// `syndetector_interface_attached` for `iface`, summed over its modes.
fn attached(scrape: &Scrape, iface: &str) -> f64 {
    let prefix = format!("syndetector_interface_attached{{interface=\"{iface}\"");
    scrape
        .text
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Polls `check` every 200 ms for up to `limit`; the last failure message if it never holds.
fn eventually(limit: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("not within {limit:?}: {e}"),
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn a_deleted_interface_is_reported_and_attached_again_when_it_returns() {
    deleted_and_returned(false);
}

#[test]
fn a_deleted_pinned_interface_gets_a_new_pinned_link_when_it_returns() {
    deleted_and_returned(true);
}

fn deleted_and_returned(pinned: bool) {
    let mut lab = Lab::new().expect("lab (run as root)");
    // Without a bpffs (`ip netns exec` gives a fresh /sys) the agent pins nothing.
    let pin_dir = pinned.then(|| lab.mount_bpffs().unwrap().join("syndetector"));
    let pin_arg = pin_dir.as_ref().map(|d| d.display().to_string());
    let args: Vec<&str> = pin_arg.iter().flat_map(|d| ["--pin-dir", d.as_str()]).collect();
    let mut agent = Agent::start(&lab, Path::new(AGENT), &args).unwrap();
    let iface = lab.server_if.clone();
    let link_pin = pin_dir.as_ref().map(|d| d.join(&iface).join("link"));
    assert_eq!(link_pin.as_ref().is_some_and(|p| p.exists()), pinned);
    assert_eq!(attached(&agent.scrape().unwrap(), &iface), 1.0);
    assert!(healthz(&agent, &lab.server_ns).0.contains(" 200"));

    ip(&["-n", &lab.server_ns, "link", "del", &iface]);
    eventually(Duration::from_secs(5), || {
        let value = attached(&agent.scrape().map_err(|e| e.to_string())?, &iface);
        let (status, body) = healthz(&agent, &lab.server_ns);
        if value == 0.0 && status.contains(" 503") && body.contains(&iface) {
            Ok(())
        } else {
            Err(format!("interface_attached {value}, /healthz {status}: {body}"))
        }
    });
    if let Some(pin) = &link_pin {
        assert!(!pin.exists(), "the defunct link's pin is removed with the interface");
    }

    // The same name again (the pair, as the lab made it).
    ip(&[
        "link",
        "add",
        &iface,
        "netns",
        &lab.server_ns,
        "type",
        "veth",
        "peer",
        "name",
        &lab.client_if,
        "netns",
        &lab.client_ns,
    ]);
    ip(&["-n", &lab.server_ns, "link", "set", &iface, "up"]);
    ip(&["-n", &lab.client_ns, "link", "set", &lab.client_if, "up"]);
    eventually(Duration::from_secs(5), || {
        let value = attached(&agent.scrape().map_err(|e| e.to_string())?, &iface);
        let (status, body) = healthz(&agent, &lab.server_ns);
        let link = lab.server_link_details().map_err(|e| e.to_string())?;
        if value == 1.0 && status.contains(" 200") && link.contains("xdp") {
            Ok(())
        } else {
            Err(format!("interface_attached {value}, /healthz {status}: {body}, link: {link}"))
        }
    });
    let log = agent.log_text();
    assert!(log.contains("interface_gone") && log.contains("interface_reattached"), "{log}");

    let status = agent.stop().unwrap();
    assert!(status.success(), "agent exit: {status}\n{}", agent.log_text());
    let link = lab.server_link_details().unwrap();
    // Pinned, the program stays for the next start (on_stop = keep); not pinned, it goes.
    assert_eq!(link.contains("prog/xdp"), pinned, "after the stop:\n{link}");
    if let Some(pin) = &link_pin {
        assert!(pin.exists(), "the new link is pinned");
        assert!(!log.contains("pin_dir is not on a BPF file system"), "{log}");
    } else {
        assert!(agent.log_text().contains("pin_dir is not on a BPF file system"), "the fallback is said");
    }
}

/// Runs the agent on the server veth until it exits (20 s at most); its stderr.
fn run_until_exit(lab: &Lab, wrapper: &[&str]) -> String {
    let state = lab.scratch().join("state");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.server_ns]).args(wrapper);
    let agent_args = format!(
        "{AGENT} run --iface {} --metrics-addr 127.0.0.1:9787 --state-dir {}",
        lab.server_if,
        state.display()
    );
    if wrapper.is_empty() {
        cmd.args(agent_args.split(' '));
    } else {
        cmd.arg(format!("exec {agent_args}"));
    }
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent kept running; it should have refused to start");
        }
        thread::sleep(Duration::from_millis(100));
    }
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!status.success(), "the agent should have failed:\n{stderr}");
    stderr
}

#[test]
fn attaching_where_another_xdp_program_is_names_it() {
    let lab = Lab::new().expect("lab (run as root)");
    let bytes = std::fs::read(test_programs(false)).expect("the test eBPF object (cargo xtask build-ebpf)");
    let iface = lab.server_if.clone();
    let other = in_netns(&lab.server_ns, move || {
        let mut ebpf = Ebpf::load(&bytes).unwrap();
        let prog: &mut Xdp = ebpf.program_mut("baseline_pass").unwrap().try_into().unwrap();
        prog.load().unwrap();
        prog.attach(&iface, XdpMode::Driver).unwrap();
        ebpf
    })
    .unwrap();
    let link = lab.server_link_details().unwrap();
    let id: u32 = link
        .split("prog/xdp id ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no prog/xdp id in:\n{link}"));

    let stderr = run_until_exit(&lab, &[]);
    println!("{stderr}");
    let expected =
        format!("another XDP program is attached to {} (id {id}, name baseline_pass)", lab.server_if);
    assert!(stderr.contains(&expected), "wanted {expected:?} in:\n{stderr}");
    // Ours is gone, theirs is still there.
    assert!(lab.server_link_details().unwrap().contains(&format!("prog/xdp id {id}")));
    drop(other);
}

#[test]
fn a_missing_cap_perfmon_is_named() {
    assert!(
        Command::new("capsh").arg("--help").output().is_ok(),
        "capsh (libcap2-bin) is needed to drop a capability for this test"
    );
    let lab = Lab::new().expect("lab (run as root)");
    // CAP_SYS_ADMIN would stand in for CAP_PERFMON: drop both, keep CAP_BPF and CAP_NET_ADMIN.
    let stderr = run_until_exit(&lab, &["capsh", "--drop=cap_sys_admin,cap_perfmon", "--", "-c"]);
    println!("{stderr}");
    assert!(stderr.contains("missing capability CAP_PERFMON ("), "{stderr}");
    let link = lab.server_link_details().unwrap();
    assert!(!link.contains("prog/xdp"), "nothing may be attached:\n{link}");
}
