//! What the ledger's retention reports: rows pruned (or prunable) and the ledger's size.
//!
//! The backends prune in short transactions of a bounded batch, final rows only, so a prune
//! never holds a lock a claim waits on for long; the size is read from the planner's statistics
//! on a large PostgreSQL table, so a scrape never counts a billion rows.

use chrono::{DateTime, Utc};

use super::LedgerState;

/// Rows a prune deleted, or would delete (a dry run).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Final postings (ledger rows).
    pub postings: u64,
    /// Their attempt history rows.
    pub attempts: u64,
    /// Rows of the side tables past the window: audit entries, daily-cap and budget periods
    /// long over, workers not seen since.
    pub other: u64,
}

impl Pruned {
    /// Every row counted.
    pub fn total(&self) -> u64 {
        self.postings + self.attempts + self.other
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: Pruned) {
        self.postings += other.postings;
        self.attempts += other.attempts;
        self.other += other.other;
    }
}

/// How big the ledger is, cheaply.
#[derive(Clone, Debug, PartialEq)]
pub struct LedgerSize {
    /// Rows in each state, all four in declaration order.
    pub by_state: Vec<(LedgerState, u64)>,
    /// Whether `by_state` comes from the planner's statistics (a large table) rather than a
    /// count.
    pub estimated: bool,
    /// When the oldest final row's outcome was written: what retention deletes next.
    pub oldest_final: Option<DateTime<Utc>>,
}

/// Below this many rows (by the planner's estimate) the size is counted exactly: cheap, and
/// what a small ledger's statistics may not yet know.
pub const COUNT_EXACTLY_BELOW: u64 = 200_000;
