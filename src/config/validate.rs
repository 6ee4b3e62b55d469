//! Relations between keys that types alone cannot express, checked once at load: each failure is
//! a [`ConfigError::Invalid`] naming the key, so a bad configuration stops start-up clearly.

use std::time::Duration;

use super::{
    AmqpSettings, ConfigError, DatabaseSettings, LockSettings, MarketplaceSettings, Settings,
    WorkerSettings, invalid,
};

impl Settings {
    /// Checks every section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        amqp(&self.amqp)?;
        worker(&self.worker, &self.amqp)?;
        lock(&self.lock)?;
        database(&self.database)?;
        for (name, m) in &self.marketplaces {
            marketplace(name, m, &self.lock)?;
        }
        scoring(&self.scoring)?;
        console(&self.console)?;
        ledger(&self.ledger, &self.amqp)?;
        if self.reconcile.auto_every.is_zero() {
            return Err(invalid("reconcile.auto_every", "must be above 0"));
        }
        bidding(self)
    }
}

fn console(c: &crate::config::ConsoleSettings) -> Result<(), ConfigError> {
    if !c.token_env.is_empty() {
        variable_name("console.token_env", &c.token_env)?;
    }
    if !c.trace_url.is_empty() {
        if !c.trace_url.contains("{trace_id}") {
            return Err(invalid(
                "console.trace_url",
                "must contain {trace_id}, where each trace's id goes",
            ));
        }
        let sample = c
            .trace_url
            .replace("{trace_id}", "0af7651916cd43dd8448eb211c80319c");
        match url::Url::parse(&sample) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => {
                return Err(invalid(
                    "console.trace_url",
                    "must be an http:// or https:// URL",
                ));
            }
        }
    }
    Ok(())
}

fn scoring(s: &crate::config::ScoringSettings) -> Result<(), ConfigError> {
    if !s.enabled() {
        return Ok(());
    }
    let url = url::Url::parse(s.url.expose().trim())
        .map_err(|e| invalid("scoring.url", format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https")
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(invalid(
            "scoring.url",
            "must be an http:// or https:// URL without credentials (use scoring.token_env)",
        ));
    }
    if url.query().is_some() {
        return Err(invalid(
            "scoring.url",
            "must not carry a query string (a secret there would reach logs); use scoring.token_env",
        ));
    }
    if !s.token_env.is_empty() {
        variable_name("scoring.token_env", &s.token_env)?;
    }
    if !(0.0..=1.0).contains(&s.threshold) {
        return Err(invalid("scoring.threshold", "must be between 0.0 and 1.0"));
    }
    if s.timeout.is_zero() || s.timeout > std::time::Duration::from_secs(60) {
        return Err(invalid(
            "scoring.timeout",
            "must be above 0 and at most 60s",
        ));
    }
    Ok(())
}

/// An environment variable's name, as a shell writes one: `^[A-Za-z_][A-Za-z0-9_]*$`.
pub(crate) fn variable_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!(
                "must name an environment variable (letters, digits and _, not starting with a \
                 digit), got {name:?}"
            ),
        ))
    }
}

/// `true` when `value` is at least 1.
fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(invalid(key, "must be at least 1"));
    }
    Ok(())
}

fn amqp(a: &AmqpSettings) -> Result<(), ConfigError> {
    positive("amqp.prefetch", a.prefetch.into())?;
    positive("amqp.max_attempts", a.max_attempts.into())?;
    positive("amqp.delivery_limit", a.delivery_limit.into())?;
    positive("amqp.publish_window", a.publish_window as u64)?;
    if a.exchange.is_empty() {
        return Err(invalid("amqp.exchange", "must not be empty"));
    }
    if a.queue.is_empty() {
        return Err(invalid("amqp.queue", "must not be empty"));
    }
    if a.retry_tiers.is_empty() {
        return Err(invalid("amqp.retry_tiers", "needs at least one delay"));
    }
    if a.retry_tiers.windows(2).any(|w| w[0] >= w[1]) || a.retry_tiers.iter().any(Duration::is_zero)
    {
        return Err(invalid(
            "amqp.retry_tiers",
            "delays must be positive and strictly increasing, e.g. [\"1s\", \"10s\", \"60s\"]",
        ));
    }
    // A wait queue's x-message-ttl is a 32-bit millisecond count on the broker.
    if a.retry_tiers
        .iter()
        .any(|t| *t > Duration::from_secs(24 * 3600))
    {
        return Err(invalid(
            "amqp.retry_tiers",
            "each delay must be at most 24h",
        ));
    }
    let largest = a.retry_tiers.last().copied().unwrap_or_default();
    if a.retry_budget < largest || a.retry_budget > Duration::from_secs(365 * 24 * 3600) {
        return Err(invalid(
            "amqp.retry_budget",
            "must be at least the largest retry tier and at most 365 days",
        ));
    }
    if a.confirm_timeout.is_zero() || a.reconnect_timeout.is_zero() {
        return Err(invalid(
            if a.confirm_timeout.is_zero() {
                "amqp.confirm_timeout"
            } else {
                "amqp.reconnect_timeout"
            },
            "must be positive",
        ));
    }
    Ok(())
}

/// The retry delays: each above zero (a zero delay would spin on a posting that cannot be worked
/// on) and within `amqp.retry_budget` (a longer one parks whatever waits for it).
fn worker(w: &WorkerSettings, a: &AmqpSettings) -> Result<(), ConfigError> {
    for (key, delay) in [
        ("worker.retry_lock_held", w.retry_lock_held),
        ("worker.retry_unavailable", w.retry_unavailable),
        ("worker.retry_transient", w.retry_transient),
    ] {
        if delay.is_zero() {
            return Err(invalid(key, "must be above 0"));
        }
        if delay > a.retry_budget {
            return Err(invalid(
                key,
                format!(
                    "({}) must not be longer than amqp.retry_budget ({}): every message waiting \
                     for it would be parked",
                    humantime::format_duration(delay),
                    humantime::format_duration(a.retry_budget)
                ),
            ));
        }
    }
    Ok(())
}

fn ledger(l: &crate::config::LedgerSettings, a: &AmqpSettings) -> Result<(), ConfigError> {
    if l.retention <= a.retry_budget {
        return Err(invalid(
            "ledger.retention",
            format!(
                "({}) must be longer than amqp.retry_budget ({}): a copy of a posting still \
                 waiting in the queues could outlive its ledger row and be bid again",
                crate::text::duration(l.retention),
                crate::text::duration(a.retry_budget)
            ),
        ));
    }
    if l.prune_every.is_zero() {
        return Err(invalid("ledger.prune_every", "must be above 0"));
    }
    if !(1..=100_000).contains(&l.prune_batch) {
        return Err(invalid("ledger.prune_batch", "must be from 1 to 100000"));
    }
    Ok(())
}

fn lock(l: &LockSettings) -> Result<(), ConfigError> {
    if l.ttl < Duration::from_millis(100) || l.ttl > Duration::from_secs(3600) {
        return Err(invalid("lock.ttl", "must be between 100ms and 1h"));
    }
    Ok(())
}

fn database(d: &DatabaseSettings) -> Result<(), ConfigError> {
    positive("database.max_connections", d.max_connections.into())?;
    if d.statement_timeout < Duration::from_millis(10)
        || d.statement_timeout > Duration::from_secs(3600)
    {
        return Err(invalid(
            "database.statement_timeout",
            "must be between 10ms and 1h",
        ));
    }
    if d.call_timeout < d.statement_timeout || d.call_timeout > Duration::from_secs(3600) {
        return Err(invalid(
            "database.call_timeout",
            "must be at least database.statement_timeout and at most 1h",
        ));
    }
    let plain = d
        .schema
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !plain {
        return Err(invalid(
            "database.schema",
            "may contain only a-z, 0-9 and _",
        ));
    }
    // PostgreSQL cuts identifiers at 63 bytes: a longer name would silently become another.
    if d.schema.len() > 63 {
        return Err(invalid(
            "database.schema",
            format!(
                "must be at most 63 bytes (PostgreSQL's limit), got {}",
                d.schema.len()
            ),
        ));
    }
    if d.schema.starts_with("pg_") {
        return Err(invalid(
            "database.schema",
            "must not start with pg_ (PostgreSQL reserves that prefix for system schemas)",
        ));
    }
    Ok(())
}

fn marketplace(
    name: &str,
    m: &MarketplaceSettings,
    lock: &LockSettings,
) -> Result<(), ConfigError> {
    let key = |k: &str| format!("marketplaces.{name}.{k}");
    if !super::is_marketplace_name(name) {
        return Err(invalid(
            format!("marketplaces.{name}"),
            "name must match ^[a-z0-9][a-z0-9_-]{0,31}$",
        ));
    }
    if !matches!(m.base_url.scheme(), "http" | "https") {
        return Err(invalid(
            key("base_url"),
            "must be an http:// or https:// URL",
        ));
    }
    if !m.base_url.username().is_empty() || m.base_url.password().is_some() {
        return Err(invalid(
            key("base_url"),
            format!(
                "must not carry credentials; the token comes from the variable named by {}",
                key("token_env")
            ),
        ));
    }
    variable_name(&key("token_env"), &m.token_env)?;
    // The bid must finish well inside the lease, or a slow call outlives it.
    let (request, connect) = m.timeouts(lock.ttl);
    // A zero bound fails every call at once while the request may still reach the marketplace:
    // bids placed, recorded as timeouts, sent again.
    for (k, bound) in [("timeout", request), ("connect_timeout", connect)] {
        if bound.is_zero() {
            return Err(invalid(key(k), "must be above 0"));
        }
    }
    let call = request.saturating_add(connect);
    if call > lock.ttl / 2 {
        return Err(invalid(
            key(if m.timeout.is_some() {
                "timeout"
            } else {
                "connect_timeout"
            }),
            format!(
                "timeout + connect_timeout ({}) must be at most half of lock.ttl ({})",
                humantime::format_duration(call),
                humantime::format_duration(lock.ttl)
            ),
        ));
    }
    if m.lookup_delay.is_some_and(|d| d.is_zero()) {
        return Err(invalid(key("lookup_delay"), "must be above 0"));
    }
    if !(1..=100).contains(&m.milestone_percentage) {
        return Err(invalid(
            key("milestone_percentage"),
            format!("must be from 1 to 100, got {}", m.milestone_percentage),
        ));
    }
    if !(1..=365).contains(&m.bid_period_days) {
        return Err(invalid(
            key("bid_period_days"),
            format!("must be from 1 to 365 days, got {}", m.bid_period_days),
        ));
    }
    if m.bidder_id == Some(0) {
        return Err(invalid(key("bidder_id"), "must be a user id (1 or more)"));
    }
    if m.api == super::MarketplaceApi::Freelancer && m.base_url.query().is_some() {
        return Err(invalid(
            key("base_url"),
            "the Freelancer API's base_url is the host root (https://www.freelancer.com), without a query",
        ));
    }
    if let Some(rate) = m.rate_limit
        && !(rate.is_finite() && rate > 0.0 && rate <= 100_000.0)
    {
        return Err(invalid(
            key("rate_limit"),
            format!("must be a number of requests per second above 0 (at most 100000), got {rate}"),
        ));
    }
    if m.rate_burst == Some(0) || (m.rate_burst.is_some() && m.rate_limit.is_none()) {
        return Err(invalid(
            key("rate_burst"),
            "must be at least 1, and set only with rate_limit",
        ));
    }
    Ok(())
}

/// `[bidding]` must make a policy (the policy checks its own keys), and each marketplace override
/// must name a configured marketplace: an override silently ignored because of a typo would bid
/// on what it was written to skip.
fn bidding(s: &Settings) -> Result<(), ConfigError> {
    if let Some(name) = s
        .bidding
        .marketplaces
        .keys()
        .find(|name| !s.marketplaces.contains_key(*name))
    {
        return Err(invalid(
            format!("bidding.marketplaces.{name}"),
            format!("overrides a marketplace that is not configured (marketplaces.{name})"),
        ));
    }
    Ok(())
}
