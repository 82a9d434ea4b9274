//! Peer scores (GossipSub v1.1 style): local, per peer, decaying, summed over topics.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use super::MAX_TOPICS;
use crate::identity::PeerId;
use crate::time::Instant;

/// Most disconnected peers whose (negative) score is remembered.
const MAX_RETAINED: usize = 4096;

/// Scoring weights, caps, decays and thresholds. Decay factors apply per second.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreParams {
    /// P1: score per second in a topic's mesh. Default 0.01.
    pub time_in_mesh_weight: f64,
    /// P1 stops growing after this long. Default 300 s (so at most 3 per topic).
    pub time_in_mesh_cap: Duration,
    /// P2: score per first delivery of a valid message. Default 1.
    pub first_delivery_weight: f64,
    /// P2 counter cap. Default 20.
    pub first_delivery_cap: f64,
    /// P2 decay per second. Default 0.99.
    pub first_delivery_decay: f64,
    /// P4: weight of the squared count of invalid or rejected messages. Default -10, so one
    /// costs 10 and three graylist the sender.
    pub invalid_weight: f64,
    /// P4 decay per second. Default 0.99 (half-life about 70 s).
    pub invalid_decay: f64,
    /// P5: weight of the application-specific score, which is the peer's reputation in the
    /// node's table less a stranger's (from -0.5 to 0.5). Default 10, so a peer the node has
    /// only bad evidence against loses 5, and one with a long good record gains up to 5.
    pub application_weight: f64,
    /// P6: weight of the squared number of peers beyond the threshold sharing one IP address.
    /// Default -10.
    pub ip_colocation_weight: f64,
    /// P6: peers per IP address tolerated (several behind one NAT are normal). Default 3.
    pub ip_colocation_threshold: usize,
    /// P7: weight of the squared behaviour penalty above its threshold. Default -10.
    pub behaviour_weight: f64,
    /// P7: penalty tolerated before it counts (a broken promise can be honest). Default 2.
    pub behaviour_threshold: f64,
    /// P7 decay per second. Default 0.99.
    pub behaviour_decay: f64,
    /// Below this score a peer gets no IHAVE and its IHAVE/IWANT are ignored. Default -10.
    pub gossip_threshold: f64,
    /// Below this a peer gets no flood-published messages. Default -50.
    pub publish_threshold: f64,
    /// Below this everything the peer sends is ignored. Default -80.
    pub graylist_threshold: f64,
    /// Peer exchange is followed only from peers scoring at least this. Default 0.
    pub accept_px_threshold: f64,
    /// How long a disconnected peer's negative score is remembered. Default 10 min.
    pub retain_score: Duration,
}

impl Default for ScoreParams {
    fn default() -> Self {
        Self {
            time_in_mesh_weight: 0.01,
            time_in_mesh_cap: Duration::from_secs(300),
            first_delivery_weight: 1.0,
            first_delivery_cap: 20.0,
            first_delivery_decay: 0.99,
            invalid_weight: -10.0,
            invalid_decay: 0.99,
            application_weight: 10.0,
            ip_colocation_weight: -10.0,
            ip_colocation_threshold: 3,
            behaviour_weight: -10.0,
            behaviour_threshold: 2.0,
            behaviour_decay: 0.99,
            gossip_threshold: -10.0,
            publish_threshold: -50.0,
            graylist_threshold: -80.0,
            accept_px_threshold: 0.0,
            retain_score: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Default)]
struct TopicScore {
    mesh_since: Option<Instant>,
    first: f64,
    invalid: f64,
}

#[derive(Debug, Default)]
struct PeerScore {
    topics: BTreeMap<String, TopicScore>,
    behaviour: f64,
    /// P5, refreshed every heartbeat.
    application: f64,
    ip: Option<IpAddr>,
    /// Set while disconnected: when to forget the peer.
    expires: Option<Instant>,
}

/// Counters below this are zeroed by decay.
const ZERO: f64 = 0.01;

#[derive(Debug)]
pub(super) struct Scores {
    params: ScoreParams,
    peers: BTreeMap<PeerId, PeerScore>,
    per_ip: BTreeMap<IpAddr, usize>,
    /// How many of `peers` are disconnected and remembered (`expires` set).
    retained: usize,
    last_decay: Option<Instant>,
}

impl Scores {
    pub(super) fn new(params: ScoreParams) -> Self {
        Self {
            params,
            peers: BTreeMap::new(),
            per_ip: BTreeMap::new(),
            retained: 0,
            last_decay: None,
        }
    }

    pub(super) fn score(&self, peer: &PeerId, now: Instant) -> f64 {
        let Some(s) = self.peers.get(peer) else {
            return 0.0;
        };
        let p = &self.params;
        let mut score = 0.0;
        for t in s.topics.values() {
            if let Some(since) = t.mesh_since {
                let secs = now
                    .saturating_duration_since(since)
                    .min(p.time_in_mesh_cap)
                    .as_secs_f64();
                score += secs * p.time_in_mesh_weight;
            }
            score += t.first.min(p.first_delivery_cap) * p.first_delivery_weight;
            score += t.invalid * t.invalid * p.invalid_weight;
        }
        score += s.application * p.application_weight;
        if let Some(ip) = s.ip {
            let n = self.per_ip.get(&ip).copied().unwrap_or(0);
            let excess = n.saturating_sub(p.ip_colocation_threshold) as f64;
            score += excess * excess * p.ip_colocation_weight;
        }
        let excess = (s.behaviour - p.behaviour_threshold).max(0.0);
        score + excess * excess * p.behaviour_weight
    }

    pub(super) fn connected(&mut self, peer: &PeerId, ip: IpAddr, now: Instant) {
        let _ = now;
        let ip = super::colocation_ip(ip);
        let s = self.peers.entry(*peer).or_default();
        if s.expires.take().is_some() {
            self.retained -= 1;
        }
        if s.ip != ip {
            if let Some(old) = s.ip.take() {
                dec(&mut self.per_ip, old);
            }
            if let Some(ip) = ip {
                *self.per_ip.entry(ip).or_default() += 1;
            }
            s.ip = ip;
        }
    }

    pub(super) fn disconnected(&mut self, peer: &PeerId, now: Instant) {
        let negative = self.score(peer, now) < 0.0;
        let Some(s) = self.peers.get_mut(peer) else {
            return;
        };
        if let Some(ip) = s.ip.take() {
            dec(&mut self.per_ip, ip);
        }
        for t in s.topics.values_mut() {
            t.mesh_since = None;
        }
        let was_retained = s.expires.is_some();
        if negative && (was_retained || self.retained < MAX_RETAINED) {
            s.expires = Some(now + self.params.retain_score);
            self.retained += usize::from(!was_retained);
        } else {
            self.retained -= usize::from(was_retained);
            self.peers.remove(peer);
        }
    }

    fn topic(&mut self, peer: &PeerId, topic: &str) -> Option<&mut TopicScore> {
        let s = self.peers.get_mut(peer)?;
        if !s.topics.contains_key(topic) && s.topics.len() >= MAX_TOPICS {
            return None;
        }
        Some(s.topics.entry(topic.to_string()).or_default())
    }

    pub(super) fn joined_mesh(&mut self, peer: &PeerId, topic: &str, now: Instant) {
        if let Some(t) = self.topic(peer, topic)
            && t.mesh_since.is_none()
        {
            t.mesh_since = Some(now);
        }
    }

    pub(super) fn left_mesh(&mut self, peer: &PeerId, topic: &str, _now: Instant) {
        if let Some(t) = self
            .peers
            .get_mut(peer)
            .and_then(|s| s.topics.get_mut(topic))
        {
            t.mesh_since = None;
        }
    }

    pub(super) fn first_delivery(&mut self, peer: &PeerId, topic: &str) {
        let cap = self.params.first_delivery_cap;
        if let Some(t) = self.topic(peer, topic) {
            t.first = (t.first + 1.0).min(cap);
        }
    }

    /// An invalid or rejected message from `peer` on `topic` (on an untracked topic when the
    /// peer's topic table is full: then it counts as misbehaviour).
    pub(super) fn invalid(&mut self, peer: &PeerId, topic: &str, _now: Instant) {
        match self.topic(peer, topic) {
            Some(t) => t.invalid += 1.0,
            None => self.penalise(peer, 1.0),
        }
    }

    pub(super) fn penalise(&mut self, peer: &PeerId, amount: f64) {
        if let Some(s) = self.peers.get_mut(peer) {
            s.behaviour += amount;
        }
    }

    /// Whether some counter still has to decay.
    pub(super) fn needs_decay(&self) -> bool {
        self.peers.values().any(|s| {
            s.behaviour > 0.0
                || s.expires.is_some()
                || s.topics.values().any(|t| t.first > 0.0 || t.invalid > 0.0)
        })
    }

    /// Sets every known peer's application-specific score (P5) to `score(peer)`.
    pub(super) fn set_application(&mut self, mut score: impl FnMut(&PeerId) -> f64) {
        for (peer, s) in &mut self.peers {
            s.application = score(peer);
        }
    }

    pub(super) fn decay(&mut self, now: Instant) {
        let elapsed = match self.last_decay {
            Some(t) => now.saturating_duration_since(t).as_secs_f64(),
            None => 0.0,
        };
        self.last_decay = Some(now);
        let retained = &mut self.retained;
        self.peers.retain(|_, s| {
            let keep = s.expires.is_none_or(|t| t > now);
            if !keep {
                *retained -= 1;
            }
            keep
        });
        if elapsed <= 0.0 {
            return;
        }
        let p = &self.params;
        let (first, invalid, behaviour) = (
            p.first_delivery_decay.powf(elapsed),
            p.invalid_decay.powf(elapsed),
            p.behaviour_decay.powf(elapsed),
        );
        let fade = |x: &mut f64, f: f64| {
            *x *= f;
            if *x < ZERO {
                *x = 0.0;
            }
        };
        for s in self.peers.values_mut() {
            fade(&mut s.behaviour, behaviour);
            for t in s.topics.values_mut() {
                fade(&mut t.first, first);
                fade(&mut t.invalid, invalid);
            }
            s.topics
                .retain(|_, t| t.mesh_since.is_some() || t.first > 0.0 || t.invalid > 0.0);
        }
    }
}

fn dec(map: &mut BTreeMap<IpAddr, usize>, ip: IpAddr) {
    if let Some(n) = map.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            map.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;

    fn remembered(s: &Scores) -> usize {
        s.peers.values().filter(|p| p.expires.is_some()).count()
    }

    #[test]
    fn at_most_max_retained_disconnected_peers_are_remembered() {
        let mut s = Scores::new(ScoreParams::default());
        let now = Instant::from_micros(1_000_000);
        let peers: Vec<PeerId> = (0..MAX_RETAINED as u32 + 10)
            .map(|i| {
                let mut secret = [0u8; 32];
                secret[..4].copy_from_slice(&i.to_be_bytes());
                Keypair::from_secret_bytes(secret).peer_id()
            })
            .collect();
        for (i, p) in peers.iter().enumerate() {
            let ip = IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            s.connected(p, ip, now);
            s.penalise(p, 10.0);
            assert!(s.score(p, now) < 0.0);
            s.disconnected(p, now);
        }
        // The first MAX_RETAINED are remembered; the rest are forgotten at once.
        assert_eq!((s.retained, remembered(&s)), (MAX_RETAINED, MAX_RETAINED));
        assert_eq!(s.peers.len(), MAX_RETAINED);
        assert_eq!(s.score(&peers[MAX_RETAINED], now), 0.0);

        // A remembered peer that comes back is no longer counted; leaving again, it is.
        s.connected(&peers[0], IpAddr::from([10, 0, 0, 0]), now);
        assert_eq!(
            (s.retained, remembered(&s)),
            (MAX_RETAINED - 1, MAX_RETAINED - 1)
        );
        assert!(
            s.score(&peers[0], now) < 0.0,
            "the score survived the absence"
        );
        s.disconnected(&peers[0], now);
        assert_eq!((s.retained, remembered(&s)), (MAX_RETAINED, MAX_RETAINED));

        // After `retain_score` every one is forgotten.
        s.decay(now + s.params.retain_score);
        assert_eq!((s.retained, s.peers.len()), (0, 0));
    }
}
