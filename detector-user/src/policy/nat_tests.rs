//! Unit tests of `nat`: fixtures are real `nft -j list ruleset` output, made in a scratch
//! network namespace from tests/fixtures/nft/native.nft (native rules) and from
//! iptables-nft commands mimicking Docker's (see tests/fixtures/nft/README.md).

use super::*;

fn ports(found: &NatFindings) -> Vec<u16> {
    let mut p: Vec<u16> = found.kernel_ports.iter().copied().collect();
    p.dedup();
    p
}

fn prefixes(list: &[&str]) -> BTreeSet<Prefix> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn native_rules_are_classified() {
    let found = parse_ruleset(include_str!("../../tests/fixtures/nft/native.json")).unwrap();
    let mut want: Vec<u16> = vec![25, 80, 443, 2222, 7000, 8080, 8081, 8082, 8443];
    want.extend(9000..=9010);
    want.sort_unstable();
    assert_eq!(ports(&found), want, "single, set, range, named set, ip6, inet, tproxy, jumped-to chain");
    assert_eq!(found.kernel_dests, prefixes(&["198.18.5.0/24", "198.18.9.9/32"]));
    assert!(found.all_ports, "`meta l4proto tcp dnat` matches every port");
    assert_eq!(found.unclassified.len(), 1, "{:?}", found.unclassified);
    assert!(found.unclassified[0].contains("handle 13"), "{}", found.unclassified[0]);
    assert!(!found.kernel_ports.contains(&53), "udp rules are not TCP");
    assert!(!found.kernel_ports.contains(&3128), "output-hook rules never see received SYNs");
    assert_eq!(found.nat_rules, 13);
}

#[test]
fn iptables_nft_rules_are_classified_where_visible() {
    let found = parse_ruleset(include_str!("../../tests/fixtures/nft/iptables-nft.json")).unwrap();
    let mut want = vec![443, 8080];
    want.extend(3000..=3005);
    want.sort_unstable();
    assert_eq!(ports(&found), want);
    assert_eq!(found.kernel_dests, prefixes(&["198.18.4.0/24"]));
    assert!(found.all_ports, "the multiport DNAT rule hides its ports");
    assert_eq!(found.unclassified.len(), 1);
    assert!(found.unclassified[0].contains("multiport"), "{}", found.unclassified[0]);
    assert_eq!(found.nat_rules, 5);
}

fn one_rule(exprs: &str, extra: &str) -> NatFindings {
    let json = format!(
        r#"{{"nftables": [{{"metainfo": {{"json_schema_version": 1}}}}, {extra}
          {{"chain": {{"family": "ip", "table": "t", "name": "pre", "type": "nat", "hook": "prerouting"}}}},
          {{"rule": {{"family": "ip", "table": "t", "chain": "pre", "handle": 4, "expr": [{exprs}]}}}}]}}"#
    );
    parse_ruleset(&json).unwrap()
}

const DPORT: &str = r#"{"payload": {"protocol": "tcp", "field": "dport"}}"#;

#[test]
fn a_negated_port_match_covers_every_port() {
    let found = one_rule(
        &format!(
            r#"{{"match": {{"op": "!=", "left": {DPORT}, "right": 22}}}}, {{"redirect": {{"port": 3128}}}}"#
        ),
        "",
    );
    assert!(found.all_ports);
    assert!(found.unclassified[0].contains("\"!=\""), "{}", found.unclassified[0]);
}

#[test]
fn named_sets_with_wrapped_elements_and_ranges() {
    let set = r#"{"set": {"family": "ip", "table": "t", "name": "p", "type": "inet_service",
        "elem": [{"elem": {"val": 81, "timeout": 30}}, {"range": [90, 92]}]}},"#;
    let found = one_rule(
        &format!(
            r#"{{"match": {{"op": "==", "left": {DPORT}, "right": "@p"}}}}, {{"dnat": {{"addr": "198.18.0.9"}}}}"#
        ),
        set,
    );
    assert_eq!(ports(&found), vec![81, 90, 91, 92]);
    assert!(!found.all_ports);
}

#[test]
fn an_unknown_set_or_address_range_is_not_guessed() {
    let found = one_rule(
        &format!(
            r#"{{"match": {{"op": "==", "left": {DPORT}, "right": "@missing"}}}}, {{"dnat": {{"addr": "198.18.0.9"}}}}"#
        ),
        "",
    );
    assert!(found.all_ports);
    let daddr = r#"{"payload": {"protocol": "ip", "field": "daddr"}}"#;
    let found = one_rule(
        &format!(
            r#"{{"match": {{"op": "==", "left": {daddr}, "right": {{"range": ["198.18.0.1", "198.18.0.9"]}}}}}}, {{"dnat": {{"addr": "198.18.0.9"}}}}"#
        ),
        "",
    );
    assert!(found.all_ports && found.unclassified[0].contains("not readable"), "{found:?}");
}

#[test]
fn a_destination_bounds_a_rule_whose_ports_are_hidden() {
    let daddr = r#"{"payload": {"protocol": "ip", "field": "daddr"}}"#;
    let found = one_rule(
        &format!(
            r#"{{"match": {{"op": "==", "left": {daddr}, "right": "198.18.2.2"}}}}, {{"xt": {{"type": "match", "name": "multiport"}}}}, {{"xt": {{"type": "target", "name": "DNAT"}}}}"#
        ),
        "",
    );
    assert_eq!(found.kernel_dests, prefixes(&["198.18.2.2/32"]));
    assert!(!found.all_ports);
}

#[test]
fn rules_without_nat_and_empty_rulesets_publish_nothing() {
    let found = one_rule(
        &format!(r#"{{"match": {{"op": "==", "left": {DPORT}, "right": 22}}}}, {{"accept": null}}"#),
        "",
    );
    assert_eq!(found, NatFindings::default());
    assert_eq!(parse_ruleset(r#"{"nftables": []}"#).unwrap(), NatFindings::default());
    assert!(parse_ruleset("not json").is_err());
}

#[test]
fn dnat_maps_keyed_on_port_or_address_are_read() {
    // From `dnat to tcp dport map { 80 : 198.18.1.1, 443 : 198.18.1.2 }` and
    // `dnat to ip daddr map { 198.18.7.1 : 198.18.1.3 }` (nft 1.0.6 -j output).
    let found = one_rule(
        r#"{"dnat": {"addr": {"map": {"key": {"payload": {"protocol": "tcp", "field": "dport"}},
            "data": {"set": [[80, "198.18.1.1"], [443, "198.18.1.2"]]}}}}}"#,
        "",
    );
    assert_eq!(ports(&found), vec![80, 443]);
    let named = r#"{"map": {"family": "ip", "table": "t", "name": "m", "type": "ipv4_addr", "map": "ipv4_addr",
        "elem": [["198.18.7.1", "198.18.1.3"]]}},"#;
    let found = one_rule(
        r#"{"dnat": {"addr": {"map": {"key": {"payload": {"protocol": "ip", "field": "daddr"}}, "data": "@m"}}}}"#,
        named,
    );
    assert_eq!(found.kernel_dests, prefixes(&["198.18.7.1/32"]));
    assert!(!found.all_ports);
}

#[test]
fn regular_chains_are_bounded_by_the_rules_that_jump_to_them() {
    // tests/fixtures/nft/chains.nft: jumps guarded by ports, a UDP-only jump, a port vmap,
    // a named verdict map (not followed), a destination-guarded goto two levels up, and a
    // jump from the output hook (ignored).
    let found = parse_ruleset(include_str!("../../tests/fixtures/nft/chains.json")).unwrap();
    assert_eq!(ports(&found), vec![22, 80, 443, 8080]);
    assert_eq!(found.kernel_dests, prefixes(&["198.18.8.8/32"]));
    assert!(found.all_ports, "the chain behind the named verdict map is unbounded");
    assert_eq!(found.unclassified.len(), 1, "{:?}", found.unclassified);
    assert!(found.unclassified[0].contains("chain viamap"), "{}", found.unclassified[0]);
}

#[test]
fn a_chain_reached_only_from_an_unguarded_base_rule_stays_unbounded() {
    let json = r#"{"nftables": [
      {"chain": {"family": "ip", "table": "t", "name": "pre", "type": "nat", "hook": "prerouting"}},
      {"chain": {"family": "ip", "table": "t", "name": "a"}},
      {"chain": {"family": "ip", "table": "t", "name": "orphan"}},
      {"rule": {"family": "ip", "table": "t", "chain": "pre", "handle": 1, "expr": [{"jump": {"target": "a"}}]}},
      {"rule": {"family": "ip", "table": "t", "chain": "a", "handle": 2, "expr": [{"dnat": {"addr": "198.18.0.1"}}]}},
      {"rule": {"family": "ip", "table": "t", "chain": "orphan", "handle": 3, "expr": [{"dnat": {"addr": "198.18.0.1"}}]}}
    ]}"#;
    let found = parse_ruleset(json).unwrap();
    assert!(found.all_ports);
    assert_eq!(
        found.unclassified.len(),
        2,
        "no way in is not taken as proof of none: {:?}",
        found.unclassified
    );
}
