//! `bidorch publish [FILE|-]`: JSON lines to the exchange with confirms, a progress display
//! and a summary — streamed as the lines arrive (bounded memory, each bad line reported with its
//! number and skipped), or, with `--all-or-nothing`, validated in full before anything is sent.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use crate::posting::MAX_EVENT_BYTES;
use tokio::sync::mpsc;

use super::{OutgoingEvent, PublishError, Publisher};
use crate::config::AmqpSettings;
use crate::posting::PostingError;

/// Inputs at least this long get a progress bar (when asked for and stderr is a terminal).
const PROGRESS_THRESHOLD: usize = 100;

/// Streaming: at most this many parsed events wait for the broker (the memory bound), and at most
/// this many go out in one confirmed round.
const STREAM_BUFFER: usize = 1024;
const STREAM_BATCH: usize = 256;

/// Bad lines kept with their problem in the summary (all are counted and reported as read).
const INVALID_KEPT: usize = 100;

/// How `bidorch publish` reads its input.
#[derive(Clone, Copy, Debug, Default)]
pub struct PublishOptions {
    /// Show a progress display.
    pub progress: bool,
    /// Validate every line before sending anything (a file, today's behaviour); otherwise publish
    /// as lines arrive (a producer on a pipe).
    pub all_or_nothing: bool,
}

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
    /// Lines that are not valid events (streaming mode; skipped, never sent).
    pub invalid: usize,
    /// The first of them with their problem.
    pub invalid_lines: Vec<(usize, PostingError)>,
}

impl PublishSummary {
    /// Whether every line was published.
    pub fn is_complete(&self) -> bool {
        self.failed == 0 && self.invalid == 0
    }

    fn record(&mut self, line: usize, event: &OutgoingEvent, result: Result<(), PublishError>) {
        match result {
            Ok(()) => self.published += 1,
            Err(error) => {
                self.failed += 1;
                self.failures.push(PublishFailure {
                    line,
                    event_id: event.event_id.clone(),
                    error,
                });
            }
        }
    }
}

impl std::fmt::Display for PublishSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "published {}, failed {}", self.published, self.failed)?;
        if self.invalid > 0 {
            write!(f, ", invalid lines {}", self.invalid)?;
        }
        for failure in &self.failures {
            write!(
                f,
                "\n  line {} (event {}): {}",
                failure.line, failure.event_id, failure.error
            )?;
        }
        for (line, error) in &self.invalid_lines {
            write!(f, "\n  line {line}: invalid: {error}")?;
        }
        if self.invalid > self.invalid_lines.len() {
            write!(
                f,
                "\n  … and {} more invalid line(s)",
                self.invalid - self.invalid_lines.len()
            )?;
        }
        Ok(())
    }
}

/// Most of one line kept in memory: an event's limit plus room for surrounding whitespace.
/// Past it the rest of the line is skipped unread into memory, however long it is.
const MAX_LINE_BYTES: usize = MAX_EVENT_BYTES + 4096;

/// One input line as read.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// Line `number` is in the buffer.
    Text(usize),
    /// Line `number` was `size` bytes, over [`MAX_LINE_BYTES`]: skipped, not kept.
    TooLong { number: usize, size: usize },
}

/// Reads the next non-blank line into `buf`; `None` at the end of the input. A line longer than
/// [`MAX_LINE_BYTES`] is skipped up to its newline without being kept.
async fn next_line(
    input: &mut (impl AsyncBufRead + Unpin),
    buf: &mut Vec<u8>,
    line: &mut usize,
) -> std::io::Result<Option<Line>> {
    loop {
        buf.clear();
        let (mut size, mut read_any, mut too_long) = (0usize, false, false);
        loop {
            let chunk = input.fill_buf().await?;
            if chunk.is_empty() {
                break;
            }
            read_any = true;
            let (take, ends) = match chunk.iter().position(|&b| b == b'\n') {
                Some(at) => (at + 1, true),
                None => (chunk.len(), false),
            };
            size = size.saturating_add(take);
            if !too_long && buf.len() + take > MAX_LINE_BYTES {
                too_long = true;
                *buf = Vec::new();
            }
            if !too_long {
                buf.extend_from_slice(&chunk[..take]);
            }
            input.consume(take);
            if ends {
                break;
            }
        }
        if !read_any {
            return Ok(None);
        }
        *line += 1;
        if too_long {
            return Ok(Some(Line::TooLong {
                number: *line,
                size,
            }));
        }
        if !buf.trim_ascii().is_empty() {
            return Ok(Some(Line::Text(*line)));
        }
    }
}

/// The event on a line as read: parsed, or why not.
fn parse_line(read: &Line, buf: &[u8]) -> (usize, Result<OutgoingEvent, PostingError>) {
    match *read {
        Line::Text(number) => (number, OutgoingEvent::parse(buf.trim_ascii())),
        Line::TooLong { number, size } => (number, Err(PostingError::TooLarge { size })),
    }
}

/// `bidorch publish [FILE|-]`: see the module docs. `on_invalid` hears of each bad line as it is
/// read (streaming), so a long-running producer learns of it at once. Failures after parsing
/// (unroutable, refused, connection lost for good) are in the summary with their line numbers,
/// never silent.
pub async fn run_publish_command(
    settings: &AmqpSettings,
    input: impl AsyncBufRead + Unpin,
    options: PublishOptions,
    on_invalid: impl FnMut(usize, &PostingError),
) -> Result<PublishSummary, PublishError> {
    if options.all_or_nothing {
        all_or_nothing(settings, input, options.progress).await
    } else {
        stream(settings, input, options.progress, on_invalid).await
    }
}

async fn stream(
    settings: &AmqpSettings,
    mut input: impl AsyncBufRead + Unpin,
    progress: bool,
    mut on_invalid: impl FnMut(usize, &PostingError),
) -> Result<PublishSummary, PublishError> {
    // Connect first: a producer piping into a broker we cannot reach hears of it at once.
    let publisher = Publisher::connect(settings).await?;
    let bar = if progress && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let bar = indicatif::ProgressBar::new_spinner();
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{spinner} {pos} confirmed {per_sec}")
        {
            bar.set_style(style);
        }
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let (tx, mut rx) = mpsc::channel::<(usize, OutgoingEvent)>(STREAM_BUFFER);
    let mut invalid: Vec<(usize, PostingError)> = Vec::new();
    let mut invalid_count = 0;
    let read = async {
        let (mut buf, mut line) = (Vec::new(), 0);
        while let Some(read) = next_line(&mut input, &mut buf, &mut line).await? {
            let (number, parsed) = parse_line(&read, &buf);
            match parsed {
                Ok(event) => {
                    if tx.send((number, event)).await.is_err() {
                        break; // the publishing side ended (it cannot, short of a panic)
                    }
                }
                Err(e) => {
                    on_invalid(number, &e);
                    invalid_count += 1;
                    if invalid.len() < INVALID_KEPT {
                        invalid.push((number, e));
                    }
                }
            }
        }
        drop(tx);
        Ok::<(), PublishError>(())
    };
    let send = async {
        let mut summary = PublishSummary::default();
        let mut batch = Vec::with_capacity(STREAM_BATCH);
        // Whatever has arrived goes out now; a slow producer's lines go one round each.
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < STREAM_BATCH {
                match rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let events: Vec<OutgoingEvent> = batch.iter().map(|(_, e)| e.clone()).collect();
            let results = publisher.publish_many_with(&events, |_| bar.inc(1)).await;
            for (result, (line, event)) in results.into_iter().zip(batch.drain(..)) {
                summary.record(line, &event, result);
            }
        }
        summary
    };
    let (read, mut summary) = tokio::join!(read, send);
    publisher.close().await;
    bar.finish_and_clear();
    read?;
    summary.invalid = invalid_count;
    summary.invalid_lines = invalid;
    Ok(summary)
}

/// Validates ALL lines before sending anything — a bad line is an error naming its line number
/// and nothing is sent — then publishes with confirms and a progress bar on long inputs.
async fn all_or_nothing(
    settings: &AmqpSettings,
    mut input: impl AsyncBufRead + Unpin,
    progress: bool,
) -> Result<PublishSummary, PublishError> {
    let mut events = Vec::new();
    let mut lines = Vec::new();
    let mut bad = Vec::new();
    let (mut buf, mut line) = (Vec::new(), 0);
    while let Some(read) = next_line(&mut input, &mut buf, &mut line).await? {
        let (number, parsed) = parse_line(&read, &buf);
        match parsed {
            Ok(event) => {
                events.push(event);
                lines.push(number);
            }
            Err(e) => bad.push((number, e)),
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
        summary.record(line, event, result);
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_line_past_the_event_limit_is_skipped_to_its_newline_without_being_kept() {
        let huge = vec![b'x'; 20 * MAX_LINE_BYTES];
        let event = br#"{"event_id":"e1","marketplace":"upwork","posting_id":"p1","title":"T"}"#;
        let input = [&huge[..], b"\n", &event[..], b"\n", &huge[..]].concat();
        // A small read buffer, as a pipe delivers: the long line arrives in many pieces.
        let mut reader = tokio::io::BufReader::with_capacity(8192, input.as_slice());
        let (mut buf, mut line) = (Vec::new(), 0);
        let first = next_line(&mut reader, &mut buf, &mut line).await.unwrap();
        assert_eq!(
            first,
            Some(Line::TooLong {
                number: 1,
                size: huge.len() + 1
            })
        );
        assert!(buf.capacity() <= 2 * MAX_LINE_BYTES, "{}", buf.capacity());
        assert_eq!(
            next_line(&mut reader, &mut buf, &mut line).await.unwrap(),
            Some(Line::Text(2))
        );
        assert!(parse_line(&Line::Text(2), &buf).1.is_ok());
        // The last line, without a newline, is still a line.
        let last = next_line(&mut reader, &mut buf, &mut line).await.unwrap();
        assert!(
            matches!(last, Some(Line::TooLong { number: 3, .. })),
            "{last:?}"
        );
        let (_, parsed) = parse_line(last.as_ref().unwrap(), &buf);
        assert_eq!(parsed.unwrap_err().reason(), "too_large");
        assert_eq!(
            next_line(&mut reader, &mut buf, &mut line).await.unwrap(),
            None
        );
    }

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
        let options = PublishOptions {
            progress: false,
            all_or_nothing: true,
        };
        let err = run_publish_command(&settings, input.as_bytes(), options, |_, _| {})
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
