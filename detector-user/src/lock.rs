//! The state directory (`state_dir`): checked like sshd's `StrictModes` before anything
//! in it is trusted, held open for the agent's lifetime (files in it are opened relative
//! to that descriptor, never through a symlink), and locked so that one agent owns it.
//!
//! Locks (`flock(LOCK_EX | LOCK_NB)`, held until the process ends, crash included):
//! - `syndetector.lock`: the state directory, i.e. the sysctl state file;
//! - `iface-IF.lock`: each interface the agent attaches to.
//!
//! - `/run/syndetector/netns/net-INO.lock`: the network namespace (its nsfs inode), for
//!   agents with different state directories. The sysctls the agent changes belong to
//!   the namespace, not to an interface, so two agents in one namespace would undo each
//!   other's cookies whatever interfaces they use; a lock keyed by interface name would
//!   also be wrong across namespaces (names repeat). So: one agent per namespace.
//!
//! The lock files hold the owner's PID, so a refusal can name it.

use std::{
    ffi::CString,
    fs::File,
    io::{self, Read},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::FileExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
};

use crate::error::StateError;

/// The lock of the state directory (and of the sysctl state file in it).
pub const DIR_LOCK: &str = "syndetector.lock";

/// The lock file of interface `iface`.
pub fn iface_lock_name(iface: &str) -> String {
    format!("iface-{iface}.lock")
}

/// Where the per-network-namespace locks live, whatever the state directory.
pub const NETNS_LOCK_DIR: &str = "/run/syndetector/netns";

/// The lock file of the network namespace this process is in, in `dir`.
pub fn netns_lock_name() -> Result<String, StateError> {
    let ns = Path::new("/proc/self/ns/net");
    let meta = std::fs::metadata(ns).map_err(|source| StateError::Io { path: ns.to_owned(), source })?;
    Ok(format!("net-{}.lock", meta.ino()))
}

/// Takes the lock of this network namespace in `dir` (see the module documentation).
pub fn lock_netns(dir: &Path) -> Result<Lock, StateError> {
    let dir = StateDir::open(dir, true)?;
    let name = netns_lock_name()?;
    lock(&dir, &name, "this network namespace")
}

/// A checked state directory, held open.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    fd: OwnedFd,
}

/// What errors call the state directory.
const STATE_DIR: &str = "state directory (state_dir)";

impl StateDir {
    /// Opens `path`, creating it (0700, with any missing parents) if `create`, and refuses
    /// it unless it is a real directory (no symlink), owned by this user, writable by no
    /// one else, with no parent up to `/` writable by others (sticky root-owned ones such
    /// as `/tmp` excepted).
    pub fn open(path: &Path, create: bool) -> Result<Self, StateError> {
        Self::open_as(path, create, STATE_DIR)
    }

    /// `open` for another directory kept the same way (pins, samples): `what` names it and
    /// its configuration key in errors, e.g. "pin directory (pin_dir)".
    pub fn open_as(path: &Path, create: bool, what: &'static str) -> Result<Self, StateError> {
        let refuse = |problem: String| StateError::Dir { what, path: path.to_owned(), problem };
        if create && std::fs::symlink_metadata(path).is_err() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(|e| refuse(format!("cannot create it: {e}")))?;
        }
        let c_path = c_path(path)?;
        // SAFETY: a NUL-terminated path that outlives the call.
        let raw = unsafe {
            libc::open(
                c_path.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(refuse(match e.raw_os_error() {
                Some(libc::ELOOP) => "is a symlink: give the real directory".into(),
                Some(libc::ENOTDIR) => "is not a directory (or is a symlink)".into(),
                _ => format!("cannot open it: {e}"),
            }));
        }
        // SAFETY: a descriptor just opened, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let meta = File::from(fd.try_clone().map_err(|e| refuse(e.to_string()))?)
            .metadata()
            .map_err(|e| refuse(e.to_string()))?;
        let me = euid();
        if meta.uid() != me {
            return Err(refuse(format!("is owned by uid {}, not by this agent's uid {me}", meta.uid())));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(refuse(format!(
                "is group- or world-writable (mode {:04o}): chmod 700 it",
                meta.mode() & 0o7777
            )));
        }
        check_parents(path).map_err(refuse)?;
        Ok(Self { path: path.to_owned(), fd })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `name` in this directory, never following a symlink.
    pub fn open_file(&self, name: &str, flags: libc::c_int, mode: libc::mode_t) -> io::Result<File> {
        let c_name = CString::new(name).map_err(io::Error::other)?;
        // SAFETY: a valid directory descriptor and a NUL-terminated name.
        let raw = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c_name.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                libc::c_uint::from(mode),
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor just opened, owned by nobody else.
        Ok(File::from(unsafe { OwnedFd::from_raw_fd(raw) }))
    }

    /// Whether `name` in this directory is (still) the file open as `file`.
    fn names(&self, name: &str, file: &File) -> io::Result<bool> {
        let c_name = CString::new(name).map_err(io::Error::other)?;
        // SAFETY: all-zero is a valid `stat`.
        let mut at_name: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid directory descriptor, a NUL-terminated name, a valid out pointer.
        if unsafe {
            libc::fstatat(self.fd.as_raw_fd(), c_name.as_ptr(), &raw mut at_name, libc::AT_SYMLINK_NOFOLLOW)
        } != 0
        {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::NotFound { Ok(false) } else { Err(e) };
        }
        let open = file.metadata()?;
        Ok(at_name.st_ino == open.ino() && at_name.st_dev == open.dev())
    }

    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (from, to) =
            (CString::new(from).map_err(io::Error::other)?, CString::new(to).map_err(io::Error::other)?);
        let dir = self.fd.as_raw_fd();
        // SAFETY: a valid directory descriptor and NUL-terminated names.
        if unsafe { libc::renameat(dir, from.as_ptr(), dir, to.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Removes `name`; one that is not there is no error.
    pub fn unlink(&self, name: &str) -> io::Result<()> {
        let c_name = CString::new(name).map_err(io::Error::other)?;
        // SAFETY: a valid directory descriptor and a NUL-terminated name.
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), c_name.as_ptr(), 0) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::NotFound {
                return Err(e);
            }
        }
        Ok(())
    }

    /// fsync of the directory: a rename or unlink in it is durable afterwards.
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: a valid descriptor.
        if unsafe { libc::fsync(self.fd.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// An exclusive lock, held until dropped (or the process ends). Dropping it removes the
/// lock file while still holding the lock, so a clean stop leaves nothing behind; a crash
/// leaves the file, unlocked, for the next start to take.
#[derive(Debug)]
pub struct Lock {
    /// Holds the flock; only closed (after the unlink) when the lock is dropped.
    #[cfg_attr(not(test), allow(dead_code, reason = "held for its descriptor, read in tests"))]
    file: File,
    dir: OwnedFd,
    name: CString,
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Unlinked before the lock is released (when `file` closes after this): whoever
        // opened this file meanwhile and then gets the lock finds the name gone, or
        // pointing elsewhere, and starts over (see `lock`).
        // SAFETY: a valid directory descriptor and a NUL-terminated name.
        unsafe { libc::unlinkat(self.dir.as_raw_fd(), self.name.as_ptr(), 0) };
    }
}

/// Takes the lock file `name` in `dir` for `what` (e.g. "state directory /run/x"), writing
/// our PID in it; refuses, naming the holder's PID, if another process holds it.
pub fn lock(dir: &StateDir, name: &str, what: &str) -> Result<Lock, StateError> {
    let path = dir.path().join(name);
    let io_err = |source| StateError::Io { path: path.clone(), source };
    let c_name = CString::new(name).map_err(|e| io_err(io::Error::other(e)))?;
    // A holder that stops unlinks the file while holding it: if we locked a file that is
    // no longer the one under `name`, it was such a leftover; open the name again.
    for _ in 0..8 {
        let file = dir.open_file(name, libc::O_RDWR | libc::O_CREAT, 0o600).map_err(io_err)?;
        // SAFETY: a valid descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io_err(e));
            }
            let holder = read_pid(&file).map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"));
            return Err(StateError::Locked { what: what.to_owned(), holder, path });
        }
        if !dir.names(name, &file).map_err(io_err)? {
            continue;
        }
        file.set_len(0).map_err(io_err)?;
        file.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0).map_err(io_err)?;
        let dir_fd = dir.fd.try_clone().map_err(io_err)?;
        return Ok(Lock { file, dir: dir_fd, name: c_name });
    }
    Err(io_err(io::Error::other("the lock file kept being replaced while taking it")))
}

/// Who holds the lock file `path`: `Some(pid)` while an agent holds it (read from
/// `/proc/locks`, so the lock is not disturbed), `None` if nobody does.
pub fn holder(path: &Path) -> io::Result<Option<u32>> {
    let meta = std::fs::symlink_metadata(path)?;
    let locks = std::fs::read_to_string("/proc/locks")?;
    // "1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF": device major:minor in hex, inode.
    let dev = meta.dev();
    let id = format!("{:02x}:{:02x}:{}", libc::major(dev), libc::minor(dev), meta.ino());
    Ok(locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (kind, pid, dev_ino) = (fields.get(1)?, fields.get(4)?, fields.get(5)?);
        (*kind == "FLOCK" && *dev_ino == id).then(|| pid.parse().ok())?
    }))
}

fn read_pid(file: &File) -> Option<u32> {
    let mut text = String::new();
    (&*file).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

fn c_path(path: &Path) -> Result<CString, StateError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| StateError::Dir {
        what: "directory",
        path: path.to_owned(),
        problem: "contains a NUL byte".into(),
    })
}

/// Each parent of `dir` up to `/` is owned by root or us and writable by no one else,
/// unless it is sticky and root-owned (like `/tmp`).
fn check_parents(dir: &Path) -> Result<(), String> {
    let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) else { return Ok(()) };
    let parent = parent.canonicalize().map_err(|e| format!("its parent: {e}"))?;
    let me = euid();
    for ancestor in parent.ancestors() {
        let meta = std::fs::metadata(ancestor).map_err(|e| format!("{}: {e}", ancestor.display()))?;
        if meta.uid() != 0 && meta.uid() != me {
            return Err(format!("its parent {} is owned by uid {}", ancestor.display(), meta.uid()));
        }
        let sticky_root = meta.mode() & 0o1000 != 0 && meta.uid() == 0;
        if meta.mode() & 0o022 != 0 && !sticky_root {
            return Err(format!(
                "its parent {} is writable by others (mode {:04o})",
                ancestor.display(),
                meta.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "lock_tests.rs"]
mod tests;
