//! What a regular chain inherits from the rules that jump to it: a DNAT rule with no
//! match of its own, in a chain entered only by `tcp dport { 80, 443 } jump web`, still
//! catches ports 80 and 443 only. Any way in that cannot be read makes it unbounded.

use std::{
    cell::RefCell,
    collections::{BTreeSet, HashMap, HashSet},
};

use serde_json::Value;

use super::{ports_of, read_matches, str_of};
use crate::prefix::Prefix;

/// (family, table, chain).
pub(super) type ChainId<'a> = (&'a str, &'a str, &'a str);
type Sets<'a> = HashMap<(&'a str, &'a str, &'a str), &'a Value>;

/// Which SYNs can reach a chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Bound {
    /// Any SYN (a base chain, an unreadable way in, or no known way in).
    Unbounded,
    /// Only SYNs to these ports (any destination) or to these destinations (any port).
    Within { ports: BTreeSet<u16>, dests: BTreeSet<Prefix> },
}

impl Bound {
    fn union(self, other: Self) -> Self {
        match (self, other) {
            (Self::Within { mut ports, mut dests }, Self::Within { ports: p, dests: d }) => {
                ports.extend(p);
                dests.extend(d);
                Self::Within { ports, dests }
            }
            _ => Self::Unbounded,
        }
    }
}

/// One way into a chain.
enum Edge<'a> {
    /// A `jump`/`goto` statement in a rule: bounded by that rule's matches, or else by
    /// the bound of the chain it sits in.
    Rule {
        from: ChainId<'a>,
        exprs: &'a [Value],
    },
    /// A `tcp dport vmap { P : jump X }` element.
    Ports(BTreeSet<u16>),
    Unbounded,
}

pub(super) struct Chains<'a> {
    base: HashSet<ChainId<'a>>,
    /// Base chains on the output hook: packets this host sends, never a received SYN.
    output: HashSet<ChainId<'a>>,
    edges: HashMap<ChainId<'a>, Vec<Edge<'a>>>,
    sets: &'a Sets<'a>,
    /// Bounds already worked out. One cut short by a cycle is `Unbounded`, which only
    /// errs on the cautious side, so every entry may be reused.
    memo: RefCell<HashMap<ChainId<'a>, Bound>>,
}

fn targets<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(map) => {
            for (k, inner) in map {
                match (k.as_str(), inner.get("target").and_then(Value::as_str)) {
                    ("jump" | "goto", Some(t)) => out.push(t),
                    _ => targets(inner, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| targets(i, out)),
        _ => {}
    }
}

fn direct_target(expr: &Value) -> Option<&str> {
    expr.get("jump").or_else(|| expr.get("goto")).and_then(|j| str_of(j, "target"))
}

impl<'a> Chains<'a> {
    pub(super) fn new(items: &'a [Value], sets: &'a Sets<'a>) -> Self {
        let mut chains = Self {
            base: HashSet::new(),
            output: HashSet::new(),
            edges: HashMap::new(),
            sets,
            memo: RefCell::new(HashMap::new()),
        };
        let id = |v: &'a Value| Some((str_of(v, "family")?, str_of(v, "table")?, str_of(v, "name")?));
        for item in items {
            if let Some((chain, Some(cid))) = item.get("chain").map(|c| (c, id(c))) {
                if let Some(hook) = str_of(chain, "hook") {
                    chains.base.insert(cid);
                    if hook == "output" {
                        chains.output.insert(cid);
                    }
                }
            }
            // Named verdict maps: their jumps are not followed, so their targets are unbounded.
            if let Some((map, Some((f, t, _)))) = item.get("map").map(|m| (m, id(m))) {
                let mut found = Vec::new();
                targets(map, &mut found);
                for target in found {
                    chains.edges.entry((f, t, target)).or_default().push(Edge::Unbounded);
                }
            }
        }
        for rule in items.iter().filter_map(|i| i.get("rule")) {
            let (Some(f), Some(t), Some(c)) =
                (str_of(rule, "family"), str_of(rule, "table"), str_of(rule, "chain"))
            else {
                continue;
            };
            let exprs = rule.get("expr").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
            for expr in exprs {
                chains.add_edges((f, t, c), exprs, expr);
            }
        }
        chains
    }

    fn add_edges(&mut self, from: ChainId<'a>, exprs: &'a [Value], expr: &'a Value) {
        let (f, t, _) = from;
        if let Some(target) = direct_target(expr) {
            self.edges.entry((f, t, target)).or_default().push(Edge::Rule { from, exprs });
            return;
        }
        let vmap = expr.get("vmap");
        let key = vmap.and_then(|v| v.get("key")?.get("payload"));
        let port_key = key.is_some_and(|k| {
            matches!(str_of(k, "protocol"), Some("tcp" | "th")) && str_of(k, "field") == Some("dport")
        });
        let pairs = vmap.and_then(|v| v.get("data")?.get("set")?.as_array());
        if let (true, Some(pairs)) = (port_key, pairs) {
            for pair in pairs.iter().filter_map(Value::as_array) {
                let (Some(k), Some(Some(target))) = (pair.first(), pair.get(1).map(direct_target)) else {
                    continue;
                };
                let no_sets = |_: &str| None;
                let edge = ports_of(k, &no_sets).map_or(Edge::Unbounded, Edge::Ports);
                self.edges.entry((f, t, target)).or_default().push(edge);
            }
            return;
        }
        let mut found = Vec::new();
        targets(expr, &mut found);
        for target in found {
            self.edges.entry((f, t, target)).or_default().push(Edge::Unbounded);
        }
    }

    /// Which SYNs can reach `chain`.
    pub(super) fn bound(&self, chain: ChainId<'a>) -> Bound {
        self.bound_inner(chain, &mut Vec::new())
    }

    fn bound_inner(&self, chain: ChainId<'a>, visiting: &mut Vec<ChainId<'a>>) -> Bound {
        if self.base.contains(&chain) || visiting.contains(&chain) || visiting.len() > 16 {
            return Bound::Unbounded;
        }
        if let Some(known) = self.memo.borrow().get(&chain) {
            return known.clone();
        }
        let Some(edges) = self.edges.get(&chain) else { return Bound::Unbounded };
        visiting.push(chain);
        let mut bound = Bound::Within { ports: BTreeSet::new(), dests: BTreeSet::new() };
        let mut any = false;
        for edge in edges {
            let b = match edge {
                Edge::Rule { from, .. } if self.output.contains(from) => continue,
                Edge::Rule { from, exprs } => self.rule_bound(*from, exprs, visiting),
                Edge::Ports(ports) => Bound::Within { ports: ports.clone(), dests: BTreeSet::new() },
                Edge::Unbounded => Bound::Unbounded,
            };
            any = true;
            bound = bound.union(b);
        }
        visiting.pop();
        let bound = if any { bound } else { Bound::Unbounded };
        self.memo.borrow_mut().insert(chain, bound.clone());
        bound
    }

    fn rule_bound(&self, from: ChainId<'a>, exprs: &'a [Value], visiting: &mut Vec<ChainId<'a>>) -> Bound {
        let (f, t, _) = from;
        let lookup = |name: &str| self.sets.get(&(f, t, name)).copied();
        let m = read_matches(exprs, &lookup);
        match (m.not_tcp, m.ports, m.dests) {
            (true, _, _) => Bound::Within { ports: BTreeSet::new(), dests: BTreeSet::new() },
            (false, Some(ports), _) => Bound::Within { ports, dests: BTreeSet::new() },
            (false, None, Some(dests)) => Bound::Within { ports: BTreeSet::new(), dests },
            (false, None, None) => self.bound_inner(from, visiting),
        }
    }
}
