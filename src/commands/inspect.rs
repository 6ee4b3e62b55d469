//! `bidorch inspect MARKETPLACE:POSTING_ID [--json]`: one posting's story.

use anyhow::{Context, bail};
use clap::Args;

use bidorch::config::Settings;
use bidorch::inspect::{InspectError, Story, parse_key};
use bidorch::posting::PostingKey;

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
    let ledger = bidorch::ledger::from_settings(&settings.database)
        .await
        .with_context(|| format!("opening the ledger at {}", settings.database.url))?;
    let locks = bidorch::lock::from_settings(settings.lock.kind, &settings.redis, "inspect")?;
    let story = match bidorch::inspect::story(&*ledger, &*locks, &args.key).await {
        Err(InspectError::NotFound(key)) => bail!("no such posting: {key}"),
        other => other?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&story)?);
    } else {
        print_text(&story);
    }
    Ok(())
}

fn print_text(s: &Story) {
    println!(
        "{}  {}  epoch {}  sends {}",
        s.key, s.state, s.epoch, s.sends
    );
    if let Some(bid) = &s.bid_id {
        println!("  bid id     {bid}");
    }
    if let Some(detail) = &s.detail {
        println!("  detail     {detail}");
    }
    println!("  event      {}", s.event_id);
    println!(
        "  times      created {}  updated {}  sent {}",
        s.created_at,
        s.updated_at,
        s.sent_at.as_deref().unwrap_or("-")
    );
    if let Some(r) = &s.request {
        println!(
            "  request    {} {}  sha256 {}",
            r.amount,
            r.currency,
            &r.sha256[..16.min(r.sha256.len())]
        );
        println!("             {}", r.body);
    }
    match &s.lease {
        Some(l) => println!(
            "  lease      held by {} for {} ms more",
            l.holder, l.ttl_left_ms
        ),
        None => println!("  lease      free"),
    }
    println!("  attempts   {}", s.attempts.len());
    for a in &s.attempts {
        println!(
            "    #{} {} by {} at {} -> {}{}{}",
            a.epoch,
            a.claim,
            a.instance,
            a.started_at,
            a.result.as_deref().unwrap_or("(unfinished)"),
            a.http_status
                .map(|s| format!(" HTTP {s}"))
                .unwrap_or_default(),
            a.trace_id
                .as_deref()
                .map(|t| format!("  trace {t}"))
                .unwrap_or_default(),
        );
    }
}
