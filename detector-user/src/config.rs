//! Configuration: a TOML file (every key optional, defaults below), command-line overrides,
//! and `validate`, which runs before anything touches the host. `reload`: which keys a
//! SIGHUP applies and which need a restart; `memory`: the kernel memory its maps take.

pub mod memory;
pub mod ports;
pub mod reload;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, ValueEnum};
use detector_common::{closed_filter, config::Config as KernelConfig, sketch};
use serde::Deserialize;

use crate::{
    detect::{DetectionThresholds, MIN_EXIT_HALF_OPEN, MIN_EXIT_SYN_RATE},
    error::ConfigError,
    mode::Mode,
    policy::PolicyConfig,
    prefix::Prefix,
    samples::Samples,
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic (skb) mode if the driver refuses.
    #[default]
    Auto,
    Driver,
    Skb,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Where pins go by default (systemd mounts bpffs at /sys/fs/bpf).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/syndetector";

/// What SIGTERM does (docs/operations.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnStop {
    /// Leave program, link, maps and sysctls in place: the next start adopts them.
    #[default]
    Keep,
    /// Detach, unpin, restore the sysctls.
    Detach,
}

/// The file's contents. Every key has a default, so a file may hold only what it changes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub interfaces: Vec<String>,
    pub attach_mode: AttachMode,
    pub mode: Mode,
    pub metrics_addr: SocketAddr,
    pub poll_interval_ms: u64,
    pub log_format: LogFormat,
    /// Where the agent records the sysctls it changed, to restore them after a crash.
    pub state_dir: PathBuf,
    /// Where the sysctls are read and written: `/proc/sys`, or a writable bind mount of the
    /// host's `/proc/sys` in a container, whose own `/proc/sys` is read-only (the agent
    /// runs in the host's network namespace, so the `net/` files there are the host's).
    pub sysctl_dir: PathBuf,
    /// Where the program's link and maps are pinned (bpffs), so that a restart leaves no
    /// gap (docs/operations.md). Not on bpffs: a warning, and no pinning.
    pub pin_dir: PathBuf,
    /// What SIGTERM does: `keep` leaves the program protecting (restart, upgrade);
    /// `detach` removes it and restores the sysctls, as `syndetector detach` does.
    pub on_stop: OnStop,
    /// How many top SYN sources to export and show (`syndetector top`).
    pub top_sources: usize,
    pub thresholds: Thresholds,
    pub detection: Detection,
    pub cookies: Cookies,
    pub maps: Maps,
    pub policy: Policy,
    /// The control socket (`syndetector block`, `allow`, `mode`, ...; docs/control.md);
    /// `state_dir/control.sock` when not set, so each agent has its own.
    pub control_socket: Option<PathBuf>,
    pub lists: ListFiles,
    pub samples: Samples,
    /// The only local ports tracked, blocked and answered; SYNs to others pass (counted
    /// as `unprotected_port`). Absent: every port.
    pub protected_ports: Option<Vec<u16>>,
    /// Per-port limits where they differ from `[thresholds]`, keyed by port (`[ports."443"]`).
    pub ports: BTreeMap<String, PortThresholds>,
}

/// `[lists]`: files of prefixes always allowed / always denied (docs/control.md).
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ListFiles {
    pub allow_files: Vec<PathBuf>,
    pub deny_files: Vec<PathBuf>,
}

/// `[ports."P"]`: limits for SYNs to local port P (each absent one: `[thresholds]`'s).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PortThresholds {
    pub syn_rate_limit: Option<u32>,
    pub half_open_limit: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// SYNs per second one source may send before it is blocked (0 = no limit).
    pub syn_rate_limit: u32,
    /// Half-open handshakes one source may hold before it is blocked (0 = no limit).
    pub half_open_limit: u32,
    pub block_ttl_secs: u64,
    pub handshake_timeout_ms: u64,
    /// Exact per-source state only for sources the sketch counts near a limit; the others
    /// are counted in the sketch alone (flat cost under many-source floods; see
    /// docs/tracking.md for what the handshake counters then leave out).
    pub sketch_admission: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Detection {
    pub enter_syn_rate: f64,
    pub exit_syn_rate: f64,
    pub enter_half_open: u64,
    pub exit_half_open: u64,
    pub hold_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cookies {
    /// Carry wscale/SACK/ECN in a TCP timestamp (sets `net.ipv4.tcp_timestamps = 2`
    /// while cookies are on). Off: SYN-ACKs carry MSS only.
    pub timestamps: bool,
    /// Accept ECN from clients that ask (only with timestamps).
    pub ecn: bool,
    /// SYN-ACKs per second the host may send from XDP; SYNs beyond are dropped.
    pub budget_per_second: u32,
    /// The unscaled window of cookie SYN-ACKs.
    pub window: u16,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Maps {
    pub sources: u32,
    pub pending: u32,
    /// Columns per sketch row (a power of two); the sketch has 4 rows of 8-byte cells.
    pub sketch_width: u32,
    /// Lines of the closed-connection filter (a power of two, 64 bytes each): how many
    /// recently closed flows cookie mode's fast path tells apart (docs/cookies.md).
    pub closed_filter_lines: u32,
}

/// Which SYNs cookie mode may answer from XDP (see `policy`). Ports are TCP ports.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Empty: every port with a listener. Otherwise only these (FLAG_LISTED_PORTS_ONLY).
    pub answer_ports: Vec<u32>,
    /// Always left to the kernel (e.g. ports published by NAT that detection cannot see).
    pub kernel_ports: Vec<u32>,
    /// CIDR prefixes or addresses always left to the kernel (DNAT'd addresses, VIPs).
    pub kernel_destinations: Vec<String>,
    /// Read the nftables ruleset for DNAT/redirect/tproxy rules and follow its changes.
    pub detect_nat: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            answer_ports: Vec::new(),
            kernel_ports: Vec::new(),
            kernel_destinations: Vec::new(),
            detect_nat: true,
        }
    }
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            attach_mode: AttachMode::Auto,
            mode: Mode::Auto,
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9787)),
            poll_interval_ms: 1000,
            log_format: LogFormat::Text,
            state_dir: PathBuf::from("/run/syndetector"),
            sysctl_dir: PathBuf::from("/proc/sys"),
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            on_stop: OnStop::Keep,
            top_sources: 10,
            thresholds: Thresholds::default(),
            detection: Detection::default(),
            cookies: Cookies::default(),
            maps: Maps::default(),
            policy: Policy::default(),
            control_socket: None,
            lists: ListFiles::default(),
            samples: Samples::default(),
            protected_ports: None,
            ports: BTreeMap::new(),
        }
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            syn_rate_limit: 200,
            half_open_limit: 100,
            block_ttl_secs: 60,
            handshake_timeout_ms: 3000,
            sketch_admission: false,
        }
    }
}

impl Default for Detection {
    fn default() -> Self {
        Self {
            enter_syn_rate: 5000.0,
            exit_syn_rate: 2000.0,
            enter_half_open: 2000,
            exit_half_open: 500,
            hold_secs: 30,
        }
    }
}

impl Default for Cookies {
    fn default() -> Self {
        Self { timestamps: true, ecn: true, budget_per_second: 200_000, window: 65_535 }
    }
}

impl Default for Maps {
    fn default() -> Self {
        Self {
            sources: 65_536,
            pending: 131_072,
            sketch_width: 16_384,
            closed_filter_lines: closed_filter::CLOSED_FILTER_LINES,
        }
    }
}

/// `syndetector run` flags; each overrides the key of the same name in the file.
#[derive(Debug, Default, Args)]
pub struct RunArgs {
    /// Interface to protect (repeat for several).
    #[arg(long = "iface", value_name = "IF")]
    pub interfaces: Vec<String>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<SocketAddr>,
    #[arg(long, value_enum)]
    pub attach_mode: Option<AttachMode>,
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    #[arg(long, value_name = "MS")]
    pub poll_interval_ms: Option<u64>,
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub on_stop: Option<OnStop>,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Cookie SYN-ACKs carry wscale/SACK/ECN in a timestamp (true/false).
    #[arg(long, value_name = "BOOL")]
    pub cookie_timestamps: Option<bool>,
    #[arg(long, value_name = "SYN-ACK/S")]
    pub cookie_budget: Option<u32>,
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
}

/// The per-source limits and host-wide detection flags, shared by `run` and `analyze`;
/// each overrides the key of the same name in the file.
#[derive(Clone, Debug, Default, Args)]
pub struct LimitArgs {
    #[arg(long, value_name = "SYN/S")]
    pub syn_rate_limit: Option<u32>,
    #[arg(long, value_name = "N")]
    pub half_open_limit: Option<u32>,
    #[arg(long = "block-ttl", value_name = "SECS")]
    pub block_ttl_secs: Option<u64>,
    #[arg(long, value_name = "MS")]
    pub handshake_timeout_ms: Option<u64>,
    #[arg(long, value_name = "SYN/S")]
    pub enter_syn_rate: Option<f64>,
    #[arg(long, value_name = "SYN/S")]
    pub exit_syn_rate: Option<f64>,
    #[arg(long, value_name = "N")]
    pub enter_half_open: Option<u64>,
    #[arg(long, value_name = "N")]
    pub exit_half_open: Option<u64>,
    #[arg(long = "hold", value_name = "SECS")]
    pub hold_secs: Option<u64>,
}

/// A configuration that passed `validate`: the only kind the agent acts on.
#[derive(Debug)]
pub struct Config {
    pub file: FileConfig,
}

impl Config {
    /// Reads the file (if any), applies the flags, validates. Touches nothing.
    pub fn load(args: &RunArgs) -> Result<Self, ConfigError> {
        let file = with_overrides(args)?;
        validate(&file)?;
        Ok(Self { file })
    }

    /// As `load`, but for work that attaches nothing (`analyze`): the interfaces are
    /// neither required nor checked; every other key is validated as for `run`.
    pub fn load_offline(args: &RunArgs) -> Result<Self, ConfigError> {
        let file = with_overrides(args)?;
        validate_settings(&file)?;
        Ok(Self { file })
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.file.poll_interval_ms)
    }

    pub fn detection(&self) -> DetectionThresholds {
        let d = &self.file.detection;
        DetectionThresholds {
            enter_syn_rate: d.enter_syn_rate,
            exit_syn_rate: d.exit_syn_rate,
            enter_half_open: d.enter_half_open,
            exit_half_open: d.exit_half_open,
            hold: Duration::from_secs(d.hold_secs),
        }
    }

    /// Where the control socket is: `control_socket`, else `state_dir/control.sock`.
    pub fn control_socket(&self) -> PathBuf {
        self.file.control_socket.clone().unwrap_or_else(|| self.file.state_dir.join("control.sock"))
    }

    pub fn sysctl_state_file(&self) -> PathBuf {
        self.file.state_dir.join("sysctl-state.toml")
    }

    /// What the program gets. `flags`, `synack_wscale`, `sketch_seed` and the budget are
    /// filled in by the caller, which knows the host.
    pub fn kernel_config(&self) -> KernelConfig {
        let t = &self.file.thresholds;
        let mut k = KernelConfig::new(
            t.syn_rate_limit,
            t.half_open_limit,
            t.block_ttl_secs * 1_000_000_000,
            t.handshake_timeout_ms * 1_000_000,
        );
        k.sketch_width = self.file.maps.sketch_width;
        k.synack_window = self.file.cookies.window;
        k.sample_one_in = self.file.samples.one_in;
        k.sketch_hot_mark = sketch::hot_mark(ports::lowest_syn_rate_limit(&self.file));
        // A validated power of two.
        k.closed_filter_extra_bits =
            closed_filter::extra_bits(self.file.maps.closed_filter_lines.trailing_zeros());
        k
    }

    /// The validated `[policy]` section in the form `policy::DesiredPolicy::build` takes.
    pub fn policy(&self) -> PolicyConfig {
        // validate() already refused anything that does not convert.
        policy_config(&self.file.policy).unwrap_or_default()
    }

    /// The program flags that follow from the config alone, whatever the mode.
    pub fn config_flags(&self) -> u32 {
        if self.file.thresholds.sketch_admission {
            detector_common::config::FLAG_SKETCH_ADMISSION
        } else {
            0
        }
    }

    /// The sketch's map words for `maps.sketch_width` (`sketch::words`: the first row packed).
    pub fn sketch_words(&self) -> u32 {
        sketch::words(self.file.maps.sketch_width)
    }

    /// The closed filter's map entries: `maps.closed_filter_lines` lines and their latest
    /// stamps (`closed_filter::entries`).
    pub fn closed_filter_entries(&self) -> u32 {
        closed_filter::entries(self.file.maps.closed_filter_lines.trailing_zeros())
    }
}

pub fn parse_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })
}

/// The file named by `--config` (defaults without one), with the flags applied.
fn with_overrides(args: &RunArgs) -> Result<FileConfig, ConfigError> {
    let mut file = match &args.config {
        Some(path) => parse_file(path)?,
        None => FileConfig::default(),
    };
    apply_overrides(&mut file, args);
    Ok(file)
}

fn apply_overrides(f: &mut FileConfig, a: &RunArgs) {
    if !a.interfaces.is_empty() {
        f.interfaces.clone_from(&a.interfaces);
    }
    macro_rules! set {
        ($($($arg:ident).+ => $($field:ident).+;)*) => {
            $( if let Some(v) = a.$($arg).+.clone() { f.$($field).+ = v; } )*
        };
    }
    set! {
        metrics_addr => metrics_addr;
        attach_mode => attach_mode;
        mode => mode;
        log_format => log_format;
        poll_interval_ms => poll_interval_ms;
        state_dir => state_dir;
        pin_dir => pin_dir;
        on_stop => on_stop;
        limits.syn_rate_limit => thresholds.syn_rate_limit;
        limits.half_open_limit => thresholds.half_open_limit;
        limits.block_ttl_secs => thresholds.block_ttl_secs;
        limits.handshake_timeout_ms => thresholds.handshake_timeout_ms;
        limits.enter_syn_rate => detection.enter_syn_rate;
        limits.exit_syn_rate => detection.exit_syn_rate;
        limits.enter_half_open => detection.enter_half_open;
        limits.exit_half_open => detection.exit_half_open;
        limits.hold_secs => detection.hold_secs;
        cookie_timestamps => cookies.timestamps;
        cookie_budget => cookies.budget_per_second;
    }
    if a.control_socket.is_some() {
        f.control_socket.clone_from(&a.control_socket);
    }
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, problem: problem.into() }
}

/// `in_range`, and a power of two (an array the program indexes by a mask or a shift).
fn power_of_two_in_range(key: &'static str, value: u32, min: u32, max: u32) -> Result<(), ConfigError> {
    in_range(key, value, min, max)?;
    if !value.is_power_of_two() {
        return Err(invalid(key, format!("{value} is not a power of two")));
    }
    Ok(())
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    key: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(invalid(key, format!("{value} is outside {min}..={max}")));
    }
    Ok(())
}

/// Every rule a value must meet before the agent may act on it.
pub fn validate(f: &FileConfig) -> Result<(), ConfigError> {
    if f.interfaces.is_empty() {
        return Err(invalid("interfaces", "no interface given (--iface IF or interfaces = [\"IF\"])"));
    }
    for (i, iface) in f.interfaces.iter().enumerate() {
        if iface.is_empty() || iface.len() > 15 || iface.contains('/') {
            return Err(invalid("interfaces", format!("{iface:?} is not an interface name")));
        }
        if !Path::new("/sys/class/net").join(iface).exists() {
            return Err(invalid("interfaces", format!("no interface {iface:?} here")));
        }
        if f.interfaces[..i].contains(iface) {
            return Err(invalid("interfaces", format!("{iface:?} is listed twice")));
        }
    }
    validate_settings(f)
}

/// What `check-config` adds to `validate` without changing anything: an existing state
/// directory (and samples directory, with sampling on) must pass the checks `run` makes (a
/// real directory, ours, not writable by others); a missing one is created by `run`.
pub fn check_dirs(f: &FileConfig) -> Result<(), ConfigError> {
    check_dir("state_dir", &f.state_dir)?;
    if f.samples.one_in != 0 {
        check_dir("samples.dir", &f.samples.dir)?;
    }
    Ok(())
}

fn check_dir(key: &'static str, dir: &Path) -> Result<(), ConfigError> {
    if std::fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    crate::lock::StateDir::open_as(dir, false, key).map(drop).map_err(|e| match e {
        crate::error::StateError::Dir { problem, .. } => {
            invalid(key, format!("{}: {problem}", dir.display()))
        }
        other => invalid(key, other.to_string()),
    })
}

/// The directory must hold the sysctls the agent changes (checked on one of them).
fn validate_sysctl_dir(dir: &Path) -> Result<(), ConfigError> {
    if !dir.is_absolute() {
        return Err(invalid("sysctl_dir", format!("{} is not an absolute path", dir.display())));
    }
    let probe = dir.join("net/ipv4/tcp_syncookies");
    if !probe.exists() {
        return Err(invalid(
            "sysctl_dir",
            format!("{} has no net/ipv4/tcp_syncookies: not a /proc/sys (or a mount of it)", dir.display()),
        ));
    }
    Ok(())
}

/// Every rule of `validate` but the interfaces'.
fn validate_settings(f: &FileConfig) -> Result<(), ConfigError> {
    validate_sysctl_dir(&f.sysctl_dir)?;
    if !f.pin_dir.is_absolute() {
        return Err(invalid("pin_dir", format!("{} is not an absolute path", f.pin_dir.display())));
    }
    if !f.state_dir.is_absolute() {
        return Err(invalid("state_dir", format!("{} is not an absolute path", f.state_dir.display())));
    }
    if f.control_socket.as_ref().is_some_and(|p| !p.is_absolute()) {
        return Err(invalid("control_socket", "must be an absolute path"));
    }
    crate::lists::files::load(&f.lists.allow_files, &f.lists.deny_files)
        .map_err(|e| invalid("lists", e.to_string()))?;
    in_range("poll_interval_ms", f.poll_interval_ms, 100, 60_000)?;
    in_range("top_sources", f.top_sources, 0, 100)?;
    let thresholds = &f.thresholds;
    in_range("thresholds.block_ttl_secs", thresholds.block_ttl_secs, 1, 86_400)?;
    in_range("thresholds.handshake_timeout_ms", thresholds.handshake_timeout_ms, 10, 600_000)?;
    ports::validate(f)?;
    let detection = &f.detection;
    // Calm is "below the exit value" (detect.rs): an exit value below the minimum could
    // never be undercut, and attack mode would never end. So exit ≥ minimum, exit ≤ enter.
    if !(detection.enter_syn_rate.is_finite() && detection.enter_syn_rate >= MIN_EXIT_SYN_RATE) {
        return Err(invalid("detection.enter_syn_rate", format!("must be a number ≥ {MIN_EXIT_SYN_RATE}")));
    }
    if !(detection.exit_syn_rate.is_finite()
        && detection.exit_syn_rate >= MIN_EXIT_SYN_RATE
        && detection.exit_syn_rate <= detection.enter_syn_rate)
    {
        return Err(invalid(
            "detection.exit_syn_rate",
            format!(
                "{} must be ≥ {MIN_EXIT_SYN_RATE} (calm is a rate below it) and ≤ detection.enter_syn_rate",
                detection.exit_syn_rate
            ),
        ));
    }
    if detection.enter_half_open < MIN_EXIT_HALF_OPEN {
        return Err(invalid("detection.enter_half_open", format!("must be at least {MIN_EXIT_HALF_OPEN}")));
    }
    if detection.exit_half_open < MIN_EXIT_HALF_OPEN || detection.exit_half_open > detection.enter_half_open {
        return Err(invalid(
            "detection.exit_half_open",
            format!(
                "{} must be ≥ {MIN_EXIT_HALF_OPEN} (calm is fewer half-open handshakes than it) and ≤ detection.enter_half_open",
                detection.exit_half_open
            ),
        ));
    }
    in_range("detection.hold_secs", detection.hold_secs, 0, 3_600)?;
    let cookies = &f.cookies;
    if cookies.ecn && !cookies.timestamps {
        return Err(invalid("cookies.ecn", "needs cookies.timestamps = true (ECN rides in the timestamp)"));
    }
    in_range("cookies.budget_per_second", cookies.budget_per_second, 1, 100_000_000)?;
    if cookies.window == 0 {
        return Err(invalid("cookies.window", "must be at least 1"));
    }
    let maps = &f.maps;
    in_range("maps.sources", maps.sources, 1_024, 16_777_216)?;
    in_range("maps.pending", maps.pending, 1_024, 16_777_216)?;
    power_of_two_in_range("maps.sketch_width", maps.sketch_width, 256, 1_048_576)?;
    let (min_lines, max_lines) = (1 << closed_filter::MIN_LINE_BITS, 1 << closed_filter::MAX_LINE_BITS);
    power_of_two_in_range("maps.closed_filter_lines", maps.closed_filter_lines, min_lines, max_lines)?;
    policy_config(&f.policy)?;
    crate::samples::validate(&f.samples)?;
    Ok(())
}

fn ports(key: &'static str, list: &[u32]) -> Result<BTreeSet<u16>, ConfigError> {
    list.iter()
        .map(|&p| match u16::try_from(p) {
            Ok(port) if port != 0 => Ok(port),
            _ => Err(invalid(key, format!("{p} is not a TCP port (1..=65535)"))),
        })
        .collect()
}

/// Checks and converts `[policy]`: ports in range, prefixes that parse, no port both
/// answered and left to the kernel, no more destinations than the map holds.
fn policy_config(p: &Policy) -> Result<PolicyConfig, ConfigError> {
    let answer_ports = ports("policy.answer_ports", &p.answer_ports)?;
    let kernel_ports = ports("policy.kernel_ports", &p.kernel_ports)?;
    if let Some(both) = answer_ports.intersection(&kernel_ports).next() {
        return Err(invalid(
            "policy.kernel_ports",
            format!("port {both} is also in policy.answer_ports: a port is answered or left to the kernel"),
        ));
    }
    let kernel_destinations = p
        .kernel_destinations
        .iter()
        .map(|s| s.parse::<Prefix>().map_err(|e| invalid("policy.kernel_destinations", e.to_string())))
        .collect::<Result<BTreeSet<_>, _>>()?;
    let capacity = detector_common::names::KERNEL_DESTS_CAPACITY as usize;
    if kernel_destinations.len() > capacity {
        return Err(invalid("policy.kernel_destinations", format!("more than {capacity} prefixes")));
    }
    Ok(PolicyConfig { answer_ports, kernel_ports, kernel_destinations, detect_nat: p.detect_nat })
}

#[cfg(test)]
mod tests;
