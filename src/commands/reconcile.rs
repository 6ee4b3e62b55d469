//! `bidorch reconcile [--dry-run] [--older-than 10m]`: settle sends never recorded.

use std::time::Duration;

use anyhow::Context;
use clap::Args;

use bidorch::app::System;
use bidorch::config::Settings;
use bidorch::text::escape_controls;

/// `bidorch reconcile` flags.
#[derive(Args, Debug)]
pub struct ReconcileArgs {
    /// List what would be settled; change nothing, send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Only sends older than this (default: `reconcile.older_than`).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    older_than: Option<Duration>,
    /// At most this many postings in one run.
    #[arg(long, default_value_t = 10_000)]
    limit: u32,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Finds and settles unresolved sends; prints a summary.
pub async fn reconcile(settings: &Settings, args: ReconcileArgs) -> anyhow::Result<()> {
    let older_than = args.older_than.unwrap_or(settings.reconcile.older_than);
    if args.dry_run {
        // Only the ledger: a dry run sends nothing, so it needs no marketplace credentials.
        let ledger = bidorch::app::ledger(&settings.database)
            .await
            .with_context(|| format!("opening the ledger at {}", settings.database.url))?;
        let entries = bidorch::reconcile::unresolved(&*ledger.reports, older_than, args.limit)
            .await
            .context("finding unresolved sends")?;
        list(&entries, older_than)?;
        for e in &entries {
            let request = e.request.as_ref();
            out!(
                "- {}  epoch {}  sends {}  unknown since {}  {} API  {} {}",
                escape_controls(&e.key.to_string()),
                e.epoch,
                e.sends,
                e.unknown_since
                    .map_or_else(|| "-".to_owned(), |t| t.to_rfc3339()),
                escape_controls(request.map_or("?", |r| r.api.as_str())),
                escape_controls(request.map_or("?", |r| r.amount.as_str())),
                escape_controls(request.map_or("", |r| r.currency.as_str())),
            )?;
        }
        out!(
            "dry run: nothing was sent or changed; not checked: the marketplaces' credentials \
             and the lock store (a real run needs both)"
        )?;
        return Ok(());
    }
    bidorch::metrics::install();
    let system = System::build(settings)
        .await
        .context("starting the system to reconcile with")?;
    let entries = bidorch::reconcile::unresolved(&*system.ports().reports, older_than, args.limit)
        .await
        .context("finding unresolved sends")?;
    list(&entries, older_than)?;
    let bar = if args.quiet || entries.len() < 2 {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(entries.len() as u64)
    };
    let report = bidorch::reconcile::settle(&system.pipeline(), &entries, |entry, outcome| {
        bar.inc(1);
        bar.println(format!(
            "- {}: {}",
            escape_controls(&entry.key.to_string()),
            outcome.label()
        ));
    })
    .await;
    bar.finish_and_clear();
    let summary: Vec<String> = report
        .outcomes
        .iter()
        .map(|(label, n)| format!("{label} {n}"))
        .collect();
    out!(
        "settled {} posting(s): {}",
        report.found,
        summary.join(", ")
    )?;
    if report.unsettled() > 0 {
        anyhow::bail!(
            "{} posting(s) could not be settled now (see above); run reconcile again later",
            report.unsettled()
        );
    }
    Ok(())
}

fn list(entries: &[bidorch::ledger::LedgerEntry], older_than: Duration) -> std::io::Result<()> {
    out!(
        "{} unresolved send(s) older than {}",
        entries.len(),
        humantime::format_duration(older_than)
    )
}
