//! `syndetector top` without an agent or a terminal: a canned exposition and `/top` body
//! into a snapshot, the `--once` table, and the live view drawn into a `TestBackend`.

use ratatui::{backend::TestBackend, Terminal};

use super::{
    client::{packet_rates, parse, Snapshot, TopSource},
    table::{self, Sort},
    view, App,
};

const METRICS: &str = r#"# HELP syndetector_cookies_active 1 while the program answers SYNs with cookies from XDP.
# TYPE syndetector_cookies_active gauge
syndetector_cookies_active 0
# HELP syndetector_half_open Half-open handshakes tracked, host-wide.
# TYPE syndetector_half_open gauge
syndetector_half_open 57
# HELP syndetector_map_fill_ratio Entries over capacity.
# TYPE syndetector_map_fill_ratio gauge
syndetector_map_fill_ratio{map="pending"} 0.0125
syndetector_map_fill_ratio{map="sources"} 0.5
# HELP syndetector_mode The configured mode (1) among all modes (0).
# TYPE syndetector_mode gauge
syndetector_mode{mode="auto"} 0
syndetector_mode{mode="drop"} 1
# HELP syndetector_packets_total Packets the XDP program decided on, by verdict and reason.
# TYPE syndetector_packets_total counter
syndetector_packets_total{reason="blocked",verdict="drop"} 4000
syndetector_packets_total{reason="syn",verdict="pass"} 120
syndetector_packets_total{reason="other",verdict="pass"} 0
# HELP syndetector_syns_per_second SYNs per second over the last poll interval.
# TYPE syndetector_syns_per_second gauge
syndetector_syns_per_second 2010.5
# HELP syndetector_under_attack 1 while a flood is under way.
# TYPE syndetector_under_attack gauge
syndetector_under_attack 1
"#;

const TOP: &str = r#"[
 {"source":"198.18.200.66","syns_per_second":1990.25,"blocked":true,"half_open":50,"block_left_seconds":4.2},
 {"source":"10.0.0.2","syns_per_second":20.0,"blocked":false,"half_open":1,"block_left_seconds":0.0},
 {"source":"2001:db8::7","syns_per_second":0.5,"blocked":false}
]"#;

fn snapshot() -> Snapshot {
    parse(METRICS, TOP).expect("canned exposition and /top")
}

fn source(source: &str, rate: f64, blocked: bool, half_open: u32, left: f64) -> TopSource {
    TopSource { source: source.into(), syns_per_second: rate, blocked, half_open, block_left_seconds: left }
}

#[test]
fn snapshot_from_an_exposition_and_top_json() {
    let s = snapshot();
    let expected = Snapshot {
        syns_per_second: 2010.5,
        half_open: 57.0,
        packets: [("drop/blocked", 4000.0), ("pass/other", 0.0), ("pass/syn", 120.0)]
            .map(|(k, v)| (k.to_owned(), v))
            .into(),
        mode: Some("drop".into()),
        under_attack: true,
        cookies_active: false,
        map_fill: [("pending", 0.0125), ("sources", 0.5)].map(|(k, v)| (k.to_owned(), v)).into(),
        top: vec![
            source("198.18.200.66", 1990.25, true, 50, 4.2),
            source("10.0.0.2", 20.0, false, 1, 0.0),
            source("2001:db8::7", 0.5, false, 0, 0.0),
        ],
    };
    assert_eq!(s, expected);
}

#[test]
fn a_bad_answer_is_an_error() {
    assert!(parse(METRICS, "not json").is_err());
}

#[test]
fn once_table_is_exact() {
    let expected = "\
mode drop  attack YES  cookies off
SYN/s 2010.5  half-open 57
map fill: pending 1.2%  sources 50.0%
packets since start: drop/blocked 4000  pass/syn 120

rank  source                                        SYN/s half-open  state
   1  198.18.200.66                                1990.2        50  blocked (5s left)
   2  10.0.0.2                                       20.0         1
   3  2001:db8::7                                     0.5         0
";
    assert_eq!(table::render(&snapshot()), expected);
}

#[test]
fn once_table_without_sources() {
    let s = Snapshot { top: vec![], ..snapshot() };
    assert!(table::render(&s).ends_with("\nno SYNs from any source during the last poll\n"));
}

#[test]
fn packet_rates_are_deltas_per_second() {
    let before = snapshot();
    let mut after = snapshot();
    after.packets.insert("drop/blocked".into(), 6000.0);
    after.packets.insert("pass/syn".into(), 10.0); // went down: the agent restarted
    let rates: Vec<(String, f64)> = packet_rates(&before, &after, 2.0).into_iter().collect();
    let expected =
        [("drop/blocked", 1000.0), ("pass/other", 0.0), ("pass/syn", 5.0)].map(|(k, v)| (k.to_owned(), v));
    assert_eq!(rates, expected);
}

#[test]
fn sort_keys_order_the_sources() {
    let top = vec![
        source("a", 10.0, false, 9, 0.0),
        source("b", 30.0, false, 1, 0.0),
        source("c", 20.0, true, 2, 3.0),
    ];
    let order = |sort: Sort| sort.apply(&top).into_iter().map(|t| t.source).collect::<Vec<_>>();
    assert_eq!(order(Sort::Rate), ["b", "c", "a"]);
    assert_eq!(order(Sort::HalfOpen), ["a", "c", "b"]);
    assert_eq!(order(Sort::Blocked), ["c", "b", "a"]);
    assert_eq!(Sort::Rate.next().next().next(), Sort::Rate);
}

#[test]
fn live_view_draws_state_history_verdicts_and_sources() {
    let mut app = App { addr: "127.0.0.1:9787".into(), sort: Sort::HalfOpen, ..App::default() };
    app.update(snapshot(), 0.0);
    let mut later = snapshot();
    later.packets.insert("drop/blocked".into(), 6000.0);
    later.packets.insert("pass/syn".into(), 5120.0);
    app.update(later, 1.0);
    assert_eq!(app.syn_history, [2011, 2011]);
    let mut terminal = Terminal::new(TestBackend::new(100, 30)).unwrap();
    terminal.draw(|f| view::draw(f, &app)).unwrap();
    let screen: String = terminal
        .backend()
        .buffer()
        .content()
        .chunks(100)
        .map(|row| row.iter().map(ratatui::buffer::Cell::symbol).collect::<String>() + "\n")
        .collect();
    for expected in [
        "mode drop",
        "UNDER ATTACK",
        "cookies off",
        "SYN/s 2010.5",
        "half-open 57",
        "drop/blocked",
        "2000.0",
        "sources      50.0%",
        "sorted by half-open",
        "198.18.200.66",
        "blocked (5s left)",
        "q quit",
    ] {
        assert!(screen.contains(expected), "{expected:?} not on screen:\n{screen}");
    }
    let row = |text: &str| screen.lines().position(|l| l.contains(text)).unwrap();
    assert!(row("pass/syn") < row("drop/blocked"), "busiest verdict first:\n{screen}");
    assert!(row("drop/blocked") < row("pass/other"), "then by rate:\n{screen}");
}
