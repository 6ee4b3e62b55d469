//! Shared helpers for integration tests: service discovery with the skip rule, unique names.
//!
//! A service-backed test skips (printing why) only when the service is unreachable AND
//! `BIDORCH_REQUIRE_SERVICES` is unset; CI sets it, so there the test fails instead.
#![allow(dead_code)]

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

fn host_port(url: &str, default_port: u16) -> String {
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
    if std::env::var_os("BIDORCH_REQUIRE_SERVICES").is_some() {
        panic!("{service} at {addr} is unreachable and BIDORCH_REQUIRE_SERVICES is set");
    }
    eprintln!(
        "SKIPPED: {service} at {addr} is unreachable (set BIDORCH_REQUIRE_SERVICES=1 to fail instead)"
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
