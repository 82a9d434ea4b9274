//! Every shipped scenario, run at a smaller size, meets its key bound; and a scenario file with a
//! seed gives one trace.

#![allow(clippy::unwrap_used)] // helpers of tests; a panic is how they fail

use std::path::PathBuf;
use std::time::Duration;

use spore_sim::scenario::{self, Dur, Report, RunReport, Scenario};

fn shipped(name: &str) -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../scenarios")
        .join(format!("{name}.toml"));
    Scenario::load(&path).unwrap()
}

fn mins(m: u64) -> Dur {
    Dur(Duration::from_secs(60 * m))
}

fn run(s: &Scenario) -> Report {
    s.validate("test").unwrap();
    let report = scenario::run(s, &mut |_| {}).unwrap();
    println!("{}", report.summary_table());
    report
}

fn metric(run: &RunReport, name: &str) -> f64 {
    *run.summary
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", run.summary.keys()))
}

/// The dht-10k workload at 300 nodes: lookups find the true closest node.
fn small_dht() -> Scenario {
    let mut s = shipped("dht-10k");
    s.nodes = 300;
    s.duration = mins(3);
    s.join.settle = mins(1);
    let lookups = s.lookups.as_mut().unwrap();
    lookups.count = 400;
    lookups.over = mins(2);
    s
}

#[test]
fn dht_lookups_succeed_without_churn() {
    let report = run(&small_dht());
    let r = &report.runs[0];
    assert!(metric(r, "lookup_success") >= 0.99, "{:?}", r.summary);
    assert!(metric(r, "hops_p99") <= 6.0);
    assert_eq!(metric(r, "lookups"), 400.0);
    assert_eq!(r.counters["codec_errors"], 0);
    assert!(report.passed(), "{:?}", report.checks);
    // Charts render.
    for (file, chart) in report.charts() {
        let svg = spore_sim::plot::render_svg(&chart).unwrap();
        assert!(svg.starts_with("<svg"), "{file}");
    }
}

#[test]
fn same_scenario_same_trace_other_seed_other_trace() {
    let mut s = small_dht();
    s.nodes = 60;
    s.lookups.as_mut().unwrap().count = 50;
    let a = run(&s);
    let b = run(&s);
    assert_eq!(a.runs[0].trace_hash, b.runs[0].trace_hash);
    assert_eq!(a.runs[0].summary, b.runs[0].summary);
    s.seed += 1;
    let c = run(&s);
    assert_ne!(a.runs[0].trace_hash, c.runs[0].trace_hash);
}

#[test]
fn churn_keeps_lookups_and_values_working() {
    let mut s = shipped("dht-churn");
    s.nodes = 300;
    s.duration = mins(40);
    s.sample_every = mins(5);
    s.join.settle = mins(1);
    let churn = s.churn.as_mut().unwrap();
    churn.session_median = mins(10);
    churn.downtime_median = mins(10);
    let lookups = s.lookups.as_mut().unwrap();
    lookups.count = 400;
    lookups.over = mins(40);
    let values = s.values.as_mut().unwrap();
    values.count = 20;
    values.gets = 20;
    let report = run(&s);
    let r = &report.runs[0];
    assert!(r.counters["departures"] > 100, "{:?}", r.counters);
    let online = metric(r, "online_share_mean");
    assert!((0.4..0.8).contains(&online), "online share {online}");
    assert!(metric(r, "lookup_success") >= 0.9, "{:?}", r.summary);
    assert!(metric(r, "availability") >= 0.9, "{:?}", r.summary);
    assert_eq!(metric(r, "forged_values_accepted"), 0.0);
}

#[test]
fn a_partition_is_felt_and_healed() {
    let mut s = shipped("partition-merge");
    s.nodes = 200;
    s.duration = mins(16);
    s.join.settle = mins(1);
    let p = s.partition.as_mut().unwrap();
    p.at = mins(2);
    p.duration = mins(5);
    p.probes = 10;
    let report = run(&s);
    let r = &report.runs[0];
    assert!(metric(r, "probe_success_before") >= 0.99, "{:?}", r.summary);
    assert!(metric(r, "probe_success_during") <= 0.01, "{:?}", r.summary);
    assert_eq!(metric(r, "recovered"), 1.0, "{:?}", r.summary);
    assert!(metric(r, "recovery_secs") <= 300.0);
    assert!(r.counters["connections_cut"] > 0);
}

#[test]
fn eclipse_defences_keep_honest_nodes_in_view() {
    let mut s = shipped("eclipse");
    s.nodes = 603;
    s.duration = mins(4);
    s.join.settle = mins(1);
    let a = s.adversary.as_mut().unwrap();
    a.count = 100;
    a.prefix_bits = 6;
    a.target_lookups = 100;
    let report = run(&s);
    let (on, off) = (&report.runs[0], &report.runs[1]);
    assert_eq!(off.label, "defences off");
    let (on_ok, off_ok) = (metric(on, "target_success"), metric(off, "target_success"));
    assert!(on_ok >= 0.9, "defences on: {:?}", on.summary);
    assert!(on_ok >= off_ok, "on {on_ok} off {off_ok}");
    // Lookups take at most 10 contacts from one /16: half of each answer stays honest.
    assert!(metric(on, "honest_fraction") >= 0.45, "{:?}", on.summary);
    assert!(metric(on, "honest_fraction") > metric(off, "honest_fraction"));
}

#[test]
fn honest_lookups_succeed_with_a_fifth_of_the_network_sybils_from_one_subnet() {
    let mut s = shipped("sybil");
    s.nodes = 400;
    s.duration = mins(4);
    s.join.settle = mins(1);
    let lookups = s.lookups.as_mut().unwrap();
    lookups.count = 400;
    lookups.over = mins(3);
    let report = run(&s);
    let (on, off) = (&report.runs[0], &report.runs[1]);
    assert_eq!(off.label, "defences off");
    assert!(
        metric(on, "lookup_success") >= 0.99,
        "defences on: {:?}",
        on.summary
    );
    assert!(metric(on, "lookup_success") >= metric(off, "lookup_success"));
}

/// The EigenTrust threat models at 300 nodes: no forged value is ever accepted, and with
/// reputation the honest readers are handed less forged data than without, in every model.
#[test]
fn reputation_cuts_the_forged_data_honest_readers_are_handed() {
    let mut s = shipped("reputation");
    s.nodes = 300;
    s.duration = mins(6);
    s.values.as_mut().unwrap().gets = 100;
    let report = run(&s);
    for r in &report.runs {
        println!(
            "{}: forged share {:.4} ({} of {}), distrusted {}, availability {}",
            r.label,
            metric(r, "forged_record_share"),
            metric(r, "forged_records_received"),
            metric(r, "value_records_received"),
            metric(r, "peers_distrusted"),
            metric(r, "availability")
        );
        assert_eq!(metric(r, "forged_values_accepted"), 0.0, "{}", r.label);
    }
    for model in ["independent", "colluding", "camouflaged"] {
        let find = |label: &str| report.runs.iter().find(|r| r.label == label).unwrap();
        let on = if model == "independent" {
            &report.runs[0]
        } else {
            find(model)
        };
        let off = find(&format!("{model}, no reputation"));
        let (on, off) = (
            metric(on, "forged_record_share"),
            metric(off, "forged_record_share"),
        );
        assert!(on < off, "{model}: {on} with reputation, {off} without");
    }
}

#[test]
fn scale_runs_every_size() {
    let mut s = shipped("scale");
    s.sizes = vec![100, 400];
    s.duration = mins(2);
    s.join.settle = mins(1);
    let lookups = s.lookups.as_mut().unwrap();
    lookups.count = 200;
    lookups.over = mins(1);
    let report = run(&s);
    assert_eq!(report.runs.len(), 2);
    assert_eq!(report.runs[1].nodes, 400);
    for r in &report.runs {
        assert!(
            metric(r, "lookup_success") >= 0.99,
            "{}: {:?}",
            r.label,
            r.summary
        );
        assert!(r.wall_secs > 0.0);
    }
    let files: Vec<String> = report.charts().into_iter().map(|(f, _)| f).collect();
    assert!(files.contains(&"scale-hops.svg".to_string()), "{files:?}");
}

#[test]
fn super_peers_cover_every_leaf_recover_from_losing_half_and_are_not_needed_for_lookups() {
    let mut s = shipped("superpeers");
    s.nodes = 400;
    s.duration = mins(8);
    s.join.settle = mins(1);
    let sp = s.superpeers.as_mut().unwrap();
    sp.remove[0].at = mins(4);
    sp.remove[1].at = mins(6);
    let lookups = s.lookups.as_mut().unwrap();
    lookups.count = 600;
    lookups.over = mins(7);
    let report = run(&s);
    let r = &report.runs[0];
    assert!(metric(r, "superpeer_leaves") > 200.0, "{:?}", r.summary);
    // Every leaf held three super-peers from two groups or more, from full coverage on.
    assert_eq!(
        metric(r, "superpeer_coverage_steady_min"),
        1.0,
        "{:?}",
        r.summary
    );
    // Half crashed: coverage fell, and came back within two minutes.
    assert!(metric(r, "removal1_coverage_min") < 1.0);
    assert!(
        metric(r, "removal1_restore_secs") <= 120.0,
        "{:?}",
        r.summary
    );
    // All crashed: nobody is covered, and lookups still succeed.
    assert_eq!(metric(r, "superpeers_serving"), 0.0);
    assert!(metric(r, "lookups_after_last_removal") > 50.0);
    assert!(
        metric(r, "lookup_success_after_last_removal") >= 0.99,
        "{:?}",
        r.summary
    );
    assert!(report.passed(), "{:?}", report.checks);
}

#[test]
fn every_shipped_scenario_parses() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| {
            Scenario::load(&p).unwrap();
            p.file_stem().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "dht-10k",
            "dht-churn",
            "eclipse",
            "partition-merge",
            "pubsub-10k",
            "pubsub-1k",
            "reputation",
            "scale",
            "superpeers",
            "swarm-500",
            "swarm-freeriders",
            "sybil"
        ]
    );
}

/// A small DHT scenario written inline, for the roles and models no shipped file exercises.
fn inline(extra: &str) -> Scenario {
    let text = format!(
        "name = \"inline\"\nnodes = 200\nduration = \"4m\"\n\
         [node]\nping = false\npex = false\n[join]\nsettle = \"1m\"\n{extra}"
    );
    Scenario::from_toml(&text, "inline").unwrap()
}

#[test]
fn nodes_behind_nat_use_the_dht_as_clients() {
    let s = inline(
        "[network]\nnat = { public = 0.5, cone = 0.3, symmetric = 0.15, udp_blocked = 0.05 }\n\
         [lookups]\ncount = 200\nover = \"3m\"\n",
    );
    let report = run(&s);
    let r = &report.runs[0];
    // Lookups from every kind of node (blocked ones aside, which cannot connect at all) find
    // the closest public node; nobody ever connects to a node behind a NAT.
    assert!(metric(r, "lookup_success") >= 0.9, "{:?}", r.summary);
    assert!(r.counters["dials_refused_nat"] > 0, "{:?}", r.counters);
}

#[test]
fn poisoned_values_are_never_accepted() {
    let s = inline(
        "[values]\ncount = 10\nget_every = \"1m\"\ngets = 20\n\
         [adversary]\nrole = \"poisoner\"\ncount = 40\n",
    );
    let report = run(&s);
    let r = &report.runs[0];
    assert_eq!(metric(r, "forged_values_accepted"), 0.0, "{:?}", r.summary);
    assert!(metric(r, "availability") >= 0.9, "{:?}", r.summary);
}

#[test]
fn droppers_and_free_riders_slow_lookups_but_do_not_stop_them() {
    for role in ["dropper", "free_rider"] {
        let s = inline(&format!(
            "[lookups]\ncount = 150\nover = \"3m\"\n\
             [adversary]\nrole = \"{role}\"\ncount = 30\ndrop_rate = 0.8\n"
        ));
        let report = run(&s);
        let r = &report.runs[0];
        assert!(
            metric(r, "lookup_success") >= 0.9,
            "{role}: {:?}",
            r.summary
        );
        assert!(
            r.counters["messages_dropped_by_adversary"] > 0,
            "{role}: {:?}",
            r.counters
        );
    }
}
