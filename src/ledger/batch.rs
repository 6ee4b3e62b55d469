//! Batching of ledger calls across the postings in flight (a [`Lane`] each): the
//! single-posting `claim` and `finish` of concurrent pipeline tasks are gathered into one
//! [`BidLedger::steps_many`] — one round trip and one transaction for the claims and finishes
//! ready at the same moment — and concurrent `lookup`s into one `lookup_many`.
//!
//! The guarantees of the batch calls are kept: every member gets its own answer, in its own
//! order; a batch that fails fails each member (fail closed), so nothing is acked on a write that
//! did not happen. Claims and finishes go to the database in key order.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    AttemptRecord, BidLedger, Claim, ClaimRequest, Fenced, Finish, LedgerEntry, LedgerError,
    LedgerState,
};
use crate::lane::{Lane, LaneConfig, LaneError};
use crate::posting::PostingKey;

/// How the ledger's lanes batch: a worker's whole prefetch fits in one batch; one batch is
/// written while the next fills; a lone posting waits at most a millisecond for company.
pub const LANE: LaneConfig = LaneConfig {
    name: "ledger",
    max_batch: 128,
    in_flight: 2,
    linger: Duration::from_millis(1),
};

/// A write the steps lane carries.
enum Step {
    Finish(PostingKey, i64, Finish),
    Claim(ClaimRequest),
}

/// The answer to a [`Step`] (a claim's answer boxed: it carries the stored request).
enum Answer {
    Finished(Fenced),
    Claimed(Box<Claim>),
}

/// A ledger whose single-posting calls are batched (see the module docs); the batch calls and
/// the rest go straight through.
pub struct Batching {
    inner: Arc<dyn BidLedger>,
    lookups: Lane<PostingKey, Option<LedgerEntry>, LedgerError>,
    steps: Lane<Step, Answer, LedgerError>,
}

impl Batching {
    /// Wraps `inner`. Must be called inside a tokio runtime (it starts the batching tasks,
    /// which end when this is dropped).
    pub fn new(inner: Arc<dyn BidLedger>) -> Self {
        let lookups = {
            let inner = inner.clone();
            Lane::start(LANE, move |keys: Vec<PostingKey>| {
                let inner = inner.clone();
                async move { inner.lookup_many(&keys).await }
            })
        };
        let steps = {
            let inner = inner.clone();
            Lane::start(LANE, move |steps: Vec<Step>| {
                let inner = inner.clone();
                async move { run_steps(inner.as_ref(), steps).await }
            })
        };
        Self {
            inner,
            lookups,
            steps,
        }
    }
}

impl LaneError for LedgerError {
    /// The same kind, so retryability is kept, and the same text (the error itself cannot be
    /// cloned).
    fn for_member(&self) -> Self {
        match self {
            Self::Corrupt { key, problem } => Self::Corrupt {
                key: key.clone(),
                problem: problem.clone(),
            },
            Self::Unavailable(_) | Self::Migration(_) => {
                Self::Unavailable(crate::error::chain(self).into())
            }
        }
    }

    fn lane_stopped() -> Self {
        Self::Unavailable("the ledger's batching task has stopped".into())
    }

    fn miscounted(asked: usize, answered: usize) -> Self {
        Self::Corrupt {
            key: "*".to_owned(),
            problem: format!("a batch of {asked} got {answered} answers"),
        }
    }
}

/// Splits a batch into its finishes and claims, each in key order, makes them in one
/// `steps_many`, and hands the answers back in the order of the batch.
async fn run_steps(ledger: &dyn BidLedger, steps: Vec<Step>) -> Result<Vec<Answer>, LedgerError> {
    let mut finishes = Vec::new();
    let mut claims = Vec::new();
    // Where each member went: (is a claim, its position in that list).
    let mut place = Vec::with_capacity(steps.len());
    for step in steps {
        match step {
            Step::Finish(key, epoch, finish) => {
                place.push((false, finishes.len()));
                finishes.push((key, epoch, finish));
            }
            Step::Claim(claim) => {
                place.push((true, claims.len()));
                claims.push(claim);
            }
        }
    }
    let finish_order = key_order(&finishes, |f| &f.0);
    let claim_order = key_order(&claims, |c| &c.key);
    let finishes = permute(finishes, &finish_order);
    let claims = permute(claims, &claim_order);
    let (fenced, claimed) = ledger.steps_many(&finishes, &claims).await?;
    if fenced.len() != finishes.len() || claimed.len() != claims.len() {
        return Err(LedgerError::Corrupt {
            key: "*".to_owned(),
            problem: format!(
                "a batch of {} finishes and {} claims got {} and {} answers",
                finishes.len(),
                claims.len(),
                fenced.len(),
                claimed.len()
            ),
        });
    }
    let mut fenced = unpermute(fenced, &finish_order);
    let mut claimed = unpermute(claimed, &claim_order);
    Ok(place
        .into_iter()
        .filter_map(|(is_claim, i)| {
            if is_claim {
                claimed[i].take().map(|c| Answer::Claimed(Box::new(c)))
            } else {
                fenced[i].take().map(Answer::Finished)
            }
        })
        .collect())
}

/// The positions of `items` sorted by key.
fn key_order<T>(items: &[T], key: impl Fn(&T) -> &PostingKey) -> Vec<usize> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| key(&items[a]).cmp(key(&items[b])));
    order
}

/// `items` rearranged so that element `k` is `items[order[k]]`.
fn permute<T>(items: Vec<T>, order: &[usize]) -> Vec<T> {
    let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
    order.iter().filter_map(|&i| slots[i].take()).collect()
}

/// Answers to a permuted list, put back at their original positions.
fn unpermute<R>(answers: Vec<R>, order: &[usize]) -> Vec<Option<R>> {
    let mut back: Vec<Option<R>> = std::iter::repeat_with(|| None).take(order.len()).collect();
    for (answer, &i) in answers.into_iter().zip(order) {
        back[i] = Some(answer);
    }
    back
}

/// The answer of the wrong kind for a step: a bug in this module, reported, never unwrapped.
fn mismatched(key: &PostingKey) -> LedgerError {
    LedgerError::Corrupt {
        key: key.to_string(),
        problem: "the batch answered a claim with a finish or the reverse".to_owned(),
    }
}

#[async_trait]
impl BidLedger for Batching {
    async fn lookup_many(
        &self,
        keys: &[PostingKey],
    ) -> Result<Vec<Option<LedgerEntry>>, LedgerError> {
        self.inner.lookup_many(keys).await
    }

    async fn claim_many(&self, claims: &[ClaimRequest]) -> Result<Vec<Claim>, LedgerError> {
        self.inner.claim_many(claims).await
    }

    async fn finish_many(
        &self,
        finishes: &[(PostingKey, i64, Finish)],
    ) -> Result<Vec<Fenced>, LedgerError> {
        self.inner.finish_many(finishes).await
    }

    async fn steps_many(
        &self,
        finishes: &[(PostingKey, i64, Finish)],
        claims: &[ClaimRequest],
    ) -> Result<(Vec<Fenced>, Vec<Claim>), LedgerError> {
        self.inner.steps_many(finishes, claims).await
    }

    async fn unresolved(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, LedgerError> {
        self.inner.unresolved(before, limit).await
    }

    async fn count_unresolved(&self, before: DateTime<Utc>) -> Result<u64, LedgerError> {
        self.inner.count_unresolved(before).await
    }

    async fn attempts(&self, key: &PostingKey) -> Result<Vec<AttemptRecord>, LedgerError> {
        self.inner.attempts(key).await
    }

    async fn counts_by_state(&self) -> Result<Vec<(LedgerState, u64)>, LedgerError> {
        self.inner.counts_by_state().await
    }

    async fn health(&self) -> Result<(), LedgerError> {
        self.inner.health().await
    }

    async fn lookup(&self, key: &PostingKey) -> Result<Option<LedgerEntry>, LedgerError> {
        self.lookups.ask(key.clone()).await
    }

    async fn claim(&self, claim: &ClaimRequest) -> Result<Claim, LedgerError> {
        match self.steps.ask(Step::Claim(claim.clone())).await? {
            Answer::Claimed(claimed) => Ok(*claimed),
            Answer::Finished(_) => Err(mismatched(&claim.key)),
        }
    }

    async fn finish(
        &self,
        key: &PostingKey,
        epoch: i64,
        finish: Finish,
    ) -> Result<Fenced, LedgerError> {
        match self
            .steps
            .ask(Step::Finish(key.clone(), epoch, finish))
            .await?
        {
            Answer::Finished(fenced) => Ok(fenced),
            Answer::Claimed(_) => Err(mismatched(key)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permutation_by_key_is_undone_for_the_answers() {
        let keys: Vec<PostingKey> = ["c", "a", "b"]
            .iter()
            .map(|p| PostingKey::new("upwork", p).unwrap())
            .collect();
        let order = key_order(&keys, |k| k);
        let sorted = permute(keys.clone(), &order);
        let ids: Vec<&str> = sorted.iter().map(PostingKey::posting_id).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let answers: Vec<String> = sorted.iter().map(|k| k.posting_id().to_owned()).collect();
        let back: Vec<String> = unpermute(answers, &order).into_iter().flatten().collect();
        assert_eq!(back, ["c", "a", "b"]);
    }

    #[test]
    fn a_shared_error_keeps_its_retryability() {
        let down = LedgerError::Unavailable("connection refused".into());
        assert!(down.for_member().is_retryable());
        let corrupt = LedgerError::Corrupt {
            key: "upwork:a".into(),
            problem: "bad state".into(),
        };
        assert!(!corrupt.for_member().is_retryable());
    }
}
