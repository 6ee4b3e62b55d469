//! `bidorch pause (MARKETPLACE... | --all) --reason TEXT [--for DURATION]` and `bidorch resume
//! (MARKETPLACE... | --all)`: the fleet-wide manual pause, recorded in the ledger with who and
//! why, then confirmed: the command returns once every live worker reports having applied it,
//! or names those that have not (exit 1; the pause stands and they apply it when they next read).

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use bidorch::config::Settings;
use bidorch::control::{self, Applied};
use bidorch::ledger::{ControlStore, Scope};
use bidorch::text::escape_controls;

/// `bidorch pause` flags.
#[derive(Args, Debug)]
pub struct PauseArgs {
    /// The marketplaces to pause (configured names).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    marketplaces: Vec<String>,
    /// Pause every marketplace.
    #[arg(long)]
    all: bool,
    /// Why: shown to everyone who looks (status, console, the audit history).
    #[arg(long)]
    reason: String,
    /// End the pause by itself after this long (e.g. "30m"); without it, until resumed.
    #[arg(long = "for", value_parser = humantime::parse_duration, value_name = "DURATION")]
    for_: Option<Duration>,
    /// How long to wait for the live workers to apply it.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    wait: Duration,
}

/// `bidorch resume` flags.
#[derive(Args, Debug)]
pub struct ResumeArgs {
    /// The marketplaces to resume.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    marketplaces: Vec<String>,
    /// End every manual pause.
    #[arg(long)]
    all: bool,
    /// How long to wait for the live workers to apply it.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    wait: Duration,
}

/// The scopes named, each a configured marketplace.
fn scopes(settings: &Settings, marketplaces: &[String], all: bool) -> anyhow::Result<Vec<Scope>> {
    for m in marketplaces {
        if !settings.marketplaces.contains_key(m) {
            let known: Vec<&str> = settings.marketplaces.keys().map(String::as_str).collect();
            bail!(
                "marketplace `{}` is not configured (configured: {})",
                escape_controls(m),
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            );
        }
    }
    Ok(control::scopes(marketplaces, all))
}

async fn store(settings: &Settings) -> anyhow::Result<std::sync::Arc<dyn ControlStore>> {
    Ok(bidorch::app::ledger(&settings.database)
        .await
        .with_context(|| format!("opening the ledger at {}", settings.database.url))?
        .controls)
}

/// Pauses, then waits for the fleet.
pub async fn pause(settings: &Settings, args: PauseArgs) -> anyhow::Result<()> {
    let reason = args.reason.trim();
    if reason.is_empty() {
        bail!("--reason must say why (it is shown to everyone who looks)");
    }
    let scopes = scopes(settings, &args.marketplaces, args.all)?;
    let until = args.for_.map(|d| {
        chrono::Utc::now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
    });
    let store = store(settings).await?;
    let who = control::cli_user();
    let generation = store
        .pause(&scopes, reason, &who, until)
        .await
        .context("recording the pause")?;
    let named: Vec<String> = scopes.iter().map(ToString::to_string).collect();
    out!(
        "paused {} by {who}: {}{}",
        named.join(", "),
        escape_controls(reason),
        until.map_or_else(String::new, |u| format!(" (until {})", u.to_rfc3339()))
    )?;
    if let Some(d) = args.for_
        && d > settings.amqp.retry_budget
    {
        out!(
            "warning: the pause lasts longer than amqp.retry_budget ({}): a posting that waits \
             for it longer than that is parked (retry_budget_exhausted)",
            humantime::format_duration(settings.amqp.retry_budget)
        )?;
    }
    confirm(&*store, generation, args.wait).await
}

/// Resumes, then waits for the fleet.
pub async fn resume(settings: &Settings, args: ResumeArgs) -> anyhow::Result<()> {
    let scopes = scopes(settings, &args.marketplaces, args.all)?;
    let store = store(settings).await?;
    let who = control::cli_user();
    let (generation, ended) = store
        .resume(&scopes, &who)
        .await
        .context("recording the resume")?;
    if ended.is_empty() {
        out!("nothing was paused by hand there")?;
    } else {
        let named: Vec<String> = ended.iter().map(ToString::to_string).collect();
        out!("resumed {} by {who}", named.join(", "))?;
    }
    let still = store.pause_state().await.context("reading the pauses")?;
    if let Some(all) = still.pauses.iter().find(|p| p.scope == Scope::All) {
        out!(
            "note: every marketplace is still paused by {} ({}); `bidorch resume --all` ends that",
            all.by,
            escape_controls(&all.reason)
        )?;
    }
    confirm(&*store, generation, args.wait).await
}

/// Says which live workers applied `generation`; an error naming those that have not.
async fn confirm(store: &dyn ControlStore, generation: i64, wait: Duration) -> anyhow::Result<()> {
    let Applied {
        applied, pending, ..
    } = control::await_applied(store, generation, wait)
        .await
        .context("asking which workers applied it")?;
    if applied.is_empty() && pending.is_empty() {
        out!("no worker is running; every worker that starts applies it from its start")?;
        return Ok(());
    }
    if !applied.is_empty() {
        out!(
            "applied by {} live worker(s): {}",
            applied.len(),
            applied.join(", ")
        )?;
    }
    if pending.is_empty() {
        return Ok(());
    }
    let named: Vec<String> = pending
        .iter()
        .map(|(w, g)| format!("{w} (at generation {g})"))
        .collect();
    bail!(
        "recorded (generation {generation}), but not yet applied within {} by: {}",
        humantime::format_duration(wait),
        named.join(", ")
    )
}
