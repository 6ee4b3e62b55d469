//! The claim and finish of a batch as PostgreSQL sees them: one array per column (posting k is
//! element k of each), bound to `bidorch_claim` / `bidorch_finish` (migration 0005), and the
//! statements that call them — alone, or both in one round trip and one transaction — and
//! `bidorch_lookup`. Every statement returns the same columns in the same order (see `rows`).

use sqlx::postgres::{PgArguments, Postgres};
use sqlx::query::Query as SqlxQuery;

use crate::ledger::{ClaimRequest, Finish, Intent};
use crate::posting::PostingKey;

/// The columns every statement reads back, after `o_kind` (`c` claim, `f` finish).
const COLUMNS: &str = "o_idx, o_result, o_written, o_epoch, o_state, o_sends, o_bid_id, \
     o_detail, o_event_id, o_created_at, o_updated_at, o_sent_at, o_request_body, \
     o_request_sha256, o_request_amount, o_request_currency, o_trace_parent, o_request_api, \
     o_unknown_since";

/// `bidorch_claim`'s parameters from `$first` on (the budget's credits and costs go as decimal
/// text, cast to `numeric` by the server: exact either way).
fn claim_call(first: usize) -> String {
    let args: Vec<String> = (first..first + 19)
        .map(|n| match n - first {
            17 | 18 => format!("${n}::numeric[]"),
            _ => format!("${n}"),
        })
        .collect();
    format!(
        "SELECT 'c'::text AS o_kind, {COLUMNS} FROM bidorch_claim({})",
        args.join(", ")
    )
}

/// `bidorch_finish`'s parameters from `$first` on.
fn finish_call(first: usize) -> String {
    let args: Vec<String> = (first..first + 11).map(|n| format!("${n}")).collect();
    format!(
        "SELECT 'f'::text AS o_kind, {COLUMNS} FROM bidorch_finish({})",
        args.join(", ")
    )
}

/// The statement for a batch with finishes, claims or both: finishes first (an attempt that
/// ends and a new claim of the same posting then read as they happened).
fn statement(finishes: bool, claims: bool) -> &'static str {
    use std::sync::OnceLock;
    static BOTH: OnceLock<String> = OnceLock::new();
    static CLAIMS: OnceLock<String> = OnceLock::new();
    static FINISHES: OnceLock<String> = OnceLock::new();
    match (finishes, claims) {
        (true, true) => {
            BOTH.get_or_init(|| format!("{} UNION ALL {}", finish_call(1), claim_call(12)))
        }
        (false, _) => CLAIMS.get_or_init(|| claim_call(1)),
        (true, false) => FINISHES.get_or_init(|| finish_call(1)),
    }
}

type Query<'q> = SqlxQuery<'q, Postgres, PgArguments>;

/// The statement for `finishes` and `claims` (each left out where `None`), bound.
pub(super) fn steps_query<'q>(
    finishes: Option<&'q [(PostingKey, i64, Finish)]>,
    claims: Option<&'q [ClaimRequest]>,
) -> Query<'q> {
    // Unnamed: a named statement would outlive the transaction on a pooler's server connection.
    let mut query = sqlx::query(statement(finishes.is_some(), claims.is_some())).persistent(false);
    if let Some(finishes) = finishes {
        query = bind_finishes(query, finishes);
    }
    if let Some(claims) = claims {
        query = bind_claims(query, claims);
    }
    query
}

/// `bidorch_lookup` of the keys whose marketplaces and posting ids these are, bound.
pub(super) fn lookup_query<'q>(marketplaces: Vec<&'q str>, postings: Vec<&'q str>) -> Query<'q> {
    sqlx::query(lookup_statement())
        .persistent(false)
        .bind(marketplaces)
        .bind(postings)
}

/// `bidorch_lookup` of a batch of keys, its columns in the order the others return them.
fn lookup_statement() -> &'static str {
    use std::sync::OnceLock;
    static LOOKUP: OnceLock<String> = OnceLock::new();
    LOOKUP.get_or_init(|| {
        format!("SELECT 'l'::text AS o_kind, {COLUMNS} FROM bidorch_lookup($1, $2)")
    })
}

/// Binds a batch of finishes as `bidorch_finish`'s eleven arrays.
fn bind_finishes<'q>(query: Query<'q>, finishes: &'q [(PostingKey, i64, Finish)]) -> Query<'q> {
    let n = finishes.len();
    let mut ms = Vec::with_capacity(n);
    let mut ps = Vec::with_capacity(n);
    let mut epochs = Vec::with_capacity(n);
    let mut states: Vec<Option<&'static str>> = Vec::with_capacity(n);
    let mut bid_ids = Vec::with_capacity(n);
    let mut details = Vec::with_capacity(n);
    let mut results = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut attempt_details = Vec::with_capacity(n);
    let mut send_states = Vec::with_capacity(n);
    let mut back_ats = Vec::with_capacity(n);
    for (key, epoch, finish) in finishes {
        ms.push(key.marketplace());
        ps.push(key.posting_id());
        epochs.push(*epoch);
        results.push(finish.result());
        send_states.push(finish.send_state());
        back_ats.push(finish.back_at());
        match finish {
            Finish::Final(outcome) => {
                states.push(Some(outcome.state().as_str()));
                bid_ids.push(outcome.bid_id());
                details.push(outcome.detail());
                statuses.push(outcome.http_status().map(i32::from));
            }
            Finish::Pending { http_status, .. } => {
                states.push(None);
                bid_ids.push(None);
                details.push(None);
                statuses.push(http_status.map(i32::from));
            }
        }
        attempt_details.push(finish.attempt_detail());
    }
    query
        .bind(ms)
        .bind(ps)
        .bind(epochs)
        .bind(states)
        .bind(bid_ids)
        .bind(details)
        .bind(results)
        .bind(statuses)
        .bind(attempt_details)
        .bind(send_states)
        .bind(back_ats)
}

/// Binds a batch of claims as `bidorch_claim`'s nineteen parameters (the day is the first
/// claim's: a batch is made within moments).
fn bind_claims<'q>(query: Query<'q>, claims: &'q [ClaimRequest]) -> Query<'q> {
    let n = claims.len();
    let mut ms = Vec::with_capacity(n);
    let mut ps = Vec::with_capacity(n);
    let mut evs = Vec::with_capacity(n);
    let mut intents = Vec::with_capacity(n);
    let mut bodies = Vec::with_capacity(n);
    let mut shas = Vec::with_capacity(n);
    let mut amounts = Vec::with_capacity(n);
    let mut currencies = Vec::with_capacity(n);
    let mut apis = Vec::with_capacity(n);
    let mut verifies = Vec::with_capacity(n);
    let mut periods = Vec::with_capacity(n);
    let mut credits: Vec<Option<String>> = Vec::with_capacity(n);
    let mut costs: Vec<Option<String>> = Vec::with_capacity(n);
    let mut reasons = Vec::with_capacity(n);
    let mut instances = Vec::with_capacity(n);
    let mut traces = Vec::with_capacity(n);
    let mut parents = Vec::with_capacity(n);
    let mut caps = Vec::with_capacity(n);
    for c in claims {
        ms.push(c.key.marketplace());
        ps.push(c.key.posting_id());
        evs.push(c.event_id.as_str());
        instances.push(c.instance.as_str());
        traces.push(c.trace_id.as_deref());
        parents.push(c.trace_parent.as_deref());
        verifies.push(c.verify);
        let budget = c
            .budget
            .as_ref()
            .filter(|_| matches!(c.intent, Intent::Bid(_)));
        periods.push(budget.map(|b| b.period_start));
        credits.push(budget.map(|b| b.credits.to_string()));
        costs.push(budget.map(|b| b.cost.to_string()));
        caps.push(
            c.daily_cap
                .map(|cap| i64::try_from(cap).unwrap_or(i64::MAX)),
        );
        let (intent, request, skipped) = match &c.intent {
            Intent::Bid(request) => ("bid", Some(request), None),
            Intent::Skip(why) => ("skip", None, Some(why.join(","))),
            Intent::Resend => ("resend", None, None),
        };
        intents.push(intent);
        bodies.push(request.map(|r| r.body.as_str()));
        shas.push(request.map(|r| r.sha256.as_str()));
        amounts.push(request.map(|r| r.amount.as_str()));
        currencies.push(request.map(|r| r.currency.as_str()));
        apis.push(request.map(|r| r.api.as_str()));
        reasons.push(skipped);
    }
    let day = claims
        .first()
        .map_or_else(|| chrono::Utc::now().date_naive(), |c| c.day);
    query
        .bind(ms)
        .bind(ps)
        .bind(evs)
        .bind(intents)
        .bind(bodies)
        .bind(shas)
        .bind(amounts)
        .bind(currencies)
        .bind(apis)
        .bind(reasons)
        .bind(instances)
        .bind(traces)
        .bind(parents)
        .bind(verifies)
        .bind(caps)
        .bind(day)
        .bind(periods)
        .bind(credits)
        .bind(costs)
}
