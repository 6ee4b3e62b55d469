//! W3C trace context (`traceparent`/`tracestate`, the one propagation format): reading it from a
//! delivery, the `process` span of an attempt, the posting's trace that every marketplace call
//! runs in, and writing it into outgoing headers.

use std::collections::BTreeMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Header naming the previous attempt's `process` span (a W3C `traceparent` value).
pub const PREV_TRACEPARENT_HEADER: &str = "x-bidorch-prev-traceparent";

/// The trace-context headers we propagate (and the only ones copied from a delivery).
pub const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// W3C trace context is the contract (spec: `traceparent`/`tracestate`), so the helpers below use
/// it directly rather than the global propagator: they behave the same in tests and in a process
/// whose global propagator was never set.
fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

struct MapCarrier<'a>(&'a mut BTreeMap<String, String>);

impl Injector for MapCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_ascii_lowercase(), value);
    }
}

struct MapReader<'a>(&'a BTreeMap<String, String>);

impl Extractor for MapReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(&key.to_ascii_lowercase()).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The W3C trace context of `span`, as `traceparent`/`tracestate` headers (empty without OTel).
pub fn inject(span: &tracing::Span) -> BTreeMap<String, String> {
    let mut headers = BTreeMap::new();
    if !super::exporting() {
        return headers;
    }
    let cx = span.context();
    propagator().inject_context(&cx, &mut MapCarrier(&mut headers));
    headers
}

/// Makes `span` a child of the trace context carried in `headers`, if any.
///
/// Must be called before the span is first entered, before any child span is created under it
/// and before [`inject`] reads it: tracing-opentelemetry 0.34 builds the OTel span at the first
/// of those, and a parent set afterwards is ignored (`SetParentError::AlreadyStarted`).
pub fn set_parent_from(span: &tracing::Span, headers: &BTreeMap<String, String>) {
    if !headers.contains_key("traceparent") || !super::exporting() {
        return;
    }
    let parent = propagator().extract(&MapReader(headers));
    if !parent.span().span_context().is_valid() {
        tracing::debug!("Ignoring an invalid traceparent header");
        return;
    }
    let _ = span.set_parent(parent);
}

/// Links `span` to the previous attempt named by [`PREV_TRACEPARENT_HEADER`], if present and
/// valid. Call it, like [`set_parent_from`], before the span is entered.
pub fn link_previous_attempt(span: &tracing::Span, headers: &BTreeMap<String, String>) {
    let Some(previous) = headers.get(PREV_TRACEPARENT_HEADER) else {
        return;
    };
    if !super::exporting() {
        return;
    }
    let carrier = BTreeMap::from([("traceparent".to_owned(), previous.clone())]);
    let cx = propagator().extract(&MapReader(&carrier));
    let previous = cx.span().span_context().clone();
    if previous.is_valid() {
        span.add_link_with_attributes(
            previous,
            vec![opentelemetry::KeyValue::new(
                "bidorch.link",
                "previous_attempt",
            )],
        );
    }
}

/// The trace-context headers (`traceparent`, `tracestate`) among `headers`.
pub fn trace_headers_of(headers: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    TRACE_HEADERS
        .iter()
        .filter_map(|name| headers.get(*name).map(|v| ((*name).to_owned(), v.clone())))
        .collect()
}

/// The trace headers to send downstream from inside `span`: its own context when OTel is on,
/// otherwise the incoming `traceparent`/`tracestate` unchanged (so the trace still connects
/// across a worker that does not export).
pub fn outgoing_trace_headers(
    span: &tracing::Span,
    incoming: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let own = inject(span);
    if own.contains_key("traceparent") {
        return own;
    }
    trace_headers_of(incoming)
}

/// The trace headers of a marketplace call made in `span` for a posting whose trace is
/// `posting` (its first attempt's `traceparent`), by an attempt whose delivery carried
/// `incoming`.
///
/// Every call for a posting runs in the posting's trace, whichever attempt, event or
/// `reconcile` makes it. An attempt in that trace calls as its child; any other makes `span` a
/// child of `posting`, linked to the attempt's own span. The headers sent are `span`'s context;
/// with tracing export off, the posting's `traceparent` itself (with the delivery's `tracestate`
/// when it is the same trace). Without a posting trace (a row kept before there was one) the
/// attempt's is used. Call it before `span` is entered (see [`set_parent_from`]).
pub fn call_trace_headers(
    span: &tracing::Span,
    posting: Option<&str>,
    incoming: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let Some((posting, posting_trace)) = posting.and_then(|p| Some((p, trace_id_of(p)?))) else {
        return outgoing_trace_headers(span, incoming);
    };
    if !super::exporting() {
        // What the marketplace sees without export: the posting's own trace context.
        return posting_carrier(posting, posting_trace, incoming);
    }
    let current = tracing::Span::current().context();
    let current = current.span().span_context().clone();
    if current.is_valid() && current.trace_id().to_string() == posting_trace {
        return outgoing_trace_headers(span, incoming);
    }
    if current.is_valid() {
        span.add_link_with_attributes(
            current,
            vec![opentelemetry::KeyValue::new("bidorch.link", "attempt")],
        );
    }
    let carrier = posting_carrier(posting, posting_trace, incoming);
    set_parent_from(span, &carrier);
    let own = inject(span);
    if own.contains_key("traceparent") {
        return own;
    }
    carrier
}

/// The posting's `traceparent`, with the delivery's `tracestate` when it is the same trace.
fn posting_carrier(
    posting: &str,
    posting_trace: &str,
    incoming: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut carrier = BTreeMap::from([("traceparent".to_owned(), posting.to_owned())]);
    let same_trace =
        incoming.get("traceparent").and_then(|tp| trace_id_of(tp)) == Some(posting_trace);
    if same_trace && let Some(state) = incoming.get("tracestate") {
        carrier.insert("tracestate".to_owned(), state.clone());
    }
    carrier
}

/// The trace id of a W3C `traceparent` (`00-{trace id}-{span id}-{flags}`), if it is one.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, trace, span) = (parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit()) && s.bytes().any(|b| b != b'0')
    };
    (hex(trace, 32) && hex(span, 16)).then_some(trace)
}

/// This attempt's `traceparent`, to be kept as the posting's if this is its first attempt:
/// `span`'s own context when tracing export is on; else the delivery's `traceparent` when valid;
/// else one made up from `trace_id` (the attempt's correlation id), so that the marketplace and
/// every later attempt still see one trace.
pub fn attempt_trace_parent(
    span: &tracing::Span,
    incoming: &BTreeMap<String, String>,
    trace_id: &str,
) -> String {
    if let Some(own) = traceparent_of(span) {
        return own;
    }
    if let Some(tp) = incoming.get("traceparent")
        && trace_id_of(tp) == Some(trace_id)
    {
        return tp.clone();
    }
    format!("00-{trace_id}-{:016x}-01", fastrand::u64(1..))
}

/// The `process` span (kind CONSUMER) of one delivery, per the messaging conventions pinned
/// above: a child of the publisher's context from `headers`, linked to the previous attempt.
///
/// The parent and link are set here, before anyone can enter the span. `destination` is the
/// exchange the worker consumes from (`amqp.exchange`), a low-cardinality name; `posting` is
/// the posting's marketplace and id when the body could be read; `outcome` is declared empty and
/// recorded by the worker once known. Without export the span carries only what log lines show
/// (event id, attempt, marketplace, posting id, outcome, error type, trace id). Everything known
/// is given at creation: each later `record` reformats the span's log fields.
pub fn consumer_span(
    messaging_system: &'static str,
    destination: &str,
    message_id: Option<&str>,
    attempt: u32,
    posting: Option<(&str, &str)>,
    headers: &BTreeMap<String, String>,
) -> (tracing::Span, String) {
    let exporting = super::exporting();
    // Without export the correlation id is known before the span exists; with it, it is the
    // span's own trace, known once the parent is set.
    let known = (!exporting).then(|| incoming_trace_id(headers).unwrap_or_else(new_trace_id));
    let marketplace = posting.map(|(marketplace, _)| marketplace);
    let posting_id = posting.map(|(_, id)| id);
    let span = if exporting {
        tracing::info_span!(
            "process",
            otel.name = %format_args!("process {destination}"),
            otel.kind = "consumer",
            otel.status_code = tracing::field::Empty,
            messaging.system = messaging_system,
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = %destination,
            messaging.message.id = message_id,
            bidorch.attempt = attempt,
            marketplace,
            posting_id,
            outcome = tracing::field::Empty,
            error.type = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        )
    } else {
        // Without export only logs read the span: the text log shows none of the OpenTelemetry
        // attributes (`log_fields`), the JSON log all of the span's fields. The event id and
        // the error type are kept for JSON lines (a poison message has no posting id); the
        // rest would be carried and visited for every posting and read by nobody.
        tracing::info_span!(
            "process",
            messaging.message.id = message_id,
            bidorch.attempt = attempt,
            marketplace,
            posting_id,
            outcome = tracing::field::Empty,
            error.type = tracing::field::Empty,
            trace_id = known.as_ref().map(tracing::field::display),
        )
    };
    // Every log line inside the span carries it (text: the span prefix; JSON: a top-level
    // field), so logs, the attempt history and the trace join even with export off.
    let id = match known {
        Some(id) => id,
        None => {
            set_parent_from(&span, headers);
            link_previous_attempt(&span, headers);
            let id = trace_id(&span, headers).unwrap_or_else(new_trace_id);
            span.record("trace_id", tracing::field::display(&id));
            id
        }
    };
    (span, id)
}

/// A random W3C trace id (32 lower-case hex digits, not all zero): a correlation id for a
/// delivery that arrived without a trace while export is off.
fn new_trace_id() -> String {
    format!("{:032x}", fastrand::u128(1..))
}

/// The traceparent of `span` itself, to name it as the previous attempt of a retried message.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    inject(span).remove("traceparent")
}

/// The trace id of `span` when OpenTelemetry is on, else that of the incoming `traceparent` (the
/// publisher's trace): what the attempt history and the log lines carry, so a posting's story
/// and its trace can be found from one another even with export off.
pub fn trace_id(span: &tracing::Span, headers: &BTreeMap<String, String>) -> Option<String> {
    if super::exporting() {
        let cx = span.context();
        let own = cx.span().span_context().clone();
        if own.is_valid() {
            return Some(own.trace_id().to_string());
        }
    }
    incoming_trace_id(headers)
}

/// The trace id of the incoming `traceparent`, if valid.
fn incoming_trace_id(headers: &BTreeMap<String, String>) -> Option<String> {
    let incoming = headers.get("traceparent")?.split('-').nth(1)?;
    let valid = incoming.len() == 32
        && incoming.bytes().all(|b| b.is_ascii_hexdigit())
        && incoming.bytes().any(|b| b != b'0');
    valid.then(|| incoming.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lower_hex(s: &str, len: usize) -> bool {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && s.bytes().any(|b| b != b'0')
    }

    #[test]
    fn a_made_up_trace_id_is_32_lower_case_hex_digits_not_all_zero() {
        for _ in 0..100 {
            assert!(lower_hex(&new_trace_id(), 32));
        }
    }

    #[test]
    fn a_made_up_traceparent_carries_the_attempts_trace_id() {
        let trace_id = new_trace_id();
        let made_up = attempt_trace_parent(&tracing::Span::none(), &BTreeMap::new(), &trace_id);
        let parts: Vec<&str> = made_up.split('-').collect();
        assert_eq!(parts.len(), 4, "{made_up}");
        assert_eq!(
            (parts[0], parts[1], parts[3]),
            ("00", trace_id.as_str(), "01")
        );
        assert!(lower_hex(parts[2], 16), "{made_up}");
        assert_eq!(trace_id_of(&made_up), Some(trace_id.as_str()));
    }
}
