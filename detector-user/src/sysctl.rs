//! The host sysctls the agent changes while mitigating (`net.ipv4.tcp_syncookies`,
//! `net.ipv4.tcp_timestamps`), put back when mitigation ends or the agent stops, and after
//! a crash on the next start: the original value is written to a state file before the
//! first change to a key, and the file is removed once everything is restored.
//!
//! These are the sysctls of the network namespace the agent runs in.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::error::SysctlError;

/// What the state file holds: key → value before the agent changed it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    original: BTreeMap<String, String>,
}

#[derive(Debug)]
pub struct Sysctls {
    /// `/proc/sys` in production; a scratch directory in tests.
    root: PathBuf,
    state_file: PathBuf,
    state: State,
}

/// A value put back from a previous run's state file.
#[derive(Debug, PartialEq, Eq)]
pub struct Recovered {
    pub key: String,
    pub value: String,
}

impl Sysctls {
    /// Opens the guard, first restoring whatever a previous run left changed.
    pub fn open(root: &Path, state_file: &Path) -> Result<(Self, Vec<Recovered>), SysctlError> {
        let this = Self { root: root.to_owned(), state_file: state_file.to_owned(), state: State::default() };
        let mut recovered = Vec::new();
        if let Ok(text) = fs::read_to_string(state_file) {
            let left: State = toml::from_str(&text)
                .map_err(|e| SysctlError::StateFile(state_file.to_owned(), e.to_string()))?;
            for (key, value) in left.original {
                this.write(&key, &value)?;
                warn!(key, value, "restored a sysctl left changed by a previous run");
                recovered.push(Recovered { key, value });
            }
            fs::remove_file(state_file).map_err(|e| SysctlError::Io(state_file.to_owned(), e))?;
        }
        Ok((this, recovered))
    }

    pub fn read(&self, key: &str) -> Result<String, SysctlError> {
        let path = self.path(key);
        fs::read_to_string(&path).map(|v| v.trim().to_owned()).map_err(|e| SysctlError::Io(path, e))
    }

    /// Sets `key`, recording its original value first (only on the first change).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), SysctlError> {
        let current = self.read(key)?;
        if current == value {
            return Ok(());
        }
        if !self.state.original.contains_key(key) {
            self.state.original.insert(key.to_owned(), current.clone());
            self.persist()?;
        }
        self.write(key, value)?;
        info!(key, from = current, to = value, "sysctl changed");
        Ok(())
    }

    /// Puts `key` back to its original value, if this guard changed it.
    pub fn restore(&mut self, key: &str) -> Result<(), SysctlError> {
        if let Some(original) = self.state.original.get(key).cloned() {
            self.write(key, &original)?;
            self.state.original.remove(key);
            self.persist()?;
            info!(key, to = original, "sysctl restored");
        }
        Ok(())
    }

    /// Whether this guard changed `key` and has not put it back yet.
    pub fn changed(&self, key: &str) -> bool {
        self.state.original.contains_key(key)
    }

    pub fn restore_all(&mut self) -> Result<(), SysctlError> {
        let keys: Vec<String> = self.state.original.keys().cloned().collect();
        for key in keys {
            self.restore(&key)?;
        }
        Ok(())
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key.replace('.', "/"))
    }

    fn write(&self, key: &str, value: &str) -> Result<(), SysctlError> {
        let path = self.path(key);
        fs::write(&path, value).map_err(|e| SysctlError::Io(path, e))
    }

    /// Writes the state file (0600, in a 0700 directory), or removes it when nothing is
    /// changed. Written to a temporary name and renamed, so a crash mid-write leaves
    /// either the old or the new file.
    fn persist(&self) -> Result<(), SysctlError> {
        let io = |e| SysctlError::Io(self.state_file.clone(), e);
        if self.state.original.is_empty() {
            return match fs::remove_file(&self.state_file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
                _ => Ok(()),
            };
        }
        if let Some(dir) = self.state_file.parent() {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
        }
        let text = toml::to_string(&self.state)
            .map_err(|e| SysctlError::StateFile(self.state_file.clone(), e.to_string()))?;
        let tmp = self.state_file.with_extension("tmp");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, &self.state_file).map_err(io)
    }
}

impl Drop for Sysctls {
    fn drop(&mut self) {
        if let Err(e) = self.restore_all() {
            warn!(error = %e, "could not restore every sysctl; the state file keeps them for the next start");
        }
    }
}

/// The window scale the kernel will pick for a passive connection: halve the largest
/// receive buffer until it fits 16 bits (`tcp_select_initial_window`), at most 14.
#[must_use]
pub fn window_scale(max_receive_buffer: u64) -> u8 {
    let mut space = max_receive_buffer;
    let mut wscale = 0u8;
    while space > 65_535 && wscale < 14 {
        space >>= 1;
        wscale += 1;
    }
    wscale
}

/// `max(tcp_rmem[2], rmem_max)`, as the kernel sizes the window it can scale to. `read`
/// reads a sysctl by name (re-read on every reconcile: an operator may change them).
pub fn max_receive_buffer(read: &dyn Fn(&str) -> Result<String, SysctlError>) -> Result<u64, SysctlError> {
    let rmem = read("net.ipv4.tcp_rmem")?;
    let tcp_max = rmem.split_whitespace().nth(2).and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| {
        SysctlError::StateFile(PathBuf::from("net.ipv4.tcp_rmem"), format!("unexpected value {rmem:?}"))
    })?;
    // rmem_max is not visible in every network namespace: the TCP value then decides.
    let core_max = read("net.core.rmem_max").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok(tcp_max.max(core_max))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("net/ipv4")).unwrap();
        fs::write(dir.path().join("net/ipv4/tcp_syncookies"), "1\n").unwrap();
        fs::write(dir.path().join("net/ipv4/tcp_timestamps"), "1\n").unwrap();
        dir
    }

    fn value(root: &Path, key: &str) -> String {
        fs::read_to_string(root.join(key.replace('.', "/"))).unwrap().trim().to_owned()
    }

    #[test]
    fn set_then_restore_puts_the_original_back_and_removes_the_state_file() {
        let proc = fake_proc();
        let state = proc.path().join("run/state.toml");
        let (mut s, recovered) = Sysctls::open(proc.path(), &state).unwrap();
        assert!(recovered.is_empty());
        s.set("net.ipv4.tcp_syncookies", "2").unwrap();
        s.set("net.ipv4.tcp_syncookies", "2").unwrap();
        assert_eq!(value(proc.path(), "net.ipv4.tcp_syncookies"), "2");
        assert!(state.exists(), "the original is on disk before the change");
        s.restore_all().unwrap();
        assert_eq!(value(proc.path(), "net.ipv4.tcp_syncookies"), "1");
        assert!(!state.exists());
    }

    #[test]
    fn a_crashed_run_is_repaired_on_the_next_start() {
        let proc = fake_proc();
        let state = proc.path().join("run/state.toml");
        let (mut s, _) = Sysctls::open(proc.path(), &state).unwrap();
        s.set("net.ipv4.tcp_syncookies", "2").unwrap();
        s.set("net.ipv4.tcp_timestamps", "2").unwrap();
        std::mem::forget(s); // a crash: no Drop, no restore
        assert_eq!(value(proc.path(), "net.ipv4.tcp_timestamps"), "2");
        let (_s, recovered) = Sysctls::open(proc.path(), &state).unwrap();
        assert_eq!(recovered.len(), 2);
        assert_eq!(value(proc.path(), "net.ipv4.tcp_syncookies"), "1");
        assert_eq!(value(proc.path(), "net.ipv4.tcp_timestamps"), "1");
        assert!(!state.exists());
    }

    #[test]
    fn drop_restores() {
        let proc = fake_proc();
        let state = proc.path().join("state.toml");
        {
            let (mut s, _) = Sysctls::open(proc.path(), &state).unwrap();
            s.set("net.ipv4.tcp_timestamps", "2").unwrap();
        }
        assert_eq!(value(proc.path(), "net.ipv4.tcp_timestamps"), "1");
    }

    #[test]
    fn state_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let proc = fake_proc();
        let state = proc.path().join("run/state.toml");
        let (mut s, _) = Sysctls::open(proc.path(), &state).unwrap();
        s.set("net.ipv4.tcp_syncookies", "2").unwrap();
        assert_eq!(fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o600);
        s.restore_all().unwrap();
    }

    #[test]
    fn window_scale_matches_the_kernel_rule() {
        assert_eq!(window_scale(65_535), 0);
        assert_eq!(window_scale(65_536), 1);
        assert_eq!(window_scale(6_291_456), 7); // Debian's default tcp_rmem max
        assert_eq!(window_scale(33_554_432), 10); // 32 MiB
        assert_eq!(window_scale(u64::MAX), 14);
    }
}
