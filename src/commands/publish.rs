//! `bidorch publish [FILE|-] [--all-or-nothing]`: JSON-lines posting events, with publisher
//! confirms.

use anyhow::{Context, bail};

use bidorch::config::Settings;
use bidorch::publish::PublishOptions;

/// Publishes JSON lines from a file or standard input; fails unless every line was published.
pub async fn publish(
    settings: &Settings,
    input: &str,
    options: PublishOptions,
) -> anyhow::Result<()> {
    // Reported as read, so a long-running producer hears of a bad line at once.
    let report = |line: usize, e: &bidorch::posting::PostingError| {
        eprintln!("bidorch: line {line}: {e} (skipped)");
    };
    let summary = if input == "-" {
        let stdin = tokio::io::BufReader::new(tokio::io::stdin());
        bidorch::publish::run_publish_command(&settings.amqp, stdin, options, report).await
    } else {
        let file = tokio::fs::File::open(input)
            .await
            .with_context(|| format!("opening {input}"))?;
        let reader = tokio::io::BufReader::new(file);
        bidorch::publish::run_publish_command(&settings.amqp, reader, options, report).await
    }
    .with_context(|| {
        format!(
            "publishing {input} to exchange `{}`",
            settings.amqp.exchange
        )
    })?;
    out!("{summary}")?;
    if summary.failed > 0 {
        bail!(
            "{} of {} events were not published (see above); re-publishing them is safe",
            summary.failed,
            summary.failed + summary.published
        );
    }
    if summary.invalid > 0 {
        bail!(
            "{} line(s) were not valid events and were skipped (see above)",
            summary.invalid
        );
    }
    Ok(())
}
