//! `syndetector bench-poll` (hidden; run by `cargo xtask bench`): fills the per-source map
//! of a loaded, unattached program with N entries, then times polls and, at the same time,
//! `/metrics` scrapes over HTTP, and prints p50/max of each. Monitor mode: no sysctl is
//! touched, nothing is attached.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use detector_common::state::{SourceKey, SourceState};

use super::{Controller, SharedTop};
use crate::{
    config::{Config, RunArgs},
    http, loader,
    maps::{monotonic_ns, Maps},
    metrics::Metrics,
    mode::Mode,
    sysctl::Sysctls,
};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Entries put in the per-source map (its size is set to this).
    #[arg(long, default_value_t = 1_000_000)]
    pub sources: u32,
    /// Polls timed.
    #[arg(long, default_value_t = 10)]
    pub polls: u32,
}

pub fn main(args: &BenchArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("syndetector bench-poll: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &BenchArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let state_dir = std::env::temp_dir().join(format!("syndetector-bench-{}", std::process::id()));
    let run_args = RunArgs {
        interfaces: vec!["lo".into()],
        mode: Some(Mode::Monitor),
        state_dir: Some(state_dir.clone()),
        ..RunArgs::default()
    };
    let mut cfg = Config::load(&run_args)?;
    cfg.file.maps.sources = args.sources.max(1_024);
    let (sysctls, _) = Sysctls::open(&cfg.file.sysctl_dir, &cfg.sysctl_state_file())?;
    let t = Instant::now();
    let (mut ebpf, _logger) = loader::load(&cfg, None).context("loading the program (root)")?;
    eprintln!("loaded in {:.1} s", t.elapsed().as_secs_f64());
    let config_map = loader::config_map(&mut ebpf)?;
    let mut maps = Maps::take(&mut ebpf)?;
    let t = Instant::now();
    fill(&mut maps, args.sources, &cfg)?;
    eprintln!("filled {} sources in {:.1} s", args.sources, t.elapsed().as_secs_f64());

    let t = Instant::now();
    let mut walked = 0u64;
    maps.for_each_source_batch(&mut |keys, _| walked += keys.len() as u64);
    eprintln!("one walk of the map alone: {walked} entries in {:.1} ms", t.elapsed().as_secs_f64() * 1e3);

    eprintln!("walked in {} part(s) at once", maps.source_parts());
    let metrics = Arc::new(Metrics::new());
    let top = SharedTop::default();
    let kernel_cfg = cfg.kernel_config();
    let mut controller =
        Controller::new(cfg, kernel_cfg, maps, config_map, sysctls, metrics.clone(), top.clone(), Vec::new());

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    runtime.spawn(async move { axum::serve(listener, http::router(metrics, top)).await });

    // Scrapes every 20 ms for as long as the polls run: none may wait on a poll.
    let done = Arc::new(AtomicBool::new(false));
    let scraper = {
        let done = done.clone();
        std::thread::spawn(move || {
            let (mut times, mut failed) = (Vec::new(), 0u32);
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                match scrape(addr) {
                    Ok(_) => times.push(t.elapsed()),
                    Err(e) if failed == 0 => {
                        eprintln!("scrape failed: {e}");
                        failed += 1;
                    }
                    Err(_) => failed += 1,
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (times, failed)
        })
    };
    let (mut polls, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..args.polls {
        std::thread::sleep(Duration::from_millis(200));
        let (t, c) = (Instant::now(), process_cpu());
        controller.poll()?;
        polls.push(t.elapsed());
        cpu.push(process_cpu().saturating_sub(c));
    }
    done.store(true, Ordering::Relaxed);
    let (scrape_times, failed) = scraper.join().expect("scraper thread");
    anyhow::ensure!(controller.shutdown().restored(), "could not restore the sysctls");
    let _ = std::fs::remove_dir_all(&state_dir);
    println!("bench-poll: {} sources in the map; load average {}", args.sources, load_average());
    report("poll (wall clock)", &mut polls);
    // The walk runs on several threads (`control::sources`): their sum is the cost.
    report("poll (CPU time of the process, scrapes included)", &mut cpu);
    report("scrape /metrics (concurrent with polls)", &mut scrape_times.clone());
    anyhow::ensure!(failed == 0, "{failed} scrapes failed");
    Ok(())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map_or_else(|_| "?".into(), |l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
}

fn report(what: &str, times: &mut [Duration]) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let p50 = times.get(times.len() / 2).copied().unwrap_or_default();
    let max = times.last().copied().unwrap_or_default();
    println!("{what:<42} n={:<5} p50 {:>9.3} ms  max {:>9.3} ms", times.len(), ms(p50), ms(max));
}

/// N distinct IPv6 sources (2001:2::/48), a few blocked, some with pending handshakes.
fn fill(maps: &mut Maps, n: u32, cfg: &Config) -> anyhow::Result<()> {
    let kcfg = cfg.kernel_config();
    let now = monotonic_ns();
    for i in 0..n {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[0x20, 0x01, 0x00, 0x02]);
        addr[12..].copy_from_slice(&i.to_be_bytes());
        let mut s = SourceState::new(now, &kcfg);
        s.syns_total = u64::from(i % 1000);
        s.pending[0] = i % 3;
        if i % 1000 == 0 {
            s.blocked_until_ns = now + 60_000_000_000;
        }
        maps.insert_source(&SourceKey { addr }, &s)?;
    }
    Ok(())
}

/// CPU time (user + system, kernel map walks included) of every thread of the process:
/// the poll's walkers, and the concurrent scrapes (client and server, well under a
/// millisecond each).
fn process_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid pointer to a timespec; the clock exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &raw mut ts) };
    Duration::new(u64::try_from(ts.tv_sec).unwrap_or(0), u32::try_from(ts.tv_nsec).unwrap_or(0))
}

fn scrape(addr: std::net::SocketAddr) -> std::io::Result<usize> {
    let mut stream = TcpStream::connect(addr)?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body)?;
    if !body.starts_with(b"HTTP/1.0 200") && !body.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other("not a 200 answer"));
    }
    Ok(body.len())
}
