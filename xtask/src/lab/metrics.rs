//! Scraping the agent's real /metrics endpoint (from inside the namespace it listens in)
//! and reading the text exposition.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use anyhow::{Context, Result};

use super::in_netns;

/// One scrape: `name{label="v",...}` (labels sorted by name, as exposed) → value.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub text: String,
    values: HashMap<String, f64>,
}

impl Scrape {
    /// `GET http://addr/metrics` from inside `ns`.
    pub fn fetch(ns: &str, addr: SocketAddr) -> Result<Self> {
        let text = in_netns(ns, move || fetch_text(addr))??;
        Ok(Self::parse(text))
    }

    pub fn parse(text: String) -> Self {
        let values = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect();
        Self { text, values }
    }

    /// The value of one series, e.g. `syndetector_packets_total{reason="blocked",verdict="drop"}`.
    /// A missing series reads as `None`.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.values.get(series).copied()
    }

    /// Like `get`, but a missing series is an error naming it.
    pub fn value(&self, series: &str) -> Result<f64> {
        self.get(series).with_context(|| format!("no series {series} in the scrape"))
    }
}

fn fetch_text(addr: SocketAddr) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n")?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("no HTTP body")?;
    anyhow::ensure!(head.lines().next().is_some_and(|l| l.contains(" 200 ")), "scrape failed: {head}");
    Ok(body.to_owned())
}
