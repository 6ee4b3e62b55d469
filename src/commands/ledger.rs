//! `bidorch ledger prune [--dry-run]`: retention by hand ([`bidorch::retention`]).

use anyhow::{Context, bail};
use clap::Subcommand;

use bidorch::config::Settings;
use bidorch::ledger::Pruned;

/// `bidorch ledger` actions.
#[derive(Subcommand, Debug)]
pub enum LedgerAction {
    /// Delete final rows whose outcome is older than `ledger.retention`, with their attempts
    /// and the side tables' old rows, as the workers do in the background; never `pending` rows.
    Prune {
        /// Count what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Hide the progress display.
        #[arg(long)]
        quiet: bool,
    },
}

/// Runs a `bidorch ledger` action.
pub async fn ledger(settings: &Settings, action: LedgerAction) -> anyhow::Result<()> {
    let LedgerAction::Prune { dry_run, quiet } = action;
    let retention = settings.ledger.retention;
    let ports = bidorch::app::ledger(&settings.database)
        .await
        .with_context(|| format!("opening the ledger at {}", settings.database.url))?;
    let before = bidorch::retention::cutoff(retention);
    let window = format!(
        "outcome written before {} (ledger.retention {})",
        before.format("%Y-%m-%d %H:%M:%S UTC"),
        bidorch::text::duration(retention)
    );
    if dry_run {
        let would = ports
            .reports
            .prunable(before)
            .await
            .context("counting the rows past ledger.retention")?;
        out!("dry run: would prune {}; {window}", rows(&would))?;
        out!("nothing was deleted")?;
        return Ok(());
    }
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    let mut so_far = Pruned::default();
    let pruned = bidorch::retention::prune_all(
        &*ports.reports,
        before,
        settings.ledger.prune_batch,
        |batch| {
            so_far.add(*batch);
            bar.set_message(format!("pruned {}", rows(&so_far)));
            bar.tick();
        },
    )
    .await
    .context("pruning the ledger")?;
    bar.finish_and_clear();
    match pruned {
        Some(total) => out!("pruned {}; {window}", rows(&total))?,
        None => bail!(
            "another pruner (a worker, or another `bidorch ledger prune`) is at work on this \
             ledger; nothing was deleted here: try again when it is done"
        ),
    }
    Ok(())
}

fn rows(p: &Pruned) -> String {
    format!(
        "{} posting(s), {} attempt(s), {} other row(s) (audit, daily-cap and budget periods, \
         workers)",
        p.postings, p.attempts, p.other
    )
}
