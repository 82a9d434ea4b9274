//! Range-based set reconciliation (after Aljoscha Meyer, *Range-Based Set Reconciliation*, 2023):
//! two peers holding sets of 32-byte ids find their difference in a few round trips, with
//! traffic that grows with the size of the difference and the logarithm of the sets, not with
//! the sets themselves.
//!
//! Ids are ordered as byte strings. A message is a list of [`Range`]s that partition the id space
//! in order: each covers the ids from the previous range's upper bound (or the start) up to, not
//! including, its own [`Range::upper`] (`None`: to the end). For each range it carries either
//! nothing more to do ([`Mode::Skip`]), a [`Fingerprint`] of the sender's ids in it, or the ids
//! themselves. A receiver answers a fingerprint that matches its own with `Skip`; one that does
//! not, with its ids if it has at most [`Config::max_ids`] there, and otherwise with
//! [`Config::branches`] fingerprinted sub-ranges of roughly equal count. A receiver of an id list
//! learns exactly which ids each side lacks in that range; if the list asked for a reply, it
//! answers with the ids the sender lacks. A round with nothing but `Skip` ends the exchange.
//!
//! A fingerprint is the first 16 bytes of BLAKE3 over the sum of the range's ids (as 256-bit
//! little-endian numbers, modulo 2²⁵⁶) and their count. Sums over any range come from prefix
//! sums in O(log n), so answering costs O(ranges · log n). Ids are hashes of signed content, so
//! nobody can choose them to make two different sets collide.

use serde::{Deserialize, Serialize};

use crate::wire::{WireError, check_bound};

/// A 32-byte id (in documents: a change's hash).
pub type Id = [u8; 32];

/// Most ranges in one message.
pub const MAX_RANGES: usize = 1024;
/// Most ids in one message (over all its ranges).
pub const MAX_IDS: usize = 8192;

/// A digest of the ids in a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint(pub [u8; 16]);

/// What a range says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Nothing to do here (the fingerprints matched, or the range is settled).
    Skip,
    /// The sender's fingerprint of its ids in the range.
    Fingerprint(Fingerprint),
    /// The sender's ids in the range; with `reply`, the receiver answers with the ids the
    /// sender lacks.
    Ids {
        /// The ids, in order.
        ids: Vec<Id>,
        /// Whether the receiver should answer with its own ids the sender lacks.
        reply: bool,
    },
}

/// One range of a reconciliation message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    /// Exclusive upper bound; `None` is the end of the id space.
    pub upper: Option<Id>,
    /// What the sender says about its ids in the range.
    pub mode: Mode,
}

/// Checks a message's bounds: range and id counts, ranges in increasing order.
pub fn validate(ranges: &[Range]) -> Result<(), WireError> {
    check_bound("reconcile.ranges", ranges.len(), MAX_RANGES)?;
    let ids: usize = ranges
        .iter()
        .map(|r| match &r.mode {
            Mode::Ids { ids, .. } => ids.len(),
            _ => 0,
        })
        .sum();
    check_bound("reconcile.ids", ids, MAX_IDS)
}

/// Tuning of the answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Sub-ranges a mismatching range is split into. Default 16.
    pub branches: usize,
    /// A mismatching range with at most this many of our ids is answered with the ids.
    /// Default 16.
    pub max_ids: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            branches: 16,
            max_ids: 16,
        }
    }
}

/// The result of processing one message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Step {
    /// The answer to send (empty: the exchange is over on our side).
    pub reply: Vec<Range>,
    /// Ids we have that the peer lacks: send it what they stand for.
    pub they_lack: Vec<Id>,
    /// Ids the peer has that we lack: expect or ask for them.
    pub we_lack: Vec<Id>,
    /// The reply had to be cut to fit a message's bounds (see [`IdSet::respond`]).
    pub cut: bool,
}

/// A sorted set of ids with prefix sums, answering reconciliation messages.
#[derive(Debug, Clone)]
pub struct IdSet {
    ids: Vec<Id>,
    /// `prefix[i]` is the sum of `ids[..i]`.
    prefix: Vec<[u64; 4]>,
}

impl Default for IdSet {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl IdSet {
    /// The set of `ids` (sorted and deduplicated here).
    pub fn new(mut ids: Vec<Id>) -> Self {
        ids.sort_unstable();
        ids.dedup();
        let mut prefix = Vec::with_capacity(ids.len() + 1);
        let mut sum = [0u64; 4];
        prefix.push(sum);
        for id in &ids {
            sum = add(sum, limbs(id));
            prefix.push(sum);
        }
        Self { ids, prefix }
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: &Id) -> bool {
        self.ids.binary_search(id).is_ok()
    }

    /// The ids, in order.
    pub fn ids(&self) -> &[Id] {
        &self.ids
    }

    /// The first message of an exchange: one fingerprint over everything (or, for a small set,
    /// the ids).
    pub fn initiate(&self, config: &Config) -> Vec<Range> {
        let mode = if self.ids.len() <= config.max_ids {
            Mode::Ids {
                ids: self.ids.clone(),
                reply: true,
            }
        } else {
            Mode::Fingerprint(self.fingerprint(0, self.ids.len()))
        };
        self.fit(vec![Range { upper: None, mode }]).0
    }

    /// Processes the peer's message. Ranges out of order are treated as ending where the
    /// previous one did (they cover nothing), so a malformed message cannot make us panic.
    ///
    /// The reply always fits a message's bounds ([`MAX_RANGES`], [`MAX_IDS`]), which an answer
    /// to many mismatching ranges would exceed (each splits into [`Config::branches`]
    /// sub-ranges). Two steps cut it, each keeping reconciliation correct, and set
    /// [`Step::cut`]:
    ///
    /// 1. lists of ids the peer lacks (`Ids` without `reply`) become `Skip`: the caller sends
    ///    what they stand for anyway ([`Step::they_lack`]), so the peer need not hear them;
    /// 2. if still too large, the first ranges are kept and the rest of the reply is covered by
    ///    one fingerprint of our ids there, which the peer splits again in a later round.
    pub fn respond(&self, message: &[Range], config: &Config) -> Step {
        let mut step = Step::default();
        let mut lower = 0usize;
        let mut lower_bound: Option<Id> = None;
        let mut any_work = false;
        for range in message {
            let upper = match &range.upper {
                Some(b) => self.ids.partition_point(|id| id < b).max(lower),
                None => self.ids.len(),
            };
            let ours = &self.ids[lower..upper];
            match &range.mode {
                Mode::Skip => step.reply.push(Range {
                    upper: range.upper,
                    mode: Mode::Skip,
                }),
                Mode::Fingerprint(fp) => {
                    if *fp == self.fingerprint(lower, upper) {
                        step.reply.push(Range {
                            upper: range.upper,
                            mode: Mode::Skip,
                        });
                    } else if ours.len() <= config.max_ids {
                        any_work = true;
                        step.reply.push(Range {
                            upper: range.upper,
                            mode: Mode::Ids {
                                ids: ours.to_vec(),
                                reply: true,
                            },
                        });
                    } else {
                        any_work = true;
                        self.split(lower, upper, range.upper, config, &mut step.reply);
                    }
                }
                Mode::Ids { ids, reply } => {
                    let theirs = sorted_within(ids, lower_bound.as_ref(), range.upper.as_ref());
                    // A list that asks for a reply is all the sender has in the range; one
                    // that does not is only what it found we lack.
                    let lack: Vec<Id> = if *reply {
                        ours.iter()
                            .filter(|id| theirs.binary_search(id).is_err())
                            .copied()
                            .collect()
                    } else {
                        Vec::new()
                    };
                    step.we_lack.extend(
                        theirs
                            .iter()
                            .filter(|id| ours.binary_search(id).is_err())
                            .copied(),
                    );
                    if *reply && !lack.is_empty() {
                        any_work = true;
                        step.reply.push(Range {
                            upper: range.upper,
                            mode: Mode::Ids {
                                ids: lack.clone(),
                                reply: false,
                            },
                        });
                    } else {
                        step.reply.push(Range {
                            upper: range.upper,
                            mode: Mode::Skip,
                        });
                    }
                    step.they_lack.extend(lack);
                }
            }
            lower = upper;
            lower_bound = range.upper;
            if range.upper.is_none() {
                break;
            }
        }
        if !any_work {
            step.reply.clear();
        } else {
            merge_skips(&mut step.reply);
            (step.reply, step.cut) = self.fit(std::mem::take(&mut step.reply));
        }
        step
    }

    /// The fingerprint of our ids in `[lower, upper)` (`None`: the start / the end).
    pub fn fingerprint_of(&self, lower: Option<&Id>, upper: Option<&Id>) -> Fingerprint {
        let from = lower.map_or(0, |l| self.ids.partition_point(|id| id < l));
        let to = upper
            .map_or(self.ids.len(), |u| self.ids.partition_point(|id| id < u))
            .max(from);
        self.fingerprint(from, to)
    }

    /// Cuts a reply to the bounds (see [`respond`](Self::respond)); returns it, empty if
    /// nothing but `Skip` is left, and whether it had to change.
    fn fit(&self, mut reply: Vec<Range>) -> (Vec<Range>, bool) {
        let cut = !fits(&reply);
        if cut {
            for r in &mut reply {
                if matches!(r.mode, Mode::Ids { reply: false, .. }) {
                    r.mode = Mode::Skip;
                }
            }
            merge_skips(&mut reply);
        }
        if !fits(&reply) {
            let end = reply.last().and_then(|r| r.upper);
            let mut kept: Vec<Range> = Vec::new();
            let mut ids = 0;
            for r in reply {
                let n = id_count(&r);
                if kept.len() + 2 > MAX_RANGES || ids + n > MAX_IDS {
                    break;
                }
                ids += n;
                kept.push(r);
            }
            let lower = kept.last().and_then(|r| r.upper);
            kept.push(Range {
                upper: end,
                mode: Mode::Fingerprint(self.fingerprint_of(lower.as_ref(), end.as_ref())),
            });
            reply = kept;
        }
        if reply.iter().all(|r| r.mode == Mode::Skip) {
            reply.clear();
        }
        (reply, cut)
    }

    /// Splits `ids[lower..upper]` into fingerprinted sub-ranges of about equal count, the last
    /// ending at `end`.
    fn split(
        &self,
        lower: usize,
        upper: usize,
        end: Option<Id>,
        config: &Config,
        out: &mut Vec<Range>,
    ) {
        let n = upper - lower;
        let branches = config.branches.clamp(2, 256);
        let step = n.div_ceil(branches);
        let mut start = lower;
        while start < upper {
            let stop = (start + step).min(upper);
            let bound = if stop == upper {
                end
            } else {
                Some(self.ids[stop])
            };
            out.push(Range {
                upper: bound,
                mode: Mode::Fingerprint(self.fingerprint(start, stop)),
            });
            start = stop;
        }
    }

    fn fingerprint(&self, lower: usize, upper: usize) -> Fingerprint {
        let sum = sub(self.prefix[upper], self.prefix[lower]);
        let mut h = blake3::Hasher::new();
        for limb in sum {
            h.update(&limb.to_le_bytes());
        }
        h.update(&((upper - lower) as u64).to_le_bytes());
        let mut fp = [0u8; 16];
        fp.copy_from_slice(&h.finalize().as_bytes()[..16]);
        Fingerprint(fp)
    }
}

/// The ids of a peer's list that fall in `[lower, upper)`, sorted and deduplicated.
fn sorted_within(ids: &[Id], lower: Option<&Id>, upper: Option<&Id>) -> Vec<Id> {
    let mut v: Vec<Id> = ids
        .iter()
        .filter(|id| lower.is_none_or(|l| *id >= l) && upper.is_none_or(|u| *id < u))
        .copied()
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn id_count(r: &Range) -> usize {
    match &r.mode {
        Mode::Ids { ids, .. } => ids.len(),
        _ => 0,
    }
}

fn fits(reply: &[Range]) -> bool {
    reply.len() <= MAX_RANGES && reply.iter().map(id_count).sum::<usize>() <= MAX_IDS
}

/// Joins neighbouring `Skip` ranges into one.
fn merge_skips(ranges: &mut Vec<Range>) {
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges.drain(..) {
        if let Some(last) = out.last_mut()
            && last.mode == Mode::Skip
            && r.mode == Mode::Skip
        {
            last.upper = r.upper;
            continue;
        }
        out.push(r);
    }
    *ranges = out;
}

fn limbs(id: &Id) -> [u64; 4] {
    let mut l = [0u64; 4];
    for (i, limb) in l.iter_mut().enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(&id[i * 8..i * 8 + 8]);
        *limb = u64::from_le_bytes(b);
    }
    l
}

fn add(a: [u64; 4], b: [u64; 4]) -> [u64; 4] {
    let mut out = [0u64; 4];
    let mut carry = false;
    for i in 0..4 {
        let (s, c1) = a[i].overflowing_add(b[i]);
        let (s, c2) = s.overflowing_add(u64::from(carry));
        out[i] = s;
        carry = c1 || c2;
    }
    out
}

fn sub(a: [u64; 4], b: [u64; 4]) -> [u64; 4] {
    let mut out = [0u64; 4];
    let mut borrow = false;
    for i in 0..4 {
        let (d, b1) = a[i].overflowing_sub(b[i]);
        let (d, b2) = d.overflowing_sub(u64::from(borrow));
        out[i] = d;
        borrow = b1 || b2;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u64) -> Id {
        *blake3::hash(&n.to_le_bytes()).as_bytes()
    }

    /// Runs an exchange to the end; returns (ids a learned it lacks, ids b learned it lacks,
    /// bytes sent, rounds).
    fn reconcile(a: &IdSet, b: &IdSet) -> (Vec<Id>, Vec<Id>, usize, usize) {
        let config = Config::default();
        let mut msg = a.initiate(&config);
        let (mut a_lacks, mut b_lacks) = (Vec::new(), Vec::new());
        let mut bytes = postcard::to_allocvec(&msg).unwrap().len();
        let mut rounds = 0;
        let mut turn_b = true;
        while !msg.is_empty() {
            rounds += 1;
            assert!(rounds < 64, "no progress");
            let (me, lacks, other_lacks) = if turn_b {
                (b, &mut b_lacks, &mut a_lacks)
            } else {
                (a, &mut a_lacks, &mut b_lacks)
            };
            let step = me.respond(&msg, &config);
            lacks.extend(step.we_lack);
            other_lacks.extend(step.they_lack);
            msg = step.reply;
            bytes += postcard::to_allocvec(&msg).unwrap().len();
            turn_b = !turn_b;
        }
        for v in [&mut a_lacks, &mut b_lacks] {
            v.sort();
            v.dedup();
        }
        (a_lacks, b_lacks, bytes, rounds)
    }

    fn diff(x: &IdSet, y: &IdSet) -> Vec<Id> {
        x.ids().iter().filter(|i| !y.contains(i)).copied().collect()
    }

    proptest! {
        #[test]
        fn finds_exactly_the_difference(
            common in 0u64..3000,
            only_a in prop::collection::btree_set(0u64..1_000_000, 0..40),
            only_b in prop::collection::btree_set(0u64..1_000_000, 0..40),
        ) {
            let base: Vec<Id> = (1_000_000..1_000_000 + common).map(id).collect();
            let a = IdSet::new(base.iter().copied().chain(only_a.iter().map(|n| id(*n))).collect());
            let b = IdSet::new(base.iter().copied().chain(only_b.iter().map(|n| id(*n))).collect());
            let (a_lacks, b_lacks, _, _) = reconcile(&a, &b);
            let mut want_a = diff(&b, &a);
            want_a.sort();
            let mut want_b = diff(&a, &b);
            want_b.sort();
            prop_assert_eq!(a_lacks, want_a);
            prop_assert_eq!(b_lacks, want_b);
        }
    }

    #[test]
    fn traffic_grows_with_the_difference_not_the_set() {
        let base: Vec<Id> = (0..30_000).map(id).collect();
        let a = IdSet::new(base.clone());
        let mut with_ten = base.clone();
        with_ten.extend((200_000..200_010).map(id));
        let b = IdSet::new(with_ten);
        let (a_lacks, b_lacks, bytes, rounds) = reconcile(&a, &b);
        assert_eq!(a_lacks.len(), 10);
        assert!(b_lacks.is_empty());
        // The ids alone are 3.2 MB; the exchange is a few tens of kilobytes.
        assert!(bytes < 100_000, "{bytes} bytes in {rounds} rounds");
        eprintln!("100,000 ids, 10 missing: {bytes} bytes in {rounds} messages");
        let (_, _, same, rounds) = reconcile(&a, &a.clone());
        assert!(same < 100 && rounds == 1, "{same} bytes for equal sets");
    }

    #[test]
    fn hostile_messages_do_not_panic() {
        let a = IdSet::new((0..100).map(id).collect());
        let config = Config::default();
        let weird = vec![
            Range {
                upper: Some([0xff; 32]),
                mode: Mode::Fingerprint(Fingerprint([1; 16])),
            },
            Range {
                upper: Some([0; 32]),
                mode: Mode::Ids {
                    ids: vec![[5; 32], [0xff; 32]],
                    reply: true,
                },
            },
            Range {
                upper: None,
                mode: Mode::Skip,
            },
        ];
        let _ = a.respond(&weird, &config);
        let _ = IdSet::default().respond(&weird, &config);
    }

    /// Every range of a full message mismatching, each split 256 ways with tiny id lists: the
    /// reply is cut to the bounds, and the exchange still finds the whole difference.
    #[test]
    fn replies_always_fit_a_message() {
        let config = Config {
            branches: 256,
            max_ids: 2,
        };
        let ours = IdSet::new((0..30_000).map(id).collect());
        let theirs = IdSet::new((0..30_000).filter(|n| n % 7 != 0).map(id).collect());
        let mut msg = theirs.initiate(&config);
        let (mut lack, mut cuts) = (Vec::new(), 0);
        let mut sides = [&ours, &theirs];
        for _ in 0..2000 {
            let step = sides[0].respond(&msg, &config);
            validate(&step.reply).unwrap();
            cuts += usize::from(step.cut);
            if std::ptr::eq(sides[0], &ours) {
                lack.extend(step.they_lack);
            } else {
                lack.extend(step.we_lack);
            }
            if step.reply.is_empty() {
                break;
            }
            msg = step.reply;
            sides.swap(0, 1);
        }
        lack.sort_unstable();
        lack.dedup();
        assert_eq!(lack.len(), 30_000usize.div_ceil(7));
        assert!(cuts > 0, "the bounds were never reached");
    }
}
