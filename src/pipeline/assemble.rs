//! Building a [`Pipeline`] and what the worker asks of it besides postings: its breakers and
//! ledger, dependency probes, and parsing event bodies.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Pipeline, Scoring};
use crate::flow::{Breakers, Dependency};
use crate::ledger::BidLedger;
use crate::lock::{LockStore, Rate};
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
            marketplace,
            policy,
            lease_ttl,
            recheck: Duration::from_secs(1),
            instance: "bidorch".to_owned(),
            breakers: Breakers::new(crate::flow::BreakerSettings::default()),
            rates: BTreeMap::new(),
            scoring: None,
        }
    }

    /// Asks `scoring` about every posting the rules would bid on.
    pub fn with_scoring(mut self, scoring: Scoring) -> Self {
        self.scoring = Some(scoring);
        self
    }

    /// Limits the request rate of these marketplaces, fleet-wide.
    pub fn with_rates(mut self, rates: BTreeMap<String, Rate>) -> Self {
        self.rates = rates;
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

    /// Uses these marketplace breakers (their settings; the state starts closed).
    pub fn with_breakers(mut self, breakers: Breakers) -> Self {
        self.breakers = breakers;
        self
    }

    /// The marketplace breakers (for `/readyz`).
    pub fn breakers(&self) -> &Breakers {
        &self.breakers
    }

    /// The ledger (for the unresolved-sends gauge).
    pub fn ledger(&self) -> &Arc<dyn BidLedger> {
        &self.ledger
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
