//! Lock counters and acquire latency: one place that bumps both the in-process snapshot and the
//! `metrics` facade, so `/metrics` and [`LockMetricsSnapshot`] cannot drift apart.
//!
//! Exported names (label `backend` = `redis` | `memory`): `bidorch_lock_attempts_total`,
//! `bidorch_lock_successes_total`, `bidorch_lock_conflicts_total`, `bidorch_lock_timeouts_total`,
//! `bidorch_redis_errors_total`, and the histogram `bidorch_lock_acquire_seconds` (the time one
//! `try_acquire` takes to answer, whatever the answer).
//!
//! The exporter handles are registered with the global `metrics` recorder on a store's first
//! operation and kept (no per-call registry lookup on the hot path), so the recorder must be
//! installed before the first lease is taken — telemetry set-up at start-up does that.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use metrics::{Counter, Histogram};

/// Sub-buckets per power of two in the latency histogram (≈19% resolution).
const STEPS_PER_OCTAVE: f64 = 4.0;
/// Buckets from 1 µs up to 2^25 µs (≈ 33 s); slower answers land in the last one.
const BUCKETS: usize = 101;

/// How one acquisition attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Attempt {
    Won,
    Conflict,
    Failed,
}

/// The exporter's series for one backend label.
struct Exported {
    attempts: Counter,
    successes: Counter,
    conflicts: Counter,
    timeouts: Counter,
    redis_errors: Counter,
    acquire_seconds: Histogram,
}

impl Exported {
    fn register(backend: &'static str) -> Self {
        Self {
            attempts: metrics::counter!("bidorch_lock_attempts_total", "backend" => backend),
            successes: metrics::counter!("bidorch_lock_successes_total", "backend" => backend),
            conflicts: metrics::counter!("bidorch_lock_conflicts_total", "backend" => backend),
            timeouts: metrics::counter!("bidorch_lock_timeouts_total", "backend" => backend),
            redis_errors: metrics::counter!("bidorch_redis_errors_total", "backend" => backend),
            acquire_seconds: metrics::histogram!("bidorch_lock_acquire_seconds", "backend" => backend),
        }
    }
}

/// Live counters of one metered store. Shared by reference; all updates are relaxed atomics.
pub(super) struct LockMetrics {
    backend: &'static str,
    exported: OnceLock<Exported>,
    attempts: AtomicU64,
    successes: AtomicU64,
    conflicts: AtomicU64,
    timeouts: AtomicU64,
    redis_errors: AtomicU64,
    latency_sum_ns: AtomicU64,
    latency_max_ns: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

/// Acquire latency summary; percentiles are bucket upper bounds (at most ≈19% high).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencySummary {
    /// Attempts measured.
    pub count: u64,
    pub mean: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// The original lock manager's counters, plus acquire latency.
///
/// `lock_attempts` counts every `try_acquire`, and equals `lock_successes + lock_conflicts` +
/// the attempts that failed with a store error. `redis_errors` counts every failed store call
/// (acquire, extend, release, holder, health); `lock_timeouts` the subset that got no answer
/// within its deadline (the worker never waits for a busy lease: it retries the message later).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockMetricsSnapshot {
    pub lock_attempts: u64,
    pub lock_successes: u64,
    pub lock_conflicts: u64,
    pub lock_timeouts: u64,
    pub redis_errors: u64,
    pub acquire_latency: LatencySummary,
}

fn bucket_of(latency: Duration) -> usize {
    let us = latency.as_secs_f64() * 1e6;
    if us <= 1.0 {
        return 0;
    }
    ((us.log2() * STEPS_PER_OCTAVE).ceil() as usize).min(BUCKETS - 1)
}

fn bucket_bound(index: usize) -> Duration {
    Duration::from_secs_f64(2f64.powf(index as f64 / STEPS_PER_OCTAVE) / 1e6)
}

impl LockMetrics {
    pub(super) fn new(backend: &'static str) -> Self {
        Self {
            backend,
            exported: OnceLock::new(),
            attempts: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            redis_errors: AtomicU64::new(0),
            latency_sum_ns: AtomicU64::new(0),
            latency_max_ns: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Records one `try_acquire` and how long it took to answer.
    fn exported(&self) -> &Exported {
        self.exported
            .get_or_init(|| Exported::register(self.backend))
    }

    pub(super) fn attempt(&self, outcome: Attempt, latency: Duration) {
        let exported = self.exported();
        self.attempts.fetch_add(1, Relaxed);
        exported.attempts.increment(1);
        match outcome {
            Attempt::Won => {
                self.successes.fetch_add(1, Relaxed);
                exported.successes.increment(1);
            }
            Attempt::Conflict => {
                self.conflicts.fetch_add(1, Relaxed);
                exported.conflicts.increment(1);
            }
            // Counted by the caller as a store error when the store could not answer.
            Attempt::Failed => {}
        }
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.latency_sum_ns.fetch_add(ns, Relaxed);
        self.latency_max_ns.fetch_max(ns, Relaxed);
        self.latency[bucket_of(latency)].fetch_add(1, Relaxed);
        exported.acquire_seconds.record(latency.as_secs_f64());
    }

    /// Records a store call that got no answer within its deadline.
    pub(super) fn timeout(&self) {
        self.timeouts.fetch_add(1, Relaxed);
        self.exported().timeouts.increment(1);
    }

    /// Records a failed store call (the store could not answer).
    pub(super) fn store_error(&self) {
        self.redis_errors.fetch_add(1, Relaxed);
        self.exported().redis_errors.increment(1);
    }

    pub(super) fn snapshot(&self) -> LockMetricsSnapshot {
        let counts: Vec<u64> = self.latency.iter().map(|b| b.load(Relaxed)).collect();
        let count: u64 = counts.iter().sum();
        let quantile = |q: f64| {
            // Rank of the q-quantile (1-based), then the first bucket reaching it.
            let rank = ((count as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            counts
                .iter()
                .position(|c| {
                    seen += c;
                    seen >= rank
                })
                .map_or(Duration::ZERO, bucket_bound)
        };
        let acquire_latency = if count == 0 {
            LatencySummary::default()
        } else {
            LatencySummary {
                count,
                mean: Duration::from_nanos(self.latency_sum_ns.load(Relaxed) / count),
                p50: quantile(0.50),
                p99: quantile(0.99),
                max: Duration::from_nanos(self.latency_max_ns.load(Relaxed)),
            }
        };
        LockMetricsSnapshot {
            lock_attempts: self.attempts.load(Relaxed),
            lock_successes: self.successes.load(Relaxed),
            lock_conflicts: self.conflicts.load(Relaxed),
            lock_timeouts: self.timeouts.load(Relaxed),
            redis_errors: self.redis_errors.load(Relaxed),
            acquire_latency,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_buckets() {
        let m = LockMetrics::new("test");
        for _ in 0..99 {
            m.attempt(Attempt::Won, Duration::from_micros(100));
        }
        m.attempt(Attempt::Conflict, Duration::from_millis(50));
        let s = m.snapshot();
        assert_eq!(
            (s.lock_attempts, s.lock_successes, s.lock_conflicts),
            (100, 99, 1)
        );
        let l = s.acquire_latency;
        assert!(l.p50 >= Duration::from_micros(100) && l.p50 < Duration::from_micros(120));
        assert_eq!(l.p99, l.p50);
        assert_eq!(l.max, Duration::from_millis(50));
    }
}
