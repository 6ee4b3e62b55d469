//! Configuration: layered loading, typed settings, validation that names the offending key.
//!
//! Layers, later wins: `config/default.toml` (compiled in, so the binary runs from anywhere) →
//! `config/{BIDORCH_ENV or ENV}.toml` if present → `--config FILE` → `BIDORCH__SECTION__KEY`
//! environment variables → the conventional `AMQP_URL`, `REDIS_URL`, `DATABASE_URL`, and the
//! original system's `REDIS_HOST`/`REDIS_PORT`/`REDIS_DB`/`REDIS_PASSWORD`/`USE_REDIS_LOCKS`.
//! URLs are [`SecretUrl`]s: their passwords never reach `Debug`, `Display` or logs.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rust_decimal::Decimal;
use serde::Deserialize;

/// The compiled-in defaults; the same file documents every key.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// A configuration problem, naming the key (or file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {problem}")]
    Invalid { key: String, problem: String },
    #[error("configuration file {path}: {problem}")]
    File { path: PathBuf, problem: String },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// A connection URL whose password is redacted whenever it is shown.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The full URL, password included: pass it to a client, never to a log.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***` (safe to log).
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut u) => {
                if u.password().is_some() {
                    let _ = u.set_password(Some("***"));
                }
                u.to_string()
            }
            // Unparseable: show only the scheme, the rest may hold a secret.
            Err(_) => match self.0.split_once(':') {
                Some((scheme, _)) => format!("{scheme}:<unparseable>"),
                None => "<unparseable url>".to_owned(),
            },
        }
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Where deliveries come from.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Amqp,
    Memory,
}

/// Which lock store holds leases.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    Redis,
    Memory,
}

/// Which database holds the ledger.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LedgerKind {
    Postgres,
    Sqlite,
}

/// Log output format.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[source]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSettings {
    pub kind: SourceKind,
}

/// `[amqp]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    pub url: SecretUrl,
    pub exchange: String,
    pub queue: String,
    pub prefetch: u16,
    #[serde(deserialize_with = "de_durations")]
    pub retry_tiers: Vec<Duration>,
    pub max_attempts: u32,
    pub delivery_limit: u32,
    pub publish_window: usize,
    #[serde(with = "humantime_serde")]
    pub reconnect_timeout: Duration,
}

impl AmqpSettings {
    /// `{queue}.dead`, the parking lot.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }

    /// `{queue}.retry.{tier}` for a tier's delay, e.g. `bidorch.postings.retry.10s`.
    pub fn retry_queue(&self, tier: Duration) -> String {
        format!("{}.retry.{}", self.queue, humantime::format_duration(tier))
    }
}

/// `[redis]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    pub url: SecretUrl,
    pub key_prefix: String,
}

/// `[lock]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockSettings {
    pub kind: LockKind,
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    pub backoff_factor: f32,
}

/// `[database]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub kind: LedgerKind,
    pub url: SecretUrl,
    /// PostgreSQL schema to use (created if missing); empty for the connection's default.
    pub schema: String,
    pub max_connections: u32,
}

/// `[http]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub addr: SocketAddr,
}

/// `[marketplaces.<name>]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketplaceSettings {
    pub base_url: url::Url,
    /// Name of the environment variable holding the bearer token (the token is never in config).
    pub token_env: String,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

/// `[bidding]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BiddingSettings {
    #[serde(deserialize_with = "de_amount")]
    pub min_budget: Decimal,
    pub blocked_keywords: Vec<String>,
    pub daily_bid_cap: u64,
    pub cover_letter: String,
}

/// `[worker]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Identifies this instance in lease tokens and logs; empty means hostname-pid.
    pub instance_id: String,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_lock_held: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_unavailable: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_transient: Duration,
}

/// `[telemetry]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    pub log_filter: String,
}

/// All settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub source: SourceSettings,
    pub amqp: AmqpSettings,
    pub redis: RedisSettings,
    pub lock: LockSettings,
    pub database: DatabaseSettings,
    pub http: HttpSettings,
    pub marketplaces: BTreeMap<String, MarketplaceSettings>,
    pub bidding: BiddingSettings,
    pub worker: WorkerSettings,
    pub telemetry: TelemetrySettings,
}

fn de_amount<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(i64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Int(i) => Ok(Decimal::from(i)),
        Raw::Text(s) => Decimal::from_str_exact(s.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a decimal amount ({e}); write e.g. \"500\" or \"499.99\""
            ))
        }),
    }
}

fn de_durations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            humantime::parse_duration(s.trim())
                .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration ({e})")))
        })
        .collect()
}

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &["bidding.blocked_keywords", "amqp.retry_tiers"];

impl Settings {
    /// Loads settings from the process environment and an optional `--config` file.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::load_from(file, &env)
    }

    /// Loads settings with an explicit environment (tests pass their own).
    pub fn load_from(
        file: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        let profile = env
            .get("BIDORCH_ENV")
            .or_else(|| env.get("ENV"))
            .filter(|p| !p.is_empty());
        if let Some(profile) = profile {
            let path = PathBuf::from(format!("config/{profile}.toml"));
            builder = builder.add_source(config::File::from(path).required(false));
        }
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::File {
                    path: file.to_owned(),
                    problem: "not found (passed with --config)".to_owned(),
                });
            }
            builder = builder.add_source(config::File::from(file));
        }
        // Values stay strings (no `try_parsing`): "250.50" must not turn into a float on its way
        // to a money field. Typed fields parse their strings; list keys are split here.
        let environment = config::Environment::with_prefix("BIDORCH")
            .prefix_separator("__")
            .separator("__")
            .source(Some(env.clone().into_iter().collect()));
        builder = builder.add_source(environment);
        for key in LIST_KEYS {
            let var = format!("BIDORCH__{}", key.to_uppercase().replace('.', "__"));
            if let Some(value) = env.get(&var) {
                let items: Vec<String> = value
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect();
                builder = builder.set_override(*key, items)?;
            }
        }

        builder = builder
            .set_override_option("amqp.url", env.get("AMQP_URL").cloned())?
            .set_override_option("database.url", env.get("DATABASE_URL").cloned())?
            .set_override_option("redis.url", redis_url_from_env(env))?;
        if let Some(flag) = env.get("USE_REDIS_LOCKS") {
            let kind = match flag.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => "redis",
                "0" | "false" | "no" | "off" => "memory",
                other => {
                    return Err(invalid(
                        "USE_REDIS_LOCKS",
                        format!("{other:?} is not a boolean (true/false)"),
                    ));
                }
            };
            builder = builder.set_override("lock.kind", kind)?;
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks relations between keys that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.amqp.prefetch == 0 {
            return Err(invalid("amqp.prefetch", "must be at least 1"));
        }
        if self.amqp.exchange.is_empty() {
            return Err(invalid("amqp.exchange", "must not be empty"));
        }
        if self.amqp.queue.is_empty() {
            return Err(invalid("amqp.queue", "must not be empty"));
        }
        if self.amqp.retry_tiers.is_empty() {
            return Err(invalid("amqp.retry_tiers", "needs at least one delay"));
        }
        if self.amqp.retry_tiers.windows(2).any(|w| w[0] >= w[1])
            || self.amqp.retry_tiers.iter().any(Duration::is_zero)
        {
            return Err(invalid(
                "amqp.retry_tiers",
                "delays must be positive and strictly increasing, e.g. [\"1s\", \"10s\", \"60s\"]",
            ));
        }
        if self.amqp.max_attempts == 0 {
            return Err(invalid("amqp.max_attempts", "must be at least 1"));
        }
        if self.amqp.delivery_limit == 0 {
            return Err(invalid("amqp.delivery_limit", "must be at least 1"));
        }
        if self.amqp.publish_window == 0 {
            return Err(invalid("amqp.publish_window", "must be at least 1"));
        }
        if self.lock.ttl < Duration::from_millis(100) {
            return Err(invalid("lock.ttl", "must be at least 100ms"));
        }
        if !(self.lock.backoff_factor >= 1.0 && self.lock.backoff_factor.is_finite()) {
            return Err(invalid("lock.backoff_factor", "must be a number >= 1.0"));
        }
        if self.lock.backoff_initial > self.lock.backoff_max {
            return Err(invalid(
                "lock.backoff_initial",
                "must not exceed lock.backoff_max",
            ));
        }
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be at least 1"));
        }
        if !self.database.schema.is_empty()
            && !self
                .database
                .schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(invalid(
                "database.schema",
                "may contain only a-z, 0-9 and _",
            ));
        }
        if self.marketplaces.is_empty() {
            return Err(invalid(
                "marketplaces",
                "configure at least one marketplace",
            ));
        }
        for (name, m) in &self.marketplaces {
            let key = |k: &str| format!("marketplaces.{name}.{k}");
            if crate::posting::PostingKey::new(name, "x").is_err() {
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
            if m.token_env.is_empty() {
                return Err(invalid(
                    key("token_env"),
                    "must name an environment variable",
                ));
            }
            // The bid must finish well inside the lease, or a slow call outlives it.
            if m.timeout + m.connect_timeout > self.lock.ttl / 2 {
                return Err(invalid(
                    key("timeout"),
                    format!(
                        "timeout + connect_timeout ({}) must be at most half of lock.ttl ({})",
                        humantime::format_duration(m.timeout + m.connect_timeout),
                        humantime::format_duration(self.lock.ttl)
                    ),
                ));
            }
        }
        if self.bidding.min_budget.is_sign_negative() {
            return Err(invalid("bidding.min_budget", "must not be negative"));
        }
        Ok(())
    }

    /// This instance's id: `worker.instance_id`, or `{hostname}-{pid}`.
    pub fn instance_id(&self) -> String {
        if !self.worker.instance_id.is_empty() {
            return self.worker.instance_id.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
            })
            .unwrap_or_else(|| "bidorch".to_owned());
        format!("{host}-{}", std::process::id())
    }
}

/// `REDIS_URL`, else a URL built from the original system's `REDIS_HOST`/`PORT`/`DB`/`PASSWORD`.
fn redis_url_from_env(env: &HashMap<String, String>) -> Option<String> {
    if let Some(url) = env.get("REDIS_URL").filter(|u| !u.is_empty()) {
        return Some(url.clone());
    }
    let host = env.get("REDIS_HOST").filter(|h| !h.is_empty())?;
    let port = env.get("REDIS_PORT").map_or("6379", String::as_str);
    let db = env.get("REDIS_DB").map_or("0", String::as_str);
    let mut url = url::Url::parse(&format!("redis://{host}:{port}/{db}")).ok()?;
    if let Some(password) = env.get("REDIS_PASSWORD").filter(|p| !p.is_empty()) {
        let _ = url.set_password(Some(password));
    }
    Some(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_and_validate() {
        let s = Settings::load_from(None, &env(&[])).expect("defaults are valid");
        assert_eq!(s.amqp.exchange, "postings");
        assert_eq!(s.amqp.queue, "bidorch.postings");
        assert_eq!(s.amqp.dead_letter_queue(), "bidorch.postings.dead");
        assert_eq!(
            s.amqp.retry_queue(Duration::from_secs(10)),
            "bidorch.postings.retry.10s"
        );
        assert!(s.marketplaces.contains_key("upwork"));
    }

    #[test]
    fn environment_overrides_nested_keys_and_lists() {
        let s = Settings::load_from(
            None,
            &env(&[
                ("BIDORCH__AMQP__PREFETCH", "128"),
                (
                    "BIDORCH__MARKETPLACES__UPWORK__BASE_URL",
                    "http://mk.test:9/u",
                ),
                ("BIDORCH__BIDDING__BLOCKED_KEYWORDS", "crypto,unpaid"),
                ("BIDORCH__BIDDING__MIN_BUDGET", "250.50"),
                ("BIDORCH__LOCK__TTL", "45s"),
                ("AMQP_URL", "amqp://u:p@broker:5672/%2f"),
            ]),
        )
        .unwrap();
        assert_eq!(s.amqp.prefetch, 128);
        assert_eq!(
            s.marketplaces["upwork"].base_url.as_str(),
            "http://mk.test:9/u"
        );
        assert_eq!(s.bidding.blocked_keywords, vec!["crypto", "unpaid"]);
        assert_eq!(s.bidding.min_budget, Decimal::new(25050, 2));
        assert_eq!(s.lock.ttl, Duration::from_secs(45));
        assert_eq!(s.amqp.url.expose(), "amqp://u:p@broker:5672/%2f");
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = Settings::load_from(None, &env(&[("BIDORCH__AMQP__PREFETCH", "lots")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("amqp.prefetch"), "{err}");
        let err = Settings::load_from(None, &env(&[("BIDORCH__LOCK__TTL", "forever")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("lock.ttl"), "{err}");
        let err = Settings::load_from(None, &env(&[("BIDORCH__LOCK__TTL", "1s")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("marketplaces.") && err.contains("timeout"),
            "{err}"
        );
        let err = Settings::load_from(None, &env(&[("USE_REDIS_LOCKS", "maybe")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("USE_REDIS_LOCKS"), "{err}");
    }

    #[test]
    fn original_redis_variables_build_the_url() {
        let s = Settings::load_from(
            None,
            &env(&[
                ("REDIS_HOST", "cache"),
                ("REDIS_PORT", "6380"),
                ("REDIS_DB", "2"),
                ("REDIS_PASSWORD", "s3cret"),
                ("USE_REDIS_LOCKS", "false"),
            ]),
        )
        .unwrap();
        assert_eq!(s.redis.url.expose(), "redis://:s3cret@cache:6380/2");
        assert_eq!(s.lock.kind, LockKind::Memory);
    }

    #[test]
    fn secrets_never_show_in_debug_or_display() {
        let s = Settings::load_from(
            None,
            &env(&[
                ("AMQP_URL", "amqp://user:hunter2@broker/%2f"),
                ("REDIS_URL", "rediss://:hunter2@cache:6380/0"),
                ("DATABASE_URL", "postgres://app:hunter2@db/bids"),
            ]),
        )
        .unwrap();
        let shown = format!("{s:?} {} {} {}", s.amqp.url, s.redis.url, s.database.url);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"));
    }

    #[test]
    fn missing_config_file_is_named() {
        let err = Settings::load_from(Some(Path::new("/nonexistent/bidorch.toml")), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/bidorch.toml"), "{err}");
    }
}
