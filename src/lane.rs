//! A batching lane: single calls from concurrent tasks gathered into one call for many — one
//! round trip instead of one per posting. The ledger ([`crate::ledger::Batching`]) and the lock
//! store ([`crate::lock::BatchingLocks`]) each run theirs.
//!
//! A batch is what has queued by the time one of `in_flight` slots is free, topped up for at most
//! `linger` after its oldest member arrived (at most `max_batch` members). So a busy worker's
//! calls share round trips — their oldest member has already waited longer than the linger, and
//! the batch goes at once — while a lone call waits at most `linger`. It waits only while calls
//! have lately been coming closer together than the linger ([`Pace`]): when they come further
//! apart, as at a steady trickle of postings, the wait would gather nobody and only add to every
//! posting's latency, so the batch goes at once. Every member gets its own answer; a batch that
//! fails fails each member, sharing the error (fail closed). What a failure means for a port's
//! error type is the port adapter's business ([`LaneFailure`]), not the port's.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

/// How a lane batches.
#[derive(Clone, Copy, Debug)]
pub struct LaneConfig {
    /// What the lane carries (`ledger.steps`, `lease.acquire`, …), for its DEBUG log lines.
    pub name: &'static str,
    /// The most calls one batch carries.
    pub max_batch: usize,
    /// Batches running at once.
    pub in_flight: usize,
    /// How long a batch that is not full may wait for more members, from its oldest member's
    /// arrival.
    pub linger: Duration,
}

/// Why a call through a lane got no answer of its own.
#[derive(Debug, thiserror::Error)]
pub enum LaneFailure<E: std::error::Error + 'static> {
    /// The batch it rode in failed; every member shares the error.
    #[error("a batch of {size} failed")]
    Batch {
        size: usize,
        #[source]
        error: Arc<E>,
    },
    /// The batching task is gone (the runtime is shutting down).
    #[error("the `{0}` lane's batching task has stopped")]
    Stopped(&'static str),
    /// The batch came back with the wrong number of answers (a bug, reported, never unwrapped).
    #[error("a batch of {asked} `{lane}` calls got {answered} answers")]
    Miscounted {
        lane: &'static str,
        asked: usize,
        answered: usize,
    },
}

type Reply<T, E> = oneshot::Sender<Result<T, LaneFailure<E>>>;

/// One call waiting in a lane.
struct Job<Req, Resp, E: std::error::Error + 'static> {
    request: Req,
    reply: Reply<Resp, E>,
    arrived: Instant,
}

/// The sending end of a lane; its task ends when every clone is dropped.
pub struct Lane<Req, Resp, E: std::error::Error + 'static> {
    tx: mpsc::Sender<Job<Req, Resp, E>>,
    name: &'static str,
}

impl<Req, Resp, E: std::error::Error + 'static> Clone for Lane<Req, Resp, E> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            name: self.name,
        }
    }
}

impl<Req, Resp, E> Lane<Req, Resp, E>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    /// Starts the lane's task, which calls `run` with each batch (answers in the order asked).
    /// Must be called inside a tokio runtime.
    pub fn start<F, Fut>(config: LaneConfig, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<Resp>, E>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Job<Req, Resp, E>>(config.max_batch * 4);
        let lane = config.name;
        let slots = Arc::new(Semaphore::new(config.in_flight.max(1)));
        let run = Arc::new(run);
        tokio::spawn(async move {
            let mut pace = Pace::new(config.linger);
            while let Some(first) = rx.recv().await {
                pace.arrived(first.arrived);
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let linger_until = first.arrived + config.linger;
                let mut batch = vec![first];
                // Whatever queued while every slot was busy rides along; then, if there is room
                // and calls have been coming close together, whatever arrives before the oldest
                // member has waited `linger`.
                while batch.len() < config.max_batch {
                    let job = match rx.try_recv() {
                        Ok(job) => job,
                        Err(mpsc::error::TryRecvError::Disconnected) => break,
                        Err(mpsc::error::TryRecvError::Empty) if !pace.busy() => break,
                        Err(mpsc::error::TryRecvError::Empty) => {
                            match tokio::time::timeout_at(linger_until, rx.recv()).await {
                                Ok(Some(job)) => job,
                                Ok(None) | Err(_) => break,
                            }
                        }
                    };
                    pace.arrived(job.arrived);
                    batch.push(job);
                }
                let run = run.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let (requests, replies): (Vec<Req>, Vec<Reply<Resp, E>>) =
                        batch.into_iter().map(|j| (j.request, j.reply)).unzip();
                    let asked = requests.len();
                    let started = Instant::now();
                    let ran = run(requests).await;
                    tracing::debug!(
                        lane = config.name,
                        size = asked,
                        elapsed_us =
                            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                        "Batch done"
                    );
                    match ran {
                        Ok(answers) if answers.len() == asked => {
                            for (answer, reply) in answers.into_iter().zip(replies) {
                                let _ = reply.send(Ok(answer));
                            }
                        }
                        Ok(answers) => {
                            for reply in replies {
                                let _ = reply.send(Err(LaneFailure::Miscounted {
                                    lane,
                                    asked,
                                    answered: answers.len(),
                                }));
                            }
                        }
                        Err(e) => {
                            let error = Arc::new(e);
                            for reply in replies {
                                let _ = reply.send(Err(LaneFailure::Batch {
                                    size: asked,
                                    error: error.clone(),
                                }));
                            }
                        }
                    }
                });
            }
        });
        Self { tx, name: lane }
    }

    /// Queues `request` and waits for its answer.
    pub async fn ask(&self, request: Req) -> Result<Resp, LaneFailure<E>> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            request,
            reply,
            arrived: Instant::now(),
        };
        self.tx
            .send(job)
            .await
            .map_err(|_| LaneFailure::Stopped(self.name))?;
        answer.await.map_err(|_| LaneFailure::Stopped(self.name))?
    }
}

/// How far apart a lane's calls have lately arrived: a slow moving average of the gaps, each gap
/// counted at most two lingers — a busy worker's calls come in bursts (a batch's answers, a
/// prefetch's deliveries) with pauses between them that must not stop it batching, and one idle
/// minute must not keep the next burst from batching for long. Starts busy: a lane's first
/// calls are usually a worker's prefetch arriving together.
struct Pace {
    linger: Duration,
    gap: Duration,
    last: Option<Instant>,
}

impl Pace {
    fn new(linger: Duration) -> Self {
        Self {
            linger,
            gap: Duration::ZERO,
            last: None,
        }
    }

    fn arrived(&mut self, at: Instant) {
        if let Some(last) = self.last {
            let gap = at.saturating_duration_since(last).min(self.linger * 2);
            // A sixteenth of the way to each new gap: a dozen calls change the verdict.
            self.gap = if gap > self.gap {
                self.gap + (gap - self.gap) / 16
            } else {
                self.gap - (self.gap - gap) / 16
            };
        }
        self.last = Some(self.last.map_or(at, |last| last.max(at)));
    }

    /// Whether waiting up to the linger is likely to gather another call.
    fn busy(&self) -> bool {
        self.gap < self.linger
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, thiserror::Error)]
    #[error("{0}")]
    struct Oops(String);

    /// A lane answer as text, for comparing.
    fn shown(answer: Result<u32, LaneFailure<Oops>>) -> Result<u32, String> {
        answer.map_err(|e| crate::error::chain(&e))
    }

    fn config(linger_ms: u64) -> LaneConfig {
        LaneConfig {
            name: "test",
            max_batch: 8,
            in_flight: 1,
            linger: Duration::from_millis(linger_ms),
        }
    }

    /// The sizes of the batches a lane ran, in order.
    type Sizes = Arc<std::sync::Mutex<Vec<usize>>>;

    /// A lane answering `answer(n)` to each `n`, and the sizes of the batches it ran.
    fn recording(config: LaneConfig, answer: fn(u32) -> u32) -> (Lane<u32, u32, Oops>, Sizes) {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let lane = Lane::start(config, move |batch: Vec<u32>| {
            seen.lock().unwrap().push(batch.len());
            async move { Ok::<_, Oops>(batch.into_iter().map(answer).collect()) }
        });
        (lane, sizes)
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_calls_share_a_batch_and_each_gets_its_own_answer() {
        let (lane, sizes) = recording(config(1), |n| n * 10);
        let asks: Vec<_> = (1..=5)
            .map(|n| {
                let lane = lane.clone();
                tokio::spawn(async move { lane.ask(n).await })
            })
            .collect();
        for (n, ask) in (1..=5).zip(asks) {
            assert_eq!(shown(ask.await.unwrap()), Ok(n * 10));
        }
        assert_eq!(*sizes.lock().unwrap(), [5]);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_far_apart_do_not_wait_the_linger_and_calls_close_together_do() {
        let (lane, sizes) = recording(config(5), |n| n);
        // A lane starts busy: its first lone call waits the whole linger for company.
        let started = Instant::now();
        lane.ask(1).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(5));
        // A trickle, a call every 50 ms: after a dozen, a lone call goes at once.
        for n in 2..=16 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            lane.ask(n).await.unwrap();
        }
        let started = Instant::now();
        lane.ask(17).await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
        // Then calls a millisecond apart: the lane lingers again and gathers them.
        sizes.lock().unwrap().clear();
        let burst: Vec<_> = (0..20)
            .map(|n| {
                let lane = lane.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(n)).await;
                    lane.ask(n as u32).await
                })
            })
            .collect();
        for ask in burst {
            ask.await.unwrap().unwrap();
        }
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(sizes.iter().any(|&n| n > 1), "no batch gathered: {sizes:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_batch_fails_every_member() {
        let lane = Lane::start(config(1), |_batch: Vec<u32>| async {
            Err::<Vec<u32>, _>(Oops("down".into()))
        });
        let (a, b) = tokio::join!(lane.ask(1), lane.ask(2));
        assert_eq!(shown(a), Err("a batch of 2 failed: down".to_owned()));
        assert_eq!(shown(b), Err("a batch of 2 failed: down".to_owned()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wrong_number_of_answers_is_an_error_not_a_panic() {
        let lane = Lane::start(config(0), |_batch: Vec<u32>| async {
            Ok::<Vec<u32>, Oops>(vec![])
        });
        assert_eq!(
            shown(lane.ask(1).await),
            Err("a batch of 1 `test` calls got 0 answers".to_owned())
        );
    }
}
