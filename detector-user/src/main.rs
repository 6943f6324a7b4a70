//! `syndetector`: loads the XDP SYN-flood detector, runs detection and mitigation, and
//! exports Prometheus metrics. In order: configuration (invalid: exit 64, host untouched),
//! logging, runtime, signal handlers, the state directory (unusable: exit 64) and its
//! locks, the metrics listener, the pins of a previous run (adopted) or the recovery of a
//! crashed run's sysctls, load (the old pinned program protects meanwhile), fill the maps,
//! attach (or switch the pinned links over), tasks; at SIGTERM leave the pinned program
//! protecting (`on_stop = "keep"`) or undo everything and say truthfully what was restored
//! (docs/operations.md).

mod analyze;
mod attachments;
mod bpf_batch;
mod config;
mod control;
mod ctl;
mod detach;
mod detect;
mod error;
mod handover;
mod http;
mod kernel_features;
mod kernel_stats;
mod lists;
mod loader;
mod lock;
mod maps;
mod metrics;
mod mode;
mod pins;
mod policy;
mod prefix;
mod samples;
mod signals;
mod status;
mod sysctl;
#[cfg(test)]
mod test_netns;
mod top;

use std::{
    path::Path,
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio::io::unix::AsyncFd;
use tracing::{error, info, warn};

use crate::{
    config::{Config, LogFormat, OnStop, RunArgs},
    control::{Command as ControlCommand, Controller, SharedTop},
    error::{StateError, SysctlError},
    loader::Logger,
    lock::StateDir,
    metrics::Metrics,
    signals::{with_signals_blocked, Signals},
    sysctl::Sysctls,
};

/// EX_USAGE from sysexits.h: the configuration or the command line is wrong.
const EXIT_USAGE: u8 = 64;

#[derive(Parser)]
#[command(version, about = "XDP SYN-flood detector and mitigator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to interfaces, detect and mitigate SYN floods, export metrics.
    Run(RunArgs),
    /// Validate a configuration (file and flags as for `run`) without touching the host.
    CheckConfig(RunArgs),
    /// A live view of a running agent: SYN rate, half-open, verdicts, top sources (`--once`: one table).
    Top(top::TopArgs),
    /// Show the state directory: the sysctl state file, the lock holder, the sysctls now
    /// (exit 1 when the state file is corrupt).
    Status(status::StatusArgs),
    /// Remove the program for good: unpin and detach (all interfaces, or those named),
    /// then restore the sysctls a stopped agent left for it. Refused while an agent runs.
    Detach(detach::DetachArgs),
    /// Replay a pcap/pcapng capture through the detector offline: per source, what the XDP
    /// program would have done, and when attack mode would have started and ended.
    Analyze(analyze::AnalyzeArgs),
    /// Time polls and /metrics scrapes against a full per-source map (for `cargo xtask
    /// bench`; loads the program, attaches nothing, changes no sysctl).
    #[command(hide = true)]
    BenchPoll(control::bench::BenchArgs),
    /// Live control of a running agent (block, unblock, allow, deny, mode, reload).
    #[command(flatten)]
    Ctl(ctl::client::CtlCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Command::Top(args) => return top::main(&args),
        Command::Analyze(args) => return analyze::main(&args),
        Command::Status(args) => return status::main(&args),
        Command::Detach(args) => return detach::main(&args),
        Command::BenchPoll(args) => return control::bench::main(&args),
        Command::Ctl(cmd) => return ctl::client::main(cmd),
        Command::CheckConfig(args) => {
            return match Config::load(&args).and_then(|cfg| config::check_dirs(&cfg.file).map(|()| cfg)) {
                Ok(cfg) => {
                    println!("configuration is valid");
                    print!("{}", config::memory::report(&cfg, config::memory::possible_cpus()));
                    ExitCode::SUCCESS
                }
                Err(e) => config_error(&e),
            };
        }
        Command::Run(args) => args,
    };
    let cfg = match Config::load(&args) {
        Ok(cfg) => cfg,
        Err(e) => return config_error(&e),
    };
    init_tracing(cfg.file.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    let result = runtime.context("starting the runtime").and_then(|rt| rt.block_on(run(cfg, args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{}", error::one_line(&e));
            // An unusable state directory, or a map size the kernel will not create, is a
            // configuration problem, found before the host is touched.
            let usage = e.chain().any(|c| {
                matches!(c.downcast_ref::<StateError>(), Some(StateError::Dir { .. }))
                    || matches!(
                        c.downcast_ref::<error::LoadError>(),
                        Some(error::LoadError::MapRefused { .. })
                    )
            });
            if usage {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn config_error(e: &error::ConfigError) -> ExitCode {
    eprintln!("syndetector: invalid configuration: {e}");
    ExitCode::from(EXIT_USAGE)
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;

    use tracing_subscriber::{fmt, prelude::*, EnvFilter};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let layer = fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => registry.with(layer.with_ansi(std::io::stderr().is_terminal())).init(),
        LogFormat::Json => registry.with(layer.json().flatten_event(true)).init(),
    }
}

#[allow(clippy::too_many_lines, reason = "the start order, read in one place")]
async fn run(cfg: Config, args: RunArgs) -> Result<()> {
    // First the signal handlers: from here a SIGHUP or SIGTERM never kills the agent with
    // the default action, not even during the seconds of the program load.
    let mut signals = Signals::install()?;

    // One owner per state directory and interface, checked before anything is touched.
    let dir = StateDir::open(&cfg.file.state_dir, true)?;
    let what = format!("the state directory {}", dir.path().display());
    let _dir_lock = lock::lock(&dir, lock::DIR_LOCK, &what)?;
    let _iface_locks = cfg
        .file
        .interfaces
        .iter()
        .map(|iface| lock::lock(&dir, &lock::iface_lock_name(iface), &format!("interface {iface}")))
        .collect::<Result<Vec<_>, _>>()?;
    // With sampling on, its directory is checked (and created 0700) now, like the state dir.
    let samples_dir = samples::reader::prepare_dir(&cfg.file.samples)?;
    // Its sysctls are the namespace's: one agent per namespace, whatever its state dir.
    let _netns_lock = lock::lock_netns(Path::new(lock::NETNS_LOCK_DIR))?;
    // Every descriptor a sysctl change needs is opened now; an unwritable state directory
    // is refused here, not when cookies first turn on.
    let mut sysctls =
        tokio::task::block_in_place(|| Sysctls::prepare(&cfg.file.sysctl_dir, dir, sysctl::STATE_FILE))
            .map_err(|e| {
                // The capability hint only where the kernel refused for want of permission
                // (a read-only /proc/sys is another cause, and says so itself).
                let denied = match &e {
                    StateError::Io { source, .. }
                    | StateError::Recover { source: SysctlError::Io(_, source), .. } => {
                        source.kind() == std::io::ErrorKind::PermissionDenied
                    }
                    _ => false,
                };
                anyhow::Error::new(e).context(if denied {
                    "opening the sysctls and the state directory (writing /proc/sys/net needs CAP_NET_ADMIN)"
                } else {
                    "opening the sysctls and the state directory"
                })
            })?;

    // Bind before loading: a busy port must fail while the host is still untouched.
    let metrics_addr = cfg.file.metrics_addr;
    let listener = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .with_context(|| format!("listening on {metrics_addr} for metrics"))?;
    // The lists (files and the runtime state) and the control socket, before loading too.
    let ctl = ctl::start::prepare(&cfg)?;

    // Blocking work (sysctl writes with fsync, 4 s of verifier) off the async workers. A
    // previous run's pinned program protects until our program takes its links over.
    let handover::TakeOver { pins, inherited, maps_plan } =
        tokio::task::block_in_place(|| handover::take_over(&cfg, &mut sysctls))?;
    let maps_dir = pins.as_ref().map(pins::Pins::maps_dir);
    let (mut ebpf, logger) =
        tokio::task::block_in_place(|| with_signals_blocked(|| loader::load(&cfg, maps_dir.as_deref())))
            .context("loading the XDP program")?;
    if let Some(name) = signals.stop_requested() {
        info!("{name} during start-up: stopping before anything is attached or changed");
        return Ok(());
    }

    let mut kernel_cfg = cfg.kernel_config();
    kernel_cfg.sketch_seed =
        handover::adopted_sketch_seed(&ebpf, maps_plan.as_ref()).unwrap_or_else(random_seed);
    // Host-wide: the program counts the budget over all CPUs together.
    kernel_cfg.cookie_budget_per_second = cfg.file.cookies.budget_per_second;

    // The cookie policy maps are filled before anything is attached: from the first
    // packet, only SYNs to our own addresses, on ports no NAT rule rewrites, are answered.
    let policy_maps = policy::maps::PolicyMaps::take(&mut ebpf)?;
    let ifaces = interface_indexes(&cfg.file.interfaces)?;
    let (policy_inputs, desired_policy) =
        tokio::task::block_in_place(|| policy::feed::start(cfg.policy(), ifaces))
            .context("watching the host's addresses and NAT rules (rtnetlink, nftables)")?;
    let policy_step = policy::feed::PolicyStep::new(policy_maps, desired_policy.clone());
    // Per-port limits and protected ports: written before attaching, reloaded on SIGHUP.
    let port_step = control::ports::PortStep::take(&mut ebpf, &cfg)?;
    // Seeds the closed-connection filter once every interface runs this program.
    let attached = Arc::new(AtomicBool::new(false));
    let time_wait_step = control::time_wait::TimeWaitStep::take(&mut ebpf, attached.clone())?;

    let metrics = Arc::new(Metrics::new());
    let list_step = ctl.list_step(&mut ebpf, metrics.clone())?;
    let ctl_metrics = metrics.clone();
    let top = SharedTop::default();
    let config_map = loader::config_map(&mut ebpf)?;
    let maps = maps::Maps::take(&mut ebpf)?;
    let samples = samples::reader::spawn(&mut ebpf, &cfg.file.samples, samples_dir, metrics.clone())?;
    let poll_interval = cfg.poll_interval();
    let (interfaces, attach_mode) = (cfg.file.interfaces.clone(), cfg.file.attach_mode);
    let keep_on_stop = cfg.file.on_stop == OnStop::Keep && pins.is_some();
    let pins = pins.map(Arc::new);
    // The window scale of cookie SYN-ACKs is part of the desired program config: read from
    // tcp_rmem/rmem_max on every reconcile; the policy maps are reconciled with it.
    let mut controller = tokio::task::block_in_place(|| {
        Controller::new(
            cfg,
            kernel_cfg,
            maps,
            config_map,
            sysctls,
            metrics.clone(),
            top.clone(),
            vec![Box::new(policy_step), Box::new(list_step), Box::new(port_step), Box::new(time_wait_step)],
        )
    });

    let health = http::Health::default();
    let attachments =
        attachments::Attachments::new(ebpf, attach_mode, pins.clone(), metrics.clone(), health.clone());
    if let Err(e) = attachments.attach_all(&interfaces) {
        handover::attach_failed(&mut controller, inherited);
        return Err(e.into());
    }
    handover::attached(pins.as_deref(), maps_plan.as_ref());
    attached.store(true, Ordering::Release);
    info!(addr = %metrics_addr, "serving /metrics, /healthz and /top");
    let router = http::router_with_health(metrics, top, health);
    let server = tokio::spawn(http::serve(listener, router, http::Limits::default()));
    let log_pump = logger.map(|logger| tokio::spawn(pump_logs(logger)));

    let (commands, control) =
        controller.spawn(poll_interval, Box::new(move || Config::load(&args).map_err(|e| e.to_string())));
    let (ctl_server, _ctl_file) = ctl.serve(commands.clone(), ctl_metrics, interfaces.clone())?;
    let waker = commands.clone();
    let on_link = attachments.clone();
    let policy_feed = tokio::spawn(policy::feed::run(
        policy_inputs,
        desired_policy,
        poll_interval,
        move || waker.send(ControlCommand::Wake).is_ok(),
        move |event| on_link.on_link_event(event),
    ));
    signals.wait(&commands).await;
    policy_feed.abort();
    ctl_server.abort();
    samples.stop();
    server.abort();
    if let Some(pump) = log_pump {
        pump.abort();
    }
    stop(keep_on_stop, &commands, control, &attachments, pins.as_deref(), &interfaces).await
}

/// Ends the control thread, then either lets go of the pinned program, which keeps
/// protecting with the config and sysctls it has now (`keep`), or switches it to
/// pass-through, restores the sysctls (the thread does both before it ends), detaches and
/// removes the pins; and says truthfully which it was.
async fn stop(
    keep: bool,
    commands: &std::sync::mpsc::Sender<ControlCommand>,
    control: std::thread::JoinHandle<control::ShutdownReport>,
    attachments: &attachments::Attachments,
    pins: Option<&pins::Pins>,
    interfaces: &[String],
) -> Result<()> {
    let _ = commands.send(if keep { ControlCommand::HandOver } else { ControlCommand::Stop });
    let report = tokio::task::spawn_blocking(move || control.join()).await.ok().and_then(Result::ok);
    if let (true, Some(p)) = (keep, pins) {
        handover::log_kept(attachments.release_all(), p.root());
        return Ok(());
    }
    attachments.detach_all();
    if let Some(p) = pins {
        // The link pins went with the attachments; the maps and directories go too.
        if let Err(e) = pins::remove(p.root(), interfaces) {
            warn!(error = %e, "cannot remove the pins");
        }
    }
    match report {
        None => anyhow::bail!(
            "the control thread panicked: sysctls may be left changed; the next start restores them from the state file"
        ),
        Some(report) if log_restored(&report) => Ok(()),
        Some(_) => anyhow::bail!("stopped, but not every sysctl could be restored (see above)"),
    }
}

/// Logs what the shutdown really restored; returns whether everything was.
fn log_restored(report: &control::ShutdownReport) -> bool {
    let r = &report.sysctls;
    let restored: Vec<String> = r.restored.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let pass_through = report.pass_through.is_ok();
    if report.restored() {
        info!(restored = ?restored, pass_through, "stopped; attachments removed, every sysctl the agent changed restored");
        return true;
    }
    if !r.failed.is_empty() {
        let failed: Vec<String> = r.failed.iter().map(|(k, e)| format!("{k}: {e}")).collect();
        error!(
            restored = ?restored,
            failed = ?failed,
            pass_through,
            "stopped; attachments removed, but these sysctls are NOT restored: the state file keeps their \
             originals for the next start (or restore them by hand)"
        );
    }
    if let Some(e) = &r.state_file {
        error!(
            restored = ?restored,
            error = %e,
            "stopped, but the sysctl state file could not be updated: it may list sysctls that are \
             restored; check `syndetector status` and remove it by hand"
        );
    }
    false
}

/// Carries the program's log events into tracing as they arrive.
async fn pump_logs(logger: Logger) {
    // SAFETY: the logger owns its ring buffer's fd, open and unchanged until it is dropped,
    // which happens only with the AsyncFd.
    let Ok(mut fd) = (unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) })
    else {
        warn!("cannot poll the XDP program's log map; its events are lost");
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else { return };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

/// (ifindex, name) of each interface; `validate` checked they exist a moment ago.
fn interface_indexes(names: &[String]) -> Result<Vec<(u32, String)>> {
    names
        .iter()
        .map(|name| {
            let c_name = std::ffi::CString::new(name.as_str()).context("interface name")?;
            // SAFETY: a NUL-terminated string that outlives the call.
            let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
            anyhow::ensure!(index != 0, "interface {name}: {}", std::io::Error::last_os_error());
            Ok((index, name.clone()))
        })
        .collect()
}

/// Keys the sketch's hashes (see detector_common::sketch).
fn random_seed() -> u32 {
    let mut bytes = [0u8; 4];
    if let Err(e) =
        std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
    {
        warn!(error = %e, "no /dev/urandom: the sketch seed falls back to the clock");
        #[allow(clippy::cast_possible_truncation, reason = "any 32 bits will do")]
        return maps::monotonic_ns() as u32;
    }
    u32::from_ne_bytes(bytes)
}
