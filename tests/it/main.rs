//! The integration tests: one binary (zero2prod's `tests/api` layout), one module per area.
//!
//! Every test that needs a real service isolates itself (its own queue and exchange names, Redis
//! key prefix, PostgreSQL schema, RabbitMQ vhost) and cleans up. A test whose service cannot be
//! reached prints `SKIPPED <test>: <reason>` and passes, unless `BIDORCH_REQUIRE_SERVICES` is set
//! (CI sets it), in which case it fails. See [`support`].

mod support;

mod bench;
mod broker_chaos;
mod chaos;
mod cli;
mod console;
mod demo;
mod e2e;
mod freelancer;
mod freelancer_chaos;
mod healthcheck;
mod interop;
mod ledger;
mod lock_contract;
mod lock_redis;
mod lock_scenarios;
mod lock_select;
mod lock_stress;
mod lock_watchdog;
mod logs;
mod marketplace;
mod ops;
mod outages;
mod outcomes;
mod pause;
mod pause_board;
mod pgbouncer;
mod publisher_input;
mod queue_amqp;
mod queue_dlq;
mod queue_publish;
mod queue_reconnect;
mod rate_limit;
mod redis_cluster;
mod retention;
mod schema;
mod shutdown;
mod source_contract;
mod spend;
mod telemetry;
mod worker_queue;
