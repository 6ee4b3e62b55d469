//! Tracing setup: human or JSON logs, a `RUST_LOG`-style filter, and OTLP trace export when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (service `bidorch`, `service.instance.id`, batch export
//! flushed when [`Telemetry`] drops). The log filter applies to logs only: traces take bidorch's
//! INFO spans whatever `RUST_LOG` says. W3C trace context (`traceparent`/`tracestate`) is the one
//! propagation format, so a trace runs from publisher to worker to marketplace. Operator notes:
//! `docs/observability.md`.
//!
//! # Semantic conventions
//! Span names and attributes follow the OpenTelemetry semantic conventions **v1.26.0**
//! (messaging spans, RabbitMQ, HTTP client). Messaging conventions are still experimental
//! upstream; we stay on this version until they are stable (no `OTEL_SEMCONV_STABILITY_OPT_IN`).
//!
//! | span (OTel name)                | kind     | made in                    | key attributes |
//! |---------------------------------|----------|----------------------------|----------------|
//! | `process {exchange}`            | CONSUMER | [`consumer_span`] (worker) | `messaging.system` (`rabbitmq`, or `bidorch.memory` in process), `messaging.operation.type = "process"`, `messaging.operation.name = "process"`, `messaging.destination.name` (exchange), `messaging.message.id`, `bidorch.attempt`, `marketplace`, `posting_id`, `outcome` |
//! | `pipeline`                      | INTERNAL | pipeline                   | `marketplace`, `posting_id`, `outcome` |
//! | `ledger.lookup` / `ledger.claim` / `ledger.fence` / `ledger.record` | INTERNAL | pipeline | `result` |
//! | `lease.acquire` / `lease.release` | INTERNAL | pipeline                 | `result` |
//! | `policy.decide`                 | INTERNAL | pipeline                   | `decision` |
//! | `bid`                           | INTERNAL | pipeline                   | parent of the marketplace call; its context is the `traceparent` sent |
//! | `POST`                          | CLIENT   | marketplace/http.rs        | `http.request.method`, `url.full` (no secrets), `server.address`, `http.response.status_code` |
//! | `POST /{marketplace}/v1/...`    | SERVER   | sandbox                    | continues the caller's `traceparent` |
//! | `ack` / `retry` / `dead_letter {exchange}` | CLIENT | worker (settle)     | `messaging.operation.type = "settle"` |
//!
//! A posting id is an attribute, never part of a span name (span names must be low-cardinality).
//! The routing key and delivery tag are not exposed by the source port, so
//! `messaging.rabbitmq.destination.routing_key` is not set.
//!
//! # Retries
//! A retried message carries its previous attempt's `process` span context in the
//! [`PREV_TRACEPARENT_HEADER`] (`x-bidorch-prev-traceparent`) header: the worker writes it into
//! the delivery's headers before handing the message back for a later attempt, and the source
//! republishes the headers. The new attempt's `process` span *links* to it, and stays a child of
//! the publisher's context, so every attempt of a posting lands in the publisher's trace.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, TelemetrySettings};

mod log_fields;

/// Keeps the exporter alive; flushes spans when dropped (at shutdown).
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("bidorch: flushing traces at shutdown failed: {e}");
        }
    }
}

/// Installs the global subscriber. Call once, from the binary.
pub fn init(settings: &TelemetrySettings, instance_id: &str) -> anyhow::Result<Telemetry> {
    crate::tls::install_default_provider();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let mut filter = log_filter(settings)?
        // sqlx warns about connect parameters it ignores with their values (`sslpassword=…`):
        // a secret in a log line, whatever the filter says.
        .add_directive(quiet("sqlx_postgres::options::parse=error"))
        // "relation _sqlx_migrations already exists, skipping" on every start: noise.
        .add_directive(quiet("sqlx::postgres::notice=warn"));
    // At TRACE these print protocol frames, the connection's credentials among them (the AMQP
    // SASL response, a Redis AUTH): kept at DEBUG whatever the filter says.
    for target in SECRET_AT_TRACE {
        filter = filter.add_directive(quiet(&format!("{target}=debug")));
    }

    let provider = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
                .map_err(|e| {
                    let endpoint = crate::config::SecretUrl::new(endpoint.as_str()).redacted();
                    anyhow::anyhow!("OTLP exporter for {endpoint}: {e}")
                })?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name("bidorch")
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.instance.id",
                    instance_id.to_owned(),
                ))
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        _ => None,
    };
    // Traces are filtered apart from logs: quieting logs (`RUST_LOG=warn`, or the demo's
    // `error`) must not empty the traces.
    let otel_layer = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("bidorch"))
            .with_filter(trace_filter())
    });
    // Logs go to standard error, so a command's own output (`inspect --json`, `policy check`)
    // stays clean on standard output; colours only for a terminal.
    let log_layer = match settings.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .fmt_fields(log_fields::LogFields)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        LogFormat::Json => json_subscriber::layer()
            .with_writer(std::io::stderr)
            .flatten_event(true)
            .with_current_span(false)
            .flatten_span_list_on_top_level(true)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(otel_layer)
        .with(log_layer.with_filter(filter))
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))?;
    if let Some(p) = &provider {
        opentelemetry::global::set_tracer_provider(p.clone());
    }
    Ok(Telemetry { provider })
}

/// What traces take: bidorch's spans down to DEBUG — the `process` span is INFO, its steps
/// (lease, claim, decision, the marketplace call, the settlement) are DEBUG so that INFO logs never
/// pay for them, and without export they are not even created — bidorch's events at INFO, and
/// other crates' spans and events at WARN.
pub fn trace_filter()
-> tracing_subscriber::filter::FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    tracing_subscriber::filter::filter_fn(|meta| {
        let floor = match (meta.target().starts_with("bidorch"), meta.is_span()) {
            (true, true) => Level::DEBUG,
            (true, false) => Level::INFO,
            (false, _) => Level::WARN,
        };
        *meta.level() <= floor
    })
}

/// Crates whose TRACE output carries credentials.
const SECRET_AT_TRACE: &[&str] = &[
    "lapin",
    "amq_protocol",
    "amq_protocol_types",
    "amq_protocol_tcp",
    "amq_protocol_uri",
    "redis",
];

/// `RUST_LOG` when set and valid; otherwise `telemetry.log_filter`. An invalid `RUST_LOG` is
/// said on standard error rather than silently ignored (logging is not up yet).
fn log_filter(settings: &TelemetrySettings) -> anyhow::Result<EnvFilter> {
    if let Ok(value) = std::env::var(EnvFilter::DEFAULT_ENV)
        && !value.trim().is_empty()
    {
        match EnvFilter::try_new(&value) {
            Ok(filter) => return Ok(filter),
            Err(e) => eprintln!(
                "bidorch: RUST_LOG is not a valid filter ({e}); using telemetry.log_filter ({:?})",
                settings.log_filter
            ),
        }
    }
    EnvFilter::try_new(&settings.log_filter)
        .map_err(|e| anyhow::anyhow!("configuration key `telemetry.log_filter`: {e}"))
}

fn quiet(directive: &str) -> tracing_subscriber::filter::Directive {
    directive.parse().expect("a fixed, valid filter directive")
}

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
    if !headers.contains_key("traceparent") {
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
    TRACE_HEADERS
        .iter()
        .filter_map(|name| incoming.get(*name).map(|v| ((*name).to_owned(), v.clone())))
        .collect()
}

/// The `process` span (kind CONSUMER) of one delivery, per the messaging conventions pinned
/// above: a child of the publisher's context from `headers`, linked to the previous attempt.
///
/// The parent and link are set here, before anyone can enter the span. `destination` is the
/// exchange the worker consumes from (`amqp.exchange`), a low-cardinality name; `marketplace`,
/// `posting_id` and `outcome` are declared empty and recorded by the worker once known.
pub fn consumer_span(
    messaging_system: &'static str,
    destination: &str,
    message_id: Option<&str>,
    attempt: u32,
    headers: &BTreeMap<String, String>,
) -> (tracing::Span, String) {
    let span = tracing::info_span!(
        "process",
        otel.name = %format_args!("process {destination}"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.system = messaging_system,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %destination,
        messaging.message.id = tracing::field::Empty,
        bidorch.attempt = attempt,
        marketplace = tracing::field::Empty,
        posting_id = tracing::field::Empty,
        outcome = tracing::field::Empty,
        error.type = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if let Some(id) = message_id {
        span.record("messaging.message.id", id);
    }
    set_parent_from(&span, headers);
    link_previous_attempt(&span, headers);
    // Every log line inside the span carries it (text: the span prefix; JSON: a top-level
    // field), so logs, the attempt history and the trace join even with export off.
    let id = trace_id(&span, headers).unwrap_or_else(new_trace_id);
    span.record("trace_id", tracing::field::display(&id));
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
    let cx = span.context();
    let own = cx.span().span_context().clone();
    if own.is_valid() {
        return Some(own.trace_id().to_string());
    }
    let incoming = headers.get("traceparent")?.split('-').nth(1)?;
    let valid = incoming.len() == 32
        && incoming.bytes().all(|b| b.is_ascii_hexdigit())
        && incoming.bytes().any(|b| b != b'0');
    valid.then(|| incoming.to_ascii_lowercase())
}
