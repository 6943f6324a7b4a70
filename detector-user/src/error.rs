//! Error types of the agent; `anyhow` only in `main`.

use std::path::PathBuf;

/// A configuration that must not be used. Names the key so the operator can fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {problem}")]
    Invalid { key: &'static str, problem: String },
}

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: {1}")]
    StateFile(PathBuf, String),
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading the XDP object: {0}")]
    Object(#[from] aya::EbpfError),
    #[error(
        "{key} = {value}: the kernel refused to create map {map} ({problem}); \
         `syndetector check-config` prints the memory each size needs"
    )]
    MapRefused { key: &'static str, value: u32, map: String, problem: String },
    #[error("the object has no {0}")]
    Missing(&'static str),
    #[error("{what}: {source}")]
    Program { what: String, source: aya::programs::ProgramError },
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: aya::maps::MapError },
    #[error(
        "attaching to {iface} in {mode} mode: {source}{hint}",
        hint = if *.forced { " (try --attach-mode auto or skb)" } else { "" }
    )]
    Attach { iface: String, mode: &'static str, forced: bool, source: aya::programs::ProgramError },
    #[error("missing capability {missing} (needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, or CAP_SYS_ADMIN and CAP_NET_ADMIN)")]
    Capabilities { missing: String },
    #[error("the kernel refused the XDP program: {missing}")]
    KernelTooOld { missing: String },
    #[error("the verifier rejected the XDP program ({io_error}); the end of its log:\n{tail}")]
    Verifier { io_error: std::io::Error, tail: String },
    #[error("pinning the link at {}: {source}", path.display())]
    Pin { path: std::path::PathBuf, source: aya::pin::PinError },
    #[error("removing the link pin {}: {source}", path.display())]
    Unpin { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    PinDir(#[from] PinError),
    #[error("{what}: {source}")]
    Link { what: String, source: aya::programs::links::LinkError },
    /// The attach error is the source (shown by `{:#}`), not repeated here.
    #[error("another XDP program is attached to {iface} (id {id}, name {name})")]
    Occupied { iface: String, id: u32, name: String, source: Box<LoadError> },
}

/// Reading or writing the cookie policy maps (`policy::PolicyMaps`).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "the XDP object has no map {0}: it predates the cookie policy maps; rebuild it \
         (cargo xtask build-ebpf) before enabling cookie mode"
    )]
    MissingMap(&'static str),
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: aya::maps::MapError },
    #[error("map {map} is not {wanted}")]
    WrongType { map: &'static str, wanted: &'static str },
    #[error("map {map}: {source}")]
    Io { map: &'static str, source: std::io::Error },
    #[error("map {map} holds {len} entries, the policy needs {needed}")]
    WrongSize { map: &'static str, len: u32, needed: u32 },
}

/// The rtnetlink watcher (`addresses`) or the nftables event socket (`nat`).
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("{what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    #[error("the kernel refused {what}: {source}")]
    Refused { what: &'static str, source: std::io::Error },
}

/// Reading the nftables ruleset (`nat`).
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("nft is not installed: DNAT detection is off")]
    NoNft,
    #[error("running nft: {0}")]
    Run(std::io::Error),
    #[error("nft -j list ruleset failed: {0}")]
    Failed(String),
    #[error("parsing nft JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The state directory, its lock files and the sysctl state file (`lock`, `sysctl`).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// `what` names the directory and its key, e.g. "state directory (state_dir)".
    #[error("{what} {path}: {problem}")]
    Dir { what: &'static str, path: PathBuf, problem: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "state file {path} is corrupt ({reason}): restore net.ipv4.tcp_syncookies and \
         net.ipv4.tcp_timestamps by hand (the usual values are 1 and 1) and remove the file"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("{what} is in use by another syndetector ({holder}; lock {path}): stop that one first")]
    Locked { what: String, holder: String, path: PathBuf },
    #[error("restoring {key} from the state file: {source}")]
    Recover { key: String, source: SysctlError },
}

/// The pin directory under bpffs and its pins (`pins`).
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The state error names the pin directory and its key itself (kept as the source, so
    /// an unusable directory still exits as a configuration error).
    #[error("{0}")]
    Dir(#[from] StateError),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("SYNDETECTOR_TEST_LAYOUT_VERSION = {0:?} is not a number")]
    Version(String),
}

/// The error and its causes on one line, as `{:#}` would print them, but without a cause
/// whose text the line already holds: many of our errors embed their source in their own
/// message (`"{path}: {source}"`) and also report it as their source.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem);
        let e = anyhow::Error::new(StateError::Io { path: "/x/lock".into(), source: io })
            .context("opening the state directory");
        let line = one_line(&e);
        assert_eq!(line.matches("read-only").count(), 1, "{line}");
        assert!(line.starts_with("opening the state directory: /x/lock: "), "{line}");
        // A cause the message does not hold is kept.
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(one_line(&e), "outer: inner");
    }
}
