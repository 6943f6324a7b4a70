//! The lists on disk: the operator's list files (read only, named in `[lists]`) and the
//! runtime state file the agent keeps in its state directory (`lists.json`).
//!
//! The state file is written atomically (tmp file 0600, fsync, rename, fsync of the
//! directory) and trusted only after checks: never through a symlink, a regular file owned
//! by the agent's uid and writable by no one else, at most `MAX_STATE_BYTES`, valid JSON
//! whose every prefix parses. Anything else is refused with the reason, and nothing of
//! it is used.

use std::{
    collections::BTreeSet,
    io::{self, Read},
    os::unix::fs::{FileExt, MetadataExt},
    path::{Path, PathBuf},
};

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use super::{FileLists, Runtime};
use crate::{lock::StateDir, prefix::Prefix};

/// The runtime state file's name in the state directory.
pub const STATE_FILE: &str = "lists.json";
const STATE_TMP: &str = "lists.json.tmp";
/// A list file or the state file larger than this is refused (about 400k prefixes).
pub const MAX_FILE_BYTES: u64 = 16 << 20;
pub const MAX_STATE_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}:{line}: {problem}")]
    Line { path: PathBuf, line: usize, problem: String },
    #[error("{path}: refused: {reason}")]
    State { path: PathBuf, reason: String },
}

impl Serialize for Prefix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// Parses a list file's text: one prefix a line (`a.b.c.d[/n]`, `x::y[/n]`), blank
/// lines and `#` comments (whole-line or trailing) ignored. The first bad line refuses
/// the whole file, naming the line.
pub fn parse_list(path: &Path, text: &str) -> Result<BTreeSet<Prefix>, ListError> {
    let mut out = BTreeSet::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let prefix = line.parse::<Prefix>().map_err(|e| ListError::Line {
            path: path.to_owned(),
            line: i + 1,
            problem: e.to_string(),
        })?;
        out.insert(prefix);
    }
    Ok(out)
}

fn read_list(path: &Path) -> Result<BTreeSet<Prefix>, ListError> {
    let io = |source| ListError::Io { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text).map_err(io)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(io(io::Error::other(format!("larger than {MAX_FILE_BYTES} bytes"))));
    }
    parse_list(path, &text)
}

/// Reads every configured list file.
pub fn load(allow_files: &[PathBuf], deny_files: &[PathBuf]) -> Result<FileLists, ListError> {
    let mut lists = FileLists::default();
    for path in allow_files {
        lists.allow.extend(read_list(path)?);
    }
    for path in deny_files {
        lists.deny.extend(read_list(path)?);
    }
    Ok(lists)
}

/// Reads the runtime state file; absent means nothing was changed at runtime.
pub fn read_state(dir: &StateDir) -> Result<Runtime, ListError> {
    let path = dir.path().join(STATE_FILE);
    let refuse = |reason: String| ListError::State { path: path.clone(), reason };
    let file = match dir.open_file(STATE_FILE, libc::O_RDONLY | libc::O_NONBLOCK, 0) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Runtime::default()),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(refuse("it is a symlink".into())),
        Err(source) => return Err(ListError::Io { path, source }),
    };
    let meta = file.metadata().map_err(|source| ListError::Io { path: path.clone(), source })?;
    if !meta.is_file() {
        return Err(refuse("not a regular file".into()));
    }
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(refuse(format!("owned by uid {}, not by this agent's uid {me}", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(refuse(format!("group- or world-writable (mode {:04o})", meta.mode() & 0o7777)));
    }
    let mut bytes = Vec::new();
    file.take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ListError::Io { path: path.clone(), source })?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(refuse(format!("larger than {MAX_STATE_BYTES} bytes")));
    }
    serde_json::from_slice(&bytes).map_err(|e| refuse(format!("not a lists state file: {e}")))
}

/// Writes the runtime state file atomically (0600); a crash leaves the old or the new one.
pub fn write_state(dir: &StateDir, runtime: &Runtime) -> Result<(), ListError> {
    let path = dir.path().join(STATE_FILE);
    let io = |source| ListError::Io { path: path.clone(), source };
    let text = serde_json::to_vec_pretty(runtime).map_err(|e| io(io::Error::other(e)))?;
    dir.unlink(STATE_TMP).map_err(io)?;
    let tmp = dir.open_file(STATE_TMP, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o600).map_err(io)?;
    tmp.write_all_at(&text, 0).map_err(io)?;
    tmp.sync_all().map_err(io)?;
    dir.rename(STATE_TMP, STATE_FILE).map_err(io)?;
    dir.sync().map_err(io)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn list_files_take_prefixes_and_comments() {
        let text = "# health checkers\n198.18.1.0/24\n\n  2001:2::/48   # v6 monitors\n198.18.9.9\n";
        let got = parse_list(Path::new("allow.txt"), text).unwrap();
        assert_eq!(got, [p("198.18.1.0/24"), p("2001:2::/48"), p("198.18.9.9/32")].into());
    }

    #[test]
    fn a_bad_line_refuses_the_file_naming_the_line() {
        let e = parse_list(Path::new("/etc/deny.txt"), "198.18.1.0/24\n198.18.1.0/33\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/deny.txt:2: \"198.18.1.0/33\" is not an address or a CIDR prefix (a.b.c.d/n or x:y::/n)"
        );
        assert!(parse_list(Path::new("x"), "198.18.1.0/24 198.18.2.0/24\n").is_err(), "two on a line");
    }

    fn dir() -> (tempfile::TempDir, StateDir) {
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let d = StateDir::open(t.path(), false).unwrap();
        (t, d)
    }

    #[test]
    fn the_state_file_round_trips_with_mode_0600() {
        let (t, d) = dir();
        assert_eq!(read_state(&d).unwrap(), Runtime::default(), "absent: empty");
        let mut r = Runtime::default();
        r.allow.insert(p("198.18.1.0/24"));
        r.deny.insert(p("2001:2::5"));
        r.blocks.insert(p("198.18.4.1"), 1_900_000_000);
        write_state(&d, &r).unwrap();
        assert_eq!(read_state(&d).unwrap(), r);
        let meta = std::fs::metadata(t.path().join(STATE_FILE)).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert!(!t.path().join(STATE_TMP).exists());
    }

    #[test]
    fn a_state_file_not_to_be_trusted_is_refused() {
        let (t, d) = dir();
        let path = t.path().join(STATE_FILE);
        for (text, why) in [
            ("{\"allow\": [\"198.18.0.0/33\"], \"deny\": [], \"blocks\": {}}", "not a lists state file"),
            ("{\"allow\": [], \"deny\": [], \"blocks\": {}, \"evil\": 1}", "unknown field"),
            ("garbage", "not a lists state file"),
        ] {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let e = read_state(&d).unwrap_err().to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(read_state(&d).unwrap_err().to_string().contains("world-writable"));
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        assert!(read_state(&d).unwrap_err().to_string().contains("symlink"));
        // Not owned by the agent (the tests run as root: hand it to nobody).
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "{\"allow\": [], \"deny\": [], \"blocks\": {}}").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&path, Some(65_534), None).unwrap();
        assert!(read_state(&d).unwrap_err().to_string().contains("owned by uid 65534"));
    }
}
