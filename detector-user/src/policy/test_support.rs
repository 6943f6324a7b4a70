//! Small builders shared by the policy tests.

use std::{collections::BTreeSet, net::IpAddr};

use crate::{
    policy::PolicyConfig,
    prefix::{mapped, Prefix},
};

pub fn key(ip: &str) -> [u8; 16] {
    mapped(ip.parse::<IpAddr>().unwrap())
}

pub fn keys(ips: &[&str]) -> BTreeSet<[u8; 16]> {
    ips.iter().map(|ip| key(ip)).collect()
}

pub fn prefixes(list: &[&str]) -> BTreeSet<Prefix> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

pub fn cfg(answer: &[u16], kernel: &[u16], dests: &[&str]) -> PolicyConfig {
    PolicyConfig {
        answer_ports: answer.iter().copied().collect(),
        kernel_ports: kernel.iter().copied().collect(),
        kernel_destinations: prefixes(dests),
        detect_nat: true,
    }
}
