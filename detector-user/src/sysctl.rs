//! The host sysctls the agent changes while mitigating (`net.ipv4.tcp_syncookies`,
//! `net.ipv4.tcp_timestamps`), put back when mitigation ends or the agent stops, and after
//! a crash on the next start: the original value is written to a state file before the
//! first change to a key, and the file is removed once everything is restored.
//!
//! Only the sysctls in `MANAGED` are ever written, with values in their valid range; a
//! state file holding anything else is refused as corrupt, never applied. The state file
//! lives in a checked state directory (`lock::StateDir`), is replaced atomically (tmp file,
//! fsync, rename, fsync of the directory), and every descriptor a change needs is opened at
//! start: the two `/proc/sys` files, the directory, the next tmp file. An agent at its
//! descriptor limit can still switch cookies on and restore at exit.
//!
//! These are the sysctls of the network namespace the agent runs in.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, Read},
    ops::RangeInclusive,
    os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{
    error::{StateError, SysctlError},
    lock::StateDir,
};

pub const SYNCOOKIES: &str = "net.ipv4.tcp_syncookies";
pub const TIMESTAMPS: &str = "net.ipv4.tcp_timestamps";

/// The only sysctls the agent changes (and so the only keys a state file may hold), with
/// the values the kernel accepts for each.
pub const MANAGED: [(&str, RangeInclusive<u8>); 2] = [(SYNCOOKIES, 0..=2), (TIMESTAMPS, 0..=2)];

/// The state file's name in the state directory.
pub const STATE_FILE: &str = "sysctl-state.toml";

/// A state file larger than this is not ours.
const MAX_STATE_BYTES: u64 = 4096;

/// What the state file holds: key → value before the agent changed it.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    original: BTreeMap<String, String>,
}

#[derive(Debug)]
pub struct Sysctls {
    /// `/proc/sys` in production; a scratch directory in tests.
    root: PathBuf,
    /// The `MANAGED` sysctls' files, opened read-write at start, in `MANAGED` order.
    held: Vec<File>,
    dir: StateDir,
    name: String,
    tmp_name: String,
    /// The tmp file the next state write goes to (created with `O_EXCL | O_NOFOLLOW`).
    tmp: Option<File>,
    state: State,
}

/// A value put back from a previous run's state file.
#[derive(Debug, PartialEq, Eq)]
pub struct Recovered {
    pub key: String,
    pub value: String,
}

/// What `restore_all` put back and what it could not.
#[derive(Debug, Default)]
pub struct RestoreReport {
    /// Put back: key and value.
    pub restored: Vec<(String, String)>,
    /// Still changed (the state file keeps their originals).
    pub failed: Vec<(String, SysctlError)>,
    /// Updating (or removing) the state file afterwards failed: it may still list sysctls
    /// that are restored.
    pub state_file: Option<SysctlError>,
}

impl RestoreReport {
    /// Every sysctl is back and the state file says so.
    pub fn complete(&self) -> bool {
        self.failed.is_empty() && self.state_file.is_none()
    }
}

/// What a state file says, as `syndetector status` and the start show it.
#[derive(Debug, PartialEq, Eq)]
pub enum StateFile {
    Absent,
    /// The originals of the sysctls a (crashed or running) agent changed.
    Records(BTreeMap<&'static str, u8>),
}

impl Sysctls {
    /// Opens the guard on the state file `state_file` (in a state directory it checks and
    /// creates, see `lock::StateDir`), then restores whatever a previous run left changed.
    /// `main` takes these steps one by one, with locks in between.
    pub fn open(root: &Path, state_file: &Path) -> Result<(Self, Vec<Recovered>), StateError> {
        let dir = state_file.parent().unwrap_or(Path::new("."));
        let name = state_file.file_name().and_then(|n| n.to_str()).unwrap_or(STATE_FILE);
        let mut this = Self::prepare(root, StateDir::open(dir, true)?, name)?;
        let recovered = this.recover()?;
        Ok((this, recovered))
    }

    /// Opens every descriptor a change will need (and so proves the state directory is
    /// writable) without changing anything.
    pub fn prepare(root: &Path, dir: StateDir, name: &str) -> Result<Self, StateError> {
        let mut held = Vec::new();
        for (key, _) in &MANAGED {
            let path = root.join(key.replace('.', "/"));
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
                .map_err(|source| StateError::Io { path, source })?;
            held.push(file);
        }
        let mut this = Self {
            root: root.to_owned(),
            held,
            tmp_name: format!("{name}.tmp"),
            name: name.to_owned(),
            dir,
            tmp: None,
            state: State::default(),
        };
        let tmp = this.create_tmp().map_err(|source| StateError::Dir {
            what: "state directory (state_dir)",
            path: this.dir.path().to_owned(),
            problem: format!("is not writable ({source}): the agent records the sysctls it changes there"),
        })?;
        this.tmp = Some(tmp);
        Ok(this)
    }

    /// Puts back what a previous run's state file records, then removes the file. A state
    /// file that cannot be trusted is refused and nothing is touched.
    pub fn recover(&mut self) -> Result<Vec<Recovered>, StateError> {
        let StateFile::Records(left) = read_state(&self.dir, &self.name)? else { return Ok(Vec::new()) };
        let mut recovered = Vec::new();
        for (key, value) in left {
            let value = value.to_string();
            self.write(key, &value).map_err(|source| StateError::Recover { key: key.to_owned(), source })?;
            warn!(key, value, "restored a sysctl left changed by a previous run");
            recovered.push(Recovered { key: key.to_owned(), value });
        }
        let path = self.dir.path().join(&self.name);
        self.dir.unlink(&self.name).map_err(|source| StateError::Io { path: path.clone(), source })?;
        self.dir.sync().map_err(|source| StateError::Io { path, source })?;
        Ok(recovered)
    }

    /// Takes over what a previous run's state file records without writing any sysctl: a
    /// pinned program of that run still answers cookies and needs them as they are. The
    /// next reconcile keeps them (cookies wanted) or restores them (not wanted).
    pub fn adopt(&mut self) -> Result<usize, StateError> {
        let StateFile::Records(left) = read_state(&self.dir, &self.name)? else { return Ok(0) };
        for (key, value) in &left {
            self.state.original.insert((*key).to_owned(), value.to_string());
        }
        Ok(left.len())
    }

    /// Leaves every changed sysctl as it is and the state file recording their originals,
    /// for the next start or `syndetector detach` (a stop that keeps the program).
    pub fn hand_over(&mut self) -> usize {
        std::mem::take(&mut self.state.original).len()
    }

    pub fn read(&self, key: &str) -> Result<String, SysctlError> {
        let path = self.path(key);
        if let Some(i) = managed(key) {
            let mut buf = [0u8; 64];
            let n = self.held[i].read_at(&mut buf, 0).map_err(|e| SysctlError::Io(path.clone(), e))?;
            return Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned());
        }
        fs::read_to_string(&path).map(|v| v.trim().to_owned()).map_err(|e| SysctlError::Io(path, e))
    }

    /// Sets `key`, recording its original value first (only on the first change).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), SysctlError> {
        check_value(key, value).map_err(|e| SysctlError::StateFile(self.path(key), e))?;
        let current = self.read(key)?;
        if current == value {
            return Ok(());
        }
        if !self.state.original.contains_key(key) {
            check_value(key, &current).map_err(|e| SysctlError::StateFile(self.path(key), e))?;
            self.state.original.insert(key.to_owned(), current.clone());
            if let Err(e) = self.persist() {
                self.state.original.remove(key);
                return Err(e);
            }
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

    /// Restores every changed sysctl (each is tried, whatever the others do).
    /// Restores every changed sysctl (each is tried, whatever the others do), then writes
    /// the state file once (removed if all are back).
    pub fn restore_all(&mut self) -> RestoreReport {
        let mut report = RestoreReport::default();
        let changed: Vec<(String, String)> =
            self.state.original.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if changed.is_empty() {
            return report;
        }
        for (key, original) in changed {
            match self.write(&key, &original) {
                Ok(()) => {
                    self.state.original.remove(&key);
                    info!(key, to = original, "sysctl restored");
                    report.restored.push((key, original));
                }
                Err(e) => report.failed.push((key, e)),
            }
        }
        report.state_file = self.persist().err();
        report
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key.replace('.', "/"))
    }

    /// Writes a `MANAGED` sysctl through its held descriptor, at offset 0 (the kernel's
    /// `sysctl_writes_strict` ignores writes elsewhere).
    fn write(&self, key: &str, value: &str) -> Result<(), SysctlError> {
        let path = self.path(key);
        check_value(key, value).map_err(|e| SysctlError::StateFile(path.clone(), e))?;
        let i = managed(key).expect("checked by check_value");
        self.held[i].write_all_at(format!("{value}\n").as_bytes(), 0).map_err(|e| SysctlError::Io(path, e))
    }

    fn create_tmp(&self) -> io::Result<File> {
        self.dir.unlink(&self.tmp_name)?;
        self.dir.open_file(&self.tmp_name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o600)
    }

    /// Writes the state file (0600), or removes it when nothing is changed: into the held
    /// tmp file, fsync, rename over the state file, fsync the directory, so a crash leaves
    /// either the old or the new file. The next tmp file is created at once, in the
    /// descriptor the renamed one just gave back (at the limit, another thread may take
    /// that slot first: the next write then fails and is retried by the reconcile).
    fn persist(&mut self) -> Result<(), SysctlError> {
        let path = self.dir.path().join(&self.name);
        let io = |e| SysctlError::Io(path.clone(), e);
        if self.state.original.is_empty() {
            self.dir.unlink(&self.name).map_err(io)?;
            return self.dir.sync().map_err(io);
        }
        let text =
            toml::to_string(&self.state).map_err(|e| SysctlError::StateFile(path.clone(), e.to_string()))?;
        let tmp = match self.tmp.take() {
            Some(tmp) => tmp,
            None => self.create_tmp().map_err(io)?,
        };
        tmp.set_len(0).map_err(io)?;
        tmp.write_all_at(text.as_bytes(), 0).map_err(io)?;
        tmp.sync_all().map_err(io)?;
        self.dir.rename(&self.tmp_name, &self.name).map_err(io)?;
        self.dir.sync().map_err(io)?;
        drop(tmp);
        match self.create_tmp() {
            Ok(tmp) => self.tmp = Some(tmp),
            Err(e) => warn!(error = %e, "cannot create the next state tmp file; the next change tries again"),
        }
        Ok(())
    }
}

impl Drop for Sysctls {
    fn drop(&mut self) {
        let report = self.restore_all();
        for (key, e) in report.failed {
            warn!(key, error = %e, "could not restore a sysctl; the state file keeps it for the next start");
        }
        if let Some(e) = report.state_file {
            warn!(error = %e, "could not update the state file after restoring");
        }
        self.tmp = None;
        let _ = self.dir.unlink(&self.tmp_name);
    }
}

fn managed(key: &str) -> Option<usize> {
    MANAGED.iter().position(|(k, _)| *k == key)
}

/// `key` is one the agent changes and `value` is in its range.
fn check_value(key: &str, value: &str) -> Result<u8, String> {
    let Some(i) = managed(key) else {
        return Err(format!("{key:?} is not a sysctl the agent changes (only {SYNCOOKIES}, {TIMESTAMPS})"));
    };
    let range = &MANAGED[i].1;
    value
        .parse::<u8>()
        .ok()
        .filter(|v| range.contains(v))
        .ok_or_else(|| format!("{key} = {value:?} is outside {}..={}", range.start(), range.end()))
}

/// Reads and checks the state file `name` in `dir`: absent, or the originals it records.
/// Anything else (a symlink, not a regular file, not UTF-8, not TOML, a key the agent does
/// not change, a value out of range) is `StateError::Corrupt`.
pub fn read_state(dir: &StateDir, name: &str) -> Result<StateFile, StateError> {
    let path = dir.path().join(name);
    let corrupt = |reason: String| StateError::Corrupt { path: path.clone(), reason };
    let file = match dir.open_file(name, libc::O_RDONLY | libc::O_NONBLOCK, 0) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(StateFile::Absent),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(corrupt("it is a symlink".into())),
        Err(source) => return Err(StateError::Io { path, source }),
    };
    let meta = file.metadata().map_err(|source| StateError::Io { path: path.clone(), source })?;
    if !meta.is_file() {
        return Err(corrupt("not a regular file".into()));
    }
    // SAFETY: geteuid cannot fail.
    if meta.uid() != unsafe { libc::geteuid() } {
        return Err(corrupt(format!("owned by uid {}, not by this agent", meta.uid())));
    }
    let mut bytes = Vec::new();
    file.take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| StateError::Io { path: path.clone(), source })?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(corrupt(format!("larger than {MAX_STATE_BYTES} bytes")));
    }
    let text = String::from_utf8(bytes).map_err(|e| corrupt(format!("not UTF-8: {e}")))?;
    let state: State =
        toml::from_str(&text).map_err(|e| corrupt(format!("not a state file: {}", e.message())))?;
    let mut records = BTreeMap::new();
    for (key, value) in &state.original {
        let v = check_value(key, value).map_err(corrupt)?;
        records.insert(MANAGED[managed(key).expect("checked")].0, v);
    }
    Ok(StateFile::Records(records))
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
#[path = "sysctl_tests.rs"]
mod tests;
