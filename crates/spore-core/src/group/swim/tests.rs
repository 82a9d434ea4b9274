use std::collections::BTreeSet;

use rand_core::SeedableRng;

use super::*;
use crate::identity::Keypair;

const LATENCY: Duration = Duration::from_millis(10);

fn id(n: u8) -> PeerId {
    Keypair::from_secret_bytes([n + 1; 32]).peer_id()
}

/// `n` members, each running its failure detector, and the messages between them in flight.
struct Group {
    members: Vec<(Swim, ChaCha20Rng)>,
    ids: Vec<PeerId>,
    now: Instant,
    /// (arrival, from, to, message)
    in_flight: Vec<(Instant, usize, usize, Message)>,
    /// Which pairs can talk (symmetric).
    cut: BTreeSet<(usize, usize)>,
    /// Members that are down: they neither send nor receive.
    down: BTreeSet<usize>,
    events: Vec<(Instant, usize, Event)>,
}

impl Group {
    fn new(n: usize) -> Self {
        let ids: Vec<PeerId> = (0..n as u8).map(id).collect();
        let members = (0..n)
            .map(|i| {
                let others: Vec<PeerId> = ids.iter().copied().filter(|p| *p != ids[i]).collect();
                (
                    Swim::new(Config::default(), ids[i], &others, Instant::ZERO),
                    ChaCha20Rng::from_seed([i as u8; 32]),
                )
            })
            .collect();
        Self {
            members,
            ids,
            now: Instant::ZERO,
            in_flight: Vec::new(),
            cut: BTreeSet::new(),
            down: BTreeSet::new(),
            events: Vec::new(),
        }
    }

    fn index(&self, p: &PeerId) -> usize {
        self.ids.iter().position(|x| x == p).unwrap()
    }

    fn can_talk(&self, a: usize, b: usize) -> bool {
        !self.cut.contains(&(a.min(b), a.max(b)))
            && !self.down.contains(&a)
            && !self.down.contains(&b)
    }

    fn split(&mut self, side: &[usize]) {
        for a in 0..self.ids.len() {
            for b in 0..self.ids.len() {
                if side.contains(&a) != side.contains(&b) {
                    self.cut.insert((a.min(b), a.max(b)));
                }
            }
        }
    }

    fn drain(&mut self, i: usize) {
        while let Some((to, msg)) = self.members[i].0.poll_transmit() {
            let j = self.index(&to);
            if self.can_talk(i, j) {
                self.in_flight.push((self.now + LATENCY, i, j, msg));
            }
        }
        while let Some(e) = self.members[i].0.poll_event() {
            self.events.push((self.now, i, e));
        }
    }

    fn run_until(&mut self, end: Instant) {
        loop {
            let timer = self
                .members
                .iter()
                .enumerate()
                .filter(|(i, _)| !self.down.contains(i))
                .filter_map(|(_, (s, _))| s.poll_timeout())
                .min();
            let delivery = self.in_flight.iter().map(|d| d.0).min();
            let Some(next) = [timer, delivery].into_iter().flatten().min() else {
                break;
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            let now = self.now;
            let (due, later): (Vec<_>, Vec<_>) = self.in_flight.drain(..).partition(|d| d.0 <= now);
            self.in_flight = later;
            for (_, from, to, msg) in due {
                if self.can_talk(from, to) {
                    let from_id = self.ids[from];
                    self.members[to].0.handle_message(now, from_id, msg);
                    self.drain(to);
                }
            }
            for i in 0..self.members.len() {
                if self.down.contains(&i) {
                    continue;
                }
                let (s, rng) = &mut self.members[i];
                if s.poll_timeout().is_some_and(|t| t <= now) {
                    s.handle_timeout(now, rng);
                }
                self.drain(i);
            }
        }
        self.now = end;
    }

    fn state(&self, observer: usize, of: usize) -> State {
        self.members[observer].0.state(&self.ids[of]).unwrap()
    }

    /// When the last member reported an event matching `pred` (each member's first one).
    fn all_saw(&self, pred: impl Fn(&Event) -> bool) -> Instant {
        (0..self.members.len())
            .map(|i| {
                self.first(|m, e| m == i && pred(e))
                    .unwrap_or_else(|| panic!("member {i} never saw it"))
            })
            .max()
            .unwrap()
    }

    fn first(&self, pred: impl Fn(usize, &Event) -> bool) -> Option<Instant> {
        self.events
            .iter()
            .find(|(_, i, e)| pred(*i, e))
            .map(|e| e.0)
    }
}

fn secs(s: u64) -> Instant {
    Instant::ZERO + Duration::from_secs(s)
}

#[test]
fn a_healthy_group_suspects_nobody() {
    let mut g = Group::new(6);
    g.run_until(secs(120));
    assert!(g.events.is_empty(), "{:?}", g.events);
    for i in 0..6 {
        assert_eq!(g.members[i].0.health(), 0);
    }
}

#[test]
fn a_crashed_member_is_suspected_then_confirmed_dead_by_everyone() {
    let mut g = Group::new(6);
    g.run_until(secs(10));
    g.down.insert(5);
    g.run_until(secs(60));
    for i in 0..5 {
        assert_eq!(g.state(i, 5), State::Dead, "as member {i} sees it");
        for j in 0..5 {
            if i != j {
                assert_eq!(g.state(i, j), State::Alive);
            }
        }
        assert!(!g.members[i].0.is_partitioned());
    }
    let suspected = g.first(|_, e| *e == Event::Suspected(g.ids[5])).unwrap();
    let dead = g.first(|_, e| *e == Event::Dead(g.ids[5])).unwrap();
    println!(
        "crash at 10 s: suspected at {:.1} s, dead at {:.1} s",
        (suspected - Instant::ZERO).as_secs_f64(),
        (dead - Instant::ZERO).as_secs_f64()
    );
    // Within a few periods each way (one crash in 6 members: no partition).
    assert!(suspected <= secs(10 + 8), "suspected at {suspected:?}");
    assert!(
        dead <= suspected + Duration::from_secs(30),
        "dead at {dead:?}"
    );
}

#[test]
fn a_member_cut_off_from_one_other_is_vouched_for_by_the_rest() {
    // 0 cannot reach 1 directly; indirect probes through the others keep 1 alive.
    let mut g = Group::new(6);
    g.cut.insert((0, 1));
    g.run_until(secs(120));
    assert_eq!(g.state(0, 1), State::Alive);
    assert!(
        !g.events.iter().any(|(_, _, e)| matches!(e, Event::Dead(_))),
        "{:?}",
        g.events
    );
}

#[test]
fn a_three_three_split_is_detected_on_both_sides_and_its_heal_too() {
    let mut g = Group::new(6);
    g.run_until(secs(10));
    g.split(&[0, 1, 2]);
    g.run_until(secs(70));
    for i in 0..6 {
        assert!(g.members[i].0.is_partitioned(), "member {i}");
        let other_side = if i < 3 { 3..6 } else { 0..3 };
        for j in other_side {
            assert_eq!(g.state(i, j), State::Dead);
        }
    }
    let detected = g.all_saw(|e| matches!(e, Event::Partitioned { .. }));
    println!(
        "3 + 3 split at 10 s: every member saw it by {:.1} s",
        (detected - Instant::ZERO).as_secs_f64()
    );
    assert!(
        detected <= secs(10 + 40),
        "last member saw the split at {detected:?}"
    );

    g.cut.clear();
    g.run_until(secs(130));
    for i in 0..6 {
        assert!(
            !g.members[i].0.is_partitioned(),
            "member {i} after the heal"
        );
        for j in 0..6 {
            if i != j {
                assert_eq!(g.state(i, j), State::Alive, "{i} sees {j}");
            }
        }
    }
    let healed = g.all_saw(|e| *e == Event::Healed);
    println!(
        "heal at 70 s: every member saw it by {:.1} s",
        (healed - Instant::ZERO).as_secs_f64()
    );
    assert!(
        healed <= secs(70 + 30),
        "last member saw the heal at {healed:?}"
    );
}

#[test]
fn a_suspected_member_refutes_with_a_new_incarnation() {
    let mut g = Group::new(4);
    g.run_until(secs(5));
    // 3 is unreachable for two seconds: long enough to be suspected, not to be declared dead.
    g.down.insert(3);
    let mut t = 5;
    while !g
        .events
        .iter()
        .any(|(_, _, e)| *e == Event::Suspected(g.ids[3]))
    {
        t += 1;
        g.run_until(secs(t));
        assert!(t < 20, "never suspected");
    }
    g.down.remove(&3);
    g.run_until(secs(t + 30));
    assert!(g.members[3].0.incarnation() >= 1);
    for i in 0..3 {
        assert_eq!(g.state(i, 3), State::Alive, "member {i}");
    }
}

#[test]
fn strangers_and_oversized_updates_are_ignored() {
    let me = id(0);
    let mut s = Swim::new(Config::default(), me, &[id(1)], Instant::ZERO);
    // A stranger's ping gets no answer and changes nothing.
    s.handle_message(
        secs(1),
        id(9),
        Message::Ping {
            seq: 1,
            updates: vec![Update {
                member: id(1),
                incarnation: 5,
                state: State::Dead,
            }],
        },
    );
    assert!(s.poll_transmit().is_none());
    assert_eq!(s.state(&id(1)), Some(State::Alive));
    // A member's message with more updates than allowed: only the first MAX_UPDATES count.
    let updates: Vec<Update> = (0..20)
        .map(|n| Update {
            member: id(1),
            incarnation: n,
            state: State::Suspect,
        })
        .collect();
    s.handle_message(secs(2), id(1), Message::Ping { seq: 2, updates });
    assert!(matches!(
        s.poll_transmit(),
        Some((_, Message::Ack { seq: 2, .. }))
    ));
}

#[test]
fn indirect_probes_that_are_never_answered_do_not_fill_the_relay_table() {
    let mut s = Swim::new(Config::default(), id(0), &[id(1), id(2)], Instant::ZERO);
    let mut rng = ChaCha20Rng::from_seed([0; 32]);
    let ping_req = |seq| Message::PingReq {
        seq,
        target: id(2),
        updates: Vec::new(),
    };
    // Member 2 never answers: the table fills, and a further request is not served.
    for seq in 0..MAX_MEMBERS as u64 {
        s.handle_message(secs(1), id(1), ping_req(seq));
    }
    while s.poll_transmit().is_some() {}
    s.handle_message(secs(1), id(1), ping_req(1_000));
    assert!(s.poll_transmit().is_none());
    // A period later the stale entries are gone and requests are served again.
    s.handle_timeout(secs(3), &mut rng);
    while s.poll_transmit().is_some() {}
    s.handle_message(secs(3), id(1), ping_req(1_001));
    assert!(matches!(
        s.poll_transmit(),
        Some((to, Message::Ping { .. })) if to == id(2)
    ));
}
