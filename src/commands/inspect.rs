//! `bidorch inspect MARKETPLACE:POSTING_ID [--json]`: one posting's story.

use anyhow::{Context, bail};
use clap::Args;

use bidorch::config::Settings;
use bidorch::inspect::{InspectError, Story, parse_key};
use bidorch::posting::PostingKey;
use bidorch::text::escape_controls;

/// `bidorch inspect` flags.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The posting, as MARKETPLACE:POSTING_ID (e.g. upwork:job_123).
    #[arg(value_parser = parse_key, value_name = "MARKETPLACE:POSTING_ID")]
    key: PostingKey,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Prints the story, or fails with "no such posting".
pub async fn inspect(settings: &Settings, args: InspectArgs) -> anyhow::Result<()> {
    let ledger = bidorch::app::ledger(&settings.database)
        .await
        .with_context(|| format!("opening the ledger at {}", settings.database.url))?;
    let locks = bidorch::app::locks(settings.lock.kind, &settings.redis, "inspect")?.locks;
    let story = match bidorch::inspect::story(&*ledger.ledger, &*ledger.reports, &*locks, &args.key)
        .await
    {
        Err(InspectError::NotFound(key)) => bail!("no such posting: {key}"),
        other => other?,
    };
    if args.json {
        out!("{}", serde_json::to_string_pretty(&story)?)?;
    } else {
        print_text(&story)?;
    }
    Ok(())
}

fn print_text(s: &Story) -> std::io::Result<()> {
    // Everything but our own fixed words may hold publisher input: shown escaped.
    let e = |text: &str| escape_controls(text).into_owned();
    out!(
        "{}  {}  epoch {}  sends {}",
        e(&s.key.to_string()),
        s.state,
        s.epoch,
        s.sends
    )?;
    if let Some(bid) = &s.bid_id {
        out!("  bid id     {}", e(bid))?;
    }
    if let Some(detail) = &s.detail {
        out!("  detail     {}", e(detail))?;
    }
    out!("  event      {}", e(&s.event_id))?;
    if let Some(trace) = &s.trace_id {
        out!(
            "  trace      {}  (every marketplace call of the posting)",
            e(trace)
        )?;
    }
    out!(
        "  times      created {}  updated {}  sent {}",
        s.created_at,
        s.updated_at,
        s.sent_at.as_deref().unwrap_or("-")
    )?;
    if let Some(since) = &s.unknown_since {
        out!("  unknown    since {since}: a send may have reached the marketplace unanswered")?;
    }
    if let Some(r) = &s.request {
        out!(
            "  request    {} API  {} {}  sha256 {}",
            e(&r.api),
            e(&r.amount),
            e(&r.currency),
            e(r.sha256.get(..16).unwrap_or(&r.sha256))
        )?;
        out!("             {}", e(&r.body))?;
    }
    match &s.lease {
        Some(l) => out!(
            "  lease      held by {} for {} ms more",
            e(&l.holder),
            l.ttl_left_ms
        )?,
        None => out!("  lease      free")?,
    }
    out!("  attempts   {}", s.attempts.len())?;
    for a in &s.attempts {
        out!(
            "    #{} {} by {} at {} -> {}{}{}{}{}",
            a.epoch,
            e(&a.claim),
            e(&a.instance),
            a.started_at,
            e(a.result.as_deref().unwrap_or("(unfinished)")),
            a.http_status
                .map(|s| format!(" HTTP {s}"))
                .unwrap_or_default(),
            a.detail
                .as_deref()
                // A transient answer's reason is often just its status, shown already.
                .filter(|d| a.http_status.is_none_or(|s| *d != format!("HTTP {s}")))
                .map(|d| format!(" ({})", e(d)))
                .unwrap_or_default(),
            a.send
                .as_deref()
                .map(|s| format!("  send {}", e(s)))
                .unwrap_or_default(),
            a.trace_id
                .as_deref()
                .map(|t| format!("  trace {}", e(t)))
                .unwrap_or_default(),
        )?;
    }
    Ok(())
}
