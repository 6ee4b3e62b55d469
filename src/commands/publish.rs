//! `bidorch publish [FILE|-]`: JSON-lines posting events, with publisher confirms.

use anyhow::{Context, bail};

use bidorch::config::Settings;

/// Publishes JSON lines from a file or standard input; fails unless every event was confirmed.
pub async fn publish(settings: &Settings, input: &str, progress: bool) -> anyhow::Result<()> {
    let summary = if input == "-" {
        let stdin = tokio::io::BufReader::new(tokio::io::stdin());
        bidorch::publish::run_publish_command(&settings.amqp, stdin, progress).await
    } else {
        let file = tokio::fs::File::open(input)
            .await
            .with_context(|| format!("opening {input}"))?;
        let reader = tokio::io::BufReader::new(file);
        bidorch::publish::run_publish_command(&settings.amqp, reader, progress).await
    }
    .with_context(|| {
        format!(
            "publishing {input} to exchange `{}`",
            settings.amqp.exchange
        )
    })?;
    println!("{summary}");
    if !summary.is_complete() {
        bail!(
            "{} of {} events were not published (see above); re-publishing them is safe",
            summary.failed,
            summary.failed + summary.published
        );
    }
    Ok(())
}
