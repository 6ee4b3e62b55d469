//! The acks of one consume channel, coalesced: the acks that queue while one is being written go
//! out together, consecutive delivery tags as one `multiple` ack. A worker settles hundreds of
//! postings a second in bursts (a batch of ledger answers wakes dozens of them at once); one ack
//! frame each cost lapin a frame, a promise and a wake of its I/O thread per posting, and the
//! broker a settle command per posting.
//!
//! A `multiple` ack of tag T acks *every* unacked delivery up to T on the channel, so it is sent
//! only over tags this channel has settled itself: the broker numbers a channel's deliveries
//! 1, 2, 3…, and an ack covers T only when every tag from the last covered one up to T is either
//! in the batch or already settled (acked, or handed back). A tag we never saw settled — one
//! still being worked on, handed back but not yet confirmed written, or never handed to us at
//! all — stops the run there; the acks above it go one by one. Nothing unsettled is ever covered.
//!
//! The first ack to find no flush running starts one in a task of its own (so a posting task
//! cancelled at shutdown cannot strand the others' acks); acks arriving meanwhile queue for its
//! next round. An ack that extends the run goes out at once; one above an unsettled tag waits up
//! to [`HOLD`] for the run to reach it — unless the run has not moved for [`STUCK`] (the posting
//! below is stuck, or its delivery never came), when waiting would gather nothing.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use lapin::Channel;
use lapin::options::BasicAckOptions;
use tokio::sync::{Notify, oneshot};
use tokio::time::{Duration, Instant};

use super::tag_runs::TagLedger;

/// How long an ack above an unsettled tag waits for the run to reach it before it goes alone.
/// A busy worker's postings finish out of order by some milliseconds (a batch of ledger answers,
/// a wave of marketplace calls, skipped postings overtaking bids): measured over 20,000
/// postings, a 10 ms hold made 4.5 acks per frame, 50 ms 23. Held longer, one posting stuck on a
/// slow marketplace would keep every ack above it waiting that long.
const HOLD: Duration = Duration::from_millis(25);

/// How long the run may stand still before acks stop waiting for it: the posting below is
/// stuck (a slow marketplace), or its delivery never reached us. Under load a posting spends
/// some tens of milliseconds in a worker, so a run that moves stands still for less than this;
/// measured with this equal to [`HOLD`], acks per frame fell from 10–11 to 6.8.
const STUCK: Duration = Duration::from_millis(100);

type Answer = Result<(), lapin::Error>;

/// Why an ack was not written.
#[derive(Debug)]
pub(crate) enum AckError {
    /// lapin refused or failed to write it (the channel or connection is gone).
    Refused(lapin::Error),
    /// Its flush task stopped before answering (the runtime is shutting down).
    Abandoned,
}

/// Where ack frames are written: the channel (a recording stand-in in the unit tests).
pub(crate) trait AckFrames: Send + Sync + 'static {
    /// Writes one `basic.ack` of `tag`, `multiple` or not; done once the frame is written.
    fn ack(&self, tag: u64, multiple: bool) -> impl Future<Output = Answer> + Send;
}

impl AckFrames for Channel {
    fn ack(&self, tag: u64, multiple: bool) -> impl Future<Output = Answer> + Send {
        self.basic_ack(tag, BasicAckOptions { multiple })
    }
}

/// Coalesced acks on one channel (see the module docs).
pub(crate) struct Acks<C: AckFrames = Channel> {
    channel: Arc<C>,
    /// The most acks held at once: a held ack keeps its delivery's prefetch slot, so half of the
    /// prefetch at most is kept from new deliveries.
    max_held: usize,
    state: Mutex<State>,
    /// Wakes a flush task that waits with only held acks when another ack is queued.
    queued: Notify,
}

struct State {
    ledger: TagLedger,
    /// Acks waiting for the next round, each with whoever waits for its answer.
    queued: Vec<(u64, oneshot::Sender<Answer>)>,
    /// Whether a flush task is running (it takes what is queued until nothing is).
    flushing: bool,
}

impl<C: AckFrames> Acks<C> {
    /// The acks of `channel`, which consumes with `prefetch`.
    pub(crate) fn new(channel: Arc<C>, prefetch: u16) -> Arc<Self> {
        Arc::new(Self {
            channel,
            max_held: usize::from(prefetch / 2),
            state: Mutex::new(State {
                ledger: TagLedger::new(Instant::now()),
                queued: Vec::new(),
                flushing: false,
            }),
            queued: Notify::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The lock is never held across a call that could panic half-way through an update.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Acks `tag` and waits until its frame was written (or failed).
    pub(crate) async fn ack(self: &Arc<Self>, tag: u64) -> Result<(), AckError> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut state = self.state();
            state.queued.push((tag, reply));
            !std::mem::replace(&mut state.flushing, true)
        };
        if start {
            // The guard goes into the task: dropped unpolled (a runtime shutting down), it still
            // clears `flushing` and answers the queue.
            tokio::spawn(Self::flush(Running {
                acks: Arc::clone(self),
                armed: true,
            }));
        } else {
            self.queued.notify_one();
        }
        match answer.await {
            Ok(answer) => answer.map_err(AckError::Refused),
            Err(_) => Err(AckError::Abandoned),
        }
    }

    /// Records that `tag` was settled outside [`Acks::ack`] (handed back with a nack that was
    /// written), so later runs of consecutive acks may pass over it.
    pub(crate) fn settled(&self, tag: u64) {
        self.state().ledger.settled(Instant::now(), tag);
    }

    /// Writes what is queued, round after round, until nothing is queued or held.
    async fn flush(mut running: Running<C>) {
        let this = Arc::clone(&running.acks);
        let mut held: Vec<Waiting> = Vec::new();
        loop {
            let (answered, plan, wake_at) = {
                let mut state = this.state();
                if state.queued.is_empty() && held.is_empty() {
                    state.flushing = false;
                    running.armed = false;
                    return;
                }
                let now = Instant::now();
                held.extend(state.queued.drain(..).map(|(tag, reply)| Waiting {
                    tag,
                    reply,
                    since: now,
                }));
                // Taken in order, so the acks held long enough are the first ones; and when too
                // many are held, the oldest go. None waits while the run is stuck.
                let stuck = state.ledger.advanced_at + STUCK <= now;
                let over = held.len().saturating_sub(this.max_held);
                let mut expired: Vec<u64> = held
                    .iter()
                    .enumerate()
                    .take_while(|(at, w)| stuck || *at < over || w.since + HOLD <= now)
                    .map(|(_, w)| w.tag)
                    .collect();
                expired.sort_unstable();
                let plan = state.ledger.plan(now, held.iter().map(|w| w.tag), |tag| {
                    expired.binary_search(&tag).is_err()
                });
                let (answered, kept) = held
                    .drain(..)
                    .partition(|w| plan.held.binary_search(&w.tag).is_err());
                held = kept;
                // Woken when the first held ack has waited long enough, or the run has been
                // stuck long enough, whichever comes first.
                let wake_at = held
                    .iter()
                    .map(|w| w.since + HOLD)
                    .min()
                    .map(|first| first.min(state.ledger.advanced_at + STUCK));
                (answered, plan, wake_at)
            };
            if !plan.frames.is_empty() {
                let frames = plan
                    .frames
                    .iter()
                    .map(|&(tag, multiple)| this.channel.ack(tag, multiple));
                let answers = futures_util::future::join_all(frames).await;
                for w in answered {
                    let _ = w.reply.send(answers[plan.frame_of(w.tag)].clone());
                }
            } else if let Some(wake_at) = wake_at {
                // Only held acks: wait for the ones that may complete their run, or their time.
                let _ = tokio::time::timeout_at(wake_at, this.queued.notified()).await;
            }
        }
    }
}

/// An ack waiting in the flush task.
struct Waiting {
    tag: u64,
    reply: oneshot::Sender<Answer>,
    /// When the flush task took it.
    since: Instant,
}

/// Clears `flushing` if a flush task ends any other way than by finding the queue empty (its
/// runtime shut down), so later acks start a new one instead of waiting forever.
struct Running<C: AckFrames> {
    acks: Arc<Acks<C>>,
    /// Cleared when the task ends by finding the queue empty: `flushing` is then already
    /// false, and may be another task's by the time this guard drops.
    armed: bool,
}

impl<C: AckFrames> Drop for Running<C> {
    fn drop(&mut self) {
        if self.armed {
            let mut state = self.acks.state();
            // The waiters' senders are dropped with the queue: they see the channel's state.
            state.queued.clear();
            state.flushing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the frames written, in order; every write succeeds.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u64, bool)>>);

    impl AckFrames for Recorder {
        fn ack(&self, tag: u64, multiple: bool) -> impl Future<Output = Answer> + Send {
            self.0.lock().unwrap().push((tag, multiple));
            std::future::ready(Ok(()))
        }
    }

    fn recording(prefetch: u16) -> (Arc<Acks<Recorder>>, Arc<Recorder>) {
        let frames = Arc::new(Recorder::default());
        (Acks::new(Arc::clone(&frames), prefetch), frames)
    }

    fn written(frames: &Recorder) -> Vec<(u64, bool)> {
        frames.0.lock().unwrap().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn acks_settled_together_go_as_one_multiple_ack_at_once() {
        let (acks, frames) = recording(256);
        let before = Instant::now();
        let answers = futures_util::future::join_all([3, 1, 2].map(|tag| acks.ack(tag))).await;
        assert!(answers.iter().all(Result::is_ok));
        assert_eq!(written(&frames), [(3, true)]);
        assert_eq!(Instant::now(), before, "nothing waited");
    }

    #[tokio::test(start_paused = true)]
    async fn an_ack_above_an_unsettled_tag_waits_for_the_run_and_joins_it() {
        let (acks, frames) = recording(256);
        let second = tokio::spawn({
            let acks = Arc::clone(&acks);
            async move { acks.ack(2).await }
        });
        tokio::time::sleep(HOLD / 2).await;
        assert_eq!(written(&frames), [], "2 waits for 1");
        acks.ack(1).await.unwrap();
        second.await.unwrap().unwrap();
        assert_eq!(written(&frames), [(2, true)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_ack_goes_alone_once_it_has_waited_the_hold() {
        let (acks, frames) = recording(256);
        let before = Instant::now();
        acks.ack(2).await.unwrap();
        assert_eq!(written(&frames), [(2, false)]);
        assert_eq!(Instant::now() - before, HOLD);
    }

    #[tokio::test(start_paused = true)]
    async fn while_the_run_is_stuck_the_acks_above_it_do_not_wait() {
        let (acks, frames) = recording(256);
        acks.ack(1).await.unwrap();
        // 2 is being worked on for longer than a run may stand still.
        tokio::time::sleep(STUCK).await;
        let before = Instant::now();
        acks.ack(3).await.unwrap();
        assert_eq!(Instant::now(), before, "3 went at once");
        assert_eq!(written(&frames), [(1, false), (3, false)]);
    }

    #[tokio::test(start_paused = true)]
    async fn past_half_the_prefetch_held_the_oldest_acks_go_alone() {
        // A prefetch of 4: two acks may wait.
        let (acks, frames) = recording(4);
        let before = Instant::now();
        let third = tokio::spawn({
            let acks = Arc::clone(&acks);
            async move { acks.ack(3).await }
        });
        tokio::task::yield_now().await;
        let rest = tokio::spawn({
            let acks = Arc::clone(&acks);
            async move { futures_util::future::join_all([4, 5].map(|tag| acks.ack(tag))).await }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(written(&frames), [(3, false)], "3 made room");
        assert_eq!(Instant::now(), before);
        third.await.unwrap().unwrap();
        assert!(rest.await.unwrap().iter().all(Result::is_ok));
        assert_eq!(written(&frames), [(3, false), (4, false), (5, false)]);
        assert!(Instant::now() - before <= HOLD);
    }
}
