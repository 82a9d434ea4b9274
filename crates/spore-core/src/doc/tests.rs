use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;
use crate::identity::Keypair;

fn key(n: u8) -> Keypair {
    Keypair::from_secret_bytes([n; 32])
}

/// Three writers (the owner and two admitted ones), each with its own replica.
fn writers() -> (Vec<Keypair>, Vec<Document>) {
    let keys = vec![key(1), key(2), key(3)];
    let mut owner = Document::create(&keys[0], 7, Limits::default());
    owner.add_writer(&keys[0], keys[1].peer_id()).unwrap();
    let access = owner.add_writer(&keys[0], keys[2].peer_id()).unwrap();
    let replicas = (0..3)
        .map(|_| Document::open(access.clone(), Limits::default()).unwrap())
        .collect();
    (keys, replicas)
}

#[derive(Debug, Clone)]
enum Action {
    /// Writer makes an edit of the kind under test; the numbers pick its details.
    Edit { writer: usize, a: u16, b: u16 },
    /// Writer `to` receives every change writer `from` has.
    Sync { from: usize, to: usize },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (0..3usize, any::<u16>(), any::<u16>()).prop_map(|(writer, a, b)| Action::Edit { writer, a, b }),
        1 => (0..3usize, 0..3usize).prop_map(|(from, to)| Action::Sync { from, to }),
    ]
}

fn edit(kind: Kind, doc: &Document, a: u16, b: u16) -> Option<Edit> {
    let k = "k".to_string();
    let small = Value::Int(i64::from(a % 5));
    Some(match kind {
        Kind::Register => Edit::Set(k, Value::Int(i64::from(a))),
        Kind::Counter => Edit::Increment(k, i64::from(a % 21) - 10),
        Kind::GCounter => Edit::GIncrement(k, u64::from(a % 10)),
        Kind::Set if b % 2 == 0 => Edit::Add(k, small),
        Kind::Set => Edit::Remove(k, small),
        Kind::Text => {
            let len = doc.text("k").map_or(0, |t| t.chars().count());
            if b % 3 == 0 && len > 0 {
                let pos = usize::from(a) % len;
                let n = 1 + usize::from(b) % (len - pos).min(4);
                Edit::Delete(k, pos, n)
            } else {
                let pos = usize::from(a) % (len + 1);
                let text = ["a", "bc", "déf", "🍄"][usize::from(b) % 4].to_string();
                Edit::Insert(k, pos, text)
            }
        }
    })
}

fn all_changes(replicas: &[Document]) -> Vec<Change> {
    let mut out: Vec<Change> = Vec::new();
    for r in replicas {
        for id in r.change_ids().ids() {
            let c = r.get_change(id).unwrap().clone();
            if !out.iter().any(|x| x.id() == *id) {
                out.push(c);
            }
        }
    }
    out
}

fn sync(from: &Document, to: &mut Document) {
    let changes: Vec<Change> = from.changes_since(&Default::default()).cloned().collect();
    for c in changes {
        to.apply(c).unwrap();
    }
}

const KINDS: [Kind; 5] = [
    Kind::Register,
    Kind::Counter,
    Kind::GCounter,
    Kind::Set,
    Kind::Text,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any replicas that received the same set of changes, in any order and with duplicates,
    /// are equal — for every kind of value.
    #[test]
    fn replicas_that_saw_the_same_changes_are_equal(
        kind in 0..5usize,
        actions in prop::collection::vec(action(), 1..40),
        order_seed in any::<u64>(),
        dups in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let kind = KINDS[kind];
        let (keys, mut replicas) = writers();
        for a in actions {
            match a {
                Action::Edit { writer, a, b } => {
                    if let Some(e) = edit(kind, &replicas[writer], a, b) {
                        replicas[writer].change(&keys[writer], vec![e]).unwrap();
                    }
                }
                Action::Sync { from, to } if from != to => {
                    let src = replicas[from].clone();
                    sync(&src, &mut replicas[to]);
                }
                Action::Sync { .. } => {}
            }
        }
        let mut changes = all_changes(&replicas);
        for d in &dups {
            if !changes.is_empty() {
                changes.push(changes[d.index(changes.len())].clone());
            }
        }
        let mut rng = ChaCha20Rng::seed_from_u64(order_seed);
        crate::random::shuffle(&mut rng, &mut changes);
        // A fresh replica takes them in that order (waiting ones wait); every writer takes
        // them all too.
        let access = replicas[0].access().clone();
        let mut fresh = Document::open(access, Limits::default()).unwrap();
        for c in &changes {
            fresh.apply(c.clone()).unwrap();
        }
        prop_assert_eq!(fresh.pending(), 0);
        for r in &mut replicas {
            for c in &changes {
                r.apply(c.clone()).unwrap();
            }
        }
        for r in &replicas {
            prop_assert_eq!(r.render(), fresh.render());
            prop_assert_eq!(r.clock(), fresh.clock());
        }
    }
}

/// Plays `actions` on the writers' replicas.
fn play(kind: Kind, keys: &[Keypair], replicas: &mut [Document], actions: &[Action]) {
    for a in actions {
        match *a {
            Action::Edit { writer, a, b } => {
                if let Some(e) = edit(kind, &replicas[writer], a, b) {
                    replicas[writer].change(&keys[writer], vec![e]).unwrap();
                }
            }
            Action::Sync { from, to } if from != to => {
                let src = replicas[from].clone();
                catch_up(&src, &mut replicas[to]);
            }
            Action::Sync { .. } => {}
        }
    }
}

/// What a sync session does: the checkpoint's state first if `to` lacks changes it covers,
/// then the log.
fn catch_up(from: &Document, to: &mut Document) {
    if let Some((cp, state)) = from.snapshot()
        && !cp.is_covered_by(to.clock())
    {
        assert!(to.restore(cp.clone(), state.to_vec()).unwrap());
    }
    sync(from, to);
}

fn everyone_syncs(replicas: &mut [Document]) {
    for _ in 0..2 {
        for from in 0..replicas.len() {
            let src = replicas[from].clone();
            for to in replicas.iter_mut() {
                catch_up(&src, to);
            }
        }
    }
}

fn clock_of(doc: &Document) -> Vec<(Actor, u64)> {
    doc.clock().iter().map(|(a, n)| (*a, *n)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Folding stable changes into a checkpoint changes no replica's state; replicas that
    /// folded it, restored from its state (a reader that was away) or never compacted keep
    /// converging as editing goes on.
    #[test]
    fn checkpoints_change_no_state_and_replicas_keep_converging(
        kind in 0..5usize,
        before in prop::collection::vec(action(), 1..40),
        after in prop::collection::vec(action(), 0..30),
        reader_saw_some in any::<bool>(),
    ) {
        let kind = KINDS[kind];
        let (keys, mut replicas) = writers();
        let access = replicas[0].access().clone();
        play(kind, &keys, &mut replicas, &before);
        let mut reader = Document::open(access.clone(), Limits::default()).unwrap();
        if reader_saw_some {
            sync(&replicas[2].clone(), &mut reader);
        }
        everyone_syncs(&mut replicas);
        // A replica that never compacts, as the reference.
        let mut plain = Document::open(access, Limits::default()).unwrap();
        sync(&replicas[0], &mut plain);
        for w in 1..3 {
            let clock = clock_of(&replicas[w]);
            replicas[0].note_clock(w as Actor, &clock);
        }
        prop_assert_eq!(replicas[0].stable(), replicas[0].clock().clone());
        let rendered = replicas[0].render();
        match replicas[0].make_checkpoint(&keys[0], 0).unwrap() {
            Some(cp) => {
                prop_assert_eq!(replicas[0].len(), 0);
                prop_assert_eq!(cp.changes(), replicas[0].applied());
                for r in &mut replicas[1..] {
                    prop_assert!(r.offer_checkpoint(cp.clone()).unwrap());
                    prop_assert!(r.can_fold());
                    prop_assert_eq!(r.fold().unwrap() as u64, cp.changes());
                    prop_assert_eq!(r.len(), 0);
                }
            }
            None => prop_assert_eq!(replicas[0].applied(), 0),
        }
        for r in &replicas {
            prop_assert_eq!(r.render(), rendered.clone());
        }
        catch_up(&replicas[1].clone(), &mut reader);
        prop_assert_eq!(reader.render(), rendered);
        prop_assert_eq!(reader.clock(), replicas[1].clock());

        replicas.push(reader);
        play(kind, &keys, &mut replicas[..3], &after);
        everyone_syncs(&mut replicas);
        for r in &replicas {
            sync(r, &mut plain);
        }
        for r in &replicas {
            prop_assert_eq!(r.render(), plain.render());
            prop_assert_eq!(r.clock(), plain.clock());
            prop_assert_eq!(r.pending(), 0);
        }
    }
}

#[test]
fn a_checkpoint_waits_for_every_writer_and_frees_the_log() {
    let (keys, mut r) = writers();
    let text = |n: usize| format!("line {n} of a text that is typed and then deleted\n");
    for n in 0..200 {
        r[0].change(&keys[0], vec![Edit::Insert("t".into(), 0, text(n))])
            .unwrap();
        let len = r[0].text("t").unwrap().chars().count();
        r[0].change(&keys[0], vec![Edit::Delete("t".into(), 0, len)])
            .unwrap();
    }
    r[0].change(
        &keys[0],
        vec![Edit::Set("title".into(), Value::Str("kept".into()))],
    )
    .unwrap();
    // Writers 1 and 2 have not said what they applied: nothing is stable yet.
    assert!(r[0].stable().is_empty());
    assert_eq!(r[0].make_checkpoint(&keys[0], 0).unwrap(), None);
    let owner = r[0].clone();
    sync(&owner, &mut r[1]);
    let clock = clock_of(&r[1]);
    r[0].note_clock(1, &clock);
    assert!(r[0].stable().is_empty(), "writer 2 still holds it back");
    sync(&owner, &mut r[2]);
    let clock = clock_of(&r[2]);
    r[0].note_clock(2, &clock);
    assert_eq!(r[0].stable(), *r[0].clock());
    // Not worth it below the threshold.
    let before = r[0].size();
    assert_eq!(r[0].make_checkpoint(&keys[0], before + 1).unwrap(), None);
    let cp = r[0].make_checkpoint(&keys[0], 0).unwrap().unwrap();
    assert_eq!(cp.changes(), 401);
    assert_eq!(r[0].len(), 0);
    let after = r[0].size();
    assert!(
        after * 10 < before,
        "{before} B of changes became {after} B of state"
    );
    assert_eq!(r[0].get("title"), Some(&Value::Str("kept".into())));
    assert_eq!(r[0].text("t").as_deref(), Some(""));
    // A stranger's checkpoint, a truncated state, a state from another checkpoint: refused.
    let stranger = Checkpoint::new(
        &key(9),
        r[0].id(),
        1,
        &cp.clock(),
        r[0].snapshot().unwrap().1,
    );
    assert!(matches!(
        r[1].offer_checkpoint(stranger.clone()),
        Err(DocError::BadCheckpoint(_))
    ));
    let state = r[0].snapshot().unwrap().1.to_vec();
    let mut fresh = Document::open(r[0].access().clone(), Limits::default()).unwrap();
    assert!(
        fresh
            .restore(cp.clone(), state[..state.len() - 1].to_vec())
            .is_err()
    );
    assert!(fresh.restore(stranger, state.clone()).is_err());
    assert!(fresh.restore(cp.clone(), state).unwrap());
    assert_eq!(fresh.render(), r[0].render());
    // Writing goes on after the fold, on every replica.
    let more = r[1]
        .change(&keys[1], vec![Edit::Insert("t".into(), 0, "after".into())])
        .unwrap();
    r[1].offer_checkpoint(cp.clone()).unwrap();
    assert_eq!(r[1].fold().unwrap(), 401);
    r[0].apply(more.clone()).unwrap();
    fresh.apply(more).unwrap();
    assert_eq!(r[0].render(), r[1].render());
    assert_eq!(fresh.render(), r[1].render());
}

#[test]
fn a_checkpoint_that_cuts_causal_context_is_refused() {
    let (keys, mut r) = writers();
    let a = r[0]
        .change(&keys[0], vec![Edit::Insert("t".into(), 0, "ab".into())])
        .unwrap();
    r[1].apply(a).unwrap();
    r[1].change(&keys[1], vec![Edit::Insert("t".into(), 1, "X".into())])
        .unwrap();
    let owner = r[1].clone();
    sync(&owner, &mut r[0]);
    // An owner that signs writer 1's change without the owner's change it depends on.
    let cut: checkpoint::Clock = [(1, 1)].into_iter().collect();
    let state = r[0].snapshot().map(|(_, s)| s.to_vec()).unwrap_or_default();
    let cp = Checkpoint::new(&keys[0], r[0].id(), 1, &cut, &state);
    r[1].offer_checkpoint(cp).unwrap();
    assert!(matches!(r[1].fold(), Err(DocError::BadCheckpoint(_))));
    assert_eq!(r[1].len(), 2);
    // What writers claim need not be closed; the owner's checkpoint is.
    r[0].note_clock(1, &[(1, 1)]);
    r[0].note_clock(2, &[(1, 1)]);
    assert_eq!(r[0].stable(), cut);
    assert_eq!(r[0].make_checkpoint(&keys[0], 0).unwrap(), None);
}

#[test]
fn concurrent_add_wins_over_remove_and_lww_picks_one_winner() {
    let (keys, mut r) = writers();
    let add = r[0]
        .change(&keys[0], vec![Edit::Add("s".into(), Value::Int(1))])
        .unwrap();
    r[1].apply(add).unwrap();
    // Writer 1 removes the element while writer 0 adds it again, concurrently.
    let remove = r[1]
        .change(&keys[1], vec![Edit::Remove("s".into(), Value::Int(1))])
        .unwrap();
    let again = r[0]
        .change(&keys[0], vec![Edit::Add("s".into(), Value::Int(1))])
        .unwrap();
    r[0].apply(remove).unwrap();
    r[1].apply(again).unwrap();
    assert_eq!(r[0].set("s"), vec![&Value::Int(1)]);
    assert_eq!(r[0].render(), r[1].render());
    // Concurrent register writes: both replicas keep the same one.
    let x = r[0]
        .change(
            &keys[0],
            vec![Edit::Set("x".into(), Value::Str("a".into()))],
        )
        .unwrap();
    let y = r[1]
        .change(
            &keys[1],
            vec![Edit::Set("x".into(), Value::Str("b".into()))],
        )
        .unwrap();
    r[0].apply(y).unwrap();
    r[1].apply(x).unwrap();
    assert_eq!(r[0].get("x"), r[1].get("x"));
}

#[test]
fn only_writers_write_and_forgeries_are_refused() {
    let (keys, mut r) = writers();
    let stranger = key(9);
    assert_eq!(
        r[0].change(&stranger, vec![Edit::Set("k".into(), Value::Null)])
            .unwrap_err(),
        DocError::NotAWriter
    );
    // A writer's change re-signed by someone else does not verify.
    let good = r[1]
        .change(&keys[1], vec![Edit::Set("k".into(), Value::Int(1))])
        .unwrap();
    let mut bytes = good.encode();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let forged: Change = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(r[0].apply(forged).unwrap_err(), DocError::BadSignature);
    assert_eq!(r[0].len(), 0);
    // A change for another document is refused.
    let other = Document::create(&keys[0], 8, Limits::default());
    let mut other = other;
    let foreign = other
        .change(&keys[0], vec![Edit::Set("k".into(), Value::Int(2))])
        .unwrap();
    assert_eq!(r[0].apply(foreign).unwrap_err(), DocError::WrongDocument);
    r[0].apply(good).unwrap();
    assert_eq!(r[0].get("k"), Some(&Value::Int(1)));
}

#[test]
fn a_change_waits_for_its_predecessors_and_the_waiting_room_is_bounded() {
    let (keys, mut r) = writers();
    let first = r[0]
        .change(&keys[0], vec![Edit::Increment("c".into(), 1)])
        .unwrap();
    let second = r[0]
        .change(&keys[0], vec![Edit::Increment("c".into(), 2)])
        .unwrap();
    let out = r[1].apply(second.clone()).unwrap();
    assert_eq!((out.applied, out.pending), (0, 1));
    assert_eq!(r[1].counter("c"), 0);
    let out = r[1].apply(first).unwrap();
    assert_eq!((out.applied, out.pending), (2, 0));
    assert_eq!(r[1].counter("c"), 3);
    assert!(r[1].apply(second).unwrap().duplicate);

    let limits = Limits {
        max_pending: 2,
        ..Limits::default()
    };
    let mut small = Document::open(r[0].access().clone(), limits).unwrap();
    let later: Vec<Change> = (0..4)
        .map(|i| {
            r[0].change(&keys[0], vec![Edit::Increment("c".into(), i)])
                .unwrap()
        })
        .collect();
    small.apply(later[2].clone()).unwrap();
    small.apply(later[3].clone()).unwrap();
    assert_eq!(
        small.apply(later[1].clone()).unwrap_err(),
        DocError::PendingFull
    );
}

#[test]
fn an_invalid_edit_changes_nothing_and_the_quota_holds() {
    let (keys, mut r) = writers();
    let err = r[0]
        .change(
            &keys[0],
            vec![
                Edit::Insert("t".into(), 0, "ok".into()),
                Edit::Insert("t".into(), 99, "past the end".into()),
            ],
        )
        .unwrap_err();
    assert!(matches!(err, DocError::Edit(_)), "{err:?}");
    assert_eq!(r[0].text("t"), None);
    assert_eq!(r[0].len(), 0);

    let limits = Limits {
        quota_bytes: 1000,
        ..Limits::default()
    };
    let mut tiny = Document::open(r[0].access().clone(), limits).unwrap();
    let big = Value::Bytes(vec![0; 600]);
    tiny.change(&keys[0], vec![Edit::Set("a".into(), big.clone())])
        .unwrap();
    assert!(matches!(
        tiny.change(&keys[0], vec![Edit::Set("b".into(), big)]),
        Err(DocError::Quota { .. })
    ));
    // Edits that applied before the quota refused the change are undone.
    tiny.change(&keys[0], vec![Edit::Insert("t".into(), 0, "abc".into())])
        .unwrap();
    let before = tiny.render();
    let err = tiny
        .change(
            &keys[0],
            vec![
                Edit::Delete("t".into(), 1, 1),
                Edit::Insert("t".into(), 0, "x".repeat(400)),
                Edit::Add("s".into(), Value::Int(1)),
            ],
        )
        .unwrap_err();
    assert!(matches!(err, DocError::Quota { .. }), "{err:?}");
    assert_eq!(tiny.render(), before);
    assert_eq!(tiny.text("t").as_deref(), Some("abc"));
    // And a later edit of the same text that is out of range changes nothing either.
    let err = tiny
        .change(
            &keys[0],
            vec![
                Edit::Delete("t".into(), 0, 2),
                Edit::Delete("t".into(), 1, 1),
                Edit::Insert("t".into(), 2, "!".into()),
            ],
        )
        .unwrap_err();
    assert_eq!(
        err,
        DocError::Edit("position 2 is past the end of the text (1 characters)".into())
    );
    assert_eq!(tiny.render(), before);
}

#[test]
fn access_lists_only_grow_and_revocation_cuts_by_number() {
    let (keys, mut r) = writers();
    let owner_doc = &mut r[0];
    // Someone else cannot sign an access list for the document.
    let fake = Access::new(&keys[1], 7, 99, vec![]);
    assert!(owner_doc.set_access(fake).is_err());
    let c1 = r[1]
        .change(&keys[1], vec![Edit::GIncrement("g".into(), 1)])
        .unwrap();
    r[0].apply(c1).unwrap();
    let revoked = r[0].revoke_writer(&keys[0], &keys[1].peer_id()).unwrap();
    assert_eq!(revoked.writers()[1].until, Some(1));
    r[1].set_access(revoked.clone()).unwrap();
    assert_eq!(
        r[1].change(&keys[1], vec![Edit::GIncrement("g".into(), 1)])
            .unwrap_err(),
        DocError::Revoked
    );
    // An older version does not replace a newer one.
    let older = r[2].access().clone();
    assert_eq!(r[1].set_access(older).unwrap_err(), DocError::StaleAccess);
}

#[test]
fn replicas_reconcile_their_change_sets() {
    let (keys, mut r) = writers();
    for i in 0..300 {
        let c = r[0]
            .change(&keys[0], vec![Edit::Increment("c".into(), 1)])
            .unwrap();
        if i % 50 != 7 {
            r[1].apply(c).unwrap();
        }
    }
    // r[1] missed 6 changes (and everything after each gap waits): reconciliation finds them.
    let (a, b) = (r[0].change_ids(), r[1].change_ids());
    let config = reconcile::Config::default();
    let mut msg = b.initiate(&config);
    let mut b_lacks = Vec::new();
    let mut turn_a = true;
    while !msg.is_empty() {
        let step = if turn_a {
            a.respond(&msg, &config)
        } else {
            b.respond(&msg, &config)
        };
        if turn_a {
            b_lacks.extend(step.they_lack);
        } else {
            b_lacks.extend(step.we_lack);
        }
        msg = step.reply;
        turn_a = !turn_a;
    }
    b_lacks.sort();
    b_lacks.dedup();
    for id in &b_lacks {
        let c = r[0].get_change(id).unwrap().clone();
        r[1].apply(c).unwrap();
    }
    assert_eq!(r[1].counter("c"), 300);
    assert_eq!(r[1].pending(), 0);
}

/// The figure for compaction: `cargo test -p spore-core --release compaction_of_an_editing_trace
/// -- --ignored --nocapture`. The first 30,000 edits of the automerge-paper trace (one change
/// per edit, one writer), then one checkpoint: the log's bytes against the state's.
#[test]
#[ignore = "replays 30,000 signed edits; run with --ignored"]
fn compaction_of_an_editing_trace() {
    #[derive(serde::Deserialize)]
    struct Trace {
        txns: Vec<Txn>,
    }
    #[derive(serde::Deserialize)]
    struct Txn {
        patches: Vec<(usize, usize, String)>,
    }
    let Some(path) = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared/data/editing-traces/automerge-paper.json.gz"))
        .find(|p| p.is_file())
    else {
        eprintln!("skipped: shared/data/editing-traces not found");
        return;
    };
    let file = std::fs::File::open(path).unwrap();
    let trace: Trace =
        serde_json::from_reader(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
            .unwrap();
    let owner = key(1);
    let mut doc = Document::create(&owner, 1, Limits::default());
    let started = std::time::Instant::now();
    let mut edits = 0;
    for txn in trace.txns.iter().take(30_000) {
        let mut ops = Vec::new();
        for (pos, del, ins) in &txn.patches {
            if *del > 0 {
                ops.push(Edit::Delete("paper".into(), *pos, *del));
            }
            if !ins.is_empty() {
                ops.push(Edit::Insert("paper".into(), *pos, ins.clone()));
            }
        }
        doc.change(&owner, ops).unwrap();
        edits += 1;
    }
    let replayed = started.elapsed();
    let (log_bytes, text) = (doc.size(), doc.text("paper").unwrap());
    let started = std::time::Instant::now();
    let cp = doc.make_checkpoint(&owner, 0).unwrap().unwrap();
    let folded = started.elapsed();
    assert_eq!(doc.text("paper").unwrap(), text);
    assert_eq!(cp.changes(), edits);
    eprintln!(
        "{edits} edits ({replayed:.1?}): log {log_bytes} B; checkpoint state {} B ({:.1} % of \
         the log; visible text {} B), folded in {folded:.1?}",
        doc.size(),
        100.0 * doc.size() as f64 / log_bytes as f64,
        text.len()
    );
    assert!(doc.size() * 5 < log_bytes);
}
