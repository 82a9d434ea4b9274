//! What a scenario run measured: JSON-serializable results, checks against the scenario's
//! bounds, a text summary and charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::format::Expect;
pub use super::swarm::LeecherResult;
use crate::plot::{Chart, ChartKind, Series};

/// The results of every run of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// Its description.
    pub description: String,
    /// The seed.
    pub seed: u64,
    /// One per variant and size, in the order of [`Scenario::run_labels`]
    /// (super::Scenario::run_labels).
    pub runs: Vec<RunReport>,
    /// The scenario's bounds, checked.
    pub checks: Vec<Check>,
}

/// One run: one network size, one set of node settings.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Variant and size.
    pub label: String,
    /// Network size.
    pub nodes: usize,
    /// The run's trace hash (hex): equal for equal scenario files and seeds.
    pub trace_hash: String,
    /// Wall-clock time the run took (not part of the simulation; for the record).
    pub wall_secs: f64,
    /// Peak resident memory of the process during the run, where the OS reports it.
    pub peak_rss_bytes: Option<u64>,
    /// Virtual time simulated, joining included.
    pub virtual_secs: f64,
    /// Simulator events processed.
    pub events: u64,
    /// Headline numbers by name: `lookup_success`, `hops_p50`, `latency_p99_ms`, ... (see
    /// `docs/simulator.md` for the list).
    pub summary: BTreeMap<String, f64>,
    /// The measured phase, one sample per `sample_every`.
    pub series: Vec<Sample>,
    /// Lookups by hop count: `(hops, lookups)`.
    pub hops_histogram: Vec<(u32, u64)>,
    /// Lookup latency percentiles in milliseconds: `(percent, latency)` for 0, 5, ..., 100.
    pub latency_cdf_ms: Vec<(f64, f64)>,
    /// Pub/sub deliveries to honest subscribers by hop count: `(hops, deliveries)`.
    pub pubsub_hops_histogram: Vec<(u32, u64)>,
    /// Pub/sub delivery latency percentiles in milliseconds, publication to delivery:
    /// `(percent, latency)` for 0, 1, ..., 100.
    pub pubsub_latency_cdf_ms: Vec<(f64, f64)>,
    /// The swarm's bandwidth classes, in the scenario's order (empty without a `[swarm]`
    /// section).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub swarm_classes: Vec<String>,
    /// The swarm's leechers, one by one (empty without a `[swarm]` section).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub swarm_leechers: Vec<LeecherResult>,
    /// The simulator's counters at the end.
    pub counters: BTreeMap<String, u64>,
}

/// One interval of the measured phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// End of the interval, seconds from the start of the measured phase.
    pub t_secs: f64,
    /// Nodes online at the end.
    pub online: usize,
    /// Random-key lookups finished in the interval.
    pub lookups: u64,
    /// Their success rate (absent if none finished).
    pub lookup_success: Option<f64>,
    /// Value reads finished in the interval.
    pub gets: u64,
    /// Share of them that returned the value (absent if none finished).
    pub availability: Option<f64>,
    /// Lookups across a partition (or, outside one, between its would-be halves) finished.
    pub probes: u64,
    /// Their success rate.
    pub probe_success: Option<f64>,
    /// Messages delivered per second in the interval.
    pub messages_per_sec: f64,
    /// Pub/sub messages published in the interval.
    pub pubsub_published: u64,
    /// Share of their expected honest receivers they reached (by the end of the run).
    pub pubsub_delivery: Option<f64>,
    /// Share of the swarm's contributing leechers that have completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swarm_contributors_done: Option<f64>,
    /// Share of its free riders that have completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swarm_free_riders_done: Option<f64>,
    /// Mean share of the blob the contributing leechers that have started hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swarm_contributors_verified: Option<f64>,
    /// The same for the free riders.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swarm_free_riders_verified: Option<f64>,
    /// Share of the leaves holding their super-peers from two network groups or more.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub superpeer_coverage: Option<f64>,
    /// Super-peers serving.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub superpeers_serving: Option<usize>,
}

/// One bound of the scenario, checked.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The bound.
    pub expect: Expect,
    /// The run it applied to.
    pub run: String,
    /// The measured value (absent if the run has no such metric).
    pub value: Option<f64>,
    /// Whether the bound holds.
    pub passed: bool,
}

impl Report {
    pub(crate) fn check(&mut self, expects: &[Expect]) {
        self.checks = expects
            .iter()
            .map(|e| {
                let run = e
                    .variant
                    .as_ref()
                    .and_then(|v| self.runs.iter().find(|r| &r.label == v))
                    .or(self.runs.first());
                let value = run.and_then(|r| r.summary.get(&e.metric).copied());
                let passed = value.is_some_and(|v| {
                    e.min.is_none_or(|min| v >= min) && e.max.is_none_or(|max| v <= max)
                });
                Check {
                    expect: e.clone(),
                    run: run.map(|r| r.label.clone()).unwrap_or_default(),
                    value,
                    passed,
                }
            })
            .collect();
    }

    /// Whether every bound holds.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// A plain-text table of the headline numbers and the checks.
    pub fn summary_table(&self) -> String {
        let mut out = String::new();
        let mut keys: Vec<&String> = Vec::new();
        for r in &self.runs {
            for k in r.summary.keys() {
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
        let width = keys.iter().map(|k| k.len()).max().unwrap_or(6).max(10);
        let col = self
            .runs
            .iter()
            .map(|r| r.label.len())
            .max()
            .unwrap_or(8)
            .max(12);
        let _ = write!(out, "{:width$}", "metric");
        for r in &self.runs {
            let _ = write!(out, "  {:>col$}", r.label);
        }
        out.push('\n');
        let mut row = |name: &str, cell: &dyn Fn(&RunReport) -> String| {
            let _ = write!(out, "{name:width$}");
            for r in &self.runs {
                let _ = write!(out, "  {:>col$}", cell(r));
            }
            out.push('\n');
        };
        row("nodes", &|r| r.nodes.to_string());
        for k in keys {
            row(k, &|r| {
                r.summary.get(k).map_or("-".into(), |v| format_value(*v))
            });
        }
        row("wall time (s)", &|r| format!("{:.1}", r.wall_secs));
        row("peak RSS (MiB)", &|r| {
            r.peak_rss_bytes.map_or("-".into(), |b| {
                format!("{:.0}", b as f64 / (1 << 20) as f64)
            })
        });
        row("events", &|r| r.events.to_string());
        row("trace", &|r| r.trace_hash[..16].to_string());
        for c in &self.checks {
            let bound = match (c.expect.min, c.expect.max) {
                (Some(min), Some(max)) => format!("in [{min}, {max}]"),
                (Some(min), None) => format!(">= {min}"),
                (None, Some(max)) => format!("<= {max}"),
                (None, None) => String::new(),
            };
            let value = c.value.map_or("missing".into(), format_value);
            let _ = writeln!(
                out,
                "{} {} {bound} ({}: {value})",
                if c.passed { "PASS" } else { "FAIL" },
                c.expect.metric,
                c.run
            );
        }
        out
    }

    /// The charts of this report, each with a file name.
    pub fn charts(&self) -> Vec<(String, Chart)> {
        let mut charts = Vec::new();
        let per_run = |f: &dyn Fn(&RunReport) -> Vec<(f64, f64)>| -> Vec<Series> {
            self.runs
                .iter()
                .map(|r| Series {
                    name: r.label.clone(),
                    points: f(r),
                })
                .filter(|s| !s.points.is_empty())
                .collect()
        };
        let minutes = |s: &Sample| s.t_secs / 60.0;
        let over_time = |f: fn(&Sample) -> Option<f64>| {
            per_run(&|r| {
                r.series
                    .iter()
                    .filter_map(|s| f(s).map(|v| (minutes(s), v)))
                    .collect()
            })
        };
        let mut add =
            |file: &str, title: &str, x: &str, y: &str, kind, series: Vec<Series>, y_range| {
                if !series.is_empty() {
                    charts.push((
                        file.to_string(),
                        Chart {
                            title: format!("{}: {title}", self.scenario),
                            x_label: x.into(),
                            y_label: y.into(),
                            kind,
                            series,
                            y_range,
                        },
                    ));
                }
            };
        let unit = Some((0.0, 1.0));
        add(
            "lookup-success.svg",
            "lookup success over time",
            "minutes",
            "success rate",
            ChartKind::Line,
            over_time(|s| s.lookup_success),
            unit,
        );
        add(
            "availability.svg",
            "value availability over time",
            "minutes",
            "reads that found the value",
            ChartKind::Line,
            over_time(|s| s.availability),
            unit,
        );
        add(
            "cross-lookups.svg",
            "lookups across the partition",
            "minutes",
            "success rate",
            ChartKind::Line,
            over_time(|s| s.probe_success),
            unit,
        );
        let churned = self
            .runs
            .iter()
            .any(|r| r.series.windows(2).any(|w| w[0].online != w[1].online));
        if churned {
            add(
                "online.svg",
                "nodes online",
                "minutes",
                "nodes",
                ChartKind::Line,
                over_time(|s| Some(s.online as f64)),
                None,
            );
        }
        add(
            "hops.svg",
            "lookup hops",
            "hops",
            "lookups",
            ChartKind::Bars,
            per_run(&|r| {
                r.hops_histogram
                    .iter()
                    .map(|(h, n)| (f64::from(*h), *n as f64))
                    .collect()
            }),
            None,
        );
        add(
            "latency.svg",
            "lookup latency",
            "percentile",
            "milliseconds",
            ChartKind::Line,
            per_run(&|r| r.latency_cdf_ms.clone()),
            None,
        );
        add(
            "pubsub-delivery.svg",
            "pub/sub delivery by time of publication",
            "minutes",
            "honest subscribers reached",
            ChartKind::Line,
            over_time(|s| s.pubsub_delivery),
            unit,
        );
        add(
            "pubsub-latency.svg",
            "pub/sub delivery latency (CDF)",
            "percentile",
            "milliseconds",
            ChartKind::Line,
            per_run(&|r| r.pubsub_latency_cdf_ms.clone()),
            None,
        );
        add(
            "pubsub-hops.svg",
            "pub/sub delivery hops",
            "hops",
            "deliveries",
            ChartKind::Bars,
            per_run(&|r| {
                r.pubsub_hops_histogram
                    .iter()
                    .map(|(h, n)| (f64::from(*h), *n as f64))
                    .collect()
            }),
            None,
        );
        // The swarm: one series per run and group (contributors, free riders).
        let multi = self.runs.len() > 1;
        let name = |r: &RunReport, group: &str| match multi {
            true => format!("{}: {group}", r.label),
            false => group.to_string(),
        };
        let groups = [(false, "contributors"), (true, "free riders")];
        let mut cdf = Vec::new();
        let mut progress = Vec::new();
        let mut complete = Vec::new();
        let mut classes = Vec::new();
        let mut class_names: Vec<String> = Vec::new();
        for r in self.runs.iter().filter(|r| !r.swarm_leechers.is_empty()) {
            let names = &r.swarm_classes;
            for (free, group) in groups {
                let members: Vec<&LeecherResult> = r
                    .swarm_leechers
                    .iter()
                    .filter(|l| l.free_rider == free)
                    .collect();
                if members.is_empty() {
                    continue;
                }
                let mut done: Vec<f64> = members.iter().filter_map(|l| l.completion_secs).collect();
                done.sort_by(f64::total_cmp);
                let n = members.len() as f64;
                // At most about 100 points: every k-th completion, and the last.
                let step = done.len().div_ceil(100).max(1);
                let points = done
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| (k + 1) % step == 0 || k + 1 == done.len())
                    .map(|(k, t)| (*t, (k + 1) as f64 / n))
                    .collect();
                cdf.push(Series {
                    name: name(r, group),
                    points,
                });
                let over_time = |f: fn(&Sample) -> Option<f64>| Series {
                    name: name(r, group),
                    points: r
                        .series
                        .iter()
                        .filter_map(|s| f(s).map(|v| (minutes(s), v)))
                        .collect(),
                };
                if free {
                    progress.push(over_time(|s| s.swarm_free_riders_verified));
                    complete.push(over_time(|s| s.swarm_free_riders_done));
                } else {
                    progress.push(over_time(|s| s.swarm_contributors_verified));
                    complete.push(over_time(|s| s.swarm_contributors_done));
                }
                let points = names
                    .iter()
                    .enumerate()
                    .filter_map(|(k, class)| {
                        let mut t: Vec<f64> = members
                            .iter()
                            .filter(|l| l.class == **class)
                            .filter_map(|l| l.completion_secs)
                            .collect();
                        t.sort_by(f64::total_cmp);
                        (!t.is_empty()).then(|| (k as f64, t[(t.len() - 1) / 2]))
                    })
                    .collect();
                classes.push(Series {
                    name: name(r, group),
                    points,
                });
            }
            if class_names.is_empty() {
                class_names.clone_from(names);
            }
        }
        if class_names.len() > 1 {
            let title = format!(
                "median completion time by bandwidth class ({})",
                class_names.join(", ")
            );
            add(
                "swarm-classes.svg",
                &title,
                "class",
                "seconds (completed leechers)",
                ChartKind::Bars,
                classes,
                None,
            );
        }
        add(
            "swarm-completion.svg",
            "swarm completion time (CDF)",
            "seconds from the start of the download",
            "share of the group complete",
            ChartKind::Line,
            cdf,
            unit,
        );
        add(
            "swarm-progress.svg",
            "swarm download progress",
            "minutes",
            "mean share of the blob held",
            ChartKind::Line,
            progress,
            unit,
        );
        add(
            "swarm-complete.svg",
            "swarm leechers complete over time",
            "minutes",
            "share of the group complete",
            ChartKind::Line,
            complete,
            unit,
        );
        if self
            .runs
            .iter()
            .any(|r| r.summary.contains_key("honest_fraction"))
        {
            let bars = self
                .runs
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    Some(Series {
                        name: r.label.clone(),
                        points: vec![(i as f64, *r.summary.get("honest_fraction")?)],
                    })
                })
                .collect();
            add(
                "honest-results.svg",
                "honest share of lookup results for the target",
                "run",
                "honest fraction",
                ChartKind::Bars,
                bars,
                unit,
            );
        }
        let sizes: Vec<&RunReport> = self.runs.iter().collect();
        if sizes.len() > 1 && sizes.windows(2).any(|w| w[0].nodes != w[1].nodes) {
            let log2 = |r: &RunReport| (r.nodes as f64).log2();
            let metric = |name: &'static str| Series {
                name: name.into(),
                points: sizes
                    .iter()
                    .filter_map(|r| Some((log2(r), *r.summary.get(name)?)))
                    .collect(),
            };
            add(
                "scale-hops.svg",
                "lookup hops against network size",
                "log2(nodes)",
                "hops",
                ChartKind::Line,
                vec![metric("hops_p50"), metric("hops_p99")],
                None,
            );
            add(
                "scale-wall-time.svg",
                "simulator wall time against network size",
                "log2(nodes)",
                "seconds",
                ChartKind::Line,
                vec![Series {
                    name: "wall time".into(),
                    points: sizes.iter().map(|r| (log2(r), r.wall_secs)).collect(),
                }],
                None,
            );
            add(
                "scale-memory.svg",
                "simulator peak memory against network size",
                "log2(nodes)",
                "MiB",
                ChartKind::Line,
                vec![Series {
                    name: "peak RSS".into(),
                    points: sizes
                        .iter()
                        .filter_map(|r| {
                            Some((log2(r), r.peak_rss_bytes? as f64 / (1 << 20) as f64))
                        })
                        .collect(),
                }],
                None,
            );
        }
        charts
    }
}

fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e12 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.4}")
    }
}
