//! A real HTTP client over the kernel's TCP stack: connect, GET, read the whole body.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// Fetches `path` from `addr` and returns the body length. Fails on anything but a
/// complete 200 response within `timeout` (connect and transfer together).
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<usize> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    let left = timeout.saturating_sub(started.elapsed()).max(Duration::from_millis(1));
    stream.set_read_timeout(Some(left))?;
    stream.set_write_timeout(Some(left))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: lab\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).context("reading the response")?;
    let Some(split) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("no complete HTTP header ({} bytes)", response.len());
    };
    let head = String::from_utf8_lossy(&response[..split]);
    if !(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200")) {
        bail!("status: {}", head.lines().next().unwrap_or(""));
    }
    let body = response.len() - split - 4;
    let declared = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared != Some(body) {
        bail!("body of {body} bytes, Content-Length {declared:?}");
    }
    Ok(body)
}

/// What a series of requests achieved.
#[derive(Debug, Default, Clone)]
pub struct ClientReport {
    pub ok: u32,
    pub failed: u32,
    pub bytes: u64,
    /// Connect + full transfer time of each successful request.
    pub latencies: Vec<Duration>,
    pub first_error: Option<String>,
}

impl ClientReport {
    pub fn total(&self) -> u32 {
        self.ok + self.failed
    }

    pub fn success_ratio(&self) -> f64 {
        f64::from(self.ok) / f64::from(self.total().max(1))
    }

    /// The `q` quantile (0..=1) of successful request times.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index"
        )]
        l.get(((l.len().saturating_sub(1)) as f64 * q).round() as usize).copied().unwrap_or_default()
    }

    /// Runs `count` sequential requests (each its own connection) and reports.
    pub fn run(addr: SocketAddr, path: &str, count: u32, timeout: Duration) -> Self {
        let mut report = Self::default();
        for _ in 0..count {
            let started = Instant::now();
            match http_get(addr, path, timeout) {
                Ok(bytes) => {
                    report.ok += 1;
                    report.bytes += bytes as u64;
                    report.latencies.push(started.elapsed());
                }
                Err(e) => {
                    report.failed += 1;
                    report.first_error.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
        report
    }
}

impl std::fmt::Display for ClientReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} ok ({:.2} %), p50 {:.2} ms, p99 {:.2} ms",
            self.ok,
            self.total(),
            100.0 * self.success_ratio(),
            self.quantile(0.5).as_secs_f64() * 1e3,
            self.quantile(0.99).as_secs_f64() * 1e3
        )?;
        if let Some(e) = &self.first_error {
            write!(f, "; first failure: {e}")?;
        }
        Ok(())
    }
}
