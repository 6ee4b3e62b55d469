//! bidorch — an event-driven bid orchestrator: exactly one bid per eligible marketplace posting.
//!
//! # Layout
//! - [`app`]: the composition root — [`Settings`](config::Settings) in, a running
//!   [`System`](app::System) out. `app/ports.rs` stacks each port from configuration (backend and
//!   decorators); the safety refusals (no in-process locks with a shared queue; no sandbox or
//!   SQLite for `bidorch worker`) live in `app/mod.rs` once; `app/run.rs` runs a worker.
//! - [`config`]: layered settings (`load`), the original system's variables (`compat`),
//!   validation naming the key (`validate`), whole numbers read strictly (`whole`), secrets
//!   redacted (`secret`). A leaf: it reads no other module.
//! - [`posting`]: the wire event (derived, [`posting::wire`]) converted with `TryFrom` into a
//!   validated [`posting::Posting`]; [`envelope`]: bidorch's own headers on a message and when
//!   they are trusted.
//! - [`policy`]: the pure should-bid decision — rules from `[bidding]` with per-kind and
//!   per-marketplace layers, the bid amount, the cover letter, and the `policy check` report.
//! - [`pipeline`]: one posting through decide (a lookup if seen before, the policy, the
//!   [`scorer`], the request in the marketplace API's words) → lease → claim → verify (a lookup
//!   first, for a send of unknown fate on an API without idempotency keys) → ready (permit,
//!   lease, rate) → call → finish, one step per file; the lease handed back to be released once the message is settled;
//!   `pipeline/outcome/` holds the spec's outcome table (one `match`, max attempts included).
//! - Ports, each a narrow trait speaking domain types, with a production and an embedded backend:
//!   [`source`] (RabbitMQ / in-process queue), [`lock`] (Redis / memory: leases, and the
//!   fleet-wide request rate of each marketplace), [`ledger`] (PostgreSQL / SQLite: the
//!   pipeline's steps, batched across postings, and the reports), [`marketplace`] (one adapter
//!   per marketplace API — the contract, Freelancer — over one HTTP client; the sandbox server
//!   speaking both), [`scorer`] (the optional remote scoring service).
//! - [`worker`]: the consume loop, concurrency, graceful shutdown, and the one place a processed
//!   delivery is logged and counted.
//! - [`amqp`]: what every RabbitMQ user shares — connections, topology, headers, confirmed
//!   publishing — used by [`source`], [`publish`] and [`dlq`].
//! - [`publish`]: publishing posting events with confirms; [`dlq`]: inspecting and replaying
//!   parked messages; [`inspect`]: one posting's story; [`reconcile`]: settling sends never
//!   recorded; [`demo`]: the one-command run on embedded (or real) backends; [`bench`]: the
//!   pipeline's rate as a ratio to the broker's own.
//! - [`lane`]: batching of single calls from concurrent postings into one round trip (the
//!   ledger's and the lock store's), each lane with its own tuning.
//! - [`flow`]: waiting is not failing — the worker's gate and the marketplace breakers.
//! - [`http`], [`metrics`], [`telemetry`]: operations; [`error`]: showing an error with its
//!   causes; [`text`]: publisher input shown to people, control characters escaped; [`tls`]:
//!   the one TLS provider; [`tally`]: exact counts for the demo and tests.
//!
//! No import cycles between these modules (`.ci/module-cycles` checks it in CI).
//!
//! # Where things go
//! - A new backend for a port: a file next to the others (`lock/etcd.rs`), a `kind` value in
//!   `config`, one arm in `app/ports.rs`; run the port's contract suite (`tests/it/`) against it.
//! - A new marketplace API: an adapter module in `marketplace/` (`contract.rs` and
//!   `freelancer.rs` are the two there are), a dialect of the sandbox, a `MarketplaceApi` value
//!   in `config`; `docs/marketplaces.md` walks through it.
//! - A new pipeline step: a file in `pipeline/`, a method of [`pipeline::Pipeline`] returning a
//!   `ControlFlow` and run inside a `step!` span; if it can end the posting, a new
//!   [`pipeline::Outcome`] and its row in `Outcome::action`.

pub mod amqp;
pub mod app;
pub mod bench;
pub mod config;
pub mod console;
pub mod control;
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
pub mod retention;
pub mod scorer;
pub mod source;
pub mod status;
pub mod tally;
pub mod telemetry;
pub mod text;
pub mod tls;
pub mod worker;
