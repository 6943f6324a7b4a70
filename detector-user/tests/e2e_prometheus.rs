//! The dashboards and alert rules against a real Prometheus server (Debian's `prometheus`)
//! scraping the real agent in the lab: through a single-source flood and a spoofed
//! random-source flood, every panel's query returns data, and the under-attack alert
//! (the real dashboards/alerts.yml) fires during the flood and resolves after it.
//! A new panel in the dashboard is covered without touching this test. Needs root.
#![allow(clippy::float_cmp, reason = "metric values compared here are exact counts")]

use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use xtask::lab::{in_netns, Agent, ClientReport, Flood, FloodSources, Lab, SERVER_V4};
use xtask::objects::test_programs;

const PORT: u16 = 8080;
const PROMETHEUS: &str = "127.0.0.1:9090";
const AGENT: &str = env!("CARGO_BIN_EXE_syndetector");
const DASHBOARDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../dashboards");

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET a Prometheus API path from inside the server namespace; returns the JSON `data`.
fn api(lab: &Lab, path: &str) -> Value {
    try_api(lab, path).unwrap_or_else(|body| panic!("Prometheus {path}: {body}"))
}

fn try_api(lab: &Lab, path: &str) -> Result<Value, String> {
    let request = path.to_owned();
    let body = in_netns(&lab.server_ns, move || -> anyhow::Result<String> {
        use std::io::{Read, Write};
        let addr: SocketAddr = PROMETHEUS.parse()?;
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET {request} HTTP/1.0\r\nHost: prometheus\r\n\r\n")?;
        let mut response = String::new();
        s.read_to_string(&mut response)?;
        Ok(response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
    })
    .map_err(|e| e.to_string())?
    .unwrap_or_default();
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if v["status"] == "success" {
        Ok(v["data"].clone())
    } else {
        Err(body)
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn alert_state(lab: &Lab, name: &str) -> Option<String> {
    let data = api(lab, "/api/v1/alerts");
    data["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["labels"]["alertname"] == name)
        .map(|a| a["state"].as_str().unwrap_or("").to_owned())
}

/// Every query of every panel (rows included), with the dashboard's variables resolved
/// as Grafana would for "all instances".
fn panel_queries() -> Vec<(String, String)> {
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{DASHBOARDS}/syndetector.json")).unwrap())
            .unwrap();
    let mut panels: Vec<&Value> = dash["panels"].as_array().unwrap().iter().collect();
    let nested: Vec<&Value> = panels.iter().filter_map(|p| p["panels"].as_array()).flatten().collect();
    panels.extend(nested);
    panels
        .iter()
        .flat_map(|p| {
            p["targets"].as_array().into_iter().flatten().map(move |t| {
                (
                    p["title"].as_str().unwrap().to_owned(),
                    t["expr"].as_str().unwrap().replace("$instance", ".*"),
                )
            })
        })
        .collect()
}

#[test]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn every_panel_has_data_and_the_attack_alert_fires_and_resolves() {
    let mut lab = Lab::new().expect("lab");
    lab.attach_client_xdp(&test_programs(false)).unwrap();
    lab.sysctl(&lab.server_ns.clone(), "net.ipv4.tcp_syncookies", "0").unwrap();
    lab.start_server(PORT, 16).unwrap();
    let mut agent = Agent::start(
        &lab,
        Path::new(AGENT),
        &[
            "--mode",
            "auto",
            "--poll-interval-ms",
            "500",
            "--enter-syn-rate",
            "1000",
            "--exit-syn-rate",
            "300",
            "--hold",
            "3",
            "--syn-rate-limit",
            "500",
            "--half-open-limit",
            "50",
            "--block-ttl",
            "5",
        ],
    )
    .unwrap();

    // A real Prometheus in the server namespace: scrapes every second, the real rules.
    let config = lab.scratch().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {DASHBOARDS}/alerts.yml\n\
             scrape_configs:\n  - job_name: syndetector\n    static_configs:\n      - targets: ['{}']\n",
            agent.metrics_addr
        ),
    )
    .unwrap();
    let data_dir = lab.scratch().join("tsdb");
    let server_ns = lab.server_ns.clone();
    lab.spawn(
        &server_ns,
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data_dir.display()))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .arg("--log.level=warn"),
    )
    .expect("prometheus (Debian package prometheus; `cargo xtask setup` installs it)");
    let started = unix_now();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = try_api(&lab, &format!("/api/v1/query?query={}", encode("up{job=\"syndetector\"} == 1")));
        if up.is_ok_and(|d| d["result"].as_array().is_some_and(|r| !r.is_empty())) {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus did not scrape the agent within 30 s");
        thread::sleep(Duration::from_millis(500));
    }

    // Legit clients all along, so handshake and completion panels have something to show.
    let stop = AtomicBool::new(false);
    let addr = SocketAddr::from((SERVER_V4, PORT));
    let lab_ref = &lab;
    let (fired, resolved) = thread::scope(|scope| {
        let client_ns = lab.client_ns.clone();
        let stop = &stop;
        scope.spawn(move || {
            in_netns(&client_ns, || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = ClientReport::run(addr, "/data", 1, Duration::from_secs(2));
                    thread::sleep(Duration::from_millis(50));
                }
            })
        });
        let single = Flood {
            v6: false,
            sources: FloodSources::Single(0x4842),
            port: PORT,
            count: 3000,
            pps: 1000,
            limit: Duration::from_secs(10),
        };
        single.run(&lab).unwrap();
        // Long enough for the 30 s "for" of SynFloodUnderAttack.
        let random = Flood {
            sources: FloodSources::Random,
            count: 90_000,
            pps: 2000,
            limit: Duration::from_secs(50),
            ..single
        };
        let flood = scope.spawn(move || random.run(lab_ref).unwrap());
        let deadline = Instant::now() + Duration::from_secs(50);
        let mut fired = false;
        while Instant::now() < deadline && !flood.is_finished() {
            if alert_state(&lab, "SynFloodUnderAttack").as_deref() == Some("firing") {
                fired = true;
                break;
            }
            thread::sleep(Duration::from_secs(1));
        }
        flood.join().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut resolved = false;
        while Instant::now() < deadline {
            if alert_state(&lab, "SynFloodUnderAttack").is_none() {
                resolved = true;
                break;
            }
            thread::sleep(Duration::from_secs(1));
        }
        stop.store(true, Ordering::Relaxed);
        (fired, resolved)
    });
    assert!(fired, "SynFloodUnderAttack did not fire during the flood:\n{}", agent.log_text());
    assert!(resolved, "SynFloodUnderAttack did not resolve after the flood");

    // Each panel query over the whole run, as the dashboard's time range would show it.
    let end = unix_now();
    let mut empty = Vec::new();
    let queries = panel_queries();
    for (title, expr) in &queries {
        let data = api(
            &lab,
            &format!("/api/v1/query_range?query={}&start={started:.3}&end={end:.3}&step=1", encode(expr)),
        );
        let series = data["result"].as_array().map_or(0, Vec::len);
        println!("{series:>3} series  {title}: {expr}");
        if series == 0 {
            empty.push(format!("{title}: {expr}"));
        }
    }
    assert!(empty.is_empty(), "panel queries without data:\n{}", empty.join("\n"));
    println!("{} panel queries, all with data; SynFloodUnderAttack fired and resolved", queries.len());
    assert!(agent.stop().unwrap().success());
}
