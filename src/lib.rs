//! bidorch — an event-driven bid orchestrator: exactly one bid per eligible marketplace posting.
//!
//! # Layout
//! - [`app`]: the composition root — [`Settings`](config::Settings) in, a running
//!   [`System`](app::System) out. Every backend is chosen there by configuration, and the safety
//!   refusals (no in-process locks with a shared queue) live there once; `app/run.rs` runs a
//!   worker.
//! - [`config`]: layered settings (`load`), the original system's variables (`compat`),
//!   validation naming the key (`validate`), secrets redacted (`secret`).
//! - [`posting`]: the wire event (derived, [`posting::wire`]) converted with `TryFrom` into a
//!   validated [`posting::Posting`].
//! - [`policy`]: the pure should-bid decision — rules from `[bidding]` with per-kind and
//!   per-marketplace layers, the bid amount, the cover letter, and the `policy check` report.
//! - [`pipeline`]: one posting through (a lookup, if seen before) → decide (→ [`scorer`]) →
//!   lease → claim → rate → bid → finish, the lease handed back to be released once the message
//!   is settled; `pipeline/outcome/` holds the spec's outcome table (one `match`, max attempts
//!   included).
//! - Ports, each a narrow trait speaking domain types, with a production and an embedded backend:
//!   [`source`] (RabbitMQ / in-process queue), [`lock`] (Redis / memory), [`ledger`]
//!   (PostgreSQL / SQLite; batching of concurrent calls), [`marketplace`] (HTTP client; the
//!   sandbox server), [`scorer`] (the optional remote scoring service). The lock store also
//!   keeps the fleet-wide request rate of each marketplace (`lock/rate.rs`).
//! - [`worker`]: the consume loop, concurrency and graceful shutdown.
//! - [`amqp`]: what every RabbitMQ user shares — connections, topology, headers, confirmed
//!   publishing — used by [`source`], [`publish`] and [`dlq`].
//! - [`publish`]: publishing posting events with confirms; [`dlq`]: inspecting and replaying
//!   parked messages; [`inspect`]: one posting's story; [`reconcile`]: settling sends never
//!   recorded; [`demo`]: the one-command run on embedded (or real) backends; [`bench`]: the
//!   pipeline's rate as a ratio to the broker's own.
//! - [`lane`]: batching of single calls from concurrent postings into one round trip (the
//!   ledger's and the lock store's).
//! - [`flow`]: waiting is not failing — the worker's gate and the marketplace breakers.
//! - [`http`], [`metrics`], [`telemetry`]: operations; [`error`]: showing an error with its
//!   causes; [`text`]: publisher input shown to people, control characters escaped; [`tls`]:
//!   the one TLS provider; [`tally`]: exact counts for the demo and tests.
//!
//! # Where things go
//! - A new backend for a port: a file next to the others (`lock/etcd.rs`), a `kind` value in
//!   `config`, one arm in [`app`]; run the port's contract suite (`tests/it/`) against it.
//! - A new marketplace adapter: an implementation of [`marketplace::Marketplace`] (the HTTP
//!   contract is in `marketplace/http.rs` and `marketplace/classify.rs`), chosen in [`app`].
//! - A new pipeline step: a method of [`pipeline::Pipeline`] run inside a `step!` span; if it
//!   can end the posting, a new [`pipeline::Outcome`] and its row in `Outcome::action`.

pub mod amqp;
pub mod app;
pub mod bench;
pub mod config;
pub mod demo;
pub mod dlq;
pub mod envelope;
pub mod error;
pub mod flow;
pub mod http;
pub mod inspect;
pub mod lane;
pub mod ledger;
pub mod lock;
pub mod marketplace;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod posting;
pub mod publish;
pub mod reconcile;
pub mod scorer;
pub mod source;
pub mod tally;
pub mod telemetry;
pub mod text;
pub mod tls;
pub mod worker;
