//! Timing the cases round by round (`ROUNDS`: each case's packets split over the rounds,
//! its median round reported), and after its last round, proving the path every packet
//! took and the state the program left in its maps.

use std::{collections::HashSet, time::Duration};

use anyhow::{bail, ensure, Context, Result};
use aya::{maps::Array, programs::Xdp, Ebpf};
use detector_common::{
    config::{Config, FLAG_COOKIES, FLAG_SKETCH_ADMISSION},
    counters::Counter,
    names,
    sketch::{self, SKETCH_ROWS},
    state::{SourceKey, SourceState},
};

use crate::bench_cases::{
    case_template, counter, is_ack, load_case, monotonic_ns, set_source, source_of, timed_run, Case,
};

/// One case's figures: ns per packet of its program in its median round.
pub(crate) struct Timing {
    pub(crate) name: &'static str,
    pub(crate) ns: f64,
    /// The lowest and highest round: how much the machine moved.
    pub(crate) spread: [f64; 2],
}

/// Rounds through all the cases: each case's packets are split over them, and the case's
/// figure is its median round. A burst of load from the machine's other tenants (they
/// took single cases of one run from about 400 to 670 ns while the cases around them
/// were unmoved) then lands in one round of several cases instead of all of one case.
pub(crate) const ROUNDS: u32 = 5;

/// The rounds a case's packets are split over: one for the tracked SYNs under sketch
/// admission, whose sources must reach the promotion threshold within one sketch epoch
/// (about a second), which packets split over rounds seconds apart would not (`check_state`
/// proves that every source got its entry). The blocked drop and the ACKs run under the
/// same config but never count in the sketch.
fn rounds_of(case: &Case) -> u32 {
    if case.path == Some(Counter::PassSyn) && case.config.is_some_and(|c| c.has(FLAG_SKETCH_ADMISSION)) {
        1
    } else {
        ROUNDS
    }
}

/// A case being timed round by round: its own program instance (fresh maps, so cases do
/// not see each other's state), the packets
/// it sends in all and those sent so far, and each round's ns per packet.
pub(crate) struct Running<'c> {
    case: &'c Case,
    ebpf: Ebpf,
    packets: u32,
    sent: u32,
    sent_sources: HashSet<SourceKey>,
    /// The sketch epochs (`sketch::epoch` of `monotonic_ns`, the program's clock) at the
    /// first packet and after the last: how many epochs the case's SYNs were spread over.
    epochs: Option<(u32, u32)>,
    rounds: Vec<f64>,
}

impl<'c> Running<'c> {
    pub(crate) fn new(object: &[u8], case: &'c Case, packets: u32) -> Result<Self> {
        // Every source of the population at least once: a case claiming a million sources
        // sends a million packets even if fewer were asked for.
        let packets = packets.max(case.sources);
        let ebpf = load_case(object, case)?;
        Ok(Self {
            case,
            ebpf,
            packets,
            sent: 0,
            sent_sources: HashSet::new(),
            epochs: None,
            rounds: Vec::new(),
        })
    }

    /// The next round's share of the packets.
    pub(crate) fn round(&mut self) -> Result<()> {
        let case = self.case;
        let prog: &Xdp = self.ebpf.program(case.program).context("program")?.try_into()?;
        let (mut template, mut out) = (case_template(case), vec![0u8; 256]);
        let mut total = Duration::ZERO;
        let (from, to) = (self.sent, self.packets.min(self.sent + self.packets.div_ceil(rounds_of(case))));
        let first_epoch = match self.epochs {
            Some((first, _)) => first,
            None => sketch::epoch(monotonic_ns()?),
        };
        for i in from..to {
            set_source(&mut template, case.family, i % case.sources);
            self.sent_sources.insert(source_of(&template, case.family));
            total += timed_run(
                prog,
                &template,
                &mut out,
                case.verdict,
                &format_args!("{}: packet {i}", case.name),
            )?;
        }
        self.sent = to;
        self.epochs = Some((first_epoch, sketch::epoch(monotonic_ns()?)));
        if to > from {
            #[allow(clippy::cast_precision_loss, reason = "a duration in ns, far below 2^52")]
            self.rounds.push(total.as_nanos() as f64 / f64::from(to - from));
        }
        Ok(())
    }

    /// Proves the path every packet took and the state it left; the median round.
    /// `own_hashing`: the object was built from this tree, so its sketch cells can be
    /// checked against this build's `sketch::cells` (an older object given with `--object`
    /// may hash sources to other cells).
    pub(crate) fn finish(mut self, own_hashing: bool) -> Result<Timing> {
        let (case, packets) = (self.case, self.packets);
        ensure!(self.sent == packets, "{}: {} of {packets} packets sent", case.name, self.sent);
        let epochs = self.epochs.map_or(1, |(first, last)| last.wrapping_sub(first) + 1);
        check_case(&self.ebpf, case, packets, &self.sent_sources, epochs, own_hashing)?;
        self.rounds.sort_by(f64::total_cmp);
        let ns = *self.rounds.get(self.rounds.len() / 2).context("no rounds")?;
        let spread = [self.rounds[0], self.rounds[self.rounds.len() - 1]];
        Ok(Timing { name: case.name, ns, spread })
    }
}

/// After all of a case's packets: its path counter saw each one, every source of its
/// population was sent, and its maps hold what the path leaves (`check_state`).
fn check_case(
    ebpf: &Ebpf,
    case: &Case,
    packets: u32,
    sent_sources: &HashSet<SourceKey>,
    epochs: u32,
    own_hashing: bool,
) -> Result<()> {
    if let Some(path) = case.path {
        // The fast path renews each listener with a socket-bound answer once a second.
        let renewals = if path == Counter::TxCookieFast { counter(ebpf, Counter::TxCookie)? } else { 0 };
        let counted = counter(ebpf, path)? + renewals;
        ensure!(
            counted == u64::from(packets),
            "{}: counter {path:?} saw {counted} of {packets} packets: another path ran",
            case.name
        );
    }
    ensure!(
        sent_sources.len() == case.sources as usize,
        "{}: {} distinct sources sent, the case claims {}",
        case.name,
        sent_sources.len(),
        case.sources
    );
    if let Some(cfg) = case.config.filter(|_| !is_ack(case)) {
        check_state(ebpf, case, &cfg, sent_sources, packets, epochs, own_hashing)?;
    }
    Ok(())
}

/// What the program's maps say about the sources it saw: in cookie mode, the sketch cells
/// they occupy (the sketch ran: every source in the first row, the later rows only past
/// the hot mark); when tracking, a `SOURCES` entry
/// for the sources the sketch promoted (every one that sent at least the promotion
/// threshold, up to the map's capacity). Printed, and checked against `sent`.
fn check_state(
    ebpf: &Ebpf,
    case: &Case,
    cfg: &Config,
    sent: &HashSet<SourceKey>,
    packets: u32,
    epochs: u32,
    own_hashing: bool,
) -> Result<()> {
    if cfg.has(FLAG_COOKIES) {
        let sketch: Array<_, u64> = Array::try_from(ebpf.map(names::MAP_SKETCH).context("SKETCH")?)?;
        let cells: Vec<u64> = sketch.iter().collect::<Result<_, _>>()?;
        if case.path == Some(Counter::DropBlocked) {
            // Blocked sources are dropped before the sketch counts them.
            let used = cells.iter().filter(|&&c| c != 0).count();
            ensure!(
                used == 0,
                "{}: {used} sketch cells in use: a blocked source's SYN reached the sketch",
                case.name
            );
            println!("  {}: {} distinct sources, all blocked; the sketch untouched", case.name, sent.len());
            return Ok(());
        }
        let mut summary = Vec::new();
        for row in 0..SKETCH_ROWS {
            let expected: HashSet<u32> =
                sent.iter().map(|key| sketch::cells(key, cfg)[row as usize]).collect();
            let used: HashSet<u32> = (row * cfg.sketch_width..(row + 1) * cfg.sketch_width)
                .filter(|&i| match sketch::place(i, cfg.sketch_width) {
                    sketch::Place::First { word, lane } => sketch::lane(cells[word as usize], lane) != 0,
                    sketch::Place::Later(word) => cells[word as usize] != 0,
                })
                .collect();
            // The first row counts every SYN; the later ones only SYNs past the hot mark
            // (none, with the bench's mark, unless an older object counts every row).
            // Another build may place sources elsewhere, or lay the rows out otherwise (an
            // older first row took a word a cell): then only check that the sketch was
            // counted in at all.
            let counted = match (own_hashing, row) {
                (true, 0) => used == expected,
                (true, _) => used.is_subset(&expected),
                (false, 0) => cells.iter().any(|&w| w != 0),
                (false, _) => true,
            };
            ensure!(
                counted,
                "{}: sketch row {row} has {} cells in use, the {} sources sent map to {}: the sketch did not \
                 count every source",
                case.name,
                used.len(),
                sent.len(),
                expected.len()
            );
            summary.push(used.len().to_string());
        }
        println!(
            "  {}: {} distinct sources; sketch cells in use per row: {} of {}",
            case.name,
            sent.len(),
            summary.join("/"),
            cfg.sketch_width
        );
    } else {
        let map = ebpf.map(names::MAP_SOURCES).context("SOURCES")?;
        let aya::maps::Map::LruHashMap(data) = map else {
            bail!("SOURCES is not an LRU hash map");
        };
        let capacity = data.info()?.max_entries() as usize;
        let sources: aya::maps::HashMap<_, SourceKey, SourceState> = aya::maps::HashMap::try_from(map)?;
        let keys: HashSet<SourceKey> = sources.keys().collect::<Result<_, _>>()?;
        let threshold = detector_common::track::promotion_threshold(cfg);
        println!(
            "  {}: {} distinct sources; SOURCES holds {} (capacity {capacity}; exact state from {threshold} SYNs \
             per sketch epoch; the SYNs spread over {epochs} epoch(s))",
            case.name,
            sent.len(),
            keys.len()
        );
        ensure!(keys.is_subset(sent), "{}: SOURCES holds sources that were never sent", case.name);
        // The blocked sources were written before the first packet: all must still be
        // there. A tracked source is sure to reach the threshold within one epoch only if
        // its SYNs, sent round robin, leave at least that many in one of the epochs they
        // spread over (a case that sent each source exactly the threshold across an
        // epoch's end promoted none, and failed a CI run).
        let syns_each = packets / case.sources;
        let all_held = case.path != Some(Counter::PassSyn)
            || syns_each > epochs.saturating_mul(threshold.saturating_sub(1));
        if all_held && sent.len() <= capacity {
            ensure!(keys.len() == sent.len(), "{}: not every source got an entry", case.name);
        }
    }
    Ok(())
}
