//! bidorch — an event-driven bid orchestrator: exactly one bid per eligible marketplace posting.
//!
//! # Layout
//! - [`config`]: layered settings, validation naming the key, secrets redacted.
//! - [`posting`]: the wire event parsed and validated at the edge into a [`posting::Posting`].
//! - [`policy`]: the pure should-bid decision.
//! - [`pipeline`]: one posting through ledger → lease → claim → decide → fence → bid → record;
//!   holds the spec's outcome table.
//! - Ports, each with a production and an embedded backend:
//!   [`source`] (RabbitMQ / memory), [`lock`] (Redis / memory), [`ledger`] (PostgreSQL / SQLite),
//!   [`marketplace`] (HTTP client, and the sandbox server).
//! - [`worker`]: the consume loop, concurrency and graceful shutdown.
//! - [`publish`]: publishing posting events with confirms; [`dlq`]: inspecting and replaying
//!   parked messages.
//! - [`demo`]: the one-command run on embedded (or real) backends.
//! - [`runtime`]: assembling a production worker from settings.
//! - [`http`], [`metrics`], [`telemetry`]: operations; [`tally`]: exact counts for the demo.

pub mod amqp;
pub mod app;
pub mod config;
pub mod demo;
pub mod dlq;
pub mod error;
pub mod http;
pub mod ledger;
pub mod lock;
pub mod marketplace;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod posting;
pub mod publish;
pub mod source;
pub mod tally;
pub mod telemetry;
pub mod tls;
pub mod worker;
