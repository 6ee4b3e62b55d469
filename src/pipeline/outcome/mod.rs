//! What happened to one posting event, and what to do with its message: the spec's outcome
//! table as one `match` ([`Outcome::action`]), attempts and the retry budget included.
//!
//! | situation                                     | ledger                      | message                          |
//! |-----------------------------------------------|-----------------------------|----------------------------------|
//! | ledger already has a final outcome             | unchanged                   | ack (duplicate)                  |
//! | lock held by another worker                    | unchanged                   | recheck after `retry_lock_held` + jitter, ledger first |
//! | lock store / ledger unreachable                | unchanged                   | wait; the worker pauses          |
//! | should-bid says no                             | `skipped` + reasons         | ack                              |
//! | bid placed (2xx, replay, or 409)               | `placed` + bid id           | ack                              |
//! | marketplace 429 / 5xx / timeout                | `pending` kept              | retry (honours `Retry-After`)    |
//! | marketplace 401 / 403 / 407, or paused         | `pending` kept              | wait; the marketplace pauses     |
//! | over the marketplace's fleet-wide rate         | unchanged                   | wait for the bucket, no call     |
//! | a send of unknown fate, lookup not yet due     | unchanged                   | wait for `lookup_delay`, no call |
//! | marketplace other 4xx                          | `rejected` + status/excerpt | ack                              |
//! | lease lost / claim superseded before the bid   | unchanged                   | wait, no call made               |
//! | poison message                                 | none                        | dead-letter                      |
//! | the posting's own failures reach `max_attempts`| unchanged                   | dead-letter (`max_attempts`)     |
//! | waited longer than `amqp.retry_budget`         | unchanged                   | dead-letter (`retry_budget_exhausted`) |
//!
//! **Waiting is not failing.** Only a transient answer about this posting, while its marketplace
//! is otherwise healthy, counts towards `amqp.max_attempts`. Everything else that retries — a held
//! lease, an unreachable dependency, a paused marketplace, a `Retry-After` — waits without
//! counting, bounded only by the message's age.

use std::time::Duration;

use crate::flow::{Dependency, PauseReason};
use crate::ledger::LedgerState;
use crate::posting::PostingError;

/// When and how often a message comes back (`[worker]` delays, `[amqp]` limits).
#[derive(Clone, Copy, Debug)]
pub struct RetryRules {
    /// Wait after a lost lease or a superseded claim.
    pub lock_held: Duration,
    /// Wait while a dependency is unreachable (the worker meanwhile pauses and probes).
    pub unavailable: Duration,
    /// Wait after a transient marketplace answer without `Retry-After`.
    pub transient: Duration,
    /// The posting's own failures after which it is parked (`amqp.max_attempts`).
    pub max_attempts: u32,
    /// The longest a message may keep coming back, from when bidorch first took it.
    pub retry_budget: Duration,
}

/// The message-level facts the table needs besides the outcome.
#[derive(Clone, Copy, Debug)]
pub struct Envelope {
    /// 1 + the posting's own failures so far.
    pub attempt: u32,
    /// Time since bidorch first took the message.
    pub age: Duration,
}

/// How a bid came to be recorded as placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlacedVia {
    /// `201`: a new bid.
    New,
    /// `200`: the marketplace replayed our idempotency key (an earlier attempt had placed it).
    Replay,
    /// `409`: a bid exists under another key.
    Conflict,
    /// A lookup found it (a send whose answer was lost had placed it; no idempotency keys).
    Lookup,
}

/// Which dependency failed closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    LockStore,
    Ledger,
    Marketplace,
    /// The remote scoring service (`[scoring]`, `on_failure = "wait"`).
    Scoring,
}

impl Component {
    /// Bounded label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::LockStore => "lock_store",
            Self::Ledger => "ledger",
            Self::Marketplace => "marketplace",
            Self::Scoring => "scoring",
        }
    }

    /// The dependency whose outage pauses the whole worker (the marketplace pauses on its own).
    pub fn dependency(self) -> Option<Dependency> {
        match self {
            Self::LockStore => Some(Dependency::LockStore),
            Self::Ledger => Some(Dependency::Ledger),
            Self::Marketplace | Self::Scoring => None,
        }
    }
}

/// What happened to one event. Every variant maps to exactly one [`Action`].
#[derive(Debug)]
pub enum Outcome {
    /// The body is not a valid posting event.
    Poison(PostingError),
    /// The ledger already had a final outcome (found before or inside the lease).
    Duplicate(LedgerState),
    /// Another worker holds the lease; look again after `retry_in` (`worker.retry_lock_held`
    /// plus jitter), the ledger first.
    LockHeld { retry_in: Duration },
    /// A dependency could not answer; nothing was decided.
    Unavailable { component: Component, error: String },
    /// The worker is paused because `dependency` is down; the delivery was not attempted.
    Deferred { dependency: Dependency },
    /// The message's `not-before` is still `remaining` away; not attempted.
    NotYet { remaining: Duration },
    /// The marketplace is paused (down, our credentials refused, rate limited, misconfigured).
    MarketplacePaused {
        reason: PauseReason,
        retry_in: Duration,
    },
    /// Over the marketplace's fleet-wide request rate; not attempted, back after `retry_in`.
    RateLimited { retry_in: Duration },
    /// A send of unknown fate is looked up no sooner than `lookup_delay` after it (a request
    /// still in flight may yet place the bid): back after `retry_in`, nothing called.
    LookupWait { retry_in: Duration },
    /// The policy declined; recorded as `skipped`.
    Skipped { reasons: Vec<String> },
    /// A bid exists and is recorded as `placed`.
    Placed {
        bid_id: Option<String>,
        via: PlacedVia,
    },
    /// The marketplace could not take the bid now; the row stays `pending`. `counts` says
    /// whether it was this posting's own failure (the marketplace is otherwise healthy).
    Transient {
        reason: String,
        retry_after: Option<Duration>,
        counts: bool,
    },
    /// The marketplace refused the bid permanently; recorded as `rejected`.
    Rejected { status: u16 },
    /// The lease was lost or the claim superseded before the marketplace call; no call made.
    LeaseLost,
    /// The bid call happened but a newer claim superseded ours before we could record it: the
    /// newer holder replays the idempotency key and records it.
    Superseded,
}

/// What to do with the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Ack,
    /// Back after about `delay`; `counts` adds one to its attempts (its own failure).
    Retry {
        delay: Duration,
        reason: &'static str,
        counts: bool,
    },
    DeadLetter {
        reason: &'static str,
        detail: String,
    },
}

impl Outcome {
    /// `component` could not answer: `error` with its causes.
    pub fn unavailable(component: Component, error: &(dyn std::error::Error + 'static)) -> Self {
        Self::Unavailable {
            component,
            error: crate::error::chain(error),
        }
    }

    /// The spec's outcome table, attempts and the retry budget included: one match, one place.
    pub fn action(&self, envelope: &Envelope, rules: &RetryRules) -> Action {
        match self.table(rules) {
            Action::Retry { reason, .. } if envelope.age > rules.retry_budget => {
                Action::DeadLetter {
                    reason: "retry_budget_exhausted",
                    detail: format!(
                        "waiting for {} (amqp.retry_budget {}); last: {reason}",
                        humantime::format_duration(Duration::from_secs(envelope.age.as_secs())),
                        humantime::format_duration(rules.retry_budget)
                    ),
                }
            }
            Action::Retry {
                reason,
                counts: true,
                ..
            } if envelope.attempt >= rules.max_attempts => Action::DeadLetter {
                reason: "max_attempts",
                detail: format!("{} attempts; last: {reason}", envelope.attempt),
            },
            action => action,
        }
    }

    fn table(&self, rules: &RetryRules) -> Action {
        let wait = |delay: Duration, reason: &'static str| Action::Retry {
            delay,
            reason,
            counts: false,
        };
        match self {
            Self::Poison(e) => Action::DeadLetter {
                reason: e.reason(),
                detail: e.to_string(),
            },
            Self::Duplicate(_)
            | Self::Skipped { .. }
            | Self::Placed { .. }
            | Self::Rejected { .. } => Action::Ack,
            Self::LockHeld { retry_in } => wait(*retry_in, "lock_held"),
            Self::Unavailable { component, .. } => wait(
                rules.unavailable,
                match component {
                    Component::LockStore => "lock_store_unavailable",
                    Component::Ledger => "ledger_unavailable",
                    Component::Marketplace => "marketplace_unavailable",
                    Component::Scoring => "scoring_unavailable",
                },
            ),
            Self::Deferred { dependency } => wait(
                rules.unavailable,
                match dependency {
                    Dependency::LockStore => "lock_store_unavailable",
                    Dependency::Ledger => "ledger_unavailable",
                },
            ),
            Self::NotYet { remaining } => wait(*remaining, "not_yet"),
            Self::MarketplacePaused { retry_in, .. } => wait(*retry_in, "marketplace_paused"),
            Self::RateLimited { retry_in } => wait(*retry_in, "rate_limited"),
            Self::LookupWait { retry_in } => wait(*retry_in, "lookup_wait"),
            Self::Transient {
                retry_after,
                counts,
                ..
            } => Action::Retry {
                delay: retry_after.unwrap_or(rules.transient),
                reason: "marketplace_transient",
                // A Retry-After is the marketplace telling us to wait, not a failure of ours.
                counts: *counts && retry_after.is_none(),
            },
            Self::LeaseLost => wait(rules.lock_held, "lease_lost"),
            Self::Superseded => wait(rules.lock_held, "superseded"),
        }
    }

    /// Every [`label`](Self::label) there is (the `outcome` values of `bidorch_outcomes_total`).
    pub const LABELS: &[&str] = &[
        "poison",
        "duplicate",
        "lock_held",
        "lock_store",
        "ledger",
        "marketplace",
        "scoring",
        "deferred",
        "not_yet",
        "marketplace_paused",
        "rate_limited",
        "lookup_wait",
        "skipped",
        "placed",
        "transient",
        "rejected",
        "lease_lost",
        "superseded",
    ];

    /// Bounded label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Poison(_) => "poison",
            Self::Duplicate(_) => "duplicate",
            Self::LockHeld { .. } => "lock_held",
            Self::Unavailable { component, .. } => component.label(),
            Self::Deferred { .. } => "deferred",
            Self::NotYet { .. } => "not_yet",
            Self::MarketplacePaused { .. } => "marketplace_paused",
            Self::RateLimited { .. } => "rate_limited",
            Self::LookupWait { .. } => "lookup_wait",
            Self::Skipped { .. } => "skipped",
            Self::Placed { .. } => "placed",
            Self::Transient { .. } => "transient",
            Self::Rejected { .. } => "rejected",
            Self::LeaseLost => "lease_lost",
            Self::Superseded => "superseded",
        }
    }
}

#[cfg(test)]
mod tests;
