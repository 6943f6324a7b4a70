//! Drawing the live view (ratatui): state line, SYN and half-open sparklines, verdicts per
//! second, map fill, and the top sources.

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Cell, Paragraph, Row, Sparkline, Table},
    Frame,
};

use super::{table, App};

pub fn draw(frame: &mut Frame, app: &App) {
    let [status, sparks, middle, sources, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(status_line(app), status);
    let [syn, half] = Layout::horizontal([Constraint::Ratio(1, 2); 2]).areas(sparks);
    let now = app.snapshot.as_ref();
    let (rate, open) = now.map_or((0.0, 0.0), |s| (s.syns_per_second, s.half_open));
    spark(frame, syn, &format!("SYN/s {rate:.1} (one column a second)"), &app.syn_history);
    spark(frame, half, &format!("half-open {open:.0}"), &app.half_open_history);
    let [verdicts, fill] =
        Layout::horizontal([Constraint::Ratio(2, 3), Constraint::Ratio(1, 3)]).areas(middle);
    // The busiest first: the box shows only a few of the agent's verdict/reason pairs.
    let mut rates: Vec<(&String, &f64)> = app.rates.iter().collect();
    rates.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    let rows = rates.into_iter().map(|(k, v)| Row::new([Cell::from(k.clone()), right(format!("{v:.1}"))]));
    frame.render_widget(
        Table::new(rows, [Constraint::Min(24), Constraint::Length(12)])
            .header(
                Row::new([Cell::from("verdict/reason"), right("packets/s".into())])
                    .style(Style::new().add_modifier(Modifier::BOLD)),
            )
            .block(Block::bordered().title("verdicts")),
        verdicts,
    );
    let fill_lines: Vec<Line> = now
        .map(|s| s.map_fill.iter().map(|(m, r)| Line::from(format!("{m:<10} {:>6.1}%", r * 100.0))).collect())
        .unwrap_or_default();
    frame.render_widget(Paragraph::new(fill_lines).block(Block::bordered().title("map fill")), fill);
    frame.render_widget(source_table(app), sources);
    frame.render_widget(
        Paragraph::new("q quit  p pause  s sort").style(Style::new().add_modifier(Modifier::DIM)),
        keys,
    );
}

fn status_line(app: &App) -> Paragraph<'_> {
    let mut spans = vec![Span::raw(format!("syndetector top  {}  ", app.addr))];
    if let Some(s) = &app.snapshot {
        spans.push(Span::raw(format!("mode {}  ", s.mode.as_deref().unwrap_or("?"))));
        spans.push(if s.under_attack {
            Span::styled("UNDER ATTACK", Style::new().fg(Color::Red).add_modifier(Modifier::BOLD))
        } else {
            Span::styled("calm", Style::new().fg(Color::Green))
        });
        spans.push(Span::raw(format!("  cookies {}", if s.cookies_active { "on" } else { "off" })));
    }
    if app.paused {
        spans.push(Span::styled("  PAUSED", Style::new().fg(Color::Yellow)));
    }
    if let Some(e) = &app.error {
        spans.push(Span::styled(format!("  {e}"), Style::new().fg(Color::Red)));
    }
    Paragraph::new(Line::from(spans))
}

fn spark(frame: &mut Frame, area: Rect, title: &str, history: &std::collections::VecDeque<u64>) {
    // The newest points that fit, oldest on the left.
    let width = usize::from(area.width.saturating_sub(2));
    let skip = history.len().saturating_sub(width);
    let data: Vec<u64> = history.iter().skip(skip).copied().collect();
    frame.render_widget(
        Sparkline::default()
            .block(Block::bordered().title(title.to_owned()))
            .data(&data)
            .style(Style::new().fg(Color::Cyan)),
        area,
    );
}

fn source_table(app: &App) -> Table<'_> {
    let top = app.snapshot.as_ref().map(|s| app.sort.apply(&s.top)).unwrap_or_default();
    let rows = top.iter().enumerate().map(|(i, t)| {
        let style = if t.blocked { Style::new().fg(Color::Red) } else { Style::new() };
        Row::new([
            right(format!("{}", i + 1)),
            Cell::from(t.source.clone()),
            right(format!("{:.1}", t.syns_per_second)),
            right(t.half_open.to_string()),
            Cell::from(table::state(t)),
        ])
        .style(style)
    });
    Table::new(
        rows,
        [
            Constraint::Length(4),
            Constraint::Min(20),
            Constraint::Length(10),
            Constraint::Length(9),
            Constraint::Length(22),
        ],
    )
    .header(
        Row::new(["rank", "source", "SYN/s", "half-open", "state"].map(|h| match h {
            "source" | "state" => Cell::from(h),
            _ => right(h.to_owned()),
        }))
        .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .block(Block::bordered().title(format!("top sources (sorted by {})", app.sort.label())))
}

/// A cell whose text is right-aligned (numbers).
fn right(text: String) -> Cell<'static> {
    Cell::from(Line::from(text).right_aligned())
}
