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
//! - [`publish`]: publishing posting events with confirms.
//! - [`http`], [`metrics`], [`telemetry`]: operations.

pub mod config;
pub mod dlq;
pub mod ledger;
pub mod lock;
pub mod marketplace;
pub mod pipeline;
pub mod policy;
pub mod posting;
pub mod publish;
pub mod source;
