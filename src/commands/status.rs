//! `bidorch status [--json]`: the fleet at a glance ([`bidorch::status`]).

use anyhow::Context;
use clap::Args;

use bidorch::config::Settings;
use bidorch::status::Status;
use bidorch::text::escape_controls;

/// `bidorch status` flags.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Prints the status.
pub async fn status(settings: &Settings, args: StatusArgs) -> anyhow::Result<()> {
    let ledger = bidorch::app::ledger(&settings.database)
        .await
        .with_context(|| format!("opening the ledger at {}", settings.database.url))?;
    let status = bidorch::status::gather(settings, &*ledger.reports, &*ledger.controls)
        .await
        .context("gathering the status")?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&status)?)?;
    } else {
        print_text(&status)?;
    }
    Ok(())
}

/// A time as operators read it: to the second, UTC.
fn t(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

fn print_text(s: &Status) -> std::io::Result<()> {
    let e = |text: &str| escape_controls(text).into_owned();
    out!(
        "bidorch status at {}  (pause generation {})",
        t(s.at),
        s.pause_generation
    )?;
    out!("")?;
    out!("marketplaces")?;
    for m in &s.marketplaces {
        let cap = m
            .daily_cap
            .map_or_else(|| "no cap".to_owned(), |c| format!("cap {c}"));
        out!(
            "  {:<14} {:<22} {} placed today ({cap})  [{} API]",
            m.name,
            m.state,
            m.placed_today,
            m.api
        )?;
        if let Some(b) = &m.budget {
            out!(
                "      budget: {} of {} credits spent this {} (from {}), {} left ({}% used)",
                b.spent,
                b.credits,
                b.period,
                b.period_start,
                b.remaining,
                b.used_percent
            )?;
        }
        if let Some(p) = &m.pause {
            let until = p
                .until
                .map_or_else(|| "until resumed".to_owned(), |u| format!("until {}", t(u)));
            let scope = if p.scope == "*" {
                " (all marketplaces)"
            } else {
                ""
            };
            out!(
                "      paused by {} since {}{scope}, {until}: {}",
                e(&p.by),
                t(p.since),
                e(&p.reason)
            )?;
        }
        for a in &m.automatic {
            out!("      paused automatically on {}", e(a))?;
        }
    }
    out!("")?;
    out!("queues")?;
    if let Some(why) = &s.queues_error {
        out!("  (not read: {})", e(why))?;
    }
    for q in &s.queues {
        let n = q.messages.map_or_else(|| "?".to_owned(), |n| n.to_string());
        out!("  {:<40} {:<12} {n:>8}", q.name, q.kind)?;
    }
    out!("")?;
    out!("workers seen in the last minute: {}", s.workers.len())?;
    for w in &s.workers {
        out!(
            "  {:<28} {:>3}s ago  {:>4} in flight  generation {}{}  {}",
            e(&w.instance),
            w.seconds_ago,
            w.in_flight,
            w.generation,
            if w.current { "" } else { " (behind)" },
            e(&w.host)
        )?;
    }
    out!("")?;
    out!("unresolved sends: {}", s.unresolved_sends)?;
    for w in &s.warnings {
        out!("warning: {}", e(w))?;
    }
    Ok(())
}
