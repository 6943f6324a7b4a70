//! What each checked control request does. List changes are persisted first and applied
//! to the shared lists only when the state file is written (a failed write changes
//! nothing); the control thread is then woken to reconcile the tries at once. Every change
//! is logged.

use std::{
    sync::{mpsc, Arc, Mutex},
    time::Duration,
};

use serde_json::json;
use tracing::info;

use super::protocol::{Checked, Reply};
use crate::{
    control::Command,
    lists::{files, now_secs, List, Lists},
    lock::StateDir,
    metrics::Metrics,
    mode::Mode,
    prefix::Prefix,
};

/// How long `reload` waits for the control thread's answer.
const RELOAD_WAIT: Duration = Duration::from_secs(30);
/// How long `unblock` waits for the program's block of a source to be ended.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// What the handler works on, shared by every connection.
pub struct Handler {
    pub lists: Arc<Mutex<Lists>>,
    pub dir: StateDir,
    pub commands: mpsc::Sender<Command>,
    pub metrics: Arc<Metrics>,
    pub interfaces: Vec<String>,
}

impl Handler {
    /// Acts on one request (blocking: file writes with fsync, waiting for a reload).
    pub fn handle(&self, req: Checked) -> Reply {
        match req {
            Checked::Status => self.status(),
            Checked::List(list) => self.list(list),
            Checked::Change { list, prefix, add } => self.change(list, prefix, add),
            Checked::Block { prefix, ttl_secs } => self.block(prefix, ttl_secs),
            Checked::Unblock(prefix) => self.unblock(prefix),
            Checked::Mode(mode) => self.mode(mode),
            Checked::Reload => self.reload(),
        }
    }

    /// Applies `edit` to a copy of the lists, persists the copy, then installs it.
    /// `edit` returns `Err(reply)` to refuse (nothing changes) or `Ok(reply)`.
    fn update(&self, edit: impl FnOnce(&mut Lists) -> Result<Reply, Reply>) -> Reply {
        let mut lists = self.lists.lock().expect("lists lock");
        let mut next = lists.clone();
        let reply = match edit(&mut next) {
            Ok(reply) => reply,
            Err(refused) => return refused,
        };
        if next.runtime != lists.runtime {
            if let Err(e) = files::write_state(&self.dir, &next.runtime) {
                return Reply::error(format!("nothing changed: cannot persist the lists: {e}"));
            }
            *lists = next;
            drop(lists);
            let _ = self.commands.send(Command::Wake);
        }
        reply
    }

    fn change(&self, list: List, prefix: Prefix, add: bool) -> Reply {
        let name = list.as_str();
        self.update(|l| {
            if !add && l.in_file(list, &prefix) {
                return Err(Reply::error(format!(
                    "{prefix} comes from a {name} list file: remove it there and reload; nothing changed"
                )));
            }
            if l.change(list, prefix, add) {
                let action = if add { "add" } else { "del" };
                info!(event = "list_change", list = name, action, prefix = %prefix, "{name} list changed");
                Ok(Reply::ok(format!(
                    "{prefix} {} the {name} list",
                    if add { "added to" } else { "removed from" }
                )))
            } else if add {
                Ok(Reply::ok(format!("{prefix} is already on the {name} list")))
            } else {
                Err(Reply::error(format!("{prefix} is not on the {name} list; nothing changed")))
            }
        })
    }

    fn block(&self, prefix: Prefix, ttl_secs: Option<u64>) -> Reply {
        self.update(|l| {
            let until = ttl_secs.map_or(0, |ttl| now_secs() + ttl);
            l.runtime.blocks.insert(prefix, until);
            info!(event = "list_change", list = "deny", action = "block", prefix = %prefix, ttl_secs, "source blocked");
            let mut msg = match ttl_secs {
                Some(ttl) => format!("{prefix} blocked for {ttl} s"),
                None => format!("{prefix} blocked until unblocked"),
            };
            if l.desired(now_secs()).allow.iter().any(|a| covers(a, &prefix)) {
                msg.push_str(" (but it is on the allow list, which wins: it still passes)");
            }
            Ok(Reply::ok(msg))
        })
    }

    /// Ends the operator's block of `prefix` and, for a single address, the program's own
    /// block of that source (its per-source map is keyed by address).
    fn unblock(&self, prefix: Prefix) -> Reply {
        let released = if prefix.mapped_len() == 128 { self.release(prefix.addr()) } else { Ok(false) };
        let reply = self.update(|l| {
            if l.runtime.blocks.remove(&prefix).is_none() {
                return Err(Reply::error(format!("{prefix} is not blocked; nothing changed")));
            }
            info!(event = "list_change", list = "deny", action = "unblock", prefix = %prefix, "source unblocked");
            Ok(Reply::ok(format!("{prefix} unblocked")))
        });
        match released {
            Err(e) => Reply::error(format!(
                "{}; the program's own block of it could not be ended: {e}",
                reply.message
            )),
            Ok(false) => reply,
            Ok(true) => {
                info!(event = "source_released", source = %prefix, "the program's block of a source ended by the operator");
                let done = if reply.ok { format!("{prefix} unblocked") } else { format!("{prefix}:") };
                Reply::ok(format!("{done} the program's own block of it ended"))
            }
        }
    }

    fn release(&self, addr: [u8; 16]) -> Result<bool, String> {
        let (tx, rx) = mpsc::channel();
        self.commands
            .send(Command::ReleaseSource(addr, tx))
            .map_err(|_| "the control thread is gone".to_owned())?;
        rx.recv_timeout(RELEASE_WAIT).map_err(|_| "no answer from the control thread in time".to_owned())?
    }

    fn list(&self, list: List) -> Reply {
        let entries = self.lists.lock().expect("lists lock").entries(list, now_secs());
        let data: Vec<_> =
            entries.iter().map(|(p, from)| json!({"prefix": p.to_string(), "from": from})).collect();
        Reply {
            ok: true,
            message: format!("{} entries on the {} list", data.len(), list.as_str()),
            data: Some(data.into()),
        }
    }

    fn mode(&self, mode: Mode) -> Reply {
        if self.commands.send(Command::SetMode(mode)).is_err() {
            return Reply::error("the control thread is gone (the agent is stopping); nothing changed");
        }
        Reply::ok(format!(
            "mode {} until the next reload or restart (the configured mode then applies again)",
            mode.as_str()
        ))
    }

    fn reload(&self) -> Reply {
        let (tx, rx) = mpsc::channel();
        if self.commands.send(Command::ReloadReply(tx)).is_err() {
            return Reply::error("the control thread is gone (the agent is stopping)");
        }
        match rx.recv_timeout(RELOAD_WAIT) {
            Ok(Ok(changed)) if changed.is_empty() => Reply::ok("configuration reloaded (no key changed)"),
            Ok(Ok(changed)) => Reply::ok(format!("configuration reloaded: {}", changed.join(", "))),
            Ok(Err(e)) => Reply::error(format!("reload refused, the old configuration stays: {e}")),
            Err(_) => Reply::error("no answer from the control thread in time"),
        }
    }

    fn status(&self) -> Reply {
        let m = &self.metrics;
        let mode = Mode::ALL.into_iter().find(|md| m.mode.with_label_values(&[md.as_str()]).get() == 1);
        let lists = self.lists.lock().expect("lists lock");
        let now = now_secs();
        let d = lists.desired(now);
        let blocks = lists.runtime.blocks.values().filter(|&&u| u == 0 || u > now).count();
        drop(lists);
        let data = json!({
            "mode": mode.map(Mode::as_str),
            "under_attack": m.under_attack.get() == 1,
            "cookies_active": m.cookies_active.get() == 1,
            "interfaces": self.interfaces,
            "allow_entries": d.allow.len(),
            "deny_entries": d.deny.len(),
            "operator_blocks": blocks,
            "sources_blocked": m.sources_blocked.get(),
        });
        Reply { ok: true, message: "agent running".into(), data: Some(data) }
    }
}

/// Whether `outer` contains all of `inner`.
fn covers(outer: &Prefix, inner: &Prefix) -> bool {
    outer.mapped_len() <= inner.mapped_len()
        && Prefix::from_mapped(inner.addr(), outer.mapped_len()) == *outer
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn handler() -> (tempfile::TempDir, Handler, mpsc::Receiver<Command>) {
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let (tx, rx) = mpsc::channel();
        let h = Handler {
            lists: Arc::new(Mutex::new(Lists::default())),
            dir: StateDir::open(t.path(), false).unwrap(),
            commands: tx,
            metrics: Arc::new(Metrics::new()),
            interfaces: vec!["eth0".into()],
        };
        (t, h, rx)
    }

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn changes_are_persisted_then_applied_and_wake_the_control_thread() {
        let (_t, h, rx) = handler();
        let r = h.handle(Checked::Change { list: List::Deny, prefix: p("198.18.5.0/24"), add: true });
        assert!(r.ok, "{r:?}");
        assert!(matches!(rx.try_recv(), Ok(Command::Wake)));
        assert_eq!(files::read_state(&h.dir).unwrap().deny, [p("198.18.5.0/24")].into());
        // Adding it again changes nothing: no write, no wake.
        assert!(h.handle(Checked::Change { list: List::Deny, prefix: p("198.18.5.9/24"), add: true }).ok);
        assert!(rx.try_recv().is_err());
        let r = h.handle(Checked::Change { list: List::Allow, prefix: p("198.18.5.1"), add: false });
        assert!(!r.ok && r.message.contains("not on the allow list"), "{r:?}");
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let (t, h, rx) = handler();
        // The temporary file's name taken by a directory: the write cannot happen.
        std::fs::create_dir(t.path().join("lists.json.tmp")).unwrap();
        let r = h.handle(Checked::Block { prefix: p("198.18.5.1"), ttl_secs: Some(60) });
        assert!(!r.ok && r.message.starts_with("nothing changed"), "{r:?}");
        assert!(h.lists.lock().unwrap().runtime.blocks.is_empty());
        assert!(rx.try_recv().is_err(), "woken for nothing");
    }

    #[test]
    fn file_entries_cannot_be_removed_over_the_socket() {
        let (_t, h, _rx) = handler();
        h.lists.lock().unwrap().files.allow.insert(p("198.18.1.0/24"));
        let r = h.handle(Checked::Change { list: List::Allow, prefix: p("198.18.1.0/24"), add: false });
        assert!(!r.ok && r.message.contains("list file"), "{r:?}");
        assert!(h.lists.lock().unwrap().files.allow.contains(&p("198.18.1.0/24")));
    }

    #[test]
    fn blocking_an_allowed_source_says_allow_wins() {
        let (_t, h, _rx) = handler();
        h.lists.lock().unwrap().files.allow.insert(p("198.18.0.0/16"));
        let r = h.handle(Checked::Block { prefix: p("198.18.3.3"), ttl_secs: None });
        assert!(r.ok && r.message.contains("allow list, which wins"), "{r:?}");
        assert!(!covers(&p("198.18.3.0/24"), &p("198.18.0.0/16")));
    }
}
