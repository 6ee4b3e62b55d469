//! `bidorch publish [FILE|-]`: validate every line first, then publish with confirms, progress
//! and a summary.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use super::{OutgoingEvent, PublishError, Publisher};
use crate::config::AmqpSettings;

/// Inputs at least this long get a progress bar (when asked for and stderr is a terminal).
const PROGRESS_THRESHOLD: usize = 100;

/// One event that did not make it, with its input line.
#[derive(Debug)]
pub struct PublishFailure {
    pub line: usize,
    pub event_id: String,
    pub error: PublishError,
}

/// What `bidorch publish` did.
#[derive(Debug, Default)]
pub struct PublishSummary {
    /// Events confirmed as routed by the broker.
    pub published: usize,
    /// Events not confirmed (see `failures`); re-publishing them is safe.
    pub failed: usize,
    pub failures: Vec<PublishFailure>,
}

impl PublishSummary {
    /// Whether every event was published.
    pub fn is_complete(&self) -> bool {
        self.failed == 0
    }
}

impl std::fmt::Display for PublishSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "published {}, failed {}", self.published, self.failed)?;
        for failure in &self.failures {
            write!(
                f,
                "\n  line {} (event {}): {}",
                failure.line, failure.event_id, failure.error
            )?;
        }
        Ok(())
    }
}

/// `bidorch publish [FILE|-]`: reads JSON lines (blank lines skipped), validates ALL of them
/// before sending anything — a bad line is an error naming its line number and nothing is sent —
/// then publishes with confirms, a progress bar on long inputs when `progress` is set, and
/// returns the summary. Failures after validation (unroutable, refused, connection lost for good)
/// are in the summary with their line numbers, never silent.
pub async fn run_publish_command(
    settings: &AmqpSettings,
    mut input: impl AsyncBufRead + Unpin,
    progress: bool,
) -> Result<PublishSummary, PublishError> {
    let mut events = Vec::new();
    let mut lines = Vec::new();
    let mut bad = Vec::new();
    let mut buf = Vec::new();
    let mut line = 0;
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf).await? == 0 {
            break;
        }
        line += 1;
        let text = buf.trim_ascii();
        if text.is_empty() {
            continue;
        }
        match OutgoingEvent::parse(text) {
            Ok(event) => {
                events.push(event);
                lines.push(line);
            }
            Err(e) => bad.push((line, e)),
        }
    }
    if let Some((first_line, first_error)) = bad.first().cloned() {
        return Err(PublishError::InvalidLines {
            line: first_line,
            error: first_error,
            count: bad.len(),
            all: bad,
        });
    }
    if events.is_empty() {
        return Ok(PublishSummary::default());
    }

    let bar = if progress && events.len() >= PROGRESS_THRESHOLD {
        let bar = indicatif::ProgressBar::new(events.len() as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} {pos}/{len} confirmed [{bar:40}] {per_sec} eta {eta}",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let publisher = Publisher::connect(settings).await?;
    let results = publisher.publish_many_with(&events, |_| bar.inc(1)).await;
    publisher.close().await;
    bar.finish_and_clear();

    let mut summary = PublishSummary::default();
    for ((result, event), line) in results.into_iter().zip(&events).zip(lines) {
        match result {
            Ok(()) => summary.published += 1,
            Err(error) => {
                summary.failed += 1;
                summary.failures.push(PublishFailure {
                    line,
                    event_id: event.event_id.clone(),
                    error,
                });
            }
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bad_line_is_named_and_nothing_is_sent() {
        // The URL points nowhere: validation must fail before any connection is attempted.
        let settings = crate::config::Settings::load_from(None, &Default::default())
            .expect("defaults")
            .amqp;
        let mut settings = settings;
        settings.url = crate::config::SecretUrl::new("amqp://nobody:secret@127.0.0.1:1/%2f");
        let input = concat!(
            r#"{"event_id":"e1","marketplace":"upwork","posting_id":"p1","title":"T"}"#,
            "\n\n",
            r#"{"event_id":"e2","marketplace":"upwork","posting_id":"p2"}"#,
            "\nnot json\n"
        );
        let err = run_publish_command(&settings, input.as_bytes(), false)
            .await
            .unwrap_err();
        match &err {
            PublishError::InvalidLines {
                line, count, all, ..
            } => {
                assert_eq!(*line, 3);
                assert_eq!(*count, 2);
                assert_eq!(all[1].0, 4);
            }
            other => panic!("unexpected {other}"),
        }
        assert!(err.to_string().starts_with("line 3:"), "{err}");
    }
}
