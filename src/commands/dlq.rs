//! `bidorch dlq list|replay`: the parking lot.

use anyhow::{Context, bail};
use clap::Subcommand;

use bidorch::config::Settings;
use bidorch::text::escape_controls;

/// `bidorch dlq` actions.
#[derive(Subcommand, Debug)]
pub enum DlqAction {
    /// Show parked messages with their reason and attempts (nothing is removed or reordered).
    List {
        /// At most this many messages.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Send parked messages back to the work exchange with attempts reset.
    Replay {
        /// Replay every parked message.
        #[arg(long, conflicts_with = "event_id")]
        all: bool,
        /// Replay only the message with this event id.
        #[arg(long)]
        event_id: Option<String>,
    },
}

/// Lists or replays dead letters.
pub async fn dlq(settings: &Settings, action: DlqAction) -> anyhow::Result<()> {
    let queue = settings.amqp.dead_letter_queue();
    match action {
        DlqAction::List { limit } => {
            let listing = bidorch::dlq::list(&settings.amqp, limit)
                .await
                .with_context(|| format!("listing {queue}"))?;
            out!(
                "{} message(s) in {queue}{}",
                listing.total,
                if (listing.total as usize) > listing.messages.len() {
                    format!(", showing the first {}", listing.messages.len())
                } else {
                    String::new()
                }
            )?;
            // Ids, reasons, details and bodies are publisher input: shown escaped.
            for m in &listing.messages {
                let excerpt: String = String::from_utf8_lossy(&m.body).chars().take(120).collect();
                out!(
                    "- event {}  attempt {}  reason {}{}\n    {}",
                    escape_controls(m.event_id.as_deref().unwrap_or("?")),
                    m.attempt,
                    escape_controls(&m.reason),
                    m.detail
                        .as_deref()
                        .map(|d| format!(" ({})", escape_controls(d)))
                        .unwrap_or_default(),
                    escape_controls(&excerpt)
                )?;
            }
        }
        DlqAction::Replay { all, event_id } => {
            let filter = match (all, event_id) {
                (true, _) => bidorch::dlq::ReplayFilter::All,
                (false, Some(id)) => bidorch::dlq::ReplayFilter::EventId(id),
                (false, None) => bail!("say which messages to replay: --all or --event-id ID"),
            };
            let summary = bidorch::dlq::replay(&settings.amqp, &filter, settings.ledger.retention)
                .await
                .with_context(|| format!("replaying from {queue}"))?;
            out!(
                "replayed {} message(s) to exchange `{}`, {} left in {queue}",
                summary.replayed.len(),
                settings.amqp.exchange,
                summary.kept
            )?;
            for id in &summary.replayed {
                out!("- {}", escape_controls(id))?;
            }
            if !summary.beyond_retention.is_empty() {
                out!(
                    "not replayed: {} message(s) first seen longer ago than ledger.retention \
                     ({}); the ledger may have forgotten them, so a replay could bid twice. \
                     They stay parked:",
                    summary.beyond_retention.len(),
                    bidorch::text::duration(settings.ledger.retention)
                )?;
                for id in &summary.beyond_retention {
                    out!("- {}", escape_controls(id))?;
                }
            }
            if let bidorch::dlq::ReplayFilter::EventId(id) = &filter
                && summary.replayed.is_empty()
            {
                bail!(
                    "no such message in {queue}: no parked message has event id {}",
                    escape_controls(id)
                );
            }
        }
    }
    Ok(())
}
