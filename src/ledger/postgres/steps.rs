//! The claim and finish of a batch as PostgreSQL sees them: one array per column (posting k is
//! element k of each), passed to `bidorch_claim` / `bidorch_finish` (migration 0005), and the
//! statements that call them — alone, or both in one round trip and one transaction — and
//! `bidorch_lookup`. Every statement returns the same columns in the same order (see `rows`).

use sqlx::postgres::{PgArguments, Postgres};
use sqlx::query::Query as SqlxQuery;

use super::literal::{display, push_array, push_constant, push_long_text_array, push_text_array};
use crate::ledger::{ClaimRequest, Finish, Intent};
use crate::posting::PostingKey;

type Query<'q> = SqlxQuery<'q, Postgres, PgArguments>;

/// The columns every statement reads back, after `o_kind` (`c` claim, `f` finish).
const COLUMNS: &str = "o_idx, o_result, o_written, o_epoch, o_state, o_sends, o_bid_id, \
     o_detail, o_event_id, o_created_at, o_updated_at, o_sent_at, o_request_body, \
     o_request_sha256, o_request_amount, o_request_currency, o_trace_parent, o_request_api, \
     o_unknown_since";

/// The statement for a batch with finishes, claims or both, its values written in, sent whole by
/// the simple protocol after `settings` (the transaction's `SET LOCAL`s): one message is one round
/// trip and one implicit transaction, where binding the arrays took four (`BEGIN`, Parse,
/// Bind/Execute, `COMMIT`), and a pooler in transaction mode keeps it on one server connection.
/// Finishes come first (an attempt that ends and a new claim of the same posting then read as
/// they happened).
pub(super) fn steps_sql(
    settings: &str,
    finishes: Option<&[(PostingKey, i64, Finish)]>,
    claims: Option<&[ClaimRequest]>,
) -> String {
    let size = |n: usize, each: usize| n * each + 600;
    let mut out = String::with_capacity(
        settings.len()
            + finishes.map_or(0, |f| size(f.len(), 200))
            + claims.map_or(0, |c| {
                size(c.len(), 400) + c.iter().map(request_len).sum::<usize>()
            }),
    );
    out.push_str(settings);
    out.push_str("; ");
    if let Some(finishes) = finishes {
        write_finishes(&mut out, finishes);
    }
    if let Some(claims) = claims {
        if finishes.is_some() {
            out.push_str(" UNION ALL ");
        }
        write_claims(&mut out, claims);
    }
    out
}

fn request_len(claim: &ClaimRequest) -> usize {
    match &claim.intent {
        Intent::Bid(request) => request.body.len(),
        _ => 0,
    }
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

/// Writes the call of `bidorch_finish` on a batch of finishes, one array per parameter.
fn write_finishes<'a>(out: &mut String, finishes: &'a [(PostingKey, i64, Finish)]) {
    type Pick<'a> = dyn Fn(&'a (PostingKey, i64, Finish)) -> Option<&'a str>;
    let texts = |out: &mut String, pick: &Pick<'a>| {
        push_text_array(out, finishes.iter().map(pick));
        out.push_str(", ");
    };
    out.push_str("SELECT 'f'::text AS o_kind, ");
    out.push_str(COLUMNS);
    out.push_str(" FROM bidorch_finish(");
    texts(out, &|(key, _, _)| Some(key.marketplace()));
    texts(out, &|(key, _, _)| Some(key.posting_id()));
    push_array(out, "bigint", finishes.iter().map(|f| Some(f.1)), display);
    out.push_str(", ");
    texts(out, &|(_, _, f)| match f {
        Finish::Final(outcome) => Some(outcome.state().as_str()),
        Finish::Pending { .. } => None,
    });
    texts(out, &|(_, _, f)| match f {
        Finish::Final(outcome) => outcome.bid_id(),
        Finish::Pending { .. } => None,
    });
    let details = finishes.iter().map(|(_, _, f)| match f {
        Finish::Final(outcome) => outcome.detail(),
        Finish::Pending { .. } => None,
    });
    push_text_array(out, details);
    out.push_str(", ");
    texts(out, &|(_, _, f)| Some(f.result()));
    let statuses = finishes.iter().map(|(_, _, f)| match f {
        Finish::Final(outcome) => outcome.http_status().map(i32::from),
        Finish::Pending { http_status, .. } => http_status.map(i32::from),
    });
    push_array(out, "int", statuses, display);
    out.push_str(", ");
    push_text_array(out, finishes.iter().map(|(_, _, f)| f.attempt_detail()));
    out.push_str(", ");
    texts(out, &|(_, _, f)| Some(f.send_state()));
    let back_ats = finishes.iter().map(|(_, _, f)| {
        f.back_at()
            .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    });
    push_array(out, "timestamptz", back_ats, |out, at| out.push_str(&at));
    out.push(')');
}

/// Writes the call of `bidorch_claim` on a batch of claims, its nineteen parameters (the day is
/// the first claim's: a batch is made within moments).
fn write_claims(out: &mut String, claims: &[ClaimRequest]) {
    let texts = |out: &mut String, pick: &dyn Fn(&ClaimRequest) -> Option<&str>| {
        push_text_array(out, claims.iter().map(pick));
        out.push_str(", ");
    };
    fn request(c: &ClaimRequest) -> Option<&crate::ledger::StoredRequest> {
        match &c.intent {
            Intent::Bid(request) => Some(request),
            _ => None,
        }
    }
    fn budget(c: &ClaimRequest) -> Option<&crate::ledger::BudgetClaim> {
        c.budget.as_ref().filter(|_| request(c).is_some())
    }
    out.push_str("SELECT 'c'::text AS o_kind, ");
    out.push_str(COLUMNS);
    out.push_str(" FROM bidorch_claim(");
    texts(out, &|c| Some(c.key.marketplace()));
    texts(out, &|c| Some(c.key.posting_id()));
    texts(out, &|c| Some(c.event_id.as_str()));
    texts(out, &|c| {
        Some(match &c.intent {
            Intent::Bid(_) => "bid",
            Intent::Skip(_) => "skip",
            Intent::Resend => "resend",
        })
    });
    push_long_text_array(
        out,
        claims.iter().map(|c| request(c).map(|r| r.body.as_str())),
    );
    out.push_str(", ");
    texts(out, &|c| request(c).map(|r| r.sha256.as_str()));
    texts(out, &|c| request(c).map(|r| r.amount.as_str()));
    texts(out, &|c| request(c).map(|r| r.currency.as_str()));
    texts(out, &|c| request(c).map(|r| r.api.as_str()));
    let reasons = claims.iter().map(|c| match &c.intent {
        Intent::Skip(why) => Some(why.join(",")),
        _ => None,
    });
    push_text_array(out, reasons);
    out.push_str(", ");
    texts(out, &|c| Some(c.instance.as_str()));
    texts(out, &|c| c.trace_id.as_deref());
    texts(out, &|c| c.trace_parent.as_deref());
    push_array(
        out,
        "boolean",
        claims.iter().map(|c| Some(c.verify)),
        display,
    );
    out.push_str(", ");
    let caps = claims.iter().map(|c| {
        c.daily_cap
            .map(|cap| i64::try_from(cap).unwrap_or(i64::MAX))
    });
    push_array(out, "bigint", caps, display);
    out.push_str(", ");
    let day = claims
        .first()
        .map_or_else(|| chrono::Utc::now().date_naive(), |c| c.day);
    push_constant(out, day);
    out.push_str("::date, ");
    let budgets = || claims.iter().map(budget);
    push_array(
        out,
        "date",
        budgets().map(|b| b.map(|b| b.period_start)),
        display,
    );
    out.push_str(", ");
    push_array(
        out,
        "numeric",
        budgets().map(|b| b.map(|b| b.credits)),
        display,
    );
    out.push_str(", ");
    push_array(
        out,
        "numeric",
        budgets().map(|b| b.map(|b| b.cost)),
        display,
    );
    out.push(')');
}

/// A made-up batch that takes the batch functions down their paths, for a connection's warm-up
/// (run in a transaction rolled back): a finish of a posting with no row (the per-posting
/// finish), a bid under a cap of 0 (the cap loop and the capped rows), and the same bid twice
/// under a credit budget (the budget loop and the per-posting claim). The posting ids are new
/// each time, so workers warming up at once do not wait on each other's rows.
pub(super) fn warm_up_batch() -> (Vec<(PostingKey, i64, Finish)>, Vec<ClaimRequest>) {
    use crate::ledger::{BudgetClaim, Pending, StoredRequest};
    let id = uuid::Uuid::new_v4().simple().to_string();
    let key = |n: u32| PostingKey::new("bidorch-warm-up", &format!("{id}-{n}"));
    let (Ok(capped), Ok(budgeted)) = (key(1), key(2)) else {
        return (Vec::new(), Vec::new());
    };
    let day = chrono::Utc::now().date_naive();
    let request = StoredRequest {
        api: "contract".to_owned(),
        body: "{}".to_owned(),
        sha256: crate::ledger::sha256_hex(b"{}"),
        amount: "1.00".to_owned(),
        currency: "USD".to_owned(),
    };
    let claim = |key: &PostingKey| ClaimRequest {
        key: key.clone(),
        event_id: id.clone(),
        intent: Intent::Bid(request.clone()),
        instance: "warm-up".to_owned(),
        trace_id: None,
        trace_parent: None,
        daily_cap: None,
        day,
        verify: false,
        budget: None,
    };
    let budget = BudgetClaim {
        period_start: day,
        credits: rust_decimal::Decimal::ONE,
        cost: rust_decimal::Decimal::ONE,
    };
    let finish = Finish::Pending {
        reason: Pending::Transient,
        http_status: None,
        detail: None,
        back_at: None,
    };
    let claims = vec![
        ClaimRequest {
            daily_cap: Some(0),
            ..claim(&capped)
        },
        ClaimRequest {
            budget: Some(budget.clone()),
            ..claim(&budgeted)
        },
        ClaimRequest {
            budget: Some(budget),
            ..claim(&budgeted)
        },
    ];
    (vec![(capped, 1, finish)], claims)
}
