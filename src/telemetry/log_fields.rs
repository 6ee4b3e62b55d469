//! How the text log writes span and event fields: `name=value`, as tracing-subscriber's default,
//! minus the OpenTelemetry attributes (`otel.*`, `messaging.*`, `http.*`, `server.*`, `url.*`,
//! `error.type`). Traces carry those; a log line needs what happened and to which posting, and
//! every posting's `process` span would otherwise spell out ten of them on each line.

use std::cell::RefCell;
use std::fmt;

use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FormatFields, FormattedFields};

/// The text log's field formatter (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct LogFields;

/// Whether `name` is an OpenTelemetry attribute that only traces show.
fn trace_only(name: &str) -> bool {
    const PREFIXES: [&str; 5] = ["otel.", "messaging.", "http.", "server.", "url."];
    name == "error.type" || PREFIXES.iter().any(|p| name.starts_with(p))
}

thread_local! {
    /// Where [`LogFields`] gathers a record's fields before writing them at once.
    static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
}

/// The scratch buffer is kept per thread, but not one that a huge field once grew.
const SCRATCH_KEEP: usize = 16 * 1024;

/// Writes `fields` to `writer` (see the module docs).
fn visit<R: RecordFields>(writer: Writer<'_>, fields: R) -> fmt::Result {
    let mut visitor = Fields {
        writer,
        first: true,
        result: Ok(()),
    };
    fields.record(&mut visitor);
    visitor.result
}

impl<'writer> FormatFields<'writer> for LogFields {
    /// Gathered in a scratch buffer, then written at once: a span's fields go into a `String`
    /// of their own that starts empty, and written piece by piece it grew (and was copied) four
    /// or five times for every posting's `process` span. A field whose `Debug` logs (the buffer
    /// is then in use) is written directly.
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut fields = Some(fields);
        let gathered = SCRATCH
            .try_with(|scratch| {
                let mut scratch = scratch.try_borrow_mut().ok()?;
                scratch.clear();
                let written = visit(Writer::new(&mut *scratch), fields.take()?)
                    .and_then(|()| writer.write_str(&scratch));
                if scratch.capacity() > SCRATCH_KEEP {
                    *scratch = String::new();
                }
                Some(written)
            })
            .ok()
            .flatten();
        match (gathered, fields) {
            (Some(written), _) => written,
            (None, Some(fields)) => visit(writer, fields),
            (None, None) => Ok(()),
        }
    }

    /// Fields recorded on a span after it was made: appended with one space, and nothing at all
    /// when every one of them is left out.
    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &Record<'_>,
    ) -> fmt::Result {
        let mut added = String::new();
        self.format_fields(Writer::new(&mut added), fields)?;
        if !added.is_empty() {
            if !current.fields.is_empty() {
                current.fields.push(' ');
            }
            current.fields.push_str(&added);
        }
        Ok(())
    }
}

struct Fields<'a> {
    writer: Writer<'a>,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_> {
    /// Writes the separator before a field, unless it is the first; false if the field is left
    /// out.
    fn start(&mut self, name: &str) -> bool {
        if self.result.is_err() || trace_only(name) || name.starts_with("log.") {
            return false;
        }
        if !self.first {
            self.result = self.writer.write_char(' ');
        }
        self.first = false;
        true
    }
}

/// Whether `value`'s `Debug` form is itself in quotes: printable ASCII with nothing to escape.
fn plain(value: &str) -> bool {
    value
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
}

impl Fields<'_> {
    /// `name=text`, for a value whose `Debug` form is `text` itself (numbers, booleans): no
    /// formatting machinery for the attempt of every line.
    fn record_plain(&mut self, field: &Field, text: &str) {
        let name = field.name();
        if !self.start(name) {
            return;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        let w = &mut self.writer;
        self.result = self.result.and_then(|()| {
            w.write_str(name)?;
            w.write_char('=')?;
            w.write_str(text)
        });
    }
}

impl Visit for Fields<'_> {
    /// Strings are the most of every line (ids, names, the message): written as they are when
    /// `Debug` would only add the quotes, which saves the formatting machinery per field.
    fn record_str(&mut self, field: &Field, value: &str) {
        let name = field.name();
        if name == "message" {
            if self.start(name) {
                self.result = self.result.and_then(|()| self.writer.write_str(value));
            }
            return;
        }
        if !plain(value) {
            return self.record_debug(field, &value);
        }
        if self.start(name) {
            let name = name.strip_prefix("r#").unwrap_or(name);
            let w = &mut self.writer;
            self.result = self.result.and_then(|()| {
                w.write_str(name)?;
                w.write_str("=\"")?;
                w.write_str(value)?;
                w.write_char('"')
            });
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record_plain(field, itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_plain(field, itoa::Buffer::new().format(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record_plain(field, if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        if !self.start(name) {
            return;
        }
        self.result = self.result.and_then(|()| {
            if name == "message" {
                write!(self.writer, "{value:?}")
            } else {
                let name = name.strip_prefix("r#").unwrap_or(name);
                write!(self.writer, "{name}={value:?}")
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `fields` writes of the events `log` emits (no time, no level).
    fn written<N>(fields: N, log: impl FnOnce()) -> String
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(fields)
            .without_time()
            .with_level(false)
            .with_target(false)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        String::from_utf8(out.lock().unwrap().clone()).unwrap()
    }

    /// A line as `fields` formats it.
    fn line<N>(fields: N, value: &str) -> String
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        written(fields, || {
            tracing::info!(
                posting_id = value,
                attempt = 2,
                delta = -3i64,
                verify = true,
                big = u64::MAX,
                "Bid placed"
            );
        })
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn strings_are_written_as_the_default_formatter_writes_them() {
        for value in [
            "p-1",
            "",
            "a b",
            "quote\"d",
            "back\\slash",
            "new\nline",
            "é",
            "t\tab",
        ] {
            let ours = line(LogFields, value);
            let default = line(tracing_subscriber::fmt::format::DefaultFields::new(), value);
            assert_eq!(ours, default, "{value:?}");
        }
    }

    /// A field whose `Debug` logs: formatted while the scratch buffer is in use.
    struct Loud;

    impl fmt::Debug for Loud {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            tracing::info!(inner = "yes", "Nested");
            f.write_str("loud")
        }
    }

    /// What `fields` writes of an event with a field whose `Debug` logs.
    fn nested<N>(fields: N) -> String
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        written(fields, || {
            tracing::info!(posting_id = "p-1", noisy = ?Loud, "Outer");
        })
    }

    #[test]
    fn a_field_that_logs_while_formatted_is_written_as_the_default_formatter_writes_it() {
        let ours = nested(LogFields);
        assert!(
            ours.contains("Outer posting_id=\"p-1\" noisy=loud"),
            "{ours}"
        );
        assert_eq!(
            ours,
            nested(tracing_subscriber::fmt::format::DefaultFields::new())
        );
    }

    #[test]
    fn opentelemetry_attributes_stay_out_of_log_lines() {
        assert!(trace_only("otel.name"));
        assert!(trace_only("messaging.destination.name"));
        assert!(trace_only("error.type"));
        assert!(!trace_only("trace_id"));
        assert!(!trace_only("posting_id"));
        assert!(!trace_only("error"));
    }
}
