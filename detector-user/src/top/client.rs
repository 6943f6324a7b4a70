//! Fetching a running agent's `/metrics` and `/top` (ureq) and parsing them into a [`Snapshot`].

use std::{collections::BTreeMap, time::Duration};

use prometheus_parse::{Scrape, Value};
use serde::Deserialize;

/// One of the top sources, as `/top` returns it. Fields an older agent does not send
/// default to zero.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct TopSource {
    pub source: String,
    pub syns_per_second: f64,
    pub blocked: bool,
    #[serde(default)]
    pub half_open: u32,
    #[serde(default)]
    pub block_left_seconds: f64,
}

/// What one poll of the agent shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Host-wide SYN rate over the agent's last poll.
    pub syns_per_second: f64,
    /// Host-wide half-open handshakes.
    pub half_open: f64,
    /// `syndetector_packets_total` by "verdict/reason".
    pub packets: BTreeMap<String, f64>,
    /// The configured mode (the `syndetector_mode` label set to 1).
    pub mode: Option<String>,
    pub under_attack: bool,
    pub cookies_active: bool,
    /// `syndetector_map_fill_ratio` by map.
    pub map_fill: BTreeMap<String, f64>,
    pub top: Vec<TopSource>,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("GET {0}: {1}")]
    Http(String, ureq::Error),
    #[error("parsing the metrics: {0}")]
    Metrics(std::io::Error),
    #[error("parsing /top: {0}")]
    Top(serde_json::Error),
}

/// A client for one agent: keeps its connection between polls.
pub struct Client {
    agent: ureq::Agent,
    base: String,
}

impl Client {
    pub fn new(addr: &str) -> Self {
        let agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(3))).build().into();
        Self { agent, base: format!("http://{addr}") }
    }

    pub fn get(&self, path: &str) -> Result<String, FetchError> {
        let url = format!("{}{path}", self.base);
        self.agent
            .get(&url)
            .call()
            .and_then(|mut r| r.body_mut().read_to_string())
            .map_err(|e| FetchError::Http(url, e))
    }

    pub fn snapshot(&self) -> Result<Snapshot, FetchError> {
        let metrics = self.get("/metrics")?;
        let top = self.get("/top")?;
        parse(&metrics, &top)
    }
}

/// The snapshot a text exposition and a `/top` JSON body describe.
pub fn parse(exposition: &str, top_json: &str) -> Result<Snapshot, FetchError> {
    let scrape = Scrape::parse(exposition.lines().map(|l| Ok(l.to_owned()))).map_err(FetchError::Metrics)?;
    let mut s =
        Snapshot { top: serde_json::from_str(top_json).map_err(FetchError::Top)?, ..Snapshot::default() };
    for sample in &scrape.samples {
        let (Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) = sample.value else { continue };
        let label = |name| sample.labels.get(name).unwrap_or_default().to_owned();
        match sample.metric.as_str() {
            "syndetector_syns_per_second" => s.syns_per_second = v,
            "syndetector_half_open" => s.half_open = v,
            "syndetector_packets_total" => {
                s.packets.insert(format!("{}/{}", label("verdict"), label("reason")), v);
            }
            "syndetector_mode" if v > 0.5 => s.mode = Some(label("mode")),
            "syndetector_under_attack" => s.under_attack = v > 0.5,
            "syndetector_cookies_active" => s.cookies_active = v > 0.5,
            "syndetector_map_fill_ratio" => {
                s.map_fill.insert(label("map"), v);
            }
            _ => {}
        }
    }
    Ok(s)
}

/// Packets per second by "verdict/reason" between two snapshots `dt` seconds apart
/// (a counter that went down, the agent restarted: counted from zero).
pub fn packet_rates(before: &Snapshot, after: &Snapshot, dt: f64) -> BTreeMap<String, f64> {
    after
        .packets
        .iter()
        .map(|(k, &v)| {
            let prev = before.packets.get(k).copied().unwrap_or(0.0);
            let delta = if v >= prev { v - prev } else { v };
            (k.clone(), if dt > 0.0 { delta / dt } else { 0.0 })
        })
        .collect()
}
