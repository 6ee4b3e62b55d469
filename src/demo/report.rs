//! The demo's summary: what happened, checked against what had to happen, printed for people.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::tally::Counts;

/// Everything the demo measured and checked.
#[derive(Clone, Debug)]
pub struct DemoReport {
    pub backend: &'static str,
    pub workers: usize,
    pub postings: usize,
    pub eligible: usize,
    pub messages: usize,
    pub poison: usize,
    pub elapsed: Duration,
    /// Bids the sandbox marketplace created (distinct bids).
    pub bids: u64,
    /// Bid requests the sandbox answered as a replay of an idempotency key.
    pub replays: u64,
    /// Bid requests the sandbox answered with 409 (the Freelancer API: a second bid refused).
    pub conflicts: u64,
    /// Lookups of bids (the Freelancer API has no idempotency keys: a lost answer is looked up).
    pub lookups: u64,
    /// Postings with more than one bid at the marketplace (must be 0).
    pub double_bids: u64,
    /// Eligible postings without a bid (must be 0).
    pub missing_bids: u64,
    /// Ineligible postings that got a bid (must be 0).
    pub wrong_bids: u64,
    /// Messages parked in the dead-letter queue, by reason.
    pub dead_letters: BTreeMap<String, u64>,
    /// Ledger rows by state.
    pub ledger: BTreeMap<&'static str, u64>,
    /// What the workers did.
    pub counts: Counts,
}

impl DemoReport {
    /// Whether the run kept the promise: one bid per eligible posting, none twice, none lost.
    pub fn is_correct(&self) -> bool {
        self.double_bids == 0
            && self.missing_bids == 0
            && self.wrong_bids == 0
            && self.dead_letters.values().sum::<u64>() == self.poison as u64
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

impl fmt::Display for DemoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        let secs = self.elapsed.as_secs_f64().max(f64::EPSILON);
        writeln!(
            f,
            "bidorch demo — {} backends, {} workers",
            self.backend, self.workers
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "  postings          {:>8}   ({} eligible, {} ineligible)",
            self.postings,
            self.eligible,
            self.postings - self.eligible
        )?;
        writeln!(
            f,
            "  messages          {:>8}   (each posting published several times, {} poison)",
            self.messages, self.poison
        )?;
        writeln!(
            f,
            "  bids placed       {:>8}   (at the sandbox marketplace)",
            self.bids
        )?;
        let skipped: u64 = c.outcome("skipped");
        writeln!(f, "  skipped           {:>8}", skipped)?;
        for (reason, n) in &c.skip_reasons {
            writeln!(f, "    {reason:<22}{n:>6}")?;
        }
        writeln!(f, "  duplicates stopped")?;
        writeln!(
            f,
            "    by the ledger       {:>6}   (a final outcome was already recorded)",
            c.outcome("duplicate")
        )?;
        writeln!(
            f,
            "    by the lease        {:>6}   (another worker held it; retried later)",
            c.outcome("lock_held")
        )?;
        writeln!(
            f,
            "    by idempotency key  {:>6}   (marketplace replays {} + conflicts {})",
            self.replays + self.conflicts,
            self.replays,
            self.conflicts
        )?;
        writeln!(
            f,
            "    by lookup           {:>6}   (Freelancer API, no idempotency keys: {} lookups)",
            c.placed_lookup, self.lookups
        )?;
        writeln!(
            f,
            "  dead-lettered     {:>8}",
            self.dead_letters.values().sum::<u64>()
        )?;
        for (reason, n) in &self.dead_letters {
            writeln!(f, "    {reason:<22}{n:>6}")?;
        }
        if !c.retries.is_empty() {
            let listed: Vec<String> = c.retries.iter().map(|(r, n)| format!("{r} {n}")).collect();
            writeln!(
                f,
                "  retries           {:>8}   ({})",
                c.retries.values().sum::<u64>(),
                listed.join(", ")
            )?;
        }
        let ledger: Vec<String> = self
            .ledger
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        writeln!(f, "  ledger            {}", ledger.join(", "))?;
        writeln!(f)?;
        writeln!(
            f,
            "  throughput        {:.0} messages/s, {:.0} postings/s ({:.2} s wall clock)",
            self.messages as f64 / secs,
            self.postings as f64 / secs,
            secs
        )?;
        writeln!(
            f,
            "  pipeline latency  p50 {}  p90 {}  p99 {}  max {}",
            ms(c.latency_quantile(0.5)),
            ms(c.latency_quantile(0.9)),
            ms(c.latency_quantile(0.99)),
            ms(c.latency_quantile(1.0))
        )?;
        writeln!(f)?;
        if self.is_correct() {
            write!(
                f,
                "  OK: every eligible posting got exactly one bid; none got two; poison parked."
            )
        } else {
            write!(
                f,
                "  FAILED: {} postings with two bids, {} eligible without a bid, {} ineligible with a bid, {} dead letters for {} poison",
                self.double_bids,
                self.missing_bids,
                self.wrong_bids,
                self.dead_letters.values().sum::<u64>(),
                self.poison
            )
        }
    }
}
