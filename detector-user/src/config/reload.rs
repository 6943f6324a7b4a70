//! Which keys a reload (SIGHUP) applies and which need a restart, and the decision for one
//! reload: all or nothing. A reload that changes any restart-only key is refused as a
//! whole, naming every such key; otherwise it lists the keys it will apply.

use std::fmt;

use super::{policy_config, FileConfig};

/// How a changed key takes effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Takes {
    /// Applied by the running agent on reload.
    Reload,
    /// Needs a restart: `why` says what is fixed at start.
    Restart { why: &'static str },
}

/// The one list of keys and how each takes effect. `changed_keys` compares each of them
/// (and, by destructuring `FileConfig` without `..`, fails to compile when a key is added
/// without being listed here).
pub const KEYS: &[(&str, Takes)] = &[
    ("interfaces", Takes::Restart { why: "the program is attached at start" }),
    ("attach_mode", Takes::Restart { why: "the program is attached at start" }),
    ("mode", Takes::Reload),
    ("metrics_addr", Takes::Restart { why: "the listener is bound at start" }),
    ("poll_interval_ms", Takes::Reload),
    ("log_format", Takes::Restart { why: "logging is set up once, at start" }),
    ("state_dir", Takes::Restart { why: "the sysctl state file is opened at start" }),
    ("sysctl_dir", Takes::Restart { why: "the sysctl files are opened at start" }),
    ("pin_dir", Takes::Restart { why: "the pins are opened at start" }),
    ("on_stop", Takes::Restart { why: "read at start" }),
    ("top_sources", Takes::Reload),
    ("thresholds", Takes::Reload),
    ("detection", Takes::Reload),
    ("cookies", Takes::Reload),
    ("maps", Takes::Restart { why: "map sizes are fixed when the program is loaded" }),
    ("policy", Takes::Restart { why: "the policy watchers are started with it" }),
    ("control_socket", Takes::Restart { why: "the socket is bound at start" }),
    ("lists", Takes::Reload),
    // The rate is part of the program's config; where and how much is written is fixed
    // when the sample writer starts.
    ("samples.one_in", Takes::Reload),
    ("samples", Takes::Restart { why: "the sample writer is started with its directory and caps" }),
    ("protected_ports", Takes::Reload),
    ("ports", Takes::Reload),
];

/// How `key` (a `KEYS` name or a dotted key under one) takes effect.
pub fn takes(key: &str) -> Takes {
    let section = key.split('.').next().unwrap_or(key);
    KEYS.iter()
        .find(|(name, _)| *name == key)
        .or_else(|| KEYS.iter().find(|(name, _)| *name == section))
        .map(|&(_, t)| t)
        .expect("every configuration key is in reload::KEYS")
}

/// An accepted reload: the keys that change (each applied by the reload).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub changed: Vec<&'static str>,
}

/// A refused reload: the restart-only keys it would change. Nothing is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub keys: Vec<&'static str>,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, key) in self.keys.iter().enumerate() {
            let why = match takes(key) {
                Takes::Restart { why } => why,
                Takes::Reload => "",
            };
            write!(f, "{}{key} needs a restart ({why})", if i == 0 { "" } else { "; " })?;
        }
        write!(f, "; nothing was changed")
    }
}

impl std::error::Error for Refused {}

/// Decides a reload from `old` to `new` (both validated): refused if any restart-only key
/// changes, else the keys to apply.
pub fn decide(old: &FileConfig, new: &FileConfig) -> Result<Plan, Refused> {
    let (restart, changed): (Vec<_>, Vec<_>) =
        changed_keys(old, new).into_iter().partition(|key| matches!(takes(key), Takes::Restart { .. }));
    if restart.is_empty() {
        Ok(Plan { changed })
    } else {
        Err(Refused { keys: restart })
    }
}

/// Every key whose value differs, dotted (`thresholds.syn_rate_limit`), in file order.
/// `[policy]` counts as one key and compares as converted (order and duplicates of ports
/// and prefixes do not matter).
pub fn changed_keys(old: &FileConfig, new: &FileConfig) -> Vec<&'static str> {
    let FileConfig {
        interfaces,
        attach_mode,
        mode,
        metrics_addr,
        poll_interval_ms,
        log_format,
        state_dir,
        sysctl_dir,
        pin_dir,
        on_stop,
        top_sources,
        thresholds,
        detection,
        cookies,
        maps,
        policy,
        control_socket,
        lists,
        samples,
        protected_ports,
        ports,
    } = new;
    let mut out = Vec::new();
    macro_rules! cmp {
        ($($key:literal: $a:expr, $b:expr;)*) => {
            $( if $a != $b { out.push($key); } )*
        };
    }
    #[allow(clippy::float_cmp, reason = "any change of a configured value is a change")]
    {
        cmp! {
            "interfaces": &old.interfaces, interfaces;
            "attach_mode": &old.attach_mode, attach_mode;
            "mode": &old.mode, mode;
            "metrics_addr": &old.metrics_addr, metrics_addr;
            "poll_interval_ms": &old.poll_interval_ms, poll_interval_ms;
            "log_format": &old.log_format, log_format;
            "pin_dir": &old.pin_dir, pin_dir;
            "on_stop": &old.on_stop, on_stop;
            "state_dir": &old.state_dir, state_dir;
            "sysctl_dir": &old.sysctl_dir, sysctl_dir;
            "top_sources": &old.top_sources, top_sources;
            "thresholds.syn_rate_limit": old.thresholds.syn_rate_limit, thresholds.syn_rate_limit;
            "thresholds.half_open_limit": old.thresholds.half_open_limit, thresholds.half_open_limit;
            "thresholds.block_ttl_secs": old.thresholds.block_ttl_secs, thresholds.block_ttl_secs;
            "thresholds.handshake_timeout_ms": old.thresholds.handshake_timeout_ms, thresholds.handshake_timeout_ms;
            "thresholds.sketch_admission": old.thresholds.sketch_admission, thresholds.sketch_admission;
            "detection.enter_syn_rate": old.detection.enter_syn_rate, detection.enter_syn_rate;
            "detection.exit_syn_rate": old.detection.exit_syn_rate, detection.exit_syn_rate;
            "detection.enter_half_open": old.detection.enter_half_open, detection.enter_half_open;
            "detection.exit_half_open": old.detection.exit_half_open, detection.exit_half_open;
            "detection.hold_secs": old.detection.hold_secs, detection.hold_secs;
            "cookies.timestamps": old.cookies.timestamps, cookies.timestamps;
            "cookies.ecn": old.cookies.ecn, cookies.ecn;
            "cookies.budget_per_second": old.cookies.budget_per_second, cookies.budget_per_second;
            "cookies.window": old.cookies.window, cookies.window;
            "maps.sources": old.maps.sources, maps.sources;
            "maps.pending": old.maps.pending, maps.pending;
            "maps.sketch_width": old.maps.sketch_width, maps.sketch_width;
            "maps.closed_filter_lines": old.maps.closed_filter_lines, maps.closed_filter_lines;
            "policy": policy_config(&old.policy).ok(), policy_config(policy).ok();
            "control_socket": &old.control_socket, control_socket;
            "lists": &old.lists, lists;
            "samples.one_in": old.samples.one_in, samples.one_in;
            "samples.dir": &old.samples.dir, &samples.dir;
            "samples.max_file_bytes": old.samples.max_file_bytes, samples.max_file_bytes;
            "samples.max_files": old.samples.max_files, samples.max_files;
            "protected_ports": &old.protected_ports, protected_ports;
            "ports": &old.ports, ports;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> FileConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn an_unchanged_file_is_an_empty_plan() {
        assert_eq!(decide(&parse(""), &parse("")), Ok(Plan::default()));
    }

    #[test]
    fn reloadable_keys_are_applied_by_name() {
        let new = parse(
            "mode = \"cookie\"\npoll_interval_ms = 250\ntop_sources = 3\n[thresholds]\nsyn_rate_limit = 7\n\
             [detection]\nexit_syn_rate = 10.0\n[cookies]\ntimestamps = false\necn = false\n",
        );
        let plan = decide(&parse(""), &new).unwrap();
        assert_eq!(
            plan.changed,
            [
                "mode",
                "poll_interval_ms",
                "top_sources",
                "thresholds.syn_rate_limit",
                "detection.exit_syn_rate",
                "cookies.timestamps",
                "cookies.ecn"
            ]
        );
    }

    #[test]
    fn each_restart_key_is_refused_by_name() {
        let cases = [
            ("interfaces = [\"eth9\"]", "interfaces"),
            ("attach_mode = \"skb\"", "attach_mode"),
            ("metrics_addr = \"127.0.0.1:1\"", "metrics_addr"),
            ("log_format = \"json\"", "log_format"),
            ("state_dir = \"/tmp/elsewhere\"", "state_dir"),
            ("[maps]\nsources = 2048", "maps.sources"),
            ("[maps]\npending = 2048", "maps.pending"),
            ("[maps]\nsketch_width = 512", "maps.sketch_width"),
            ("[maps]\nclosed_filter_lines = 16384", "maps.closed_filter_lines"),
            ("[policy]\nkernel_ports = [8080]", "policy"),
            ("[policy]\ndetect_nat = false", "policy"),
        ];
        for (text, key) in cases {
            let refused = decide(&parse(""), &parse(text)).unwrap_err();
            assert_eq!(refused.keys, [key], "{text}");
            let message = refused.to_string();
            assert!(message.starts_with(&format!("{key} needs a restart")), "{message}");
            assert!(message.ends_with("nothing was changed"), "{message}");
        }
    }

    #[test]
    fn a_mixed_reload_is_refused_whole_naming_every_restart_key() {
        let new = parse("state_dir = \"/x\"\nlog_format = \"json\"\n[thresholds]\nsyn_rate_limit = 7\n");
        let refused = decide(&parse(""), &new).unwrap_err();
        assert_eq!(refused.keys, ["log_format", "state_dir"]);
    }

    #[test]
    fn policy_compares_as_converted() {
        let a = parse("[policy]\nkernel_ports = [80, 443]\n");
        let b = parse("[policy]\nkernel_ports = [443, 80, 80]\n");
        assert_eq!(decide(&a, &b), Ok(Plan::default()));
    }

    #[test]
    fn every_key_is_compared_and_takes_effect_one_way() {
        let new = parse(
            "interfaces = [\"eth9\"]\nattach_mode = \"skb\"\nmode = \"drop\"\nmetrics_addr = \"127.0.0.1:1\"\n\
             poll_interval_ms = 200\nlog_format = \"json\"\nstate_dir = \"/x\"\ntop_sources = 1\n\
             [thresholds]\nsyn_rate_limit = 1\nhalf_open_limit = 1\nblock_ttl_secs = 1\nhandshake_timeout_ms = 11\n\
             [detection]\nenter_syn_rate = 9.0\nexit_syn_rate = 9.0\nenter_half_open = 9\nexit_half_open = 9\nhold_secs = 9\n\
             [cookies]\ntimestamps = false\necn = false\nbudget_per_second = 9\nwindow = 9\n\
             [maps]\nsources = 9999\npending = 9999\nsketch_width = 512\n[policy]\ndetect_nat = false\n",
        );
        let keys = changed_keys(&parse(""), &new);
        assert_eq!(keys.len(), 25, "{keys:?}");
        let restart: Vec<&str> =
            keys.into_iter().filter(|k| matches!(takes(k), Takes::Restart { .. })).collect();
        assert_eq!(
            restart,
            [
                "interfaces",
                "attach_mode",
                "metrics_addr",
                "log_format",
                "state_dir",
                "maps.sources",
                "maps.pending",
                "maps.sketch_width",
                "policy"
            ]
        );
    }
}
