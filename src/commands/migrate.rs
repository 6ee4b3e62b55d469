//! `bidorch migrate`: apply the ledger's migrations.

use anyhow::Context;

use bidorch::config::Settings;

/// Applies the ledger migrations.
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    bidorch::app::ledger(&settings.database)
        .await
        .with_context(|| format!("migrating the ledger at {}", settings.database.url))?;
    tracing::info!(database = %settings.database.url, "Ledger migrations applied");
    Ok(())
}
