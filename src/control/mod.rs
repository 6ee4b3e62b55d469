//! Operator controls in a running process: the fleet-wide manual pause as each worker sees it
//! ([`PauseBoard`]), kept current by polling the ledger ([`poll`]) — twice a second, the primary
//! path, since `LISTEN` does not pass a transaction-mode pooler — together with the process's
//! report of itself (the pause generation it applied, postings in flight, its automatic
//! pauses); and what `bidorch pause`/`resume` do ([`pause`], [`resume`]): record the change,
//! then wait until every live worker reports having applied it.
//!
//! The board fails closed: until its first read, or when no read has succeeded for
//! [`STALE_AFTER`], every marketplace counts as paused — a pause made meanwhile must not be
//! missed, and a worker started during a pause starts paused.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::flow::Breakers;
use crate::ledger::{ControlStore, LedgerError, Pause, PauseState, Scope, WorkerBeat};

/// How often a process reads the pause state.
pub const POLL_EVERY: Duration = Duration::from_millis(500);

/// How often a process reports itself when nothing changed.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

/// A pause state not read again for this long is not trusted: everything waits.
pub const STALE_AFTER: Duration = Duration::from_secs(2);

/// A worker not seen for this long is not live (it is not waited for).
pub const LIVE_WITHIN: Duration = Duration::from_secs(10);

/// Longest a postings of a paused marketplace waits before it is looked at again.
const RECHECK_AT_MOST: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
struct Snapshot {
    state: PauseState,
    /// When it was read; `None` until the first read.
    read_at: Option<Instant>,
}

/// Why a marketplace may not be called now, by hand (or because the pause state is unknown).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// What an operator said, or why the state is unknown.
    pub reason: String,
    /// When to look again.
    pub retry_in: Duration,
}

/// The pause state as this process knows it. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct PauseBoard {
    tx: Arc<watch::Sender<Snapshot>>,
    in_flight: Arc<AtomicUsize>,
}

impl Default for PauseBoard {
    fn default() -> Self {
        Self::new()
    }
}

impl PauseBoard {
    /// A board that knows nothing yet (everything paused until the first read).
    pub fn new() -> Self {
        let (tx, _) = watch::channel(Snapshot {
            state: PauseState::default(),
            read_at: None,
        });
        Self {
            tx: Arc::new(tx),
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Takes a newly read state.
    pub fn publish(&self, state: PauseState) {
        self.tx.send_replace(Snapshot {
            state,
            read_at: Some(Instant::now()),
        });
    }

    /// The generation of the state this process runs under.
    pub fn generation(&self) -> i64 {
        self.tx.borrow().state.generation
    }

    /// The pauses in force, as last read.
    pub fn pauses(&self) -> Vec<Pause> {
        let now = Utc::now();
        let snapshot = self.tx.borrow();
        snapshot
            .state
            .pauses
            .iter()
            .filter(|p| p.in_force(now))
            .cloned()
            .collect()
    }

    /// Whether `marketplace` is held back by hand now (or the state is not known).
    pub fn check(&self, marketplace: &str) -> Option<Held> {
        let snapshot = self.tx.borrow();
        let fresh = snapshot
            .read_at
            .is_some_and(|at| at.elapsed() <= STALE_AFTER);
        if !fresh {
            return Some(Held {
                reason: "the pause state is not known (the ledger has not answered lately)"
                    .to_owned(),
                retry_in: Duration::from_secs(1),
            });
        }
        let now = Utc::now();
        let pause = snapshot.state.pause_of(marketplace, now)?;
        let left = pause
            .until
            .and_then(|until| until.signed_duration_since(now).to_std().ok())
            .unwrap_or(RECHECK_AT_MOST);
        Some(Held {
            reason: format!("paused by {}: {}", pause.by, pause.reason),
            retry_in: left.clamp(Duration::from_millis(100), RECHECK_AT_MOST),
        })
    }

    /// Counts a posting in flight until the guard drops (reported with the process).
    pub fn working(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.in_flight.clone())
    }

    fn in_flight(&self) -> u32 {
        u32::try_from(self.in_flight.load(Ordering::Relaxed)).unwrap_or(u32::MAX)
    }
}

/// A posting in flight, for the process's report.
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Who this process is, for its reports.
#[derive(Clone, Debug)]
pub struct Identity {
    pub instance: String,
    pub started_at: DateTime<Utc>,
}

impl Identity {
    /// This process as `instance`, started now.
    pub fn new(instance: impl Into<String>) -> Self {
        Self {
            instance: instance.into(),
            started_at: Utc::now(),
        }
    }
}

/// Keeps `board` current from `store` and reports this process, until aborted: reads every
/// [`POLL_EVERY`], reports every [`REPORT_EVERY`] and at once when the generation changed.
/// Failures are logged once per streak; the board then goes stale and everything waits.
///
/// Reading and reporting run side by side. A report is a write, and a write can wait behind
/// the ledger's own for seconds (SQLite has one writer; a loaded PostgreSQL is slow too): with
/// the read after it in one loop, the state went stale meanwhile, and a stale state holds every
/// marketplace back (measured: reports of up to 2.1 s in the dev-profile demo, which then spent
/// half its time retrying postings held back by a pause nobody had made).
pub async fn poll(
    store: Arc<dyn ControlStore>,
    board: PauseBoard,
    breakers: Breakers,
    me: Identity,
) {
    let read = tokio::sync::Notify::new();
    tokio::join!(
        keep_reading(store.as_ref(), &board, &read),
        keep_reporting(store.as_ref(), &board, &breakers, &me, &read),
    );
}

/// Reads the pause state into `board` every [`POLL_EVERY`], and says so on `read`.
async fn keep_reading(store: &dyn ControlStore, board: &PauseBoard, read: &tokio::sync::Notify) {
    let mut failing = false;
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.pause_state().await {
            Ok(state) => {
                gauges(&board.pauses(), &state);
                board.publish(state);
                read.notify_one();
                if failing {
                    tracing::info!("The pause state is read again");
                    failing = false;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        error = %crate::error::Chain(&e),
                        "Cannot read the pause state; postings wait until it is read again"
                    );
                    failing = true;
                }
            }
        }
    }
}

/// Reports this process after each read whose generation it has not reported yet, and at
/// least every [`REPORT_EVERY`].
async fn keep_reporting(
    store: &dyn ControlStore,
    board: &PauseBoard,
    breakers: &Breakers,
    me: &Identity,
    read: &tokio::sync::Notify,
) {
    let host = crate::config::hostname();
    let mut reported: Option<(i64, Instant)> = None;
    loop {
        read.notified().await;
        let generation = board.generation();
        let due = reported.is_none_or(|(g, at)| g != generation || at.elapsed() >= REPORT_EVERY);
        if !due {
            continue;
        }
        let beat = WorkerBeat {
            instance: me.instance.clone(),
            host: host.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: me.started_at,
            generation,
            in_flight: board.in_flight(),
            auto_paused: breakers
                .paused()
                .iter()
                .map(|p| {
                    let name = p.dependency.trim_start_matches("marketplace:");
                    format!("{name}:{}", p.reason.label())
                })
                .collect(),
        };
        if store.report(&beat).await.is_ok() {
            reported = Some((generation, Instant::now()));
        }
    }
}

/// `bidorch_manual_pause{marketplace}`: 1 for each scope paused by hand, 0 for one resumed.
fn gauges(before: &[Pause], now: &PauseState) {
    let at = Utc::now();
    for p in now.pauses.iter().filter(|p| p.in_force(at)) {
        metrics::gauge!(crate::metrics::MANUAL_PAUSE, "marketplace" => p.scope.as_str().to_owned())
            .set(1.0);
    }
    for gone in before.iter().filter(|b| {
        !now.pauses
            .iter()
            .any(|p| p.scope == b.scope && p.in_force(at))
    }) {
        metrics::gauge!(crate::metrics::MANUAL_PAUSE, "marketplace" => gone.scope.as_str().to_owned())
            .set(0.0);
    }
}

/// Who acts from this command line: `user@host` (the user from `USER`, `LOGNAME`, or the
/// process's uid in `/etc/passwd`).
pub fn cli_user() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(user_of_uid)
        .unwrap_or_else(|| "unknown".to_owned());
    format!("{user}@{}", crate::config::hostname())
}

/// The name `/etc/passwd` gives this process's real uid (from `/proc/self/status`).
fn user_of_uid() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .to_owned();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)? == uid).then(|| name.to_owned())
    })
}

/// Which live workers run under a generation, once the wait is over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub generation: i64,
    /// Live workers that report it (or a later one).
    pub applied: Vec<String>,
    /// Live workers that do not yet: instance and the generation they report.
    pub pending: Vec<(String, i64)>,
}

/// Waits (up to `wait`) until every worker seen within [`LIVE_WITHIN`] reports `generation` or
/// later; says who has and who has not.
pub async fn await_applied(
    store: &dyn ControlStore,
    generation: i64,
    wait: Duration,
) -> Result<Applied, LedgerError> {
    let deadline = Instant::now() + wait;
    loop {
        let since = Utc::now() - chrono::Duration::from_std(LIVE_WITHIN).unwrap_or_default();
        let workers = store.workers(since).await?;
        let (applied, pending): (Vec<_>, Vec<_>) = workers
            .into_iter()
            .partition(|w| w.beat.generation >= generation);
        let result = Applied {
            generation,
            applied: applied.into_iter().map(|w| w.beat.instance).collect(),
            pending: pending
                .into_iter()
                .map(|w| (w.beat.instance, w.beat.generation))
                .collect(),
        };
        if result.pending.is_empty() || Instant::now() >= deadline {
            return Ok(result);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Parses `MARKETPLACE...` or `--all` into scopes.
pub fn scopes(marketplaces: &[String], all: bool) -> Vec<Scope> {
    if all {
        vec![Scope::All]
    } else {
        marketplaces
            .iter()
            .map(|m| Scope::Marketplace(m.clone()))
            .collect()
    }
}
