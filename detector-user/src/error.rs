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
}
