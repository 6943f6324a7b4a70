//! Pins under bpffs, so that a restart or an upgrade leaves no protection gap
//! (docs/operations.md). Under `pin_dir`:
//!
//! - `maps-v<LAYOUT_VERSION>/<MAP>`: the maps of `names::PINNED_MAPS`, shared by every
//!   interface of the agent;
//! - `<ifname>/link`: the XDP bpf_link of each interface. A pinned link keeps its program
//!   attached after the process is gone, until the pin is removed.
//!
//! The program is not pinned on its own: the link holds it, and a new start loads its own
//! object anyway (a pinned program could not tell whether the binary was upgraded).
//!
//! Directories are created 0700 and checked like the state directory (owned by us, no
//! symlink, no parent writable by others: `lock::StateDir`).

use std::{
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use aya::maps::MapInfo;
use detector_common::names;
use tracing::warn;

use crate::{error::PinError, lock::StateDir};

/// `statfs` f_type of bpffs (linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// What errors call the pin directory.
const PIN_DIR: &str = "pin directory (pin_dir)";
/// Makes this agent pin under another layout version than it was built with, so the tests
/// exercise the replace path (a layout change) with the real object. Not for operators.
const LAYOUT_ENV: &str = "SYNDETECTOR_TEST_LAYOUT_VERSION";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PinError + '_ {
    move |source| PinError::Io { path: path.to_owned(), source }
}

/// What a start does with the maps found pinned.
#[derive(Debug, PartialEq, Eq)]
pub enum MapsPlan {
    /// Same layout and sizes: the new program uses the pinned maps, state survives.
    Adopt,
    /// Nothing pinned, or pinned under another layout or other sizes: fresh maps (the old
    /// program keeps its own until the link switches over).
    Fresh { reason: String },
}

/// The pin directory of a running agent.
#[derive(Debug)]
pub struct Pins {
    root: PathBuf,
    version: u32,
}

impl Pins {
    /// Opens `root` (creating it 0700); `Ok(None)` when it would not be on bpffs (no
    /// pinning then: the caller says so).
    pub fn open(root: &Path) -> Result<Option<Self>, PinError> {
        // The nearest existing ancestor says where `root` would be made.
        let probe = root.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
        if !on_bpffs(probe).map_err(io(probe))? {
            return Ok(None);
        }
        StateDir::open_as(root, true, PIN_DIR)?;
        let version = match std::env::var(LAYOUT_ENV) {
            Ok(v) => v.parse().map_err(|_| PinError::Version(v))?,
            Err(_) => names::LAYOUT_VERSION,
        };
        Ok(Some(Self { root: root.to_owned(), version }))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join(format!("maps-v{}", self.version))
    }

    pub fn link_path(&self, iface: &str) -> PathBuf {
        self.root.join(iface).join("link")
    }

    /// Whether a link is pinned for `iface`: a previous run's program may be protecting it.
    pub fn has_link(&self, iface: &str) -> bool {
        std::fs::symlink_metadata(self.link_path(iface)).is_ok()
    }

    /// Creates (0700) and checks the directory of `iface`'s link.
    pub fn iface_dir(&self, iface: &str) -> Result<PathBuf, PinError> {
        let dir = self.root.join(iface);
        StateDir::open_as(&dir, true, PIN_DIR)?;
        Ok(dir)
    }

    /// Adopt the pinned maps of our layout version when each has the size `sizes` asks
    /// for; otherwise unpin them (a running old program keeps its maps: it holds them) so
    /// that the load creates and pins fresh ones. Creates the maps directory.
    pub fn prepare_maps(&self, sizes: &[(&str, u32)]) -> Result<MapsPlan, PinError> {
        let dir = self.maps_dir();
        let existed = dir.exists();
        StateDir::open_as(&dir, true, PIN_DIR)?;
        let pinned: Vec<&str> = names::PINNED_MAPS.iter().copied().filter(|m| dir.join(m).exists()).collect();
        let reason = if !existed || pinned.is_empty() {
            let others = self.other_versions();
            if others.is_empty() {
                "nothing pinned".to_owned()
            } else {
                format!(
                    "pinned under another layout ({}), this agent's is v{}",
                    others.join(", "),
                    self.version
                )
            }
        } else if pinned.len() != names::PINNED_MAPS.len() {
            format!("only {} of {} maps pinned", pinned.len(), names::PINNED_MAPS.len())
        } else {
            match sizes.iter().find_map(|&(name, want)| {
                let have = MapInfo::from_pin(dir.join(name)).map(|i| i.max_entries());
                match have {
                    Ok(have) if have == want => None,
                    Ok(have) => Some(format!("{name} holds {have} entries, the configuration asks {want}")),
                    Err(e) => Some(format!("{name}: {e}")),
                }
            }) {
                None => return Ok(MapsPlan::Adopt),
                Some(reason) => reason,
            }
        };
        remove_files(&dir, &names::PINNED_MAPS)?;
        Ok(MapsPlan::Fresh { reason })
    }

    /// `maps-v*` directories of other layout versions.
    fn other_versions(&self) -> Vec<String> {
        let ours = format!("maps-v{}", self.version);
        map_dirs(&self.root).into_iter().filter(|d| *d != ours).collect()
    }

    /// Removes the maps pinned under other layout versions: once every link runs our
    /// program, nothing needs them any more.
    pub fn remove_other_versions(&self) {
        for dir in self.other_versions() {
            let path = self.root.join(&dir);
            if let Err(e) = remove_files(&path, &names::PINNED_MAPS).and_then(|()| rmdir(&path)) {
                warn!(dir = %path.display(), error = %e, "cannot remove maps of an older layout");
            }
        }
    }
}

/// Whether `path` is on bpffs.
fn on_bpffs(path: &Path) -> std::io::Result<bool> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: all-zero is a valid `statfs`.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out pointer.
    if unsafe { libc::statfs(c_path.as_ptr(), &raw mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast, reason = "f_type's type differs between libcs")]
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Names of the `maps-v*` directories in `root`.
fn map_dirs(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    let mut dirs: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with("maps-v"))
        .collect();
    dirs.sort();
    dirs
}

/// Interface directories in `root` (everything that is not a maps directory).
fn iface_dirs(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    let mut dirs: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| !n.starts_with("maps-v"))
        .collect();
    dirs.sort();
    dirs
}

fn remove_files(dir: &Path, names: &[&str]) -> Result<(), PinError> {
    for name in names {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&path)(e)),
            _ => {}
        }
    }
    Ok(())
}

fn rmdir(dir: &Path) -> Result<(), PinError> {
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(dir)(e)),
        _ => Ok(()),
    }
}

/// What `syndetector detach` removed.
#[derive(Debug, Default)]
pub struct Removed {
    /// Interfaces whose link pin was removed (the program is off there now).
    pub links: Vec<String>,
    /// Whether nothing is pinned any more (maps and the directory itself removed).
    pub all: bool,
}

/// Removes the link pins of `ifaces` (all when empty), which detaches the program there,
/// and, once no interface is left, the maps and `root` itself. A `root` that does not
/// exist is nothing to do.
pub fn remove(root: &Path, ifaces: &[String]) -> Result<Removed, PinError> {
    let mut removed = Removed::default();
    if std::fs::symlink_metadata(root).is_err() {
        removed.all = true;
        return Ok(removed);
    }
    // Checked like at start: never follow a symlink planted in the pin directory.
    StateDir::open_as(root, false, PIN_DIR)?;
    let targets = if ifaces.is_empty() { iface_dirs(root) } else { ifaces.to_vec() };
    for iface in targets {
        let dir = root.join(&iface);
        if std::fs::symlink_metadata(&dir).is_err() {
            continue;
        }
        StateDir::open_as(&dir, false, PIN_DIR)?;
        remove_files(&dir, &["link"])?;
        rmdir(&dir)?;
        removed.links.push(iface);
    }
    if iface_dirs(root).is_empty() {
        for dir in map_dirs(root) {
            let path = root.join(dir);
            remove_files(&path, &names::PINNED_MAPS)?;
            rmdir(&path)?;
        }
        rmdir(root)?;
        removed.all = true;
    }
    Ok(removed)
}

/// One interface's pinned link as `syndetector status` shows it.
#[derive(Debug)]
pub struct LinkStatus {
    pub iface: String,
    /// (link id, program id) from the kernel, or why the pin cannot be read.
    pub ids: Result<(u32, u32), String>,
}

/// What the pinned maps of layout directory `dir` say: the program's config flags (what
/// it does now: enforcing, answering cookies) and how full the per-source and policy maps
/// are, as lines for `syndetector status`. Read only.
pub fn describe_maps(dir: &Path) -> Vec<String> {
    use aya::maps::{Array, HashMap, Map, MapData};
    use detector_common::{
        config::{Config, FLAG_COOKIES, FLAG_ENFORCE},
        state::{SourceKey, SourceState},
    };

    let open = |name: &str| MapData::from_pin(dir.join(name)).map_err(|e| format!("{name}: {e}"));
    let mut lines = Vec::new();
    match open(names::MAP_CONFIG)
        .and_then(|m| Array::<_, Config>::try_from(Map::Array(m)).map_err(|e| e.to_string()))
        .and_then(|a| a.get(&0, 0).map_err(|e| e.to_string()))
    {
        Ok(cfg) => lines.push(format!(
            "program config: {}, cookies {}",
            if cfg.flags & FLAG_ENFORCE == 0 { "monitoring only" } else { "enforcing" },
            if cfg.flags & FLAG_COOKIES == 0 { "off" } else { "on" },
        )),
        Err(e) => lines.push(format!("program config: unreadable ({e})")),
    }
    // Entries by walking the keys: these maps hold at most a few hundred thousand.
    let sources = open(names::MAP_SOURCES).and_then(|m| {
        HashMap::<_, SourceKey, SourceState>::try_from(Map::LruHashMap(m))
            .map(|h| h.keys().count())
            .map_err(|e| e.to_string())
    });
    let local = open(names::MAP_LOCAL_ADDRS).and_then(|m| {
        HashMap::<_, [u8; 16], u32>::try_from(Map::HashMap(m))
            .map(|h| h.keys().count())
            .map_err(|e| e.to_string())
    });
    for (what, n) in [("sources tracked", sources), ("local addresses (cookie policy)", local)] {
        lines.push(match n {
            Ok(n) => format!("{what}: {n}"),
            Err(e) => format!("{what}: {e}"),
        });
    }
    // The program's inlined copy of them: overflowed buckets send their SYNs to the
    // hash lookup, which an operator comparing bench figures may want to know.
    let table = open(names::MAP_LOCAL_TABLE).and_then(|m| {
        Array::<_, detector_common::local_table::LocalBucket>::try_from(Map::Array(m))
            .map_err(|e| e.to_string())?
            .iter()
            .try_fold((0, 0), |(used, over), b| {
                b.map(|b| (used + usize::from(b.valid != 0), over + usize::from(b.overflow != 0)))
            })
            .map_err(|e| e.to_string())
    });
    lines.push(match table {
        Ok((used, over)) => format!("local table: {used} buckets in use, {over} overflowed"),
        Err(e) => format!("local table: {e}"),
    });
    lines
}

/// The pinned links and map layouts under `root`, read only.
pub fn inspect(root: &Path) -> (Vec<LinkStatus>, Vec<String>) {
    let links = iface_dirs(root)
        .into_iter()
        .map(|iface| {
            let path = root.join(&iface).join("link");
            let ids = aya::programs::links::PinnedLink::from_pin(&path)
                .map_err(|e| e.to_string())
                .and_then(|p| aya::programs::links::FdLink::from(p).info().map_err(|e| e.to_string()))
                .map(|info| (info.id(), info.program_id()));
            LinkStatus { iface, ids }
        })
        .collect();
    (links, map_dirs(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_dir_outside_bpffs_means_no_pinning_and_creates_nothing() {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("syndetector");
        assert!(Pins::open(&root).unwrap().is_none());
        assert!(!root.exists(), "nothing created outside bpffs");
    }

    #[test]
    fn removing_what_was_never_pinned_is_nothing_to_do() {
        let scratch = tempfile::tempdir().unwrap();
        let removed = remove(&scratch.path().join("absent"), &[]).unwrap();
        assert!(removed.all && removed.links.is_empty());
    }

    #[test]
    fn a_symlinked_pin_dir_is_refused_by_detach() {
        let scratch = tempfile::tempdir().unwrap();
        let real = scratch.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::create_dir(real.join("eth0")).unwrap();
        let link = scratch.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = remove(&link, &[]).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert!(real.join("eth0").exists(), "nothing removed through the symlink");
    }
}
