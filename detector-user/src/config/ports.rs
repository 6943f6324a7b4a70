//! `protected_ports` and `[ports."P"]`: their rules, and the `PORT_LIMITS` table and
//! program flags they make (detector_common::ports has the program's side).

use std::collections::BTreeMap;

use detector_common::{
    config::{FLAG_PORT_LIMITS, FLAG_PROTECTED_PORTS_ONLY},
    names::PORT_LIMITS_CAPACITY,
    ports::{PortLimits, PORT_HALF_OPEN, PORT_PROTECTED, PORT_SYN_RATE},
};

use super::{invalid, FileConfig};
use crate::error::ConfigError;

/// A `[ports]` key as a port number.
fn port_of(key: &str) -> Option<u16> {
    key.parse::<u16>().ok().filter(|p| *p != 0)
}

/// Port keys are numbers 1..=65535, protected ports too, each listed once; with
/// `protected_ports`, a port with its own limits must be one of them (its limits would
/// otherwise never apply); the table fits the program's map.
pub fn validate(f: &FileConfig) -> Result<(), ConfigError> {
    for key in f.ports.keys() {
        let Some(port) = port_of(key) else {
            return Err(invalid("ports", format!("[ports.{key:?}]: not a port number in 1..=65535")));
        };
        if port.to_string() != *key {
            return Err(invalid("ports", format!("[ports.{key:?}]: write the port as {port}")));
        }
    }
    if let Some(list) = &f.protected_ports {
        if list.is_empty() {
            return Err(invalid(
                "protected_ports",
                "empty: it would protect nothing (leave it out for every port)",
            ));
        }
        for (i, port) in list.iter().enumerate() {
            if *port == 0 {
                return Err(invalid("protected_ports", "0 is not a port"));
            }
            if list[..i].contains(port) {
                return Err(invalid("protected_ports", format!("{port} is listed twice")));
            }
        }
        for key in f.ports.keys() {
            if port_of(key).is_some_and(|p| !list.contains(&p)) {
                return Err(invalid(
                    "ports",
                    format!("[ports.\"{key}\"] has limits but {key} is not in protected_ports: they would never apply"),
                ));
            }
        }
    }
    let entries = table(f).len();
    if entries > PORT_LIMITS_CAPACITY as usize {
        return Err(invalid(
            "ports",
            format!("{entries} ports; the program holds at most {PORT_LIMITS_CAPACITY}"),
        ));
    }
    Ok(())
}

/// What `PORT_LIMITS` must hold: one entry per port with limits or listed as protected.
/// Call on a validated config (invalid port keys are skipped).
pub fn table(f: &FileConfig) -> BTreeMap<u16, PortLimits> {
    let mut out: BTreeMap<u16, PortLimits> = BTreeMap::new();
    for (key, t) in &f.ports {
        let Some(port) = port_of(key) else { continue };
        let entry = out.entry(port).or_default();
        if let Some(limit) = t.syn_rate_limit {
            entry.syn_rate_limit = limit;
            entry.flags |= PORT_SYN_RATE;
        }
        if let Some(limit) = t.half_open_limit {
            entry.half_open_limit = limit;
            entry.flags |= PORT_HALF_OPEN;
        }
    }
    for port in f.protected_ports.iter().flatten() {
        out.entry(*port).or_default().flags |= PORT_PROTECTED;
    }
    out
}

/// The lowest SYN-rate limit in force, the config's or any port's (0 = none): what the
/// sketch's hot mark is derived from (`sketch::hot_mark`), so that the mark lies under every
/// limit a SYN is compared with.
pub fn lowest_syn_rate_limit(f: &FileConfig) -> u32 {
    let ports = f.ports.values().filter_map(|t| t.syn_rate_limit);
    std::iter::once(f.thresholds.syn_rate_limit).chain(ports).filter(|&limit| limit != 0).min().unwrap_or(0)
}

/// The program flags: look ports up when any has limits; protect only the listed ones.
pub fn flags(f: &FileConfig) -> u32 {
    let limits = f.ports.values().any(|t| t.syn_rate_limit.is_some() || t.half_open_limit.is_some());
    (if limits { FLAG_PORT_LIMITS } else { 0 })
        | (if f.protected_ports.is_some() { FLAG_PROTECTED_PORTS_ONLY } else { 0 })
}

#[cfg(test)]
mod tests {
    use std::fmt::Write;

    use super::*;

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).unwrap()
    }

    fn refused(text: &str) -> &'static str {
        match validate(&file(text)) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    /// The sketch's hot mark must lie under every limit a SYN meets, so it comes from the
    /// lowest: a port's below the config's, the config's alone, none at all.
    #[test]
    fn the_hot_mark_comes_from_the_lowest_syn_rate_limit_in_force() {
        let mark = |text: &str| {
            let cfg = crate::config::Config { file: file(text) };
            cfg.kernel_config().sketch_hot_mark
        };
        assert_eq!(mark(""), 100, "the default limit, 200");
        assert_eq!(mark("[ports.\"443\"]\nsyn_rate_limit = 50\n"), 25);
        assert_eq!(mark("[ports.\"443\"]\nsyn_rate_limit = 500\n"), 100, "a higher port limit");
        assert_eq!(mark("[ports.\"443\"]\nsyn_rate_limit = 0\n"), 100, "a port without a limit");
        assert_eq!(mark("[thresholds]\nsyn_rate_limit = 0\n[ports.\"22\"]\nsyn_rate_limit = 9\n"), 4);
        assert_eq!(mark("[thresholds]\nsyn_rate_limit = 0\n"), 0, "no limit: every row");
    }

    #[test]
    fn a_port_table_becomes_entries_with_the_bits_of_what_it_sets() {
        let f = file("protected_ports = [443, 22]\n[ports.\"443\"]\nsyn_rate_limit = 50\n");
        validate(&f).unwrap();
        let t = table(&f);
        assert_eq!(
            t[&443],
            PortLimits {
                syn_rate_limit: 50,
                half_open_limit: 0,
                flags: PORT_PROTECTED | PORT_SYN_RATE,
                _pad: 0
            }
        );
        assert_eq!(t[&22].flags, PORT_PROTECTED);
        assert_eq!(flags(&f), FLAG_PORT_LIMITS | FLAG_PROTECTED_PORTS_ONLY);
    }

    #[test]
    fn nothing_configured_is_no_table_and_no_flag() {
        let f = file("");
        validate(&f).unwrap();
        assert!(table(&f).is_empty());
        assert_eq!(flags(&f), 0);
    }

    #[test]
    fn bad_ports_are_refused_by_key() {
        assert_eq!(refused("[ports.\"http\"]\nsyn_rate_limit = 1\n"), "ports");
        assert_eq!(refused("[ports.\"0\"]\nsyn_rate_limit = 1\n"), "ports");
        assert_eq!(refused("[ports.\"70000\"]\nsyn_rate_limit = 1\n"), "ports");
        assert_eq!(refused("[ports.\"080\"]\nsyn_rate_limit = 1\n"), "ports");
        assert_eq!(refused("protected_ports = []\n"), "protected_ports");
        assert_eq!(refused("protected_ports = [0]\n"), "protected_ports");
        assert_eq!(refused("protected_ports = [80, 80]\n"), "protected_ports");
        assert_eq!(refused("protected_ports = [80]\n[ports.\"443\"]\nhalf_open_limit = 5\n"), "ports");
        let many = (1..=1025).fold(String::new(), |mut out, p| {
            writeln!(out, "[ports.\"{p}\"]\nsyn_rate_limit = 1").unwrap();
            out
        });
        assert_eq!(refused(&many), "ports");
    }

    #[test]
    fn limits_out_of_range_and_unknown_keys_are_parse_errors_naming_them() {
        let e = toml::from_str::<FileConfig>("[ports.\"443\"]\nsyn_rate_limit = 5000000000\n").unwrap_err();
        assert!(e.to_string().contains("syn_rate_limit"), "{e}");
        let e = toml::from_str::<FileConfig>("[ports.\"443\"]\nsyn_rate = 5\n").unwrap_err();
        assert!(e.to_string().contains("syn_rate"), "{e}");
        let e = toml::from_str::<FileConfig>("protected_ports = [70000]\n").unwrap_err();
        assert!(e.to_string().contains("protected_ports"), "{e}");
    }
}
