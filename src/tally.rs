//! An in-process tally of what workers did, for the demo's summary and end-to-end tests.
//!
//! Prometheus metrics are for operators; this is for a program that wants exact numbers back
//! (outcome counts, skip and dead-letter reasons, latency percentiles) from the workers it ran.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::pipeline::{Action, Outcome, PlacedVia};

/// Counts shared by all workers of a run. Cheap enough for the hot path (one short lock).
#[derive(Debug, Default)]
pub struct Tally {
    inner: Mutex<Counts>,
}

/// A snapshot of a [`Tally`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    /// Deliveries processed, by outcome label.
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Skip reasons (a posting may have several).
    pub skip_reasons: BTreeMap<String, u64>,
    /// Dead letters by reason.
    pub dead_letters: BTreeMap<&'static str, u64>,
    /// Retries by reason.
    pub retries: BTreeMap<&'static str, u64>,
    /// Bids placed by how the marketplace answered.
    pub placed_new: u64,
    pub placed_replay: u64,
    pub placed_conflict: u64,
    /// Bids found by a lookup (an answer lost on an API without idempotency keys).
    pub placed_lookup: u64,
    /// Pipeline latency of each delivery, in microseconds.
    pub latencies_us: Vec<u64>,
}

impl Counts {
    /// Deliveries processed in all.
    pub fn processed(&self) -> u64 {
        self.outcomes.values().sum()
    }

    /// The `q`-quantile (0.0..=1.0) of pipeline latency.
    pub fn latency_quantile(&self, q: f64) -> Duration {
        if self.latencies_us.is_empty() {
            return Duration::ZERO;
        }
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        let idx = ((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        Duration::from_micros(sorted[idx])
    }

    /// Count of one outcome label.
    pub fn outcome(&self, label: &str) -> u64 {
        self.outcomes.get(label).copied().unwrap_or(0)
    }
}

impl Tally {
    /// Records one processed delivery.
    pub fn record(&self, outcome: &Outcome, action: &Action, elapsed: Duration) {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *c.outcomes.entry(outcome.label()).or_default() += 1;
        match outcome {
            Outcome::Skipped { reasons } => {
                for r in reasons {
                    // Keep the code only (`blocked_keyword:x` → `blocked_keyword`): bounded keys.
                    let code = r.split(':').next().unwrap_or(r).to_owned();
                    *c.skip_reasons.entry(code).or_default() += 1;
                }
            }
            Outcome::Placed { via, .. } => match via {
                PlacedVia::New => c.placed_new += 1,
                PlacedVia::Replay => c.placed_replay += 1,
                PlacedVia::Conflict => c.placed_conflict += 1,
                PlacedVia::Lookup => c.placed_lookup += 1,
            },
            _ => {}
        }
        match action {
            Action::Retry { reason, .. } => *c.retries.entry(reason).or_default() += 1,
            Action::DeadLetter { reason, .. } => *c.dead_letters.entry(reason).or_default() += 1,
            Action::Ack => {}
        }
        c.latencies_us
            .push(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
    }

    /// A copy of the counts so far.
    pub fn snapshot(&self) -> Counts {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::LedgerState;

    #[test]
    fn counts_outcomes_reasons_and_quantiles() {
        let t = Tally::default();
        let skip = Outcome::Skipped {
            reasons: vec!["blocked_keyword:crypto".into(), "below_min_budget".into()],
        };
        t.record(&skip, &Action::Ack, Duration::from_micros(100));
        t.record(
            &Outcome::Duplicate(LedgerState::Placed),
            &Action::Ack,
            Duration::from_micros(300),
        );
        t.record(
            &Outcome::LockHeld {
                retry_in: Duration::from_secs(1),
            },
            &Action::Retry {
                delay: Duration::from_secs(1),
                reason: "lock_held",
                counts: false,
            },
            Duration::from_micros(200),
        );
        let c = t.snapshot();
        assert_eq!(c.processed(), 3);
        assert_eq!(c.skip_reasons["blocked_keyword"], 1);
        assert_eq!(c.retries["lock_held"], 1);
        assert_eq!(c.latency_quantile(0.5), Duration::from_micros(200));
        assert_eq!(c.latency_quantile(1.0), Duration::from_micros(300));
    }
}
