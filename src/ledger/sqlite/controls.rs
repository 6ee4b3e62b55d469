//! [`ControlStore`] in SQLite: a pause or resume writes the pauses, its audit rows and the new
//! generation in one immediate transaction; times are the ledger's fixed-width UTC text.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row as _;

use super::SqliteBidLedger;
use super::steps::{NOW, timestamp};
use crate::ledger::controls::{
    AuditEntry, ControlStore, Pause, PauseState, Scope, WorkerBeat, WorkerSeen,
};
use crate::ledger::{LedgerError, sql};

fn failed(e: sqlx::Error) -> LedgerError {
    sql::query_error(None, e)
}

impl SqliteBidLedger {
    /// Bumps the generation inside `tx` and returns it.
    async fn bump(tx: &mut super::steps::Tx<'_>) -> Result<i64, LedgerError> {
        sqlx::query_scalar(
            "UPDATE bid_control SET generation = generation + 1 WHERE id = 1 \
             RETURNING generation",
        )
        .fetch_one(&mut **tx)
        .await
        .map_err(failed)
    }
}

#[async_trait]
impl ControlStore for SqliteBidLedger {
    async fn pause_state(&self) -> Result<PauseState, LedgerError> {
        let sql = format!(
            "SELECT c.generation, p.scope, p.reason, p.paused_by, p.paused_at, p.until \
             FROM bid_control c \
             LEFT JOIN bid_pauses p ON p.until IS NULL OR p.until > {NOW} \
             ORDER BY p.scope"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(failed)?;
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
        let until = until.map(timestamp);
        let (_turn, mut tx) = self.immediate().await?;
        for scope in scopes {
            let sql = format!(
                "INSERT INTO bid_pauses (scope, reason, paused_by, paused_at, until) \
                 VALUES (?1, ?2, ?3, {NOW}, ?4) \
                 ON CONFLICT (scope) DO UPDATE SET reason = excluded.reason, \
                     paused_by = excluded.paused_by, paused_at = {NOW}, until = excluded.until"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(scope.as_str())
                .bind(reason)
                .bind(by)
                .bind(&until)
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
            sqlx::query(
                "INSERT INTO bid_audit (who, action, scope, reason, until) \
                 VALUES (?1, 'pause', ?2, ?3, ?4)",
            )
            .bind(by)
            .bind(scope.as_str())
            .bind(reason)
            .bind(&until)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        }
        let generation = Self::bump(&mut tx).await?;
        tx.commit().await.map_err(failed)?;
        Ok(generation)
    }

    async fn resume(&self, scopes: &[Scope], by: &str) -> Result<(i64, Vec<Scope>), LedgerError> {
        let all = scopes.contains(&Scope::All);
        let (_turn, mut tx) = self.immediate().await?;
        let paused: Vec<String> = sqlx::query_scalar("SELECT scope FROM bid_pauses ORDER BY scope")
            .fetch_all(&mut *tx)
            .await
            .map_err(failed)?;
        let ended: Vec<String> = paused
            .into_iter()
            .filter(|p| all || scopes.iter().any(|s| s.as_str() == p))
            .collect();
        for scope in &ended {
            sqlx::query("DELETE FROM bid_pauses WHERE scope = ?1")
                .bind(scope)
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
        }
        for scope in scopes {
            let these: Vec<&str> = ended
                .iter()
                .map(String::as_str)
                .filter(|e| *scope == Scope::All || *e == scope.as_str())
                .collect();
            let detail = (!these.is_empty()).then(|| format!("ended: {}", these.join(", ")));
            sqlx::query(
                "INSERT INTO bid_audit (who, action, scope, detail) VALUES (?1, 'resume', ?2, ?3)",
            )
            .bind(by)
            .bind(scope.as_str())
            .bind(detail)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        }
        let generation = Self::bump(&mut tx).await?;
        tx.commit().await.map_err(failed)?;
        Ok((generation, ended.iter().map(|s| Scope::parse(s)).collect()))
    }

    async fn report(&self, beat: &WorkerBeat) -> Result<(), LedgerError> {
        let sql = format!(
            "INSERT INTO bid_workers (instance, host, version, started_at, seen_at, generation, \
                                      in_flight, auto_paused) \
             VALUES (?1, ?2, ?3, ?4, {NOW}, ?5, ?6, ?7) \
             ON CONFLICT (instance) DO UPDATE SET host = excluded.host, \
                 version = excluded.version, started_at = excluded.started_at, seen_at = {NOW}, \
                 generation = excluded.generation, in_flight = excluded.in_flight, \
                 auto_paused = excluded.auto_paused"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&beat.instance)
            .bind(&beat.host)
            .bind(&beat.version)
            .bind(timestamp(beat.started_at))
            .bind(beat.generation)
            .bind(i32::try_from(beat.in_flight).unwrap_or(i32::MAX))
            .bind(beat.auto_paused.join(","))
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(failed)
    }

    async fn workers(&self, since: DateTime<Utc>) -> Result<Vec<WorkerSeen>, LedgerError> {
        let rows = sqlx::query(
            "SELECT instance, host, version, started_at, seen_at, generation, in_flight, \
                    auto_paused \
             FROM bid_workers WHERE seen_at >= ?1 ORDER BY instance",
        )
        .bind(timestamp(since))
        .fetch_all(&self.pool)
        .await
        .map_err(failed)?;
        rows.iter()
            .map(sql::worker_seen)
            .collect::<Result<_, _>>()
            .map_err(failed)
    }

    async fn audit(&self, entry: &AuditEntry) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO bid_audit (at, who, action, scope, reason, until, detail) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(timestamp(entry.at))
        .bind(&entry.who)
        .bind(&entry.action)
        .bind(&entry.scope)
        .bind(&entry.reason)
        .bind(entry.until.map(timestamp))
        .bind(&entry.detail)
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(failed)
    }

    async fn history(&self, limit: u32) -> Result<Vec<AuditEntry>, LedgerError> {
        let rows = sqlx::query(
            "SELECT at, who, action, scope, reason, until, detail FROM bid_audit \
             ORDER BY id DESC LIMIT ?1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(failed)?;
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
