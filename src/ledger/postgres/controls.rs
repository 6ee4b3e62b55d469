//! [`ControlStore`] in PostgreSQL: each call one statement in a transaction of the ledger's (a
//! pause or resume writes the pauses, its audit rows and the new generation in one statement,
//! so atomically), nothing kept in the session — what a transaction-mode pooler needs.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row as _;

use super::PgBidLedger;
use crate::ledger::controls::{
    AuditEntry, ControlStore, Pause, PauseState, Scope, WorkerBeat, WorkerSeen,
};
use crate::ledger::{LedgerError, sql};

fn failed(e: sqlx::Error) -> LedgerError {
    sql::query_error(None, e)
}

fn scopes_text(scopes: &[Scope]) -> Vec<&str> {
    scopes.iter().map(Scope::as_str).collect()
}

#[async_trait]
impl ControlStore for PgBidLedger {
    async fn pause_state(&self) -> Result<PauseState, LedgerError> {
        let mut tx = self.tx().await?;
        let rows = sqlx::query(
            "SELECT c.generation, p.scope, p.reason, p.paused_by, p.paused_at, p.until \
             FROM bid_control c \
             LEFT JOIN bid_pauses p ON p.until IS NULL OR p.until > now() \
             ORDER BY p.scope",
        )
        .persistent(false)
        .fetch_all(&mut *tx)
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        let mut state = PauseState::default();
        for row in rows {
            state.generation = row.try_get(0).map_err(failed)?;
            let scope: Option<String> = row.try_get(1).map_err(failed)?;
            if let Some(scope) = scope {
                state.pauses.push(Pause {
                    scope: Scope::parse(&scope),
                    reason: row.try_get(2).map_err(failed)?,
                    by: row.try_get(3).map_err(failed)?,
                    since: row.try_get(4).map_err(failed)?,
                    until: row.try_get(5).map_err(failed)?,
                });
            }
        }
        Ok(state)
    }

    async fn pause(
        &self,
        scopes: &[Scope],
        reason: &str,
        by: &str,
        until: Option<DateTime<Utc>>,
    ) -> Result<i64, LedgerError> {
        let mut tx = self.tx().await?;
        let generation = sqlx::query_scalar(
            "WITH paused AS ( \
                 INSERT INTO bid_pauses (scope, reason, paused_by, paused_at, until) \
                 SELECT s, $2, $3, now(), $4 FROM unnest($1::text[]) AS s \
                 ON CONFLICT (scope) DO UPDATE SET reason = EXCLUDED.reason, \
                     paused_by = EXCLUDED.paused_by, paused_at = now(), until = EXCLUDED.until \
             ), audited AS ( \
                 INSERT INTO bid_audit (who, action, scope, reason, until) \
                 SELECT $3, 'pause', s, $2, $4 FROM unnest($1::text[]) AS s \
             ) \
             UPDATE bid_control SET generation = generation + 1 WHERE id = 1 \
             RETURNING generation",
        )
        .bind(scopes_text(scopes))
        .bind(reason)
        .bind(by)
        .bind(until)
        .persistent(false)
        .fetch_one(&mut *tx)
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        Ok(generation)
    }

    async fn resume(&self, scopes: &[Scope], by: &str) -> Result<(i64, Vec<Scope>), LedgerError> {
        let all = scopes.contains(&Scope::All);
        let mut tx = self.tx().await?;
        let row = sqlx::query(
            "WITH ended AS ( \
                 DELETE FROM bid_pauses WHERE scope = ANY($1::text[]) OR $2 RETURNING scope \
             ), audited AS ( \
                 INSERT INTO bid_audit (who, action, scope, detail) \
                 SELECT $3, 'resume', s, \
                        (SELECT 'ended: ' || string_agg(e.scope, ', ' ORDER BY e.scope) \
                         FROM ended e WHERE e.scope = s OR s = '*') \
                 FROM unnest($1::text[]) AS s \
             ) \
             UPDATE bid_control SET generation = generation + 1 WHERE id = 1 \
             RETURNING generation, \
                       (SELECT coalesce(array_agg(scope ORDER BY scope), '{}') FROM ended)",
        )
        .bind(scopes_text(scopes))
        .bind(all)
        .bind(by)
        .persistent(false)
        .fetch_one(&mut *tx)
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        let ended: Vec<String> = row.try_get(1).map_err(failed)?;
        Ok((
            row.try_get(0).map_err(failed)?,
            ended.iter().map(|s| Scope::parse(s)).collect(),
        ))
    }

    async fn report(&self, beat: &WorkerBeat) -> Result<(), LedgerError> {
        let mut tx = self.tx().await?;
        sqlx::query(
            "INSERT INTO bid_workers (instance, host, version, started_at, seen_at, generation, \
                                      in_flight, auto_paused) \
             VALUES ($1, $2, $3, $4, now(), $5, $6, $7) \
             ON CONFLICT (instance) DO UPDATE SET host = EXCLUDED.host, \
                 version = EXCLUDED.version, started_at = EXCLUDED.started_at, seen_at = now(), \
                 generation = EXCLUDED.generation, in_flight = EXCLUDED.in_flight, \
                 auto_paused = EXCLUDED.auto_paused",
        )
        .bind(&beat.instance)
        .bind(&beat.host)
        .bind(&beat.version)
        .bind(beat.started_at)
        .bind(beat.generation)
        .bind(i32::try_from(beat.in_flight).unwrap_or(i32::MAX))
        .bind(beat.auto_paused.join(","))
        .persistent(false)
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)
    }

    async fn workers(&self, since: DateTime<Utc>) -> Result<Vec<WorkerSeen>, LedgerError> {
        let mut tx = self.tx().await?;
        let rows = sqlx::query(
            "SELECT instance, host, version, started_at, seen_at, generation, in_flight, \
                    auto_paused \
             FROM bid_workers WHERE seen_at >= $1 ORDER BY instance",
        )
        .bind(since)
        .persistent(false)
        .fetch_all(&mut *tx)
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        rows.iter()
            .map(sql::worker_seen)
            .collect::<Result<_, _>>()
            .map_err(failed)
    }

    async fn audit(&self, entry: &AuditEntry) -> Result<(), LedgerError> {
        let mut tx = self.tx().await?;
        sqlx::query(
            "INSERT INTO bid_audit (at, who, action, scope, reason, until, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(entry.at)
        .bind(&entry.who)
        .bind(&entry.action)
        .bind(&entry.scope)
        .bind(&entry.reason)
        .bind(entry.until)
        .bind(&entry.detail)
        .persistent(false)
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)
    }

    async fn history(&self, limit: u32) -> Result<Vec<AuditEntry>, LedgerError> {
        let mut tx = self.tx().await?;
        let rows = sqlx::query(
            "SELECT at, who, action, scope, reason, until, detail FROM bid_audit \
             ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .persistent(false)
        .fetch_all(&mut *tx)
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    at: r.try_get(0)?,
                    who: r.try_get(1)?,
                    action: r.try_get(2)?,
                    scope: r.try_get(3)?,
                    reason: r.try_get(4)?,
                    until: r.try_get(5)?,
                    detail: r.try_get(6)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(failed)
    }
}
