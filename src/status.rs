//! The fleet at a glance (`bidorch status`, the console's front page): each configured
//! marketplace and its state — bidding, paused by hand (who, why, until), paused automatically
//! by some worker (why) — with today's bids against its cap; the queues' depths from the broker
//! (work, each wait tier, dead letters); the workers seen lately; unresolved sends; and warnings
//! an operator should act on. Gathered from the ledger and the broker; each part that cannot be
//! read says why instead of failing the whole.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{Settings, SourceKind};
use crate::ledger::{ControlStore, LedgerReports, Scope};
use crate::policy::Policy;

/// Workers that reported within this long are listed.
pub const SEEN_WITHIN: Duration = Duration::from_secs(60);

/// A manual pause, as shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PauseView {
    /// `*` for every marketplace.
    pub scope: String,
    pub by: String,
    pub reason: String,
    pub since: DateTime<Utc>,
    pub until: Option<DateTime<Utc>>,
}

/// One marketplace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MarketplaceView {
    pub name: String,
    pub api: String,
    /// `bidding`, `paused_by_hand` or `paused_automatically`.
    pub state: &'static str,
    pub pause: Option<PauseView>,
    /// Automatic pauses, as `worker: reason`.
    pub automatic: Vec<String>,
    /// Bids recorded `placed` since midnight UTC.
    pub placed_today: u64,
    pub daily_cap: Option<u64>,
    pub budget: Option<BudgetView>,
}

/// A marketplace's credit budget in the current period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BudgetView {
    /// `day`, `week` or `month`.
    pub period: &'static str,
    pub period_start: chrono::NaiveDate,
    /// Decimal text, exact.
    pub credits: String,
    pub spent: String,
    pub remaining: String,
    /// Share of the credits spent, in percent (rounded down).
    pub used_percent: u32,
}

/// One queue's depth.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QueueView {
    pub name: String,
    /// `work`, `wait` or `dead_letter`.
    pub kind: &'static str,
    /// Ready messages; `None` when the broker could not say.
    pub messages: Option<u32>,
}

/// One worker seen lately.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkerView {
    pub instance: String,
    pub host: String,
    pub version: String,
    pub seen_at: DateTime<Utc>,
    pub seconds_ago: i64,
    pub in_flight: u32,
    pub generation: i64,
    /// Whether it runs under the current pause generation.
    pub current: bool,
    pub automatic_pauses: Vec<String>,
}

/// The whole picture.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Status {
    pub at: DateTime<Utc>,
    pub pause_generation: i64,
    pub marketplaces: Vec<MarketplaceView>,
    pub queues: Vec<QueueView>,
    /// Why the queues could not be read, if they could not.
    pub queues_error: Option<String>,
    pub workers: Vec<WorkerView>,
    /// Sends of unknown fate older than `reconcile.older_than`.
    pub unresolved_sends: u64,
    pub warnings: Vec<String>,
}

/// Why the ledger part of the status could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading the ledger")]
pub struct StatusError(#[from] crate::ledger::LedgerError);

/// Gathers the status from the ledger (`reports`, `controls`) and the broker `settings` name.
pub async fn gather(
    settings: &Settings,
    reports: &dyn LedgerReports,
    controls: &dyn ControlStore,
) -> Result<Status, StatusError> {
    let now = Utc::now();
    let state = controls.pause_state().await?;
    let seen_since = now - chrono::Duration::from_std(SEEN_WITHIN).unwrap_or_default();
    let seen = controls.workers(seen_since).await?;
    let midnight = now
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .map_or(now, |t| t.and_utc());
    let placed: BTreeMap<String, u64> = reports.placed_since(midnight).await?.into_iter().collect();
    let older = chrono::Duration::from_std(settings.reconcile.older_than).unwrap_or_default();
    let unresolved_sends = reports.count_unresolved(now - older).await?;
    let policy = Policy::new(&settings.bidding).ok();
    let mut budgets = BTreeMap::new();
    for name in settings.marketplaces.keys() {
        if let Some(b) = policy.as_ref().and_then(|p| p.budget(name)) {
            let start = b.period.start_of(now.date_naive());
            let spent = reports.budget_spent(name, start).await?;
            let remaining = (b.credits - spent).max(rust_decimal::Decimal::ZERO);
            let used = if b.credits.is_zero() {
                100
            } else {
                (spent * rust_decimal::Decimal::ONE_HUNDRED / b.credits)
                    .floor()
                    .to_string()
                    .parse()
                    .unwrap_or(100)
            };
            budgets.insert(
                name.clone(),
                BudgetView {
                    period: b.period.as_str(),
                    period_start: start,
                    credits: b.credits.normalize().to_string(),
                    spent: spent.normalize().to_string(),
                    remaining: remaining.normalize().to_string(),
                    used_percent: used,
                },
            );
        }
    }

    let mut warnings = Vec::new();
    let marketplaces = settings
        .marketplaces
        .iter()
        .map(|(name, m)| {
            let pause = state.pause_of(name, now).map(|p| PauseView {
                scope: p.scope.as_str().to_owned(),
                by: p.by.clone(),
                reason: p.reason.clone(),
                since: p.since,
                until: p.until,
            });
            let automatic: Vec<String> = seen
                .iter()
                .flat_map(|w| {
                    w.beat
                        .auto_paused
                        .iter()
                        .filter_map(|a| a.split_once(':'))
                        .filter(|(m, _)| m == name)
                        .map(|(_, why)| format!("{}: {why}", w.beat.instance))
                        .collect::<Vec<_>>()
                })
                .collect();
            let state = if pause.is_some() {
                "paused_by_hand"
            } else if !automatic.is_empty() {
                "paused_automatically"
            } else {
                "bidding"
            };
            MarketplaceView {
                name: name.clone(),
                api: m.api.as_str().to_owned(),
                state,
                pause,
                automatic,
                placed_today: placed.get(name).copied().unwrap_or(0),
                daily_cap: policy.as_ref().and_then(|p| p.daily_cap(name)),
                budget: budgets.get(name).cloned(),
            }
        })
        .collect();
    let budget = chrono::Duration::from_std(settings.amqp.retry_budget).unwrap_or_default();
    for p in &state.pauses {
        let lasts = p.until.map(|u| u - p.since);
        if lasts.is_none_or(|l| l > budget) && p.in_force(now) {
            warnings.push(format!(
                "the pause of {} {} than amqp.retry_budget ({}): postings that wait for it \
                 longer are parked (retry_budget_exhausted)",
                scope_name(&p.scope),
                if p.until.is_some() {
                    "lasts longer"
                } else {
                    "may last longer (no --for)"
                },
                humantime::format_duration(settings.amqp.retry_budget)
            ));
        }
    }
    let workers: Vec<WorkerView> = seen
        .into_iter()
        .map(|w| WorkerView {
            seconds_ago: (now - w.seen_at).num_seconds().max(0),
            current: w.beat.generation >= state.generation,
            instance: w.beat.instance,
            host: w.beat.host,
            version: w.beat.version,
            seen_at: w.seen_at,
            in_flight: w.beat.in_flight,
            generation: w.beat.generation,
            automatic_pauses: w.beat.auto_paused,
        })
        .collect();
    for w in workers.iter().filter(|w| !w.current && w.seconds_ago < 10) {
        warnings.push(format!(
            "worker {} runs under pause generation {}, not the current {}",
            w.instance, w.generation, state.generation
        ));
    }
    if unresolved_sends > 0 {
        warnings.push(format!(
            "{unresolved_sends} send(s) of unknown fate older than {}: run `bidorch reconcile`",
            humantime::format_duration(settings.reconcile.older_than)
        ));
    }
    let (queues, queues_error) = queues(settings).await;
    Ok(Status {
        at: now,
        pause_generation: state.generation,
        marketplaces,
        queues,
        queues_error,
        workers,
        unresolved_sends,
        warnings,
    })
}

fn scope_name(scope: &Scope) -> String {
    scope.to_string()
}

/// Every queue's depth from the broker: one passive declare each, on a channel of its own (a
/// missing queue closes its channel).
async fn queues(settings: &Settings) -> (Vec<QueueView>, Option<String>) {
    let amqp = &settings.amqp;
    let mut names = vec![(amqp.queue.clone(), "work")];
    names.extend(
        amqp.retry_tiers
            .iter()
            .map(|t| (amqp.retry_queue(*t), "wait")),
    );
    names.push((amqp.dead_letter_queue(), "dead_letter"));
    let unknown = |why: String| {
        let views = names
            .iter()
            .map(|(name, kind)| QueueView {
                name: name.clone(),
                kind,
                messages: None,
            })
            .collect();
        (views, Some(why))
    };
    if settings.source.kind == SourceKind::Memory {
        return unknown("the in-process queue of each embedded process".to_owned());
    }
    let connected = tokio::time::timeout(
        Duration::from_secs(5),
        crate::amqp::connection::open_connection(amqp, "bidorch-status"),
    )
    .await;
    let connection = match connected {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => return unknown(format!("the broker: {}", crate::error::Chain(&e))),
        Err(_) => return unknown("the broker did not answer within 5s".to_owned()),
    };
    let mut views = Vec::with_capacity(names.len());
    let mut declared = true;
    for (name, kind) in &names {
        // No work queue: no worker has declared the topology yet; asking for each other queue
        // would only make the broker close a channel (and lapin log it) once more each.
        let messages = match connection.create_channel().await {
            Ok(channel) if declared => {
                let n = crate::amqp::topology::message_count(&channel, name)
                    .await
                    .ok();
                let _ = channel.close(200, "status read".into()).await;
                declared = n.is_some() || *kind != "work";
                n
            }
            _ => None,
        };
        views.push(QueueView {
            name: name.clone(),
            kind,
            messages,
        });
    }
    let _ = connection.close(200, "status read".into()).await;
    let why =
        (!declared).then(|| "no work queue yet: no worker has declared the topology".to_owned());
    (views, why)
}
