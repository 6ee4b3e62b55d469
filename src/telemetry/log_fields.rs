//! How the text log writes span and event fields: `name=value`, as tracing-subscriber's default,
//! minus the OpenTelemetry attributes (`otel.*`, `messaging.*`, `http.*`, `server.*`, `url.*`,
//! `error.type`). Traces carry those; a log line needs what happened and to which posting, and
//! every posting's `process` span would otherwise spell out ten of them on each line.

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

impl<'writer> FormatFields<'writer> for LogFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = Fields {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
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

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        if self.result.is_err() || trace_only(name) || name.starts_with("log.") {
            return;
        }
        if !self.first {
            self.result = self.writer.write_char(' ');
        }
        self.first = false;
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
