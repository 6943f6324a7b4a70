//! The allow and deny lists: what the operator wants in the program's `ALLOW` and `DENY`
//! tries. Desired state = the files named in `[lists]` ∪ the changes made over the
//! control socket (kept in the state directory, so they survive restarts and reloads)
//! ∪ the `block` entries not yet expired (which go into `DENY`).
//!
//! - `files`: the list files (one prefix a line, `#` comments) and the runtime state file.
//! - `step`: the reconcile step that brings the tries to the desired lists.

pub mod files;
pub mod step;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::prefix::Prefix;

/// Which list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum List {
    Allow,
    Deny,
}

impl List {
    pub const fn as_str(self) -> &'static str {
        match self {
            List::Allow => "allow",
            List::Deny => "deny",
        }
    }
}

/// The lists' entries from the configured files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileLists {
    pub allow: BTreeSet<Prefix>,
    pub deny: BTreeSet<Prefix>,
}

/// What was changed over the control socket; persisted as JSON in the state directory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    pub allow: BTreeSet<Prefix>,
    pub deny: BTreeSet<Prefix>,
    /// `block` entries: prefix → expiry (seconds since the epoch; 0 = until `unblock`).
    /// Wall-clock time, so an expiry means the same after a restart.
    pub blocks: BTreeMap<Prefix, u64>,
}

/// The files' and the runtime entries together, as the agent and the socket share them.
#[derive(Clone, Debug, Default)]
pub struct Lists {
    pub files: FileLists,
    pub runtime: Runtime,
}

/// The tries' desired content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub allow: BTreeSet<Prefix>,
    pub deny: BTreeSet<Prefix>,
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Lists {
    /// The tries' content at `now` (seconds since the epoch): expired blocks left out.
    pub fn desired(&self, now: u64) -> Desired {
        let r = &self.runtime;
        let blocks = r.blocks.iter().filter(|(_, &until)| until == 0 || until > now).map(|(p, _)| *p);
        Desired {
            allow: self.files.allow.union(&r.allow).copied().collect(),
            deny: self.files.deny.iter().chain(&r.deny).copied().chain(blocks).collect(),
        }
    }

    /// Drops expired blocks; returns whether any was (the state file is then rewritten).
    pub fn expire(&mut self, now: u64) -> bool {
        let before = self.runtime.blocks.len();
        self.runtime.blocks.retain(|_, until| *until == 0 || *until > now);
        before != self.runtime.blocks.len()
    }

    /// Adds (`add`) or removes a runtime entry; returns whether anything changed. An entry
    /// that comes from a file cannot be removed here: the file says so, and a reload would
    /// put it back; the caller says that to the operator.
    pub fn change(&mut self, list: List, prefix: Prefix, add: bool) -> bool {
        let set = match list {
            List::Allow => &mut self.runtime.allow,
            List::Deny => &mut self.runtime.deny,
        };
        if add {
            set.insert(prefix)
        } else {
            set.remove(&prefix)
        }
    }

    pub fn in_file(&self, list: List, prefix: &Prefix) -> bool {
        match list {
            List::Allow => self.files.allow.contains(prefix),
            List::Deny => self.files.deny.contains(prefix),
        }
    }

    /// Every entry of `list` and where it comes from, for `allow list` / `deny list`.
    pub fn entries(&self, list: List, now: u64) -> Vec<(Prefix, String)> {
        let (file, runtime) = match list {
            List::Allow => (&self.files.allow, &self.runtime.allow),
            List::Deny => (&self.files.deny, &self.runtime.deny),
        };
        let mut out: Vec<(Prefix, String)> = file.iter().map(|p| (*p, "file".to_owned())).collect();
        out.extend(runtime.iter().map(|p| (*p, "runtime".to_owned())));
        if list == List::Deny {
            for (p, until) in &self.runtime.blocks {
                let what = match until {
                    0 => "block".to_owned(),
                    u if *u > now => format!("block, {}s left", u - now),
                    _ => continue,
                };
                out.push((*p, what));
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn desired_is_files_and_runtime_and_live_blocks() {
        let mut l = Lists::default();
        l.files.allow.insert(p("198.18.1.0/24"));
        l.files.deny.insert(p("198.18.2.0/24"));
        assert!(l.change(List::Allow, p("2001:2::/64"), true));
        assert!(!l.change(List::Allow, p("2001:2::1/64"), true), "the same prefix, written otherwise");
        assert!(l.change(List::Deny, p("198.18.3.1"), true));
        l.runtime.blocks.insert(p("198.18.4.1"), 100);
        l.runtime.blocks.insert(p("198.18.5.0/24"), 0);
        let d = l.desired(99);
        assert_eq!(d.allow, [p("198.18.1.0/24"), p("2001:2::/64")].into());
        assert_eq!(d.deny, [p("198.18.2.0/24"), p("198.18.3.1"), p("198.18.4.1"), p("198.18.5.0/24")].into());
        // At its expiry the block leaves the desired lists, and `expire` forgets it.
        assert!(!l.desired(100).deny.contains(&p("198.18.4.1")));
        assert!(l.expire(100));
        assert!(!l.expire(100));
        assert_eq!(l.runtime.blocks.len(), 1);
    }

    #[test]
    fn entries_say_where_each_comes_from() {
        let mut l = Lists::default();
        l.files.deny.insert(p("198.18.2.0/24"));
        l.change(List::Deny, p("198.18.3.1"), true);
        l.runtime.blocks.insert(p("198.18.4.1"), 130);
        let e = l.entries(List::Deny, 100);
        let shown: Vec<String> = e.iter().map(|(p, w)| format!("{p} {w}")).collect();
        assert_eq!(shown, ["198.18.2.0/24 file", "198.18.3.1/32 runtime", "198.18.4.1/32 block, 30s left"]);
        assert!(l.in_file(List::Deny, &p("198.18.2.9/24")));
        assert!(!l.change(List::Deny, p("198.18.2.0/24"), false), "file entries are not runtime ones");
    }
}
