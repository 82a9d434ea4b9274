//! The shipped pub/sub scenarios, run at a small size, meet their bounds; gossip droppers and
//! spammers do not stop honest delivery; no forged or rejected message reaches an application;
//! and a pub/sub scenario with a seed gives one trace.

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

fn secs(s: u64) -> Dur {
    Dur(Duration::from_secs(s))
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

fn find<'a>(report: &'a Report, label: &str) -> &'a RunReport {
    report.runs.iter().find(|r| r.label == label).unwrap()
}

/// A shipped pub/sub scenario at 150 nodes and 50 messages, its crash moved into the shorter
/// publishing phase.
fn small(name: &str) -> Scenario {
    let mut s = shipped(name);
    s.nodes = 150;
    s.duration = secs(40);
    s.sample_every = secs(10);
    s.join.settle = secs(30);
    let p = s.pubsub.as_mut().unwrap();
    p.messages = 50;
    p.rate = 5.0;
    p.start = secs(5);
    for v in &mut s.variants {
        if let Some(c) = v.crash.as_mut() {
            c.at = secs(5);
        }
    }
    s
}

/// Every variant of a shipped scenario passes its bounds, and each adversary leaves its mark.
fn check_shipped(name: &str) {
    let report = run(&small(name));
    assert!(report.passed(), "{:?}", report.checks);
    assert_eq!(report.runs.len(), 4);
    for r in &report.runs {
        assert!(
            metric(r, "pubsub_delivery") >= 0.99,
            "{}: {:?}",
            r.label,
            r.summary
        );
        assert_eq!(metric(r, "pubsub_messages"), 50.0, "{}", r.label);
        assert_eq!(metric(r, "pubsub_spam_delivered"), 0.0, "{}", r.label);
        assert_eq!(r.counters["codec_errors"], 0);
        assert_eq!(r.counters["pubsub_hops_unknown"], 0, "{}", r.label);
        assert!(metric(r, "pubsub_max_hop") >= 2.0, "{}", r.label);
    }
    let crash = find(&report, "20% crash");
    assert!(
        metric(crash, "pubsub_crashed") >= 25.0,
        "{:?}",
        crash.summary
    );
    let droppers = find(&report, "20% droppers");
    assert!(droppers.counters["messages_dropped_by_adversary"] > 0);
    let spammers = find(&report, "20% spammers");
    assert!(metric(spammers, "pubsub_spam_sent") > 0.0);
    assert!(
        metric(spammers, "pubsub_rejected") > 0.0,
        "{:?}",
        spammers.summary
    );
    assert!(metric(spammers, "pubsub_graylisted") > 0.0);
    // Charts render.
    let files: Vec<String> = report
        .charts()
        .into_iter()
        .map(|(file, chart)| {
            let svg = spore_sim::plot::render_svg(&chart).unwrap();
            assert!(svg.starts_with("<svg"), "{file}");
            file
        })
        .collect();
    for chart in [
        "pubsub-latency.svg",
        "pubsub-hops.svg",
        "pubsub-delivery.svg",
    ] {
        assert!(files.iter().any(|f| f == chart), "{chart} not in {files:?}");
    }
}

#[test]
fn pubsub_1k_meets_its_bounds_at_a_small_size() {
    check_shipped("pubsub-1k");
}

#[test]
fn pubsub_10k_meets_its_bounds_at_a_small_size() {
    check_shipped("pubsub-10k");
}

/// A small pub/sub scenario written inline.
fn inline(extra: &str) -> Scenario {
    let text = format!(
        "name = \"inline\"\nnodes = 120\nduration = \"40s\"\nsample_every = \"10s\"\n\
         [node]\nping = false\npex = false\n[join]\nsettle = \"30s\"\n\
         [pubsub]\nmessages = 40\nrate = 4\nstart = \"5s\"\n{extra}"
    );
    Scenario::from_toml(&text, "inline").unwrap()
}

#[test]
fn gossip_droppers_in_meshes_do_not_stop_delivery() {
    let s = inline("[adversary]\nrole = \"gossip_dropper\"\nfraction = 0.3\n");
    let report = run(&s);
    let r = &report.runs[0];
    assert!(metric(r, "pubsub_delivery") >= 0.99, "{:?}", r.summary);
    // They stayed in meshes and had messages to drop.
    assert!(
        r.counters["messages_dropped_by_adversary"] > 100,
        "{:?}",
        r.counters
    );
}

#[test]
fn forged_and_rejected_messages_never_reach_an_application() {
    for spam in ["forged", "invalid"] {
        let s = inline(&format!(
            "[adversary]\nrole = \"gossip_spammer\"\nfraction = 0.2\nspam = \"{spam}\"\nspam_rate = 10\n"
        ));
        let report = run(&s);
        let r = &report.runs[0];
        assert_eq!(
            metric(r, "pubsub_spam_delivered"),
            0.0,
            "{spam}: {:?}",
            r.summary
        );
        assert!(
            metric(r, "pubsub_delivery") >= 0.99,
            "{spam}: {:?}",
            r.summary
        );
        let caught = match spam {
            // Forged copies of real messages that arrived before the real one.
            "forged" => metric(r, "pubsub_invalid"),
            _ => metric(r, "pubsub_rejected"),
        };
        assert!(caught > 0.0, "{spam}: {:?}", r.summary);
    }
}

#[test]
fn a_spammer_above_the_rate_limit_is_cut_off_and_honest_messages_still_arrive() {
    // Forged copies of messages already seen cost the spammer nothing in score, so it stays
    // below the graylist; the per-peer rate limit is what stops its flood.
    let s = inline(
        "[adversary]\nrole = \"gossip_spammer\"\nfraction = 0.1\nspam = \"forged\"\nspam_rate = 50\n",
    );
    let mut limited = s.clone();
    limited.node.pubsub_rate_limit = Some(20);
    let report = run(&limited);
    let r = &report.runs[0];
    assert!(metric(r, "pubsub_rate_limited") > 0.0, "{:?}", r.summary);
    assert!(metric(r, "pubsub_delivery") >= 0.99, "{:?}", r.summary);
    assert_eq!(metric(r, "pubsub_spam_delivered"), 0.0);
}

#[test]
fn same_pubsub_scenario_same_trace_other_seed_other_trace() {
    let s = inline("[adversary]\nrole = \"gossip_spammer\"\nfraction = 0.1\n");
    let a = run(&s);
    let b = run(&s);
    assert_eq!(a.runs[0].trace_hash, b.runs[0].trace_hash);
    assert_eq!(a.runs[0].summary, b.runs[0].summary);
    let mut other = s.clone();
    other.seed += 1;
    let c = run(&other);
    assert_ne!(a.runs[0].trace_hash, c.runs[0].trace_hash);
}

#[test]
fn pubsub_sections_are_checked() {
    let base = "name = \"x\"\nnodes = 50\nduration = \"1m\"\n";
    let cases = [
        (
            "[adversary]\nrole = \"gossip_dropper\"\ncount = 5\n",
            "needs a [pubsub] section",
        ),
        (
            "[pubsub]\nmessages = 1000\nrate = 10\n",
            "does not end within the measured phase",
        ),
        (
            "[pubsub]\nmessages = 10\nrate = 1\nsubscribers = 0\n",
            "subscribers",
        ),
        (
            "[node]\npubsub_d = 3\npubsub_d_lo = 4\n[pubsub]\nmessages = 10\nrate = 1\n",
            "mesh degrees",
        ),
        (
            "[pubsub]\nmessages = 10\nrate = 1\n[[variants]]\nname = \"v\"\nnode = { pubsub_d_hi = 2 }\n",
            "variant \"v\"",
        ),
        (
            "[pubsub]\nmessages = 10\nrate = 1\ncrash = { fraction = 1.0, at = \"1s\" }\n",
            "crash.fraction",
        ),
    ];
    for (extra, needle) in cases {
        let err = Scenario::from_toml(&format!("{base}{extra}"), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
    }
    // Adversaries as a share of the network follow its size.
    let s = Scenario::from_toml(
        &format!(
            "{base}[pubsub]\nmessages = 10\nrate = 1\n\
             [adversary]\nrole = \"gossip_spammer\"\nfraction = 0.2\n"
        ),
        "t.toml",
    )
    .unwrap();
    assert_eq!(s.adversary.as_ref().unwrap().count_for(1000), 200);
    assert_eq!(s.adversary.as_ref().unwrap().count_for(150), 30);
}
