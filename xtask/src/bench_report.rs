//! The report of `cargo xtask bench`: every part of the bench adds rows (what, figure, unit,
//! ratio, the target where the issue states one); at the end they are written as a Markdown
//! table (`bench.md`) and a bar chart of the per-path costs (`bench.png`, plotters) into
//! `target/bench-results/<UTC timestamp>/`, with the machine and the command. `--update-doc`
//! copies both into BENCHMARKS.md and docs/bench.png.
//!
//! A report states figures; nothing here judges them (tests never fail on a timing).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};
use plotters::prelude::*;

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// Which part of the bench: "verifier", "per path", "peer", "agent".
    pub section: &'static str,
    pub what: String,
    pub figure: f64,
    pub unit: &'static str,
    /// A comparison, already phrased ("2.31 × helper floor").
    pub ratio: Option<String>,
    /// The issue's target for this figure, if it states one.
    pub target: Option<&'static str>,
}

/// Where the bench ran and how it was started: printed at the top of the report.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub load_at_start: String,
    pub date_utc: String,
    pub command: String,
}

impl Machine {
    /// Reads /proc at the start of the bench (the load average is the one before our work).
    pub fn probe(command: String) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim()))
            .unwrap_or("unknown")
            .to_owned();
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default().trim().to_owned();
        let load = read("/proc/loadavg").split(' ').take(3).collect::<Vec<_>>().join(" ");
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            kernel: read("/proc/sys/kernel/osrelease"),
            load_at_start: load,
            date_utc: utc_now("%Y-%m-%d %H:%M UTC"),
            command,
        }
    }
}

pub struct Report {
    pub machine: Machine,
    pub rows: Vec<Row>,
    /// Lines said about the run: what was skipped and why, where the sender saturated...
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(machine: Machine) -> Self {
        Self { machine, rows: Vec::new(), notes: Vec::new() }
    }

    pub fn row(
        &mut self,
        section: &'static str,
        what: impl Into<String>,
        figure: f64,
        unit: &'static str,
    ) -> &mut Row {
        self.rows.push(Row { section, what: what.into(), figure, unit, ratio: None, target: None });
        self.rows.last_mut().expect("just pushed")
    }

    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        println!("bench: {note}");
        self.notes.push(note);
    }

    /// The table and notes, as BENCHMARKS.md shows them.
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Machine: {} ({} cores), kernel {}; load average at start {}; {}.",
            m.cpu, m.cores, m.kernel, m.load_at_start, m.date_utc
        );
        let _ = writeln!(s, "Command: `{}`\n", m.command);
        s.push_str("| part | what | figure | unit | ratio | target |\n|---|---|---:|---|---|---|\n");
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                r.section,
                r.what,
                format_figure(r.figure),
                r.unit,
                r.ratio.as_deref().unwrap_or(""),
                r.target.unwrap_or("")
            );
        }
        if !self.notes.is_empty() {
            s.push('\n');
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    /// Writes `bench.md` and `bench.png` into `dir` (created); returns the two paths.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let md = dir.join("bench.md");
        std::fs::write(&md, self.markdown()).with_context(|| format!("writing {}", md.display()))?;
        let png = dir.join("bench.png");
        self.plot(&png).with_context(|| format!("drawing {}", png.display()))?;
        println!("bench: report written to {} and {}", md.display(), png.display());
        Ok((md, png))
    }

    /// A horizontal bar per program path (ns per packet, net of the trivial XDP_PASS):
    /// ours, the baselines and the kernel selftest peer on one scale.
    fn plot(&self, png: &Path) -> Result<()> {
        register_font()?;
        // Net figures only (the absolute XDP_PASS is not on the same scale), first row on top.
        let bars: Vec<&Row> = self
            .rows
            .iter()
            .rev()
            .filter(|r| r.unit == "ns/packet" && matches!(r.section, "per path" | "peer"))
            .filter(|r| !r.what.ends_with(", absolute"))
            .collect();
        let n = bars.len().max(1);
        let height = u32::try_from(120 + 36 * n).unwrap_or(800);
        let root = BitMapBackend::new(png, (1200, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let max = bars.iter().map(|r| r.figure).fold(1.0_f64, f64::max) * 1.15;
        #[allow(clippy::cast_precision_loss, reason = "a handful of bars")]
        let top = n as f64 - 0.5;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "ns per SYN, minus a trivial XDP_PASS (BPF_PROG_TEST_RUN), {}",
                    self.machine.date_utc
                ),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(420)
            .build_cartesian_2d(0.0..max, -0.5..top)?;
        let names: Vec<String> = bars.iter().map(|r| r.what.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|y: &f64| label_at(&names, *y))
            .x_desc("ns per packet")
            .label_style(("sans-serif", 14))
            .draw()?;
        chart.draw_series(bars.iter().enumerate().map(|(i, r)| {
            #[allow(clippy::cast_precision_loss, reason = "a handful of bars")]
            let y = i as f64;
            let color = if r.section == "peer" { RGBColor(200, 90, 40) } else { RGBColor(40, 100, 180) };
            Rectangle::new([(0.0, y - 0.35), (r.figure.max(0.0), y + 0.35)], color.filled())
        }))?;
        chart.draw_series(bars.iter().enumerate().map(|(i, r)| {
            #[allow(clippy::cast_precision_loss, reason = "a handful of bars")]
            let y = i as f64;
            Text::new(format!(" {:.0}", r.figure), (r.figure.max(0.0), y + 0.15), ("sans-serif", 14))
        }))?;
        root.present()?;
        Ok(())
    }
}

/// The bar's name for a y label at (or very near) a bar's index, nothing between bars.
fn label_at(names: &[String], y: f64) -> String {
    let i = y.round();
    if (y - i).abs() > 1e-6 || i < 0.0 {
        return String::new();
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "checked non-negative, small")]
    names.get(i as usize).cloned().unwrap_or_default()
}

fn format_figure(x: f64) -> String {
    if x.abs() >= 100.0 || x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

/// plotters draws text with ab_glyph from a TrueType file (no C font libraries): Debian's
/// fonts-dejavu-core, installed by `cargo xtask setup`.
fn register_font() -> Result<()> {
    const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    static REGISTERED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if REGISTERED.get().is_some() {
        return Ok(());
    }
    let bytes = std::fs::read(FONT).with_context(|| format!("reading {FONT} (package fonts-dejavu-core)"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
        .map_err(|_| anyhow::anyhow!("{FONT} is not a usable TrueType font"))?;
    let _ = REGISTERED.set(());
    Ok(())
}

/// `date -u +FORMAT` (no date crate for one timestamp).
pub fn utc_now(format: &str) -> String {
    Command::new("date")
        .args(["-u", &format!("+{format}")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// `target/bench-results/<UTC timestamp>`.
pub fn results_dir() -> PathBuf {
    crate::workspace_root().join("target/bench-results").join(utc_now("%Y%m%dT%H%M%SZ"))
}

/// BENCHMARKS.md: how to run the bench, the machine, the latest table, the plot (copied to
/// docs/bench.png).
pub fn update_doc(report: &Report, png: &Path) -> Result<()> {
    let root = crate::workspace_root();
    std::fs::copy(png, root.join("docs/bench.png")).context("copying the plot to docs/bench.png")?;
    let doc = format!(
        "# Benchmarks\n\n\
         Written by `sudo cargo xtask bench --update-doc` from its latest run (the same table is in\n\
         `target/bench-results/<UTC timestamp>/bench.md`). How each figure is measured: README's\n\
         Benchmarks section and the `//!` comments of `xtask/src/bench*.rs`.\n\n\
         Commands:\n\n\
         ```sh\n\
         sudo cargo xtask bench --flood --update-doc  # everything (about 4 minutes); rewrites this file\n\
         sudo cargo xtask bench                 # everything but the floods\n\
         sudo cargo xtask bench --quick         # a smoke run: few packets, no 1M-entry agent part\n\
         sudo cargo xtask bench --verifier-only # instructions processed and load time per program\n\
         ```\n\n\
         Reading the figures:\n\n\
         - The machine is a 2-core VM shared with other builds and tests: figures move between\n  \
           runs (tens of percent for the agent's poll and the per-path times); the load average\n  \
           at the start is given. Targets are stated, never enforced.\n\
         - How busy the host was shows in the trivial XDP_PASS's absolute time (the first\n  \
           per-path row): 90-98 ns in all eleven committed runs of 2026-11-25/26, 120-142 ns in\n  \
           the twelve on the busier host of 2026-11-27. On a busier host every path reads higher,\n  \
           and ours more than the floors it is measured against: it reads more distinct cache\n  \
           lines per packet, and on a busy host more of them are evicted between two runs (the\n  \
           profile's stalls sit after those loads: docs/hotpaths.md, \"Where it stands\").\n\
         - Per path: ns per SYN minus a trivial XDP_PASS, one BPF_PROG_TEST_RUN per fresh packet,\n  \
           five rounds through all cases and the median round of each, the path proven by the\n  \
           program's counters, all on one CPU the bench pins itself to (the notes below say\n  \
           which; it did not pin before 2026-11-27 afternoon). The selftest peer is timed the\n  \
           same way on the same SYNs (with real checksums, which it checks), alone and\n  \
           interleaved with our cookie path packet by packet.\n\
         - Floods (docs/lab.md): veth, so the receiver's work runs on the sender's CPU; a defence\n  \
           that costs more per SYN also lowers the rate the sender reaches, and the report says\n  \
           whether the sender or the defence was the limit. CPU per SYN is softirq time above a\n  \
           control dropped at the veth's ingress: a lower bound, noisy at low rates. nftables\n  \
           SYNPROXY loses a few legit requests at the first step (connected, no response within\n  \
           the 1 s client timeout): the legit client reuses source ports whose tuple the server\n  \
           still holds in TIME_WAIT, and SYNPROXY answers such a SYN itself, so the client's ACK\n  \
           meets the TIME_WAIT socket and stalls. Reproduced without any flood (the wiki's rules,\n  \
           the same port twice: the second request times out; without the rules both complete).\n  \
           Our fast path guards against the same case (docs/cookies.md, the closed filter).\n\n\
         ## Latest run\n\n{}\n\
         ![ns per SYN, ours, the baselines and the kernel selftest](docs/bench.png)\n",
        report.markdown()
    );
    std::fs::write(root.join("BENCHMARKS.md"), doc).context("writing BENCHMARKS.md")?;
    println!("bench: BENCHMARKS.md and docs/bench.png updated");
    Ok(())
}
