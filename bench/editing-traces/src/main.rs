//! Replays real editing traces (josephg/editing-traces, CC BY 4.0) through spore's text CRDT,
//! automerge, yrs and diamond-types; checks every result against the trace's `endContent`;
//! prints time (median of 3 runs), memory (peak and steady, from a counting allocator) and the
//! size of the update one appended character produces.
//!
//! Run: `cargo run --release --manifest-path bench/editing-traces/Cargo.toml [-- DIR]`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ROOT, ReadDoc, TextEncoding};
use spore_core::doc::text::{Text, TextOp};
use yrs::{GetString, OffsetKind, Options, ReadTxn, Transact};

// ---- A global allocator that counts the bytes currently allocated, and their peak ---------

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = CURRENT.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(now, Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

// ---- Traces --------------------------------------------------------------------------------

#[derive(serde::Deserialize)]
struct Trace {
    #[serde(rename = "startContent")]
    start: String,
    #[serde(rename = "endContent")]
    end: String,
    txns: Vec<Txn>,
}

#[derive(serde::Deserialize)]
struct Txn {
    patches: Vec<(usize, usize, String)>,
}

/// A patch with positions in code points (spore, automerge, diamond-types) and in UTF-16
/// units (yrs counts bytes or UTF-16 units only).
struct Patch {
    pos: usize,
    del: usize,
    ins: String,
    pos16: u32,
    del16: u32,
}

/// The trace's transactions as patches. UTF-16 positions come from a side list of the
/// non-ASCII characters in the document (a handful in these traces), so this stays linear.
fn patches(trace: &Trace) -> Vec<Vec<Patch>> {
    // (code point position, extra UTF-16 units) of each non-ASCII character, in order.
    let mut wide: Vec<(usize, usize)> = Vec::new();
    let extra = |c: char| c.len_utf16() - 1;
    let add = |wide: &mut Vec<(usize, usize)>, at: usize, s: &str| {
        let n = s.chars().count();
        for w in wide.iter_mut().filter(|w| w.0 >= at) {
            w.0 += n;
        }
        for (k, c) in s.chars().enumerate() {
            if !c.is_ascii() {
                wide.push((at + k, extra(c)));
            }
        }
        wide.sort_unstable();
    };
    add(&mut wide, 0, &trace.start);
    let units_before = |wide: &[(usize, usize)], p: usize| -> usize {
        p + wide.iter().filter(|w| w.0 < p).map(|w| w.1).sum::<usize>()
    };
    trace
        .txns
        .iter()
        .map(|txn| {
            txn.patches
                .iter()
                .map(|(pos, del, ins)| {
                    let pos16 = units_before(&wide, *pos);
                    let del16 = units_before(&wide, pos + del) - pos16;
                    wide.retain(|w| w.0 < *pos || w.0 >= pos + del);
                    for w in wide.iter_mut().filter(|w| w.0 >= pos + del) {
                        w.0 -= del;
                    }
                    add(&mut wide, *pos, ins);
                    Patch {
                        pos: *pos,
                        del: *del,
                        ins: ins.clone(),
                        pos16: pos16 as u32,
                        del16: del16 as u32,
                    }
                })
                .collect()
        })
        .collect()
}

// ---- The replays ---------------------------------------------------------------------------

const ACTOR: u32 = 1;

fn spore_local(start: &str, txns: &[Vec<Patch>], mut keep: Option<&mut Vec<TextOp>>) -> Text {
    let mut text = Text::new();
    let mut clock = 0;
    let mut record = |op: TextOp| {
        if let Some(ops) = keep.as_deref_mut() {
            ops.push(op);
        }
    };
    if !start.is_empty() {
        record(
            text.local_insert(ACTOR, 0, start, &mut clock)
                .expect("insert"),
        );
    }
    for txn in txns {
        for p in txn {
            if p.del > 0 {
                record(text.local_delete(p.pos, p.del).expect("delete"));
            }
            if !p.ins.is_empty() {
                record(
                    text.local_insert(ACTOR, p.pos, &p.ins, &mut clock)
                        .expect("insert"),
                );
            }
        }
    }
    text
}

fn spore_remote(ops: &[TextOp]) -> Text {
    let mut text = Text::new();
    for op in ops {
        text.apply(op).expect("apply");
    }
    text
}

fn automerge_replay(start: &str, txns: &[Vec<Patch>]) -> (AutoCommit, automerge::ObjId) {
    let mut doc = AutoCommit::new_with_encoding(TextEncoding::UnicodeCodePoint);
    let text = doc.put_object(ROOT, "text", ObjType::Text).expect("text");
    doc.splice_text(&text, 0, 0, start).expect("splice");
    for txn in txns {
        for p in txn {
            doc.splice_text(&text, p.pos, p.del as isize, &p.ins)
                .expect("splice");
        }
    }
    doc.commit();
    (doc, text)
}

fn yrs_replay(start: &str, txns: &[Vec<Patch>]) -> (yrs::Doc, yrs::TextRef) {
    let doc = yrs::Doc::with_options(Options {
        // Yjs clients pick a random 32-bit id; a fixed one keeps runs comparable.
        client_id: yrs::block::ClientID::new(2_654_435_769),
        offset_kind: OffsetKind::Utf16,
        ..Options::default()
    });
    let text = doc.get_or_insert_text("text");
    {
        let mut txn = doc.transact_mut();
        yrs::Text::insert(&text, &mut txn, 0, start);
    }
    for t in txns {
        let mut txn = doc.transact_mut();
        for p in t {
            if p.del16 > 0 {
                yrs::Text::remove_range(&text, &mut txn, p.pos16, p.del16);
            }
            if !p.ins.is_empty() {
                yrs::Text::insert(&text, &mut txn, p.pos16, &p.ins);
            }
        }
    }
    (doc, text)
}

fn dt_replay(start: &str, txns: &[Vec<Patch>]) -> (diamond_types::list::ListCRDT, u32) {
    let mut doc = diamond_types::list::ListCRDT::new();
    let agent = doc.get_or_create_agent_id("spore-bench");
    if !start.is_empty() {
        doc.insert(agent, 0, start);
    }
    for txn in txns {
        for p in txn {
            if p.del > 0 {
                doc.delete(agent, p.pos..p.pos + p.del);
            }
            if !p.ins.is_empty() {
                doc.insert(agent, p.pos, &p.ins);
            }
        }
    }
    (doc, agent)
}

// ---- Measuring -----------------------------------------------------------------------------

struct Row {
    name: &'static str,
    time: Duration,
    peak: usize,
    steady: usize,
}

/// Runs `f` three times: the first run also measures memory (peak while it runs, and what the
/// result still holds), and `content` of its result must equal `end`. Reports the median time
/// and hands back the last result.
fn measure<T>(
    name: &'static str,
    end: &str,
    f: impl Fn() -> T,
    content: impl Fn(&T) -> String,
) -> (Row, T) {
    let mut times = Vec::new();
    let (mut peak, mut steady) = (0, 0);
    let mut last: Option<T> = None;
    for run in 0..3 {
        drop(last.take()); // the previous result goes before the next run
        let base = CURRENT.load(Relaxed);
        PEAK.store(base, Relaxed);
        let t0 = Instant::now();
        let r = f();
        times.push(t0.elapsed());
        if run == 0 {
            peak = PEAK.load(Relaxed) - base;
            steady = CURRENT.load(Relaxed).saturating_sub(base);
            let got = content(&r);
            assert!(got == end, "{name}: the replay does not give endContent");
        }
        last = Some(r);
    }
    times.sort();
    let row = Row {
        name,
        time: times[1],
        peak,
        steady,
    };
    (row, last.expect("three runs"))
}

fn mib(bytes: usize) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "-".into()
    } else {
        format!("{:.2}", a / b)
    }
}

fn traces_dir() -> PathBuf {
    if let Some(dir) = std::env::args_os().nth(1) {
        return dir.into();
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared/data/editing-traces"))
        .find(|d| d.is_dir())
        .expect("shared/data/editing-traces not found: pass the directory as an argument")
}

fn main() {
    let dir = traces_dir();
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read traces dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".json.gz"))
        .collect();
    names.sort();
    println!("Editing traces from {}", dir.display());
    println!("time: median of 3 runs; peak: most bytes allocated during a run; steady: bytes the");
    println!("document still holds after it; ratio: spore (local) / the library.\n");

    let mut updates = Vec::new();
    for path in &names {
        let file = std::fs::File::open(path).expect("open trace");
        let trace: Trace =
            serde_json::from_reader(std::io::BufReader::new(flate2::read::GzDecoder::new(file)))
                .expect("parse trace");
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".json.gz").to_string())
            .unwrap_or_default();
        let txns = patches(&trace);
        let npatches: usize = txns.iter().map(Vec::len).sum();
        println!(
            "## {name}: {} transactions, {npatches} patches, final length {} chars\n",
            trace.txns.len(),
            trace.end.chars().count()
        );

        let start = trace.start.as_str();
        let end = trace.end.as_str();
        let (local, mut spore) = measure(
            "spore (local)",
            end,
            || spore_local(start, &txns, None),
            |t| t.to_string(),
        );
        let mut ops = Vec::new();
        spore_local(start, &txns, Some(&mut ops));
        let (remote, remote_text) = measure(
            "spore (remote)",
            end,
            || spore_remote(&ops),
            |t| t.to_string(),
        );
        drop(ops);
        let remote_state = format!("{remote_text:?}");
        drop(remote_text);
        let (am, (mut am_doc, am_text)) = measure(
            "automerge 0.12",
            end,
            || automerge_replay(start, &txns),
            |(d, t)| d.text(t).expect("text"),
        );
        let (y, (y_doc, y_text)) = measure(
            "yrs 0.28",
            end,
            || yrs_replay(start, &txns),
            |(d, t)| t.get_string(&d.transact()),
        );
        let (dt, (mut dt_doc, dt_agent)) = measure(
            "diamond-types 1.0",
            end,
            || dt_replay(start, &txns),
            |(d, _)| d.branch.content().to_string(),
        );

        println!(
            "| implementation | time | peak memory | steady memory | time ratio | steady ratio |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        for row in [&local, &remote, &am, &y, &dt] {
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                row.name,
                ms(row.time),
                mib(row.peak),
                mib(row.steady),
                ratio(local.time.as_secs_f64(), row.time.as_secs_f64()),
                ratio(local.steady as f64, row.steady as f64),
            );
        }
        println!("\nspore state after the replay: {spore:?} (remote replica: {remote_state})\n");

        // The update one appended character produces, in each system's own wire format.
        let len = spore.len();
        let mut clock = spore.next_counter();
        let op = spore
            .local_insert(ACTOR, len, "x", &mut clock)
            .expect("append");
        let spore_bytes = postcard::to_allocvec(&op).expect("encode").len();

        // Yjs broadcasts the update of each transaction (the `update` event); a peer that
        // sends its state vector gets a diff instead, which carries the whole delete set.
        let event_bytes = std::sync::Arc::new(AtomicUsize::new(0));
        let seen = event_bytes.clone();
        y_doc
            .observe_update_v1("bench", move |_, e| seen.store(e.update.len(), Relaxed))
            .expect("observe");
        let sv = y_doc.transact().state_vector();
        {
            let mut txn = y_doc.transact_mut();
            let at = yrs::Text::len(&y_text, &txn);
            yrs::Text::insert(&y_text, &mut txn, at, "x");
        }
        let yrs_event = event_bytes.load(Relaxed);
        let yrs_diff = y_doc.transact().encode_state_as_update_v1(&sv).len();

        am_doc.save_incremental();
        let at = am_doc.length(&am_text);
        am_doc.splice_text(&am_text, at, 0, "x").expect("splice");
        am_doc.commit();
        let am_bytes = am_doc.save_incremental().len();

        let version = dt_doc.oplog.local_version();
        let at = dt_doc.len();
        dt_doc.insert(dt_agent, at, "x");
        let dt_bytes = dt_doc
            .oplog
            .encode_from(diamond_types::list::encoding::ENCODE_PATCH, &version)
            .len();
        updates.push((name, spore_bytes, yrs_event, yrs_diff, am_bytes, dt_bytes));
    }

    println!("## Bytes of the update for one character appended at the end\n");
    println!("spore: the postcard-encoded TextOp. yrs: the transaction's update event (what Yjs");
    println!(
        "broadcasts), and encode_state_as_update_v1 against the previous state vector (what a"
    );
    println!(
        "peer asking with its state vector gets: it includes the whole delete set). automerge:"
    );
    println!(
        "save_incremental after one committed change. diamond-types: encode_from(ENCODE_PATCH)"
    );
    println!("since the previous version.\n");
    println!(
        "| trace | spore | yrs (update event) | yrs (state-vector diff) | automerge | diamond-types |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, s, ye, yd, a, d) in updates {
        println!("| {name} | {s} B | {ye} B | {yd} B | {a} B | {d} B |");
    }
}
