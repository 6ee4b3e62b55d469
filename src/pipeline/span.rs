//! The step spans: every pipeline step runs in a DEBUG span of its own with a bounded `result`,
//! made the same way by [`step!`]. Traces take them (see [`crate::telemetry`]); INFO logs do
//! not, so without tracing export they cost nothing.

/// Runs `$fut` inside a span `$name` and records `result = $label(&output)` on it.
macro_rules! step {
    ($name:literal, $fut:expr, $label:expr) => {{
        let span = tracing::debug_span!($name, result = tracing::field::Empty);
        let output = tracing::Instrument::instrument($fut, span.clone()).await;
        span.record("result", ($label)(&output));
        output
    }};
}
