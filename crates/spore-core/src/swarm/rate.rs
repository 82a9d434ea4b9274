//! Transfer rates in virtual time, and the upload pacer.

use std::time::Duration;

use crate::time::Instant;

const BUCKETS: usize = 10;

/// Bytes per second over a sliding window (`window`, in ten buckets), measured from the
/// instants the driver passes in. Integer arithmetic only, so the same inputs give the same
/// rate everywhere.
#[derive(Debug, Clone)]
pub(crate) struct Rate {
    start: Instant,
    bucket_micros: u64,
    /// Bucket number (time / bucket width) of `buckets[0]`'s most recent use.
    head: u64,
    buckets: [u64; BUCKETS],
}

impl Rate {
    pub(crate) fn new(now: Instant, window: Duration) -> Self {
        let width = (window.as_micros() as u64 / BUCKETS as u64).max(1);
        Self {
            start: now,
            bucket_micros: width,
            head: now.as_micros() / width,
            buckets: [0; BUCKETS],
        }
    }

    fn advance(&mut self, now: Instant) {
        let b = now.as_micros() / self.bucket_micros;
        if b <= self.head {
            return;
        }
        let steps = (b - self.head).min(BUCKETS as u64);
        for i in 1..=steps {
            self.buckets[((self.head + i) % BUCKETS as u64) as usize] = 0;
        }
        self.head = b;
    }

    /// Counts `bytes` transferred at `now`.
    pub(crate) fn add(&mut self, now: Instant, bytes: u64) {
        self.advance(now);
        let i = (self.head % BUCKETS as u64) as usize;
        self.buckets[i] = self.buckets[i].saturating_add(bytes);
    }

    /// Bytes per second at `now`: what the window holds over the time it covers (at least one
    /// second, so a first burst does not read as an enormous rate).
    pub(crate) fn per_sec(&mut self, now: Instant) -> u64 {
        self.advance(now);
        let total: u64 = self.buckets.iter().sum();
        let window = self.bucket_micros * BUCKETS as u64;
        let covered = now
            .as_micros()
            .saturating_sub(self.start.as_micros())
            .clamp(1_000_000, window.max(1_000_000));
        total.saturating_mul(1_000_000) / covered
    }
}

/// A token bucket for the node's upload: `rate` bytes per second, bursts of up to `burst`.
/// Sending may take the balance below zero (a piece is never split); the next send waits until
/// it is positive again.
#[derive(Debug, Clone)]
pub(crate) struct Pacer {
    rate: Option<u64>,
    burst: i64,
    tokens: i64,
    refilled: Instant,
}

impl Pacer {
    pub(crate) fn new(rate: Option<u64>, burst: u64) -> Self {
        let burst = i64::try_from(burst).unwrap_or(i64::MAX).max(1);
        Self {
            rate: rate.filter(|r| *r > 0),
            burst,
            tokens: burst,
            refilled: Instant::ZERO,
        }
    }

    fn refill(&mut self, now: Instant) {
        let Some(rate) = self.rate else { return };
        let dt = now.as_micros().saturating_sub(self.refilled.as_micros());
        if dt == 0 {
            return;
        }
        let add = (u128::from(dt) * u128::from(rate) / 1_000_000).min(i64::MAX as u128) as i64;
        if add == 0 {
            return;
        }
        let tokens = self.tokens.saturating_add(add);
        if tokens >= self.burst {
            self.tokens = self.burst;
            self.refilled = now;
        } else {
            // Advance only by the time the added tokens account for, so rounding loses no
            // time across many small refills.
            self.tokens = tokens;
            let used = (add as u128 * 1_000_000 / u128::from(rate)) as u64;
            self.refilled = self.refilled + Duration::from_micros(used);
        }
    }

    /// Whether something may be sent at `now`.
    pub(crate) fn ready(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.rate.is_none() || self.tokens > 0
    }

    /// `bytes` were sent.
    pub(crate) fn spend(&mut self, bytes: u64) {
        if self.rate.is_some() {
            self.tokens = self
                .tokens
                .saturating_sub(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    /// When the balance will be positive again (`None` if it is, or there is no limit).
    pub(crate) fn next_ready(&self) -> Option<Instant> {
        let rate = self.rate?;
        if self.tokens > 0 {
            return None;
        }
        let need = (1 - self.tokens) as u128;
        let micros = (need * 1_000_000).div_ceil(u128::from(rate));
        Some(self.refilled + Duration::from_micros(micros.min(u64::MAX as u128) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_micros(ms * 1000)
    }

    #[test]
    fn rate_over_window() {
        let mut r = Rate::new(at(0), Duration::from_secs(20));
        for s in 0..10 {
            r.add(at(s * 1000), 100_000);
        }
        // 1 MB over 10 s.
        assert_eq!(r.per_sec(at(10_000)), 100_000);
        // Thirty quiet seconds later it has all left the window.
        assert_eq!(r.per_sec(at(40_000)), 0);
        // A first burst reads against at least one second.
        let mut r = Rate::new(at(0), Duration::from_secs(20));
        r.add(at(1), 5000);
        assert_eq!(r.per_sec(at(2)), 5000);
    }

    #[test]
    fn pacer_limits() {
        let mut p = Pacer::new(Some(100_000), 10_000);
        assert!(p.ready(at(0)));
        p.spend(60_000);
        assert!(!p.ready(at(0)));
        // 50,001 tokens short: ready after 500.01 ms.
        let t = p.next_ready().unwrap();
        assert_eq!(t.as_micros(), 500_010);
        assert!(p.ready(t));
        let mut free = Pacer::new(None, 1);
        free.spend(1 << 30);
        assert!(free.ready(at(0)) && free.next_ready().is_none());
    }
}
