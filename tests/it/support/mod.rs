//! Shared helpers for integration tests: service discovery with the skip rule, unique names.
//!
//! A service-backed test skips (printing why) only when the service is unreachable AND
//! `BIDORCH_REQUIRE_SERVICES` is unset; CI sets it, so there the test fails instead.
#![allow(dead_code)]

pub mod browser;
pub mod lock;
pub mod ops;
pub mod pgbouncer;
pub mod process;
pub mod proxy;
pub mod queue;
pub mod rabbitmqctl;
pub mod scenario;
pub mod system;
pub mod telemetry;

use std::time::Duration;

/// URLs of the real services, overridable by the conventional variables.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// `host:port` of a service URL (`default_port` when the URL has none).
pub fn host_port(url: &str, default_port: u16) -> String {
    let u = url::Url::parse(url).expect("service URL parses");
    format!(
        "{}:{}",
        u.host_str().unwrap_or("127.0.0.1"),
        u.port().unwrap_or(default_port)
    )
}

/// Returns true if `service` at `url` accepts TCP connections; otherwise skips (false) or, when
/// `BIDORCH_REQUIRE_SERVICES` is set, panics naming the service.
pub async fn service_available(service: &str, url: &str, default_port: u16) -> bool {
    let addr = host_port(url, default_port);
    let reachable = matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(&addr)
        )
        .await,
        Ok(Ok(_))
    );
    if reachable {
        return true;
    }
    skip(&format!("{service} at {addr} is unreachable"))
}

/// The rule for a test that cannot run here: with `BIDORCH_REQUIRE_SERVICES` set (CI) it fails,
/// naming `why`; otherwise it prints `SKIPPED <test>: <why>` and the caller returns early.
///
/// Written straight to the process's stderr, not through `eprintln!`: libtest captures the
/// macros' output of passing tests, and a skip that nobody sees reads as a pass. Call it from
/// the test's own thread (the test body, not a spawned task) so the test's name is known.
/// Always returns false, so `return skip(..)` reads naturally in a check.
pub fn skip(why: &str) -> bool {
    use std::io::Write as _;
    if std::env::var_os("BIDORCH_REQUIRE_SERVICES").is_some() {
        panic!("{why}, and BIDORCH_REQUIRE_SERVICES is set");
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unnamed test>");
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {why} (set BIDORCH_REQUIRE_SERVICES=1 to fail instead)"
    );
    false
}

/// `service_available` for Redis.
pub async fn redis_available() -> bool {
    service_available("Redis", &redis_url(), 6379).await
}
/// `service_available` for RabbitMQ.
pub async fn amqp_available() -> bool {
    service_available("RabbitMQ", &amqp_url(), 5672).await
}
/// `service_available` for PostgreSQL.
pub async fn postgres_available() -> bool {
    service_available("PostgreSQL", &database_url(), 5432).await
}

/// A posting key (test inputs are valid by construction).
pub fn key(marketplace: &str, posting_id: &str) -> bidorch::posting::PostingKey {
    bidorch::posting::PostingKey::new(marketplace, posting_id).expect("a valid test key")
}

/// A valid posting event: a fresh `event_id`, marketplace `upwork`, posting `job_1`, a title and
/// a USD budget up to 1500 — with `fields` laid over it (`json!({"posting_id": "p", "budget":
/// {"max": "50"}})`: objects are merged, anything else replaces).
pub fn event(fields: serde_json::Value) -> Vec<u8> {
    fn merge(base: &mut serde_json::Value, over: serde_json::Value) {
        match (base, over) {
            (serde_json::Value::Object(base), serde_json::Value::Object(over)) => {
                for (k, v) in over {
                    merge(base.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (slot, over) => *slot = over,
        }
    }
    let mut body = serde_json::json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "marketplace": "upwork",
        "posting_id": "job_1",
        "title": "Build a Rust worker",
        "budget": {"min": 500, "max": 1500, "currency": "USD", "kind": "fixed"},
    });
    merge(&mut body, fields);
    body.to_string().into_bytes()
}

/// Polls `cond` until it holds, panicking with `what` after `limit` (on Tokio's clock, so a test
/// with a paused clock can use it too).
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free TCP port on loopback (nothing listens on it once this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A free loopback address (`127.0.0.1:PORT`), e.g. for a worker's `http.addr`.
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A name unique to this test run: `{prefix}_{8 hex chars}` (safe for queues, keys and schemas).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Drops a PostgreSQL schema made for one test (best effort).
pub async fn drop_schema(schema: &str) {
    use sqlx::Connection;
    if let Ok(mut conn) = sqlx::PgConnection::connect(&database_url()).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
        )))
        .execute(&mut conn)
        .await;
        let _ = conn.close().await;
    }
}

/// Deletes every Redis key under `prefix` (best effort).
pub async fn delete_redis_prefix(prefix: &str) {
    let Ok(client) = redis::Client::open(redis_url()) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}

/// Serves a sandbox marketplace on an ephemeral loopback port for the rest of the test process;
/// returns it and its base URL.
pub async fn serve_sandbox(
    options: bidorch::marketplace::sandbox::SandboxOptions,
) -> (bidorch::marketplace::sandbox::Sandbox, String) {
    let sandbox = bidorch::marketplace::sandbox::Sandbox::new(options);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("bound address"));
    tokio::spawn(bidorch::marketplace::sandbox::serve(
        listener,
        sandbox.clone(),
        std::future::pending(),
    ));
    (sandbox, url)
}

/// The environment of a test run on the real services: names derived from `names` (queue
/// `names`, exchange `names.ex`, Redis prefix `names:`, schema `names`), short retry delays, and
/// both marketplaces on the sandbox at `sandbox_url`. `overrides` are applied last.
pub fn run_env(
    names: &str,
    sandbox_url: &str,
    overrides: &[(&str, String)],
) -> std::collections::HashMap<String, String> {
    let mut env: std::collections::HashMap<String, String> = [
        ("AMQP_URL", amqp_url()),
        ("REDIS_URL", redis_url()),
        ("DATABASE_URL", database_url()),
        ("BIDORCH__AMQP__EXCHANGE", format!("{names}.ex")),
        ("BIDORCH__AMQP__QUEUE", names.to_owned()),
        ("BIDORCH__AMQP__RETRY_TIERS", "200ms,1s".to_owned()),
        ("BIDORCH__REDIS__KEY_PREFIX", format!("{names}:")),
        ("BIDORCH__DATABASE__SCHEMA", names.to_owned()),
        ("BIDORCH__DATABASE__MAX_CONNECTIONS", "6".to_owned()),
        ("BIDORCH__WORKER__RETRY_LOCK_HELD", "200ms".to_owned()),
        ("BIDORCH__WORKER__RETRY_UNAVAILABLE", "1s".to_owned()),
        ("BIDORCH__WORKER__RETRY_TRANSIENT", "200ms".to_owned()),
        (
            "BIDORCH__MARKETPLACES__UPWORK__BASE_URL",
            format!("{sandbox_url}/upwork"),
        ),
        (
            "BIDORCH__MARKETPLACES__FREELANCER__BASE_URL",
            format!("{sandbox_url}/freelancer"),
        ),
        (
            "BIDORCH__MARKETPLACES__UPWORK__TOKEN_ENV",
            "BIDORCH_UPWORK_TOKEN".to_owned(),
        ),
        (
            "BIDORCH__MARKETPLACES__FREELANCER__TOKEN_ENV",
            "BIDORCH_FREELANCER_TOKEN".to_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in overrides {
        env.insert((*k).to_owned(), v.clone());
    }
    env
}

/// Settings loaded from [`run_env`].
pub fn run_settings(
    names: &str,
    sandbox_url: &str,
    overrides: &[(&str, String)],
) -> bidorch::config::Settings {
    bidorch::config::Settings::load_from(None, &run_env(names, sandbox_url, overrides))
        .expect("test settings are valid")
}

/// Ledger rows with a final outcome.
pub async fn final_rows(ledger: &dyn bidorch::ledger::LedgerReports) -> u64 {
    ledger
        .counts_by_state()
        .await
        .expect("counts_by_state")
        .iter()
        .filter(|(s, _)| s.is_final())
        .map(|(_, n)| n)
        .sum()
}

/// A worker's system on the real services, as `bidorch worker` builds it from `settings`, except
/// that its marketplace client presents `token` to the test's sandbox.
pub async fn worker_system(
    settings: &bidorch::config::Settings,
    token: &str,
    tally: Option<std::sync::Arc<bidorch::tally::Tally>>,
) -> bidorch::app::System {
    let token = token.to_owned();
    let client = bidorch::marketplace::HttpMarketplace::new(
        &settings.marketplaces,
        settings.lock.ttl,
        |_| Some(token.clone()),
    )
    .expect("test marketplaces are valid");
    let mut builder =
        bidorch::app::System::builder(settings).marketplace(std::sync::Arc::new(client));
    if let Some(tally) = tally {
        builder = builder.tally(tally);
    }
    builder.build().await.expect("the test system starts")
}

/// An HTTP client for the tests (bidorch's TLS provider installed first, as the binary does).
pub fn client() -> reqwest::Client {
    bidorch::tls::install_default_provider();
    reqwest::Client::new()
}

/// `GET url` with [`client`].
pub async fn http_get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    client().get(url).send().await
}
