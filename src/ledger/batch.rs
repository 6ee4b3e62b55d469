//! Batching of ledger calls across the postings in flight: the single-posting `lookup`, `claim`
//! and `finish` of concurrent pipeline tasks are gathered into one `*_many` call each — one round
//! trip and one transaction for all of them — instead of one per posting.
//!
//! No timer: a batch is whatever has queued by the time a slot is free (at most
//! [`MAX_BATCH`] calls, [`BATCHES_IN_FLIGHT`] batches at once per kind), so a lone posting goes
//! at once and a busy worker's postings share round trips. The guarantees of the `*_many` calls
//! are kept: every member gets its own answer, in its own order; a batch that fails fails each
//! member (fail closed), so nothing is acked on a write that did not happen. Claims and finishes
//! go to the database in key order, so two batches never wait on each other's row locks in
//! opposite orders.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{
    AttemptRecord, BidLedger, Claim, ClaimRequest, Fenced, Finish, LedgerEntry, LedgerError,
    LedgerState,
};
use crate::posting::PostingKey;

/// The most calls one batch carries (PostgreSQL's sweet spot was 32 postings per statement;
/// larger batches still help when the database is the bottleneck).
pub const MAX_BATCH: usize = 64;
/// Batches of one kind running at once (each holds one pooled connection).
pub const BATCHES_IN_FLIGHT: usize = 4;

type Reply<T> = oneshot::Sender<Result<T, LedgerError>>;
type Lane<Req, Resp> = mpsc::Sender<(Req, Reply<Resp>)>;

/// A ledger whose single-posting calls are batched (see the module docs); the `*_many` calls
/// and the rest go straight through.
pub struct Batching {
    inner: Arc<dyn BidLedger>,
    lookups: Lane<PostingKey, Option<LedgerEntry>>,
    claims: Lane<ClaimRequest, Claim>,
    finishes: Lane<(PostingKey, i64, Finish), Fenced>,
}

impl Batching {
    /// Wraps `inner`. Must be called inside a tokio runtime (it starts the batching tasks,
    /// which end when this is dropped).
    pub fn new(inner: Arc<dyn BidLedger>) -> Self {
        let lookups = {
            let inner = inner.clone();
            lane(move |keys: Vec<PostingKey>| {
                let inner = inner.clone();
                async move { inner.lookup_many(&keys).await }
            })
        };
        let claims = {
            let inner = inner.clone();
            lane(move |claims: Vec<ClaimRequest>| {
                let inner = inner.clone();
                async move {
                    in_key_order(
                        claims,
                        |c| &c.key,
                        |sorted| async move { inner.claim_many(&sorted).await },
                    )
                    .await
                }
            })
        };
        let finishes = {
            let inner = inner.clone();
            lane(move |finishes: Vec<(PostingKey, i64, Finish)>| {
                let inner = inner.clone();
                async move {
                    in_key_order(
                        finishes,
                        |f| &f.0,
                        |sorted| async move { inner.finish_many(&sorted).await },
                    )
                    .await
                }
            })
        };
        Self {
            inner,
            lookups,
            claims,
            finishes,
        }
    }
}

/// Starts a batching task for one kind of call and returns its queue.
fn lane<Req, Resp, F, Fut>(run: F) -> Lane<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Resp>, LedgerError>> + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<(Req, Reply<Resp>)>(MAX_BATCH * BATCHES_IN_FLIGHT * 4);
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let run = Arc::new(run);
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            // Whatever queued while every slot was busy rides along.
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let run = run.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let (requests, replies): (Vec<Req>, Vec<Reply<Resp>>) = batch.into_iter().unzip();
                let asked = requests.len();
                match run(requests).await {
                    Ok(answers) if answers.len() == asked => {
                        for (answer, reply) in answers.into_iter().zip(replies) {
                            let _ = reply.send(Ok(answer));
                        }
                    }
                    Ok(answers) => {
                        let problem = format!("a batch of {asked} got {} answers", answers.len());
                        for reply in replies {
                            let _ = reply.send(Err(LedgerError::Corrupt {
                                key: "*".to_owned(),
                                problem: problem.clone(),
                            }));
                        }
                    }
                    Err(e) => {
                        for reply in replies {
                            let _ = reply.send(Err(shared(&e)));
                        }
                    }
                }
            });
        }
    });
    tx
}

/// Calls `call` with `items` sorted by key and hands the answers back in the original order.
async fn in_key_order<T, R, Fut>(
    items: Vec<T>,
    key: impl Fn(&T) -> &PostingKey,
    call: impl FnOnce(Vec<T>) -> Fut,
) -> Result<Vec<R>, LedgerError>
where
    Fut: Future<Output = Result<Vec<R>, LedgerError>>,
{
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| key(&items[a]).cmp(key(&items[b])));
    let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
    let sorted: Vec<T> = order.iter().filter_map(|&i| slots[i].take()).collect();
    let answers = call(sorted).await?;
    if answers.len() != order.len() {
        return Ok(answers); // the lane reports the mismatch
    }
    let mut back: Vec<Option<R>> = std::iter::repeat_with(|| None).take(order.len()).collect();
    for (answer, &i) in answers.into_iter().zip(&order) {
        back[i] = Some(answer);
    }
    Ok(back.into_iter().flatten().collect())
}

/// One batch error as each member's own (the error itself cannot be cloned): the same kind, so
/// retryability is kept, and the same text.
fn shared(e: &LedgerError) -> LedgerError {
    match e {
        LedgerError::Corrupt { key, problem } => LedgerError::Corrupt {
            key: key.clone(),
            problem: problem.clone(),
        },
        LedgerError::Unavailable(_) | LedgerError::Migration(_) => {
            LedgerError::Unavailable(crate::error::chain(e).into())
        }
    }
}

/// Queues `request` on `lane` and waits for its answer.
async fn ask<Req, Resp>(lane: &Lane<Req, Resp>, request: Req) -> Result<Resp, LedgerError> {
    let (reply, answer) = oneshot::channel();
    let gone = || LedgerError::Unavailable("the ledger's batching task has stopped".into());
    lane.send((request, reply)).await.map_err(|_| gone())?;
    answer.await.map_err(|_| gone())?
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
        ask(&self.lookups, key.clone()).await
    }

    async fn claim(&self, claim: &ClaimRequest) -> Result<Claim, LedgerError> {
        ask(&self.claims, claim.clone()).await
    }

    async fn finish(
        &self,
        key: &PostingKey,
        epoch: i64,
        finish: Finish,
    ) -> Result<Fenced, LedgerError> {
        ask(&self.finishes, (key.clone(), epoch, finish)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_go_back_in_the_order_asked_after_a_key_ordered_call() {
        let keys: Vec<PostingKey> = ["c", "a", "b"]
            .iter()
            .map(|p| PostingKey::new("upwork", p).unwrap())
            .collect();
        let seen = std::sync::Mutex::new(Vec::new());
        let answers = in_key_order(
            keys.clone(),
            |k| k,
            |sorted| {
                seen.lock()
                    .unwrap()
                    .extend(sorted.iter().map(|k| k.posting_id().to_owned()));
                async move {
                    Ok::<_, LedgerError>(sorted.iter().map(|k| k.posting_id().to_owned()).collect())
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(*seen.lock().unwrap(), ["a", "b", "c"]);
        assert_eq!(answers, ["c", "a", "b"]);
    }

    #[test]
    fn a_shared_error_keeps_its_retryability() {
        let down = LedgerError::Unavailable("connection refused".into());
        assert!(shared(&down).is_retryable());
        let corrupt = LedgerError::Corrupt {
            key: "upwork:a".into(),
            problem: "bad state".into(),
        };
        assert!(!shared(&corrupt).is_retryable());
    }
}
