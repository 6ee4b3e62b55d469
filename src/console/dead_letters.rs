//! The console's dead-letter pages: the parking lot listed, what a replay would take (and
//! cost), and the replay itself, recorded with who asked.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use minijinja::context;
use serde::{Deserialize, Serialize};

use super::pages::{Notice, csrf_refused, refuse, render, val};
use super::{Console, Visitor, csrf_ok};
use crate::dlq::ReplayFilter;
use crate::ledger::AuditEntry;

/// Parked messages read to count what a replay would take.
const COUNT_AT_MOST: usize = 10_000;

#[derive(Serialize)]
struct ParkedView {
    event_id: Option<String>,
    reason: String,
    detail: Option<String>,
    attempt: u32,
}

pub(super) async fn dlq(
    State(console): State<Arc<Console>>,
    Extension(visitor): Extension<Visitor>,
    Query(notice): Query<Notice>,
) -> Response {
    let listed = crate::dlq::list(&console.settings.amqp, 200).await;
    let (total, messages, error) = match listed {
        Ok(listing) => (listing.total, listing.messages, None),
        Err(e) => (0, Vec::new(), Some(crate::error::chain(&e))),
    };
    let mut reasons: BTreeMap<String, u32> = BTreeMap::new();
    for m in &messages {
        *reasons.entry(m.reason.clone()).or_default() += 1;
    }
    let views: Vec<ParkedView> = messages
        .into_iter()
        .map(|m| ParkedView {
            event_id: m.event_id,
            reason: m.reason,
            detail: m.detail,
            attempt: m.attempt,
        })
        .collect();
    render(
        &console,
        "dlq.html",
        context! {
            title => "Dead letters", page => "dlq", who => visitor.who, csrf => visitor.csrf,
            signed_in => visitor.signed_in, total => total, shown => views.len(),
            messages => val(&views),
            reasons => val(reasons.into_iter().collect::<Vec<_>>()),
            error => error, notice => notice.notice,
        },
    )
}

/// Which messages a replay link or form names.
#[derive(Deserialize, Default)]
pub(super) struct ReplayQuery {
    all: Option<String>,
    reason: Option<String>,
    event_id: Option<String>,
}

impl ReplayQuery {
    fn filter(&self) -> Option<(ReplayFilter, &'static str, String, String)> {
        if let Some(id) = self.event_id.as_deref().filter(|s| !s.is_empty()) {
            return Some((
                ReplayFilter::EventId(id.to_owned()),
                "event_id",
                id.to_owned(),
                format!("event {id}"),
            ));
        }
        if let Some(reason) = self.reason.as_deref().filter(|s| !s.is_empty()) {
            return Some((
                ReplayFilter::Reason(reason.to_owned()),
                "reason",
                reason.to_owned(),
                format!("the messages parked for {reason}"),
            ));
        }
        self.all.is_some().then(|| {
            (
                ReplayFilter::All,
                "all",
                String::new(),
                "every parked message".to_owned(),
            )
        })
    }
}

pub(super) async fn replay_preview(
    State(console): State<Arc<Console>>,
    Extension(visitor): Extension<Visitor>,
    Query(query): Query<ReplayQuery>,
) -> Response {
    let Some((filter, kind, value, what)) = query.filter() else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "say which messages: all, reason or event_id",
        );
    };
    let listing = match crate::dlq::list(&console.settings.amqp, COUNT_AT_MOST).await {
        Ok(listing) => listing,
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, &crate::error::chain(&e)),
    };
    let matched: Vec<&crate::dlq::ParkedMessage> = listing
        .messages
        .iter()
        .filter(|m| filter.matches(m))
        .collect();
    let matching = matched.len();
    let cost = replay_cost(&console, &matched).await;
    render(
        &console,
        "replay.html",
        context! {
            title => "Replay", page => "dlq", who => visitor.who, csrf => visitor.csrf,
            signed_in => visitor.signed_in, what => what, kind => kind, value => value,
            matching => matching, looked_at => listing.messages.len(), cost => cost,
            capped => (listing.total as usize) > listing.messages.len(),
        },
    )
}

/// What replaying `messages` could cost against the marketplaces' credit budgets: per budgeted
/// marketplace, the credits their bids would take at most and what is left this period.
async fn replay_cost(console: &Console, messages: &[&crate::dlq::ParkedMessage]) -> Option<String> {
    let policy = crate::policy::Policy::new(&console.settings.bidding).ok()?;
    let mut per: BTreeMap<String, rust_decimal::Decimal> = BTreeMap::new();
    for m in messages {
        let Ok(body) = serde_json::from_slice::<serde_json::Value>(&m.body) else {
            continue;
        };
        let Some(marketplace) = body.get("marketplace").and_then(|v| v.as_str()) else {
            continue;
        };
        let Some(budget) = policy.budget(marketplace) else {
            continue;
        };
        let event_cost = body.get("bid_cost").and_then(|v| match v {
            serde_json::Value::String(s) => s.parse().ok(),
            serde_json::Value::Number(n) => n.to_string().parse().ok(),
            _ => None,
        });
        let cost = match budget.cost {
            crate::config::BidCost::Fixed(c) => c,
            crate::config::BidCost::Event => event_cost.unwrap_or(budget.default_cost),
        };
        *per.entry(marketplace.to_owned()).or_default() += cost;
    }
    if per.is_empty() {
        return None;
    }
    let today = Utc::now().date_naive();
    let mut parts = Vec::new();
    for (marketplace, cost) in per {
        let Some(budget) = policy.budget(&marketplace) else {
            continue;
        };
        let start = budget.period.start_of(today);
        let left = match console
            .ledger
            .reports
            .budget_spent(&marketplace, start)
            .await
        {
            Ok(spent) => (budget.credits - spent)
                .max(rust_decimal::Decimal::ZERO)
                .to_string(),
            Err(_) => "?".to_owned(),
        };
        parts.push(format!(
            "{} credits of {marketplace}'s {left} left this {}",
            cost.normalize(),
            budget.period.as_str()
        ));
    }
    Some(parts.join("; "))
}

#[derive(Deserialize)]
pub(super) struct ReplayForm {
    csrf: Option<String>,
    kind: String,
    #[serde(default)]
    value: String,
}

pub(super) async fn replay(
    State(console): State<Arc<Console>>,
    Extension(visitor): Extension<Visitor>,
    Form(form): Form<ReplayForm>,
) -> Response {
    if !csrf_ok(&visitor, form.csrf.as_deref()) {
        return csrf_refused();
    }
    let filter = match form.kind.as_str() {
        "all" => ReplayFilter::All,
        "reason" if !form.value.is_empty() => ReplayFilter::Reason(form.value.clone()),
        "event_id" if !form.value.is_empty() => ReplayFilter::EventId(form.value.clone()),
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "say which messages: all, reason or event_id",
            );
        }
    };
    let replayed = crate::dlq::replay(
        &console.settings.amqp,
        &filter,
        console.settings.ledger.retention,
    )
    .await;
    let (n, old, failure) = match &replayed {
        Ok(summary) => (summary.replayed.len(), summary.beyond_retention.len(), None),
        Err(crate::dlq::DlqError::Replay { replayed, source }) => {
            (*replayed, 0, Some(crate::error::chain(source)))
        }
        Err(e) => (0, 0, Some(crate::error::chain(e))),
    };
    let detail = format!(
        "{n} message(s): {}{}{}",
        match &filter {
            ReplayFilter::All => "all".to_owned(),
            ReplayFilter::Reason(r) => format!("reason {r}"),
            ReplayFilter::EventId(id) => format!("event {id}"),
        },
        if old > 0 {
            format!(
                "; {old} left parked: first seen longer ago than ledger.retention ({})",
                crate::text::duration(console.settings.ledger.retention)
            )
        } else {
            String::new()
        },
        failure
            .as_deref()
            .map(|f| format!("; stopped: {f}"))
            .unwrap_or_default()
    );
    let _ = console
        .ledger
        .controls
        .audit(&AuditEntry {
            at: Utc::now(),
            who: visitor.who.clone(),
            action: "replay".to_owned(),
            scope: None,
            reason: None,
            until: None,
            detail: Some(detail.clone()),
        })
        .await;
    let encoded: String =
        url::form_urlencoded::byte_serialize(format!("Replayed {detail}").as_bytes()).collect();
    Redirect::to(&format!("/dlq?notice={encoded}")).into_response()
}
