//! [`Batched`]: a [`LedgerBackend`] as the pipeline's [`BidLedger`], the single-posting calls of
//! concurrent postings gathered (a [`Lane`] each): claims and finishes into one
//! [`LedgerBackend::steps_many`] — one round trip and one transaction for the claims and finishes
//! ready at the same moment — and lookups into one `lookup_many`.
//!
//! The guarantees of the batch calls are kept: every member gets its own answer, in its own
//! order; a batch that fails fails each member (fail closed), so nothing is acked on a write that
//! did not happen. Claims and finishes go to the database in key order.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{
    BidLedger, Claim, ClaimRequest, Fenced, Finish, LedgerBackend, LedgerEntry, LedgerError,
};
use crate::lane::{Lane, LaneConfig, LaneFailure};
use crate::posting::PostingKey;

/// How the ledger's lanes batch: a worker's whole prefetch fits in one batch; one batch is
/// written while the next fills; a lone posting waits at most a millisecond for company.
pub const LANE: LaneConfig = LaneConfig {
    name: "ledger",
    max_batch: 128,
    in_flight: 2,
    linger: Duration::from_millis(1),
};

/// A write the steps lane carries. Not boxed: a step lives for one batch, and an allocation per
/// claim would cost more than moving its few hundred bytes.
#[allow(clippy::large_enum_variant)]
enum Step {
    Finish(PostingKey, i64, Finish),
    Claim(ClaimRequest),
}

/// The answer to a [`Step`] (a claim's answer boxed: it carries the stored request).
enum Answer {
    Finished(Fenced),
    Claimed(Box<Claim>),
}

/// A backend whose single-posting calls are batched (see the module docs).
pub struct Batched {
    backend: Arc<dyn LedgerBackend>,
    lookups: Lane<PostingKey, Option<LedgerEntry>, LedgerError>,
    steps: Lane<Step, Answer, LedgerError>,
}

impl Batched {
    /// Batches `backend`'s calls. Must be called inside a tokio runtime (it starts the batching
    /// tasks, which end when this is dropped).
    pub fn new(backend: Arc<dyn LedgerBackend>) -> Self {
        let lookups = {
            let backend = backend.clone();
            Lane::start(LANE, move |keys: Vec<PostingKey>| {
                let backend = backend.clone();
                async move { backend.lookup_many(&keys).await }
            })
        };
        let steps = {
            let backend = backend.clone();
            Lane::start(LANE, move |steps: Vec<Step>| {
                let backend = backend.clone();
                async move { run_steps(backend.as_ref(), steps).await }
            })
        };
        Self {
            backend,
            lookups,
            steps,
        }
    }
}

/// A lane's failure as the ledger's error: a shared batch error keeps its kind (a corrupt row
/// stays corrupt, anything else is the database unavailable: retry later), and a lane that
/// stopped or miscounted fails closed, as unavailable.
fn ledger_error(failure: LaneFailure<LedgerError>) -> LedgerError {
    match failure {
        LaneFailure::Batch { error, .. } => match error.as_ref() {
            LedgerError::Corrupt { key, problem } => LedgerError::Corrupt {
                key: key.clone(),
                problem: problem.clone(),
            },
            _ => LedgerError::Unavailable(Box::new(LaneFailure::Batch {
                size: 0,
                error: error.clone(),
            })),
        },
        other => LedgerError::Unavailable(Box::new(other)),
    }
}

/// Splits a batch into its finishes and claims, each in key order, makes them in one
/// `steps_many`, and hands the answers back in the order of the batch.
async fn run_steps(
    ledger: &dyn LedgerBackend,
    steps: Vec<Step>,
) -> Result<Vec<Answer>, LedgerError> {
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
        return Err(LedgerError::Unavailable(
            format!(
                "a batch of {} finishes and {} claims got {} and {} answers",
                finishes.len(),
                claims.len(),
                fenced.len(),
                claimed.len()
            )
            .into(),
        ));
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
impl BidLedger for Batched {
    async fn lookup(&self, key: &PostingKey) -> Result<Option<LedgerEntry>, LedgerError> {
        self.lookups.ask(key.clone()).await.map_err(ledger_error)
    }

    async fn claim(&self, claim: ClaimRequest) -> Result<Claim, LedgerError> {
        let key = claim.key.clone();
        match self
            .steps
            .ask(Step::Claim(claim))
            .await
            .map_err(ledger_error)?
        {
            Answer::Claimed(claimed) => Ok(*claimed),
            Answer::Finished(_) => Err(mismatched(&key)),
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
            .await
            .map_err(ledger_error)?
        {
            Answer::Finished(fenced) => Ok(fenced),
            Answer::Claimed(_) => Err(mismatched(key)),
        }
    }

    async fn health(&self) -> Result<(), LedgerError> {
        self.backend.health().await
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
        let shared = |error: LedgerError| {
            ledger_error(LaneFailure::Batch {
                size: 2,
                error: Arc::new(error),
            })
        };
        let down = shared(LedgerError::Unavailable("connection refused".into()));
        assert!(down.is_retryable());
        assert!(crate::error::chain(&down).contains("connection refused"));
        let corrupt = shared(LedgerError::Corrupt {
            key: "upwork:a".into(),
            problem: "bad state".into(),
        });
        assert!(!corrupt.is_retryable());
        assert!(ledger_error(LaneFailure::Stopped("ledger")).is_retryable());
    }
}
