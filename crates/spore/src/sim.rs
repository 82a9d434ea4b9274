//! `spore sim`: run a simulation scenario with a progress bar, print its summary and write its
//! metrics and charts.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use spore_sim::plot;
use spore_sim::scenario::{self, Report, Scenario};

use crate::cli::SimArgs;

/// Runs `spore sim`.
pub fn run(args: SimArgs) -> anyhow::Result<()> {
    let mut scenario = Scenario::load(&args.file)?;
    if let Some(n) = args.nodes {
        scenario.nodes = n;
        scenario.sizes.clear();
    }
    if let Some(seed) = args.seed {
        scenario.seed = seed;
    }
    // The overrides may have broken something (e.g. too few nodes for the adversaries).
    scenario.validate(&format!(
        "{} with the command-line overrides",
        args.file.display()
    ))?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("sim-results").join(&scenario.name));
    std::fs::create_dir_all(&out)
        .with_context(|| format!("cannot create the output directory {}", out.display()))?;

    let show = !(args.quiet || args.json);
    // A progress bar on a terminal; elsewhere (a log file, CI) a line now and then, so a long
    // run is not silent for an hour.
    let bar = if show && std::io::stderr().is_terminal() {
        ProgressBar::new(1000)
    } else {
        ProgressBar::hidden()
    };
    let mut lines = (show && bar.is_hidden()).then(|| LineProgress::new(LINE_EVERY));
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}% {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let report = scenario::run(&scenario, &mut |p| {
        let whole = (p.run_index as f64 + p.fraction) / p.runs as f64;
        let message = format!(
            "run {}/{} ({}): {}, {} online, t = {}",
            p.run_index + 1,
            p.runs,
            p.run,
            p.phase,
            p.online,
            humantime::format_duration(Duration::from_secs(p.virtual_time.as_secs()))
        );
        if let Some(lines) = &mut lines {
            lines.report(whole, p.phase, &message);
        }
        bar.set_position((whole * 1000.0) as u64);
        bar.set_message(message);
    })
    .with_context(|| format!("scenario {} failed", args.file.display()))?;
    bar.finish_and_clear();

    write_outputs(&report, &out)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("scenario {} (seed {})", report.scenario, report.seed);
        if !report.description.is_empty() {
            println!("{}", report.description.trim());
        }
        println!();
        print!("{}", report.summary_table());
        println!();
        println!("metrics and charts in {}", out.display());
    }
    if !report.passed() {
        bail!(
            "{} of the scenario's bounds failed",
            report.checks.iter().filter(|c| !c.passed).count()
        );
    }
    Ok(())
}

/// How often a progress line is printed when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(30);

/// Progress as plain lines on stderr: one per phase change, and one every `every` of wall time.
struct LineProgress {
    started: Instant,
    every: Duration,
    last_line: Option<Instant>,
    last_phase: String,
}

impl LineProgress {
    fn new(every: Duration) -> Self {
        Self {
            started: Instant::now(),
            every,
            last_line: None,
            last_phase: String::new(),
        }
    }

    fn report(&mut self, whole: f64, phase: &str, message: &str) {
        let now = Instant::now();
        let due = self.last_line.is_none_or(|t| now >= t + self.every);
        if !due && phase == self.last_phase {
            return;
        }
        self.last_line = Some(now);
        self.last_phase.clear();
        self.last_phase.push_str(phase);
        let elapsed = self.started.elapsed().as_secs();
        eprintln!(
            "[{:02}:{:02}:{:02}] {:>3}% {message}",
            elapsed / 3600,
            elapsed / 60 % 60,
            elapsed % 60,
            (whole * 100.0) as u32
        );
    }
}

/// Writes `metrics.json` and one SVG per chart into `dir`.
fn write_outputs(report: &Report, dir: &Path) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    let path = dir.join("metrics.json");
    std::fs::write(&path, json).with_context(|| format!("cannot write {}", path.display()))?;
    for (file, chart) in report.charts() {
        let svg = plot::render_svg(&chart).with_context(|| format!("cannot draw {file}"))?;
        let path = dir.join(file);
        std::fs::write(&path, svg).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
