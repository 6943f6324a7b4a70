//! Ports and destinations published by DNAT, redirect and tproxy rules, read from the
//! JSON of `nft -j list ruleset` (native nftables and iptables-nft rules alike).
//!
//! XDP runs before netfilter: a SYN that a NAT rule would send elsewhere must be left to
//! the kernel. Parsed with `serde_json::Value` rather than the typed `nftables` crate: the
//! walk must tolerate expressions it does not know (newer nft, iptables-nft's `xt`) and
//! report them, where a typed schema would refuse the whole ruleset.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use crate::{error::NatError, prefix::Prefix};

/// What the ruleset publishes. Deliberately over-cautious: a port seen in any DNAT rule is
/// left to the kernel for every destination.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatFindings {
    /// TCP ports matched by a NAT rule (`tcp dport`, `th dport`).
    pub kernel_ports: BTreeSet<u16>,
    /// Destinations matched by a NAT rule without any port match: every port there.
    pub kernel_dests: BTreeSet<Prefix>,
    /// Some NAT rule matches nothing we can read: every port goes to the kernel.
    pub all_ports: bool,
    /// Rules that set `all_ports`, described for the log.
    pub unclassified: Vec<String>,
    /// NAT rules found (classified or not).
    pub nat_rules: usize,
    /// NAT this host has that the ruleset does not show (`nat_watch::invisible_nat`).
    pub invisible: Vec<String>,
}

/// Statements that send a packet elsewhere before the local stack sees it.
const NAT_STATEMENTS: [&str; 3] = ["dnat", "redirect", "tproxy"];
/// iptables-nft targets with the same effect (their arguments are invisible in JSON).
const XT_NAT_TARGETS: [&str; 3] = ["DNAT", "REDIRECT", "TPROXY"];

/// What a rule's matches say about ports and destinations.
#[derive(Default)]
struct Matches {
    ports: Option<BTreeSet<u16>>,
    dests: Option<BTreeSet<Prefix>>,
    /// The rule matches only non-TCP traffic (`udp dport`, `meta l4proto udp`).
    not_tcp: bool,
    /// Why the ports or destinations could not be read.
    unreadable: Vec<String>,
}

/// Classifies every DNAT/redirect/tproxy rule in `json` (output of `nft -j list ruleset`).
///
/// Rules in base chains on the `output` hook are skipped: they see only packets this host
/// sends, never a SYN arriving on an interface XDP watches. Rules in regular chains count,
/// bounded by the rules that jump to them (`nat_chains`).
pub fn parse_ruleset(json: &str) -> Result<NatFindings, NatError> {
    let root: Value = serde_json::from_str(json)?;
    let items = root.get("nftables").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    let mut sets: HashMap<(&str, &str, &str), &Value> = HashMap::new();
    let mut output_chains: BTreeSet<(&str, &str, &str)> = BTreeSet::new();
    for item in items {
        // Named sets, and named maps (whose elements are [key, value] pairs).
        if let Some(set) = item.get("set").or_else(|| item.get("map")) {
            if let (Some(f), Some(t), Some(n)) =
                (str_of(set, "family"), str_of(set, "table"), str_of(set, "name"))
            {
                sets.insert((f, t, n), set.get("elem").unwrap_or(&Value::Null));
            }
        }
        if let Some(chain) = item.get("chain") {
            if str_of(chain, "hook") == Some("output") {
                if let (Some(f), Some(t), Some(n)) =
                    (str_of(chain, "family"), str_of(chain, "table"), str_of(chain, "name"))
                {
                    output_chains.insert((f, t, n));
                }
            }
        }
    }
    let chains = chains::Chains::new(items, &sets);
    let mut found = NatFindings::default();
    for rule in items.iter().filter_map(|i| i.get("rule")) {
        let exprs = rule.get("expr").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
        let Some(statement) = exprs.iter().find_map(nat_statement) else { continue };
        let family = str_of(rule, "family").unwrap_or("?");
        let table = str_of(rule, "table").unwrap_or("?");
        let chain = str_of(rule, "chain").unwrap_or("?");
        if output_chains.contains(&(family, table, chain)) {
            continue;
        }
        found.nat_rules += 1;
        let lookup = |name: &str| sets.get(&(family, table, name)).copied();
        let m = read_matches(exprs, &lookup);
        if m.not_tcp {
            continue;
        }
        let handle = rule.get("handle").map_or_else(|| "?".to_owned(), ToString::to_string);
        let describe =
            |why: &str| format!("table {family} {table} chain {chain} handle {handle}: {statement} {why}");
        // A positive port match bounds the rule to those ports, a positive destination
        // match to those destinations, whatever else the rule says; without either, the
        // ways into its chain may bound it; else it may catch any SYN.
        match (m.ports, m.dests, chains.bound((family, table, chain))) {
            (Some(ports), _, _) => found.kernel_ports.extend(ports),
            (None, Some(dests), _) => found.kernel_dests.extend(dests),
            (None, None, chains::Bound::Within { ports, dests }) => {
                found.kernel_ports.extend(ports);
                found.kernel_dests.extend(dests);
            }
            (None, None, chains::Bound::Unbounded) => {
                found.all_ports = true;
                let why = if m.unreadable.is_empty() {
                    "matches no port or destination".to_owned()
                } else {
                    m.unreadable.join("; ")
                };
                found.unclassified.push(describe(&why));
            }
        }
    }
    Ok(found)
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// `Some(name)` when this expression is a NAT statement.
fn nat_statement(expr: &Value) -> Option<String> {
    if let Some(name) = NAT_STATEMENTS.iter().find(|n| expr.get(**n).is_some()) {
        return Some((*name).to_owned());
    }
    let xt = expr.get("xt")?;
    let name = str_of(xt, "name")?;
    (str_of(xt, "type") == Some("target") && XT_NAT_TARGETS.contains(&name)).then(|| format!("xt {name}"))
}

fn read_matches<'a>(exprs: &'a [Value], sets: &dyn Fn(&str) -> Option<&'a Value>) -> Matches {
    let mut m = Matches::default();
    for expr in exprs {
        // `dnat to tcp dport map { 80 : a, 443 : b }`: the map's keys act as a match.
        for stmt in NAT_STATEMENTS.iter().filter_map(|n| expr.get(*n)) {
            for arg in ["addr", "port"].iter().filter_map(|a| stmt.get(*a)) {
                if let Some(map) = arg.get("map") {
                    let (Some(key), Some(data)) = (map.get("key"), map.get("data")) else { continue };
                    let keys = Value::Array(
                        elements(data, sets)
                            .unwrap_or_default()
                            .into_iter()
                            .map(|e| e.as_array().and_then(|pair| pair.first()).unwrap_or(e).clone())
                            .collect(),
                    );
                    let synthetic = serde_json::json!({"op": "==", "left": key, "right": {"set": keys}});
                    m.read_match(&synthetic, sets);
                }
            }
        }
        if let Some(xt) = expr.get("xt") {
            if str_of(xt, "type") == Some("match") {
                let name = str_of(xt, "name").unwrap_or("?");
                m.unreadable.push(format!("iptables match {name:?} is not visible in nft JSON"));
            }
            continue;
        }
        if let Some(mat) = expr.get("match") {
            m.read_match(mat, sets);
        }
    }
    m
}

impl Matches {
    /// Reads one `match` expression ({op, left, right}).
    fn read_match<'a>(&mut self, mat: &Value, sets: &dyn Fn(&str) -> Option<&'a Value>) {
        let (Some(left), Some(right)) = (mat.get("left"), mat.get("right")) else { return };
        let op = str_of(mat, "op").unwrap_or("==");
        let positive = op == "==" || op == "in";
        if let Some(key) = left.get("meta").and_then(|m| str_of(m, "key")) {
            if key == "l4proto" && positive && right.as_str().is_some_and(|p| p != "tcp") {
                self.not_tcp = true;
            }
            return;
        }
        let Some(payload) = left.get("payload") else { return };
        let (proto, field) =
            (str_of(payload, "protocol").unwrap_or(""), str_of(payload, "field").unwrap_or(""));
        match (proto, field) {
            ("udp" | "udplite" | "sctp" | "dccp", _) if positive => self.not_tcp = true,
            ("tcp" | "th", "dport") => match (positive, ports_of(right, sets)) {
                (true, Some(ports)) => self.ports.get_or_insert_with(BTreeSet::new).extend(ports),
                (false, _) => {
                    self.unreadable.push(format!("port match with {op:?} covers almost every port"));
                }
                (true, None) => self.unreadable.push(format!("port match {right} is not readable")),
            },
            ("ip" | "ip6", "daddr") => match (positive, dests_of(right, sets)) {
                (true, Some(dests)) => self.dests.get_or_insert_with(BTreeSet::new).extend(dests),
                (false, _) => self.unreadable.push(format!("destination match with {op:?}")),
                (true, None) => self.unreadable.push(format!("destination match {right} is not readable")),
            },
            _ => {}
        }
    }
}

/// Elements of an anonymous set, a named set (`@name`), or one value.
fn elements<'b, 'a: 'b>(v: &'b Value, sets: &dyn Fn(&str) -> Option<&'a Value>) -> Option<Vec<&'b Value>> {
    if let Some(name) = v.as_str().and_then(|s| s.strip_prefix('@')) {
        return elements(sets(name)?, sets);
    }
    match v.get("set").and_then(Value::as_array).or_else(|| v.as_array()) {
        // Elements with options (timeouts, counters) come wrapped as {"elem": {"val": ..}}.
        Some(items) => {
            Some(items.iter().map(|e| e.get("elem").and_then(|e| e.get("val")).unwrap_or(e)).collect())
        }
        None if v.is_null() => Some(Vec::new()),
        None => Some(vec![v]),
    }
}

fn ports_of<'a>(v: &Value, sets: &dyn Fn(&str) -> Option<&'a Value>) -> Option<BTreeSet<u16>> {
    let port = |v: &Value| v.as_u64().and_then(|p| u16::try_from(p).ok());
    let mut out = BTreeSet::new();
    for e in elements(v, sets)? {
        if let Some(range) = e.get("range").and_then(Value::as_array) {
            let (lo, hi) = (port(range.first()?)?, port(range.get(1)?)?);
            out.extend(lo..=hi);
        } else {
            out.insert(port(e)?);
        }
    }
    Some(out)
}

fn dests_of<'a>(v: &Value, sets: &dyn Fn(&str) -> Option<&'a Value>) -> Option<BTreeSet<Prefix>> {
    let mut out = BTreeSet::new();
    for e in elements(v, sets)? {
        if let Some(p) = e.get("prefix") {
            let len = u8::try_from(p.get("len")?.as_u64()?).ok()?;
            out.insert(Prefix::new(str_of(p, "addr")?.parse().ok()?, len)?);
        } else {
            // Ranges ({"range": [a, b]}) are not read: the caller counts them unreadable.
            out.insert(e.as_str()?.parse().ok()?);
        }
    }
    Some(out)
}

#[path = "nat_chains.rs"]
mod chains;

#[cfg(test)]
#[path = "nat_tests.rs"]
mod tests;
