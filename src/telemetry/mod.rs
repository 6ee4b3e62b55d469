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

use std::io::IsTerminal as _;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, TelemetrySettings};

mod context;
mod fresh;
mod log_fields;
mod log_time;

pub use self::context::{
    PREV_TRACEPARENT_HEADER, TRACE_HEADERS, attempt_trace_parent, call_trace_headers,
    consumer_span, inject, link_previous_attempt, outgoing_trace_headers, set_parent_from,
    trace_headers_of, trace_id, trace_id_of, traceparent_of,
};
use self::fresh::Fresh;

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
    let filter = log_filter(settings)?
        // sqlx warns about connect parameters it ignores with their values (`sslpassword=…`):
        // a secret in a log line, whatever the filter says.
        .add_directive(quiet("sqlx_postgres::options::parse=error"))
        // "relation _sqlx_migrations already exists, skipping" on every start: noise.
        .add_directive(quiet("sqlx::postgres::notice=warn"));

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
    subscriber(settings.log_format, filter, provider.as_ref())
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))?;
    if let Some(p) = &provider {
        opentelemetry::global::set_tracer_provider(p.clone());
    }
    Ok(Telemetry { provider })
}

/// Marks a subscriber whose spans reach an OpenTelemetry layer: add it beside the layer.
///
/// Without it [`exporting`] is false, and the trace-context helpers skip the span-context work
/// that only a trace layer can use (parsing `traceparent` into a parent, reading a span's own
/// context, which an absent layer answers with nothing): they pass the incoming context on as
/// it came instead, at no cost per posting.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceExport;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for TraceExport {}

/// Whether the current subscriber carries [`TraceExport`].
pub fn exporting() -> bool {
    tracing::dispatcher::get_default(|d| d.downcast_ref::<TraceExport>().is_some())
}

/// The subscriber: logs in `format` filtered by `log_filter`, and traces through `provider` (if
/// any) filtered by [`trace_filter`] — each layer its own filter, both kept [`Fresh`]. Without a
/// provider the log layer is the only one, and its filter is the subscriber's own (global):
/// per-layer filters cost a span lookup per layer on every enter and exit of every span, that is
/// at every poll of an instrumented future, and they are only needed to keep two layers apart.
fn subscriber(
    format: LogFormat,
    log_filter: EnvFilter,
    provider: Option<&SdkTracerProvider>,
) -> impl tracing::Subscriber + Send + Sync + for<'a> tracing_subscriber::registry::LookupSpan<'a> {
    // Logs go to standard error, so a command's own output (`inspect --json`, `policy check`)
    // stays clean on standard output; colours only for a terminal.
    let log_layer = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .fmt_fields(log_fields::LogFields)
            .with_timer(log_time::LogTime)
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
    let layers = match provider {
        Some(provider) => exported(provider, log_layer, log_filter).boxed(),
        None => log_layer
            .and_then(log_filter)
            .and_then(no_secret_frames())
            .boxed(),
    };
    tracing_subscriber::registry().with(layers)
}

/// The layers of a subscriber that exports traces: the trace layer and the log layer, each with
/// its own filter — traces are filtered apart from logs: quieting logs (`RUST_LOG=warn`, or the
/// demo's `error`) must not empty the traces — and what either could want as a global filter.
fn exported<S>(
    provider: &SdkTracerProvider,
    log_layer: Box<dyn tracing_subscriber::Layer<S> + Send + Sync>,
    log_filter: EnvFilter,
) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("bidorch"))
        .with_filter(Fresh(trace_filter()));
    // The two per-layer filters alone let a span neither wants be built all the same
    // (measured: every DEBUG step span of every posting, with its fields formatted and a slab
    // entry taken).
    let log_max = log_filter
        .max_level_hint()
        .unwrap_or(tracing_subscriber::filter::LevelFilter::TRACE);
    let wanted =
        tracing_subscriber::filter::filter_fn(move |meta| *meta.level() <= log_max || traced(meta));
    TraceExport
        .and_then(otel_layer)
        .and_then(log_layer.with_filter(Fresh(log_filter.and(no_secret_frames()))))
        .and_then(wanted)
}

/// What traces take: bidorch's spans down to DEBUG — the `process` span is INFO, its steps
/// (lease, claim, decision, the marketplace call, the settlement) are DEBUG so that INFO logs never
/// pay for them, and without export they are not even created — bidorch's events at INFO, and
/// other crates' spans and events at WARN.
pub fn trace_filter()
-> tracing_subscriber::filter::FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    tracing_subscriber::filter::filter_fn(traced)
}

/// [`trace_filter`]'s rule.
fn traced(meta: &tracing::Metadata<'_>) -> bool {
    let floor = match (meta.target().starts_with("bidorch"), meta.is_span()) {
        (true, true) => Level::DEBUG,
        (true, false) => Level::INFO,
        (false, _) => Level::WARN,
    };
    *meta.level() <= floor
}

/// Never TRACE from [`SECRET_AT_TRACE`], whatever the log filter says: at TRACE these crates print
/// protocol frames, the connection's credentials among them (the AMQP SASL response, a Redis
/// AUTH). Everything else as the filter says (this only takes away).
fn no_secret_frames()
-> tracing_subscriber::filter::FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    tracing_subscriber::filter::filter_fn(|meta| {
        *meta.level() != Level::TRACE
            || !SECRET_AT_TRACE.iter().any(|target| {
                meta.target()
                    .strip_prefix(target)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
            })
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_posting_span_after_a_libraries_unanswered_enabled_check_still_reaches_both_layers() {
        // As the binary runs: `log` records bridged into tracing (`try_init` installs this).
        let _ = tracing_log::LogTracer::init();
        let provider = SdkTracerProvider::builder().build();
        let subscriber = subscriber(LogFormat::Json, EnvFilter::new("info"), Some(&provider));
        tracing::subscriber::with_default(subscriber, || {
            let headers = BTreeMap::from([("traceparent".to_owned(), TRACEPARENT.to_owned())]);
            for _ in 0..3 {
                // What sqlx's query logger does after every query: asks, and logs nothing.
                let _ = log::log_enabled!(target: "sqlx::query", log::Level::Debug);
                let (span, trace_id) =
                    consumer_span("rabbitmq", "postings", None, 1, None, &headers);
                assert!(!span.is_disabled(), "the process span was dropped");
                let own = traceparent_of(&span).expect("the process span is in the trace layer");
                assert_eq!(trace_id_of(&own), Some(trace_id.as_str()));
                assert_eq!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
            }
        });
    }

    #[test]
    fn without_export_info_logs_create_no_debug_span() {
        let subscriber = subscriber(LogFormat::Text, EnvFilter::new("info"), None);
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..3 {
                let _ = log::log_enabled!(target: "sqlx::query", log::Level::Debug);
                let step = tracing::debug_span!("lease");
                assert!(step.is_disabled(), "a DEBUG step span was created");
                let process = tracing::info_span!("process");
                assert!(!process.is_disabled());
            }
        });
    }
}
