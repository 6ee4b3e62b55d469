//! The ledger's migrations, compiled into the binary from `migrations/postgres/` and
//! `migrations/sqlite/` (same version numbers in both). Listed here by hand rather than through
//! `sqlx::migrate!`: that macro pulls sqlx's whole driver and TLS stack into a proc-macro build,
//! which doubled the cold compile. A unit test checks the lists against the directories, so a
//! migration file cannot be forgotten; checksums are sqlx's own, so databases migrated by either
//! way agree.

use std::borrow::Cow;

use sqlx::SqlStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// `(version, description, PostgreSQL SQL, SQLite SQL)`.
type Entry = (i64, &'static str, &'static str, &'static str);

/// Every migration, in order.
const MIGRATIONS: &[Entry] = &[
    (
        1,
        "create bid ledger",
        include_str!("../../migrations/postgres/0001_create_bid_ledger.sql"),
        include_str!("../../migrations/sqlite/0001_create_bid_ledger.sql"),
    ),
    (
        2,
        "sticky requests attempts and daily spend",
        include_str!("../../migrations/postgres/0002_sticky_requests_attempts_and_daily_spend.sql"),
        include_str!("../../migrations/sqlite/0002_sticky_requests_attempts_and_daily_spend.sql"),
    ),
    (
        3,
        "set based claim and finish",
        include_str!("../../migrations/postgres/0003_set_based_claim_and_finish.sql"),
        include_str!("../../migrations/sqlite/0003_set_based_claim_and_finish.sql"),
    ),
    (
        4,
        "posting trace parent",
        include_str!("../../migrations/postgres/0004_posting_trace_parent.sql"),
        include_str!("../../migrations/sqlite/0004_posting_trace_parent.sql"),
    ),
    (
        5,
        "send state and verify",
        include_str!("../../migrations/postgres/0005_send_state_and_verify.sql"),
        include_str!("../../migrations/sqlite/0005_send_state_and_verify.sql"),
    ),
    (
        6,
        "operator controls",
        include_str!("../../migrations/postgres/0006_operator_controls.sql"),
        include_str!("../../migrations/sqlite/0006_operator_controls.sql"),
    ),
    (
        7,
        "credit budgets",
        include_str!("../../migrations/postgres/0007_credit_budgets.sql"),
        include_str!("../../migrations/sqlite/0007_credit_budgets.sql"),
    ),
    (
        8,
        "lifecycle",
        include_str!("../../migrations/postgres/0008_lifecycle.sql"),
        include_str!("../../migrations/sqlite/0008_lifecycle.sql"),
    ),
    (
        9,
        "fewer statements per batch",
        include_str!("../../migrations/postgres/0009_fewer_statements_per_batch.sql"),
        include_str!("../../migrations/sqlite/0009_fewer_statements_per_batch.sql"),
    ),
];

fn migrator(sql: fn(&'static Entry) -> &'static str) -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|m| {
                Migration::new(
                    m.0,
                    Cow::Borrowed(m.1),
                    MigrationType::Simple,
                    SqlStr::from_static(sql(m)),
                    false,
                )
            })
            .collect(),
    )
}

/// The PostgreSQL migrations.
pub(super) fn postgres() -> Migrator {
    migrator(|m| m.2)
}

/// The SQLite migrations.
pub(super) fn sqlite() -> Migrator {
    migrator(|m| m.3)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `NNNN_name.sql` files of a migrations directory, as `(version, description)`.
    fn files(dir: &str) -> Vec<(i64, String)> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut found: Vec<(i64, String)> = std::fs::read_dir(&path)
            .expect("migrations directory")
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let stem = name.strip_suffix(".sql")?;
                let (version, rest) = stem.split_once('_')?;
                Some((version.parse().ok()?, rest.replace('_', " ")))
            })
            .collect();
        found.sort();
        found
    }

    #[test]
    fn every_migration_file_is_listed_in_both_dialects() {
        let listed: Vec<(i64, String)> = MIGRATIONS.iter().map(|m| (m.0, m.1.to_owned())).collect();
        assert_eq!(files("migrations/postgres"), listed);
        assert_eq!(files("migrations/sqlite"), listed);
    }
}
