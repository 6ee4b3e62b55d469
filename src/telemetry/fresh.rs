//! [`Fresh`]: a per-layer filter asked about every span and event, never cached as "always".
//!
//! tracing-subscriber passes each per-layer filter's verdict from `enabled()` to the span or event
//! that follows through a thread-local, assuming nothing runs in between. A callsite whose
//! interest is cached as `always` skips `enabled()`, so its span reads the verdict of whatever was
//! asked last on that thread — and sqlx asks (`tracing::enabled!` and `log::log_enabled!` after
//! every query) without following up. Then a posting's `process` span was silently dropped from
//! the trace and log layers: no consumer span, log lines without the posting's fields, and a
//! marketplace call in a trace of its own (tokio-rs/tracing#2519). Capping the interest at
//! `sometimes` makes every span and event ask first, so the thread-local is always its own.

use tracing::Metadata;
use tracing::subscriber::Interest;
use tracing_subscriber::layer::{Context, Filter};

/// `F`, with callsite interest capped at `sometimes` (see the module docs).
pub(super) struct Fresh<F>(pub F);

impl<S, F: Filter<S>> Filter<S> for Fresh<F> {
    fn enabled(&self, meta: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        self.0.enabled(meta, cx)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if self.0.callsite_enabled(meta).is_never() {
            Interest::never()
        } else {
            Interest::sometimes()
        }
    }

    fn event_enabled(&self, event: &tracing::Event<'_>, cx: &Context<'_, S>) -> bool {
        self.0.event_enabled(event, cx)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        self.0.max_level_hint()
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        cx: Context<'_, S>,
    ) {
        self.0.on_new_span(attrs, id, cx);
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        cx: Context<'_, S>,
    ) {
        self.0.on_record(id, values, cx);
    }

    fn on_enter(&self, id: &tracing::span::Id, cx: Context<'_, S>) {
        self.0.on_enter(id, cx);
    }

    fn on_exit(&self, id: &tracing::span::Id, cx: Context<'_, S>) {
        self.0.on_exit(id, cx);
    }

    fn on_close(&self, id: tracing::span::Id, cx: Context<'_, S>) {
        self.0.on_close(id, cx);
    }
}
