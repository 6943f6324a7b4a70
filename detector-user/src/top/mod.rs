//! `syndetector top`: a live terminal view of a running agent (its `/metrics` and `/top`),
//! or with `--once` (or without a terminal) one plain-table snapshot.
//!
//! - `client`: ureq fetch, exposition and JSON parsed into a `Snapshot`.
//! - `view`: the ratatui drawing; `table`: the `--once` text and the source ordering.

mod client;
mod table;
mod view;

#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, VecDeque},
    io::IsTerminal,
    process::ExitCode,
    time::{Duration, Instant},
};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use client::{Client, Snapshot};
use table::Sort;

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// The agent's metrics address, HOST:PORT.
    #[arg(long, visible_alias = "metrics-addr", default_value = "127.0.0.1:9787")]
    pub addr: String,
    /// Print one snapshot as a plain table and exit (the default without a terminal).
    #[arg(long)]
    pub once: bool,
    /// Print the JSON of `/top` and exit.
    #[arg(long)]
    pub json: bool,
}

/// Points of history the sparklines keep: five minutes at one poll a second.
const HISTORY: usize = 300;
const REFRESH: Duration = Duration::from_secs(1);

/// What the live view shows, built up from polls.
#[derive(Default)]
pub struct App {
    pub addr: String,
    pub snapshot: Option<Snapshot>,
    /// Packets per second by "verdict/reason" between the last two polls.
    pub rates: BTreeMap<String, f64>,
    pub syn_history: VecDeque<u64>,
    pub half_open_history: VecDeque<u64>,
    pub sort: Sort,
    pub paused: bool,
    pub error: Option<String>,
}

impl App {
    /// Takes a poll made `dt` seconds after the previous one (0: not comparable, e.g. the
    /// first after a pause; the rates shown stay as they were).
    pub fn update(&mut self, snap: Snapshot, dt: f64) {
        if let Some(prev) = self.snapshot.as_ref().filter(|_| dt > 0.0) {
            self.rates = client::packet_rates(prev, &snap, dt);
        }
        push(&mut self.syn_history, snap.syns_per_second);
        push(&mut self.half_open_history, snap.half_open);
        self.snapshot = Some(snap);
        self.error = None;
    }
}

fn push(history: &mut VecDeque<u64>, value: f64) {
    if history.len() == HISTORY {
        history.pop_front();
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a rate or count for a sparkline"
    )]
    history.push_back(value.round().max(0.0) as u64);
}

pub fn main(args: &TopArgs) -> ExitCode {
    let client = Client::new(&args.addr);
    let result = if args.json {
        client.get("/top").map(|body| println!("{body}")).map_err(|e| e.to_string())
    } else if args.once || !std::io::stdout().is_terminal() {
        client.snapshot().map(|s| print!("{}", table::render(&s))).map_err(|e| e.to_string())
    } else {
        live(&client, &args.addr).map_err(|e| format!("terminal: {e}"))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("syndetector top: agent at {}: {e}", args.addr);
            ExitCode::FAILURE
        }
    }
}

/// The live view until `q`; the terminal is restored however it ends.
fn live(client: &Client, addr: &str) -> std::io::Result<()> {
    let mut terminal = ratatui::init();
    let mut app = App { addr: addr.to_owned(), ..App::default() };
    let mut last_poll: Option<Instant> = None;
    let result = loop {
        if !app.paused && last_poll.is_none_or(|t| t.elapsed() >= REFRESH) {
            let dt = last_poll.map_or(0.0, |t| t.elapsed().as_secs_f64());
            last_poll = Some(Instant::now());
            match client.snapshot() {
                Ok(s) => app.update(s, dt),
                Err(e) => app.error = Some(e.to_string()),
            }
        }
        if let Err(e) = terminal.draw(|f| view::draw(f, &app)) {
            break Err(e);
        }
        let wait = match last_poll {
            _ if app.paused => REFRESH,
            Some(t) => REFRESH.saturating_sub(t.elapsed()),
            None => Duration::ZERO,
        };
        match event::poll(wait) {
            Ok(false) => {}
            Ok(true) => match event::read() {
                Ok(Event::Key(k)) if k.kind == KeyEventKind::Press => match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => break Ok(()),
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => break Ok(()),
                    KeyCode::Char('p') => {
                        app.paused = !app.paused;
                        // The first poll after a pause is not compared with the last before.
                        last_poll = None;
                    }
                    KeyCode::Char('s') => app.sort = app.sort.next(),
                    _ => {}
                },
                Ok(_) => {}
                Err(e) => break Err(e),
            },
            Err(e) => break Err(e),
        }
    };
    ratatui::restore();
    result
}
