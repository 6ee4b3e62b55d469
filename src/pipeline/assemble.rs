//! Building a [`Pipeline`] and what the worker asks of it besides postings: its breakers and
//! ledger, dependency probes, and parsing event bodies.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Pipeline, Scoring};
use crate::control::PauseBoard;
use crate::flow::{Breakers, Dependency};
use crate::ledger::BidLedger;
use crate::lock::{LockStore, Rate, RateLimiter, Renewals};
use crate::marketplace::Marketplace;
use crate::policy::Policy;
use crate::posting::Posting;

impl Pipeline {
    /// Assembles a pipeline.
    pub fn new(
        ledger: Arc<dyn BidLedger>,
        locks: Arc<dyn LockStore>,
        marketplace: Arc<dyn Marketplace>,
        policy: Policy,
        lease_ttl: Duration,
    ) -> Self {
        Self {
            ledger,
            locks,
            renewals: Renewals::new(),
            marketplace,
            policy,
            lease_ttl,
            recheck: Duration::from_secs(1),
            instance: "bidorch".to_owned(),
            breakers: Breakers::new(crate::flow::BreakerSettings::default()),
            rates: BTreeMap::new(),
            limiter: None,
            scoring: None,
            board: None,
        }
    }

    /// Holds back every call to a marketplace `board` says is paused by hand (checked before
    /// the lease and right before each call). Without one, nothing is paused by hand.
    pub fn with_pause_board(mut self, board: PauseBoard) -> Self {
        self.board = Some(board);
        self
    }

    /// The manual pauses as this pipeline sees them, if it has a board.
    pub fn pause_board(&self) -> Option<&PauseBoard> {
        self.board.as_ref()
    }

    /// Asks `scoring` about every posting the rules would bid on.
    pub fn with_scoring(mut self, scoring: Scoring) -> Self {
        self.scoring = Some(scoring);
        self
    }

    /// Limits the request rate of these marketplaces, fleet-wide, with `limiter`'s buckets.
    pub fn with_rates(
        mut self,
        limiter: Arc<dyn RateLimiter>,
        rates: BTreeMap<String, Rate>,
    ) -> Self {
        self.rates = rates;
        self.limiter = Some(limiter);
        self
    }

    /// Looks at a posting whose lease another worker holds again after `recheck` (plus jitter).
    pub fn with_lock_held_recheck(mut self, recheck: Duration) -> Self {
        self.recheck = recheck;
        self
    }

    /// Names this worker in the attempt history.
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = instance.into();
        self
    }

    /// The marketplace breakers (for `/readyz`).
    pub fn breakers(&self) -> &Breakers {
        &self.breakers
    }

    /// Asks `dependency` whether it answers again (the worker's probe while paused).
    pub async fn probe(&self, dependency: Dependency) -> Result<(), String> {
        match dependency {
            Dependency::LockStore => self
                .locks
                .health()
                .await
                .map_err(|e| crate::error::chain(&e)),
            Dependency::Ledger => self
                .ledger
                .health()
                .await
                .map_err(|e| crate::error::chain(&e)),
        }
    }

    /// Parses an event body: a posting of a marketplace this deployment bids on, or poison.
    pub fn parse(&self, body: &[u8]) -> Result<Posting, crate::posting::PostingError> {
        Posting::parse(body, |m| self.marketplace.knows(m))
    }
}
