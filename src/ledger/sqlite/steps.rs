//! The claim and finish decisions for SQLite, each inside the caller's immediate transaction:
//! the same as PostgreSQL's `bidorch_claim`/`bidorch_finish` (migration 0005), in Rust.

use chrono::{DateTime, Utc};

use super::super::sql::{self, ROW_COLUMNS, Row};
use rust_decimal::Decimal;

use super::super::{
    BudgetClaim, Claim, ClaimRequest, Fenced, FinalOutcome, Finish, Intent, LedgerError,
};
use crate::posting::PostingKey;

pub(super) const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// `since` in the stored timestamp format, so text comparison is time comparison.
pub(super) fn timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

pub(super) type Tx<'c> = sqlx::Transaction<'c, sqlx::Sqlite>;

/// The row of `key` inside `tx`, if any.
async fn read(tx: &mut Tx<'_>, key: &PostingKey) -> Result<Option<Row>, LedgerError> {
    let sql =
        format!("SELECT {ROW_COLUMNS} FROM bid_ledger WHERE marketplace = ?1 AND posting_id = ?2");
    sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(sql))
        .bind(key.marketplace())
        .bind(key.posting_id())
        .fetch_optional(&mut **tx)
        .await
        .map_err(|e| sql::query_error(Some(key), e))
}

/// `UPDATE bid_ledger SET {set}` on `key`, with `binds` (?3…), returning the row after it.
async fn update(
    tx: &mut Tx<'_>,
    key: &PostingKey,
    set: &str,
    binds: &[Option<String>],
) -> Result<Row, LedgerError> {
    let sql = format!(
        "UPDATE bid_ledger SET {set}, updated_at = {NOW} \
         WHERE marketplace = ?1 AND posting_id = ?2 RETURNING {ROW_COLUMNS}"
    );
    let mut q = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(sql))
        .bind(key.marketplace())
        .bind(key.posting_id());
    for b in binds {
        q = q.bind(b.clone());
    }
    q.fetch_one(&mut **tx)
        .await
        .map_err(|e| sql::query_error(Some(key), e))
}

/// One claim inside `tx`: the same decisions as PostgreSQL's `bidorch_claim`.
pub(super) async fn claim_in(tx: &mut Tx<'_>, c: &ClaimRequest) -> Result<Claim, LedgerError> {
    let key = &c.key;
    let inserted = sqlx::query(
        "INSERT OR IGNORE INTO bid_ledger (marketplace, posting_id, event_id, trace_parent) \
         VALUES (?1, ?2, ?3, ?4)",
    )
    .bind(key.marketplace())
    .bind(key.posting_id())
    .bind(&c.event_id)
    .bind(&c.trace_parent)
    .execute(&mut **tx)
    .await
    .map_err(|e| sql::query_error(Some(key), e))?
    .rows_affected()
        == 1;
    let row = read(tx, key).await?.ok_or_else(|| LedgerError::Corrupt {
        key: key.to_string(),
        problem: "the row vanished inside its claim".to_owned(),
    })?;
    if row.o_state != "pending" {
        return sql::claim_of(key, "final", row);
    }
    if row.o_sends == 0 && c.intent == Intent::Resend {
        return Ok(Claim::Nothing);
    }
    let epoch = if inserted {
        row.o_epoch
    } else {
        row.o_epoch + 1
    };
    let epoch_text = Some(epoch.to_string());
    let event = Some(c.event_id.clone());
    let (result, row) = if row.o_sends > 0 && c.verify && row.o_unknown_since.is_some() {
        let set = "epoch = ?3, event_id = ?4";
        ("lookup", update(tx, key, set, &[epoch_text, event]).await?)
    } else if row.o_sends > 0 {
        let set = format!(
            "epoch = ?3, sends = sends + 1, event_id = ?4, sent_at = {NOW}, \
             unknown_since = coalesce(unknown_since, {NOW})"
        );
        ("resend", update(tx, key, &set, &[epoch_text, event]).await?)
    } else {
        match &c.intent {
            Intent::Resend => unreachable!("handled above: nothing was sent"),
            Intent::Skip(reasons) => {
                let set = "epoch = ?3, state = 'skipped', detail = ?4, event_id = ?5";
                let binds = [epoch_text, Some(reasons.join(",")), event];
                ("skipped", update(tx, key, set, &binds).await?)
            }
            Intent::Bid(request) => {
                let day = c.day.to_string();
                let cap_ok = match c.daily_cap {
                    None => true,
                    Some(cap) => cap_left(tx, key, &day, cap).await?,
                };
                let budget = match &c.budget {
                    None => None,
                    Some(b) => Some((b, spent_of(tx, key, b).await?)),
                };
                let budget_ok = budget
                    .as_ref()
                    .is_none_or(|(b, spent)| *spent + b.cost <= b.credits);
                if cap_ok && budget_ok {
                    if c.daily_cap.is_some() {
                        sqlx::query(
                            "UPDATE bid_daily_spend SET reserved = reserved + 1 \
                             WHERE marketplace = ?1 AND day = ?2",
                        )
                        .bind(key.marketplace())
                        .bind(&day)
                        .execute(&mut **tx)
                        .await
                        .map_err(|e| sql::query_error(Some(key), e))?;
                    }
                    if let Some((b, spent)) = &budget {
                        sqlx::query(
                            "UPDATE bid_budget_spend SET spent = ?3 \
                             WHERE marketplace = ?1 AND period_start = ?2",
                        )
                        .bind(key.marketplace())
                        .bind(b.period_start.to_string())
                        .bind((*spent + b.cost).to_string())
                        .execute(&mut **tx)
                        .await
                        .map_err(|e| sql::query_error(Some(key), e))?;
                    }
                    let set = format!(
                        "epoch = ?3, sends = 1, request_body = ?4, request_sha256 = ?5, \
                         request_amount = ?6, request_currency = ?7, reserved_day = ?8, \
                         event_id = ?9, request_api = ?10, budget_period = ?11, \
                         budget_cost = ?12, sent_at = {NOW}, unknown_since = {NOW}"
                    );
                    let binds = [
                        epoch_text,
                        Some(request.body.clone()),
                        Some(request.sha256.clone()),
                        Some(request.amount.clone()),
                        Some(request.currency.clone()),
                        c.daily_cap.map(|_| day),
                        event,
                        Some(request.api.clone()),
                        budget.as_ref().map(|(b, _)| b.period_start.to_string()),
                        budget.as_ref().map(|(b, _)| b.cost.to_string()),
                    ];
                    ("send", update(tx, key, &set, &binds).await?)
                } else {
                    // Every limit that binds is a reason.
                    let reasons: Vec<&str> = [
                        (!budget_ok).then_some("budget_exhausted"),
                        (!cap_ok).then_some("daily_cap"),
                    ]
                    .into_iter()
                    .flatten()
                    .collect();
                    let set = "epoch = ?3, state = 'skipped', detail = ?4, event_id = ?5";
                    let binds = [epoch_text, Some(reasons.join(",")), event];
                    ("capped", update(tx, key, set, &binds).await?)
                }
            }
        }
    };
    let finished = matches!(result, "skipped" | "capped");
    let sent = matches!(result, "send" | "resend");
    // A send starts when the row says it was sent (to the millisecond: `unknown_since` is
    // recomputed from the attempts later), as PostgreSQL's one `now()` per transaction has it.
    let started = sent.then(|| row.o_sent_at.map(timestamp)).flatten();
    let sql = format!(
        "INSERT OR IGNORE INTO bid_attempts \
         (marketplace, posting_id, epoch, instance, event_id, trace_id, claim, finished_at, \
          result, detail, send, started_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, CASE WHEN ?8 THEN {NOW} END, \
                 CASE WHEN ?8 THEN 'skipped' END, CASE WHEN ?8 THEN ?9 END, \
                 CASE WHEN ?10 THEN 'unknown' END, coalesce(?11, {NOW}))"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(key.marketplace())
        .bind(key.posting_id())
        .bind(row.o_epoch)
        .bind(&c.instance)
        .bind(&c.event_id)
        .bind(&c.trace_id)
        .bind(result)
        .bind(finished)
        .bind(&row.o_detail)
        .bind(sent)
        .bind(started)
        .execute(&mut **tx)
        .await
        .map_err(|e| sql::query_error(Some(key), e))?;
    sql::claim_of(key, result, row)
}

/// Whether the day's cap of `key`'s marketplace has a slot left (its row made if missing).
async fn cap_left(
    tx: &mut Tx<'_>,
    key: &PostingKey,
    day: &str,
    cap: u64,
) -> Result<bool, LedgerError> {
    sqlx::query("INSERT OR IGNORE INTO bid_daily_spend (marketplace, day) VALUES (?1, ?2)")
        .bind(key.marketplace())
        .bind(day)
        .execute(&mut **tx)
        .await
        .map_err(|e| sql::query_error(Some(key), e))?;
    let reserved: i64 = sqlx::query_scalar(
        "SELECT reserved FROM bid_daily_spend WHERE marketplace = ?1 AND day = ?2",
    )
    .bind(key.marketplace())
    .bind(day)
    .fetch_one(&mut **tx)
    .await
    .map_err(|e| sql::query_error(Some(key), e))?;
    Ok(u64::try_from(reserved).unwrap_or(0) < cap)
}

/// Credits spent in `budget`'s period on `key`'s marketplace (its row made if missing).
async fn spent_of(
    tx: &mut Tx<'_>,
    key: &PostingKey,
    budget: &BudgetClaim,
) -> Result<Decimal, LedgerError> {
    let period = budget.period_start.to_string();
    sqlx::query(
        "INSERT OR IGNORE INTO bid_budget_spend (marketplace, period_start) VALUES (?1, ?2)",
    )
    .bind(key.marketplace())
    .bind(&period)
    .execute(&mut **tx)
    .await
    .map_err(|e| sql::query_error(Some(key), e))?;
    let spent: String = sqlx::query_scalar(
        "SELECT spent FROM bid_budget_spend WHERE marketplace = ?1 AND period_start = ?2",
    )
    .bind(key.marketplace())
    .bind(&period)
    .fetch_one(&mut **tx)
    .await
    .map_err(|e| sql::query_error(Some(key), e))?;
    spent.parse().map_err(|_| LedgerError::Corrupt {
        key: key.to_string(),
        problem: format!("budget spend {spent:?} is not a decimal"),
    })
}

/// Gives back the credits `key`'s bid took from its period's budget, if it took any.
async fn give_back_credits(tx: &mut Tx<'_>, key: &PostingKey) -> Result<(), LedgerError> {
    let taken: Option<(Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT budget_period, budget_cost FROM bid_ledger WHERE marketplace = ?1 AND posting_id = ?2",
    )
    .bind(key.marketplace())
    .bind(key.posting_id())
    .fetch_optional(&mut **tx)
    .await
    .map_err(|e| sql::query_error(Some(key), e))?;
    let Some((Some(period), Some(cost))) = taken else {
        return Ok(());
    };
    let spent: Option<String> = sqlx::query_scalar(
        "SELECT spent FROM bid_budget_spend WHERE marketplace = ?1 AND period_start = ?2",
    )
    .bind(key.marketplace())
    .bind(&period)
    .fetch_optional(&mut **tx)
    .await
    .map_err(|e| sql::query_error(Some(key), e))?;
    let (Some(spent), Ok(cost)) = (spent, cost.parse::<Decimal>()) else {
        return Ok(());
    };
    let left = spent.parse::<Decimal>().unwrap_or_default() - cost;
    sqlx::query(
        "UPDATE bid_budget_spend SET spent = ?3 WHERE marketplace = ?1 AND period_start = ?2",
    )
    .bind(key.marketplace())
    .bind(&period)
    .bind(left.max(Decimal::ZERO).to_string())
    .execute(&mut **tx)
    .await
    .map_err(|e| sql::query_error(Some(key), e))?;
    Ok(())
}

/// One finish inside `tx`: the same as PostgreSQL's `bidorch_finish`.
pub(super) async fn finish_in(
    tx: &mut Tx<'_>,
    key: &PostingKey,
    epoch: i64,
    finish: &Finish,
) -> Result<Fenced, LedgerError> {
    let Some(row) = read(tx, key).await? else {
        return sql::fenced_of(key, epoch, false, None);
    };
    if row.o_state != "pending" || row.o_epoch != epoch {
        return sql::fenced_of(key, epoch, false, Some(row));
    }
    let http_status = match finish {
        Finish::Final(outcome) => outcome.http_status(),
        Finish::Pending { http_status, .. } => *http_status,
    };
    let attempt_detail = finish.attempt_detail();
    if let Finish::Final(outcome) = finish {
        if matches!(outcome, FinalOutcome::Rejected { .. }) {
            give_back_credits(tx, key).await?;
            // A rejection gives back the cap slot the posting held.
            sqlx::query(
                "UPDATE bid_daily_spend SET reserved = max(reserved - 1, 0) \
                 WHERE marketplace = ?1 AND day = \
                   (SELECT reserved_day FROM bid_ledger WHERE marketplace = ?1 AND posting_id = ?2)",
            )
            .bind(key.marketplace())
            .bind(key.posting_id())
            .execute(&mut **tx)
            .await
            .map_err(|e| sql::query_error(Some(key), e))?;
        }
        let release = matches!(outcome, FinalOutcome::Rejected { .. });
        let set = if release {
            "state = ?3, bid_id = ?4, detail = ?5, reserved_day = NULL, budget_period = NULL, \
             unknown_since = NULL"
        } else {
            "state = ?3, bid_id = ?4, detail = ?5, unknown_since = NULL, not_before = NULL"
        };
        let binds = [
            Some(outcome.state().as_str().to_owned()),
            outcome.bid_id().map(str::to_owned),
            outcome.detail(),
        ];
        update(tx, key, set, &binds).await?;
    }
    let send = finish.send_state();
    let sql = format!(
        "UPDATE bid_attempts SET finished_at = {NOW}, result = ?4, http_status = ?5, \
                detail = ?6, \
                send = CASE WHEN send IS NULL OR ?7 = 'absent' THEN send ELSE ?7 END \
         WHERE marketplace = ?1 AND posting_id = ?2 AND epoch = ?3"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(key.marketplace())
        .bind(key.posting_id())
        .bind(epoch)
        .bind(finish.result())
        .bind(http_status.map(i32::from))
        .bind(attempt_detail)
        .bind(send)
        .execute(&mut **tx)
        .await
        .map_err(|e| sql::query_error(Some(key), e))?;
    if send == "absent" {
        sqlx::query(
            "UPDATE bid_attempts SET send = 'absent' \
             WHERE marketplace = ?1 AND posting_id = ?2 AND send = 'unknown'",
        )
        .bind(key.marketplace())
        .bind(key.posting_id())
        .execute(&mut **tx)
        .await
        .map_err(|e| sql::query_error(Some(key), e))?;
    }
    if matches!(finish, Finish::Pending { .. }) {
        let set = "unknown_since = (SELECT min(a.started_at) FROM bid_attempts a \
                   WHERE a.marketplace = ?1 AND a.posting_id = ?2 AND a.send = 'unknown'), \
                   not_before = ?3";
        update(tx, key, set, &[finish.back_at().map(timestamp)]).await?;
    }
    Ok(Fenced::Written)
}
