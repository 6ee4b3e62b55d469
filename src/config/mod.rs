//! Configuration: typed settings, loaded in layers and validated with errors that name the key.
//!
//! - [`load`]: the layers — `config/default.toml` (compiled in, so the binary runs from anywhere)
//!   → `config/{BIDORCH_ENV or ENV}.toml` if present → `--config FILE` → `BIDORCH__SECTION__KEY`
//!   environment variables → `AMQP_URL`, `REDIS_URL`, `DATABASE_URL`.
//! - [`compat`]: the original system's variables (`REDIS_HOST`/`REDIS_PORT`/`REDIS_DB`/
//!   `REDIS_PASSWORD`, `USE_REDIS_LOCKS`, `ENV`).
//! - [`validate`]: relations between keys that types alone cannot express.
//! - [`secret`]: [`SecretUrl`], whose secrets never reach `Debug`, `Display` or logs.
//! - `marketplace`: `[marketplace]` and `[marketplaces.<name>]` ([`MarketplaceSettings`], with
//!   the timeouts a marketplace defaults to for the lease it runs under).
//! - `bidding`: the shapes of `[bidding]` ([`BiddingSettings`]); their meaning is
//!   [`crate::policy`]'s, which checks them when the policy is built.

mod bidding;
mod budget;
mod compat;
mod load;
mod marketplace;
mod scoring;
pub mod secret;
mod validate;
mod whole;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

pub use self::bidding::{
    BiddingOverrides, BiddingSettings, Fraction, Money, PricingOverrides, SkillsMatch,
};
pub use self::budget::{BidCost, BudgetPeriod, BudgetSettings};
pub use self::marketplace::{MarketplaceApi, MarketplaceClientSettings, MarketplaceSettings};
pub use self::scoring::{OnScoringFailure, ScoringSettings};
pub use self::secret::{EndpointUrl, SecretUrl};

/// The compiled-in defaults; the same file documents every key.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// A configuration problem, naming the key (or file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {problem}")]
    Invalid { key: String, problem: String },
    #[error("configuration file {path}: {problem}")]
    File { path: PathBuf, problem: String },
}

/// Whether `name` can name a marketplace: `^[a-z0-9][a-z0-9_-]{0,31}$` (the event's
/// `marketplace`, a routing key's suffix, a configuration section).
pub fn is_marketplace_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let first_ok = bytes
        .first()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let rest_ok = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-');
    first_ok && rest_ok && bytes.len() <= 32
}

pub(crate) fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// Where deliveries come from.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Amqp,
    Memory,
}

/// Which lock store holds leases.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    Redis,
    Memory,
}

/// Which database holds the ledger.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LedgerKind {
    Postgres,
    Sqlite,
}

/// How bids are sent.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MarketplaceKind {
    /// Over HTTP to each configured `base_url` (production).
    Http,
    /// To a sandbox marketplace served in-process (the demo, tests, trying things out).
    Sandbox,
}

/// Log output format.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[source]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSettings {
    pub kind: SourceKind,
}

/// `[amqp]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    pub url: SecretUrl,
    pub exchange: String,
    pub queue: String,
    #[serde(deserialize_with = "whole::whole")]
    pub prefetch: u16,
    #[serde(deserialize_with = "de_durations", serialize_with = "ser_durations")]
    pub retry_tiers: Vec<Duration>,
    #[serde(deserialize_with = "whole::whole")]
    pub max_attempts: u32,
    #[serde(deserialize_with = "whole::whole")]
    pub delivery_limit: u32,
    #[serde(deserialize_with = "whole::whole")]
    pub publish_window: usize,
    #[serde(with = "humantime_serde")]
    pub reconnect_timeout: Duration,
    /// How long a message may keep waiting (dependencies down, lease held, `Retry-After`) before
    /// it is parked as `retry_budget_exhausted`, counted from the first time bidorch took it.
    #[serde(with = "humantime_serde")]
    pub retry_budget: Duration,
    /// Bound on waiting for one publisher confirm (retry, dead letter, publish).
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: Duration,
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
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    pub url: SecretUrl,
    pub key_prefix: String,
}

/// `[lock]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LockSettings {
    pub kind: LockKind,
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

/// `[database]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub kind: LedgerKind,
    pub url: SecretUrl,
    /// PostgreSQL schema to use (created if missing); empty for the connection's default.
    pub schema: String,
    #[serde(deserialize_with = "whole::whole")]
    pub max_connections: u32,
    /// Server-side bound on one statement (PostgreSQL `statement_timeout`; `lock_timeout` is
    /// half of it).
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Client-side bound on one ledger call, waiting for a pooled connection included: past it
    /// the ledger counts as unreachable (the worker pauses and probes).
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Where migrations run (they hold a session advisory lock, which a transaction-mode pooler
    /// cannot keep): a direct connection to PostgreSQL. Unset: `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_url: Option<SecretUrl>,
}

impl DatabaseSettings {
    /// The URL migrations run through: `migration_url`, else `url`.
    pub fn migrations_url(&self) -> &SecretUrl {
        self.migration_url.as_ref().unwrap_or(&self.url)
    }
}

/// `[http]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub addr: SocketAddr,
}

/// `[console]`: the operators' web console (`bidorch console`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Where it listens. Loopback by default; any other address requires a token.
    pub addr: SocketAddr,
    /// The environment variable holding the console's token(s): `TOKEN`, or `name=TOKEN` pairs
    /// separated by commas (the name is who the audit history records). Empty: no token, which
    /// only a loopback `addr` allows.
    #[serde(default)]
    pub token_env: String,
    /// A link to each attempt's trace, `{trace_id}` replaced (`http://jaeger:16686/trace/{trace_id}`).
    /// Empty: trace ids shown without a link.
    #[serde(default)]
    pub trace_url: String,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 9091)),
            token_env: String::new(),
            trace_url: String::new(),
        }
    }
}

/// `[worker]`
#[derive(Clone, Debug, Deserialize, Serialize)]
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

/// `[reconcile]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileSettings {
    /// A send older than this without a recorded outcome counts as unresolved (the gauge, and
    /// what `bidorch reconcile` settles by default).
    #[serde(with = "humantime_serde")]
    pub older_than: Duration,
    /// Workers settle unresolved sends themselves, one at a time across the fleet.
    #[serde(default = "yes")]
    pub auto: bool,
    /// How often a worker looks for unresolved sends to settle.
    #[serde(default = "minute", with = "humantime_serde")]
    pub auto_every: Duration,
}

fn yes() -> bool {
    true
}

fn minute() -> Duration {
    Duration::from_secs(60)
}

/// `[ledger]`: the ledger's lifecycle.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerSettings {
    /// Final rows (and their attempts) whose outcome is older than this are deleted in the
    /// background; `pending` rows never. Must be longer than `amqp.retry_budget`.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How often a worker prunes (one at a time across the fleet).
    #[serde(with = "humantime_serde")]
    pub prune_every: Duration,
    /// Rows deleted per transaction.
    #[serde(deserialize_with = "whole::whole")]
    pub prune_batch: u32,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(90 * 86_400),
            prune_every: Duration::from_secs(60),
            prune_batch: 1000,
        }
    }
}

/// `[telemetry]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    pub log_filter: String,
}

/// All settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub source: SourceSettings,
    pub amqp: AmqpSettings,
    pub redis: RedisSettings,
    pub lock: LockSettings,
    pub database: DatabaseSettings,
    pub http: HttpSettings,
    pub marketplace: MarketplaceClientSettings,
    pub marketplaces: BTreeMap<String, MarketplaceSettings>,
    pub bidding: BiddingSettings,
    #[serde(default)]
    pub scoring: ScoringSettings,
    #[serde(default)]
    pub console: ConsoleSettings,
    #[serde(default)]
    pub ledger: LedgerSettings,
    pub worker: WorkerSettings,
    pub reconcile: ReconcileSettings,
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

fn ser_durations<S: serde::Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|d| humantime::format_duration(*d).to_string()))
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

impl Settings {
    /// This instance's id: `worker.instance_id`, or `{hostname}-{pid}`.
    pub fn instance_id(&self) -> String {
        if !self.worker.instance_id.is_empty() {
            return self.worker.instance_id.clone();
        }
        format!("{}-{}", hostname(), std::process::id())
    }
}

/// This machine's name: `HOSTNAME`, else `/etc/hostname`, else `bidorch`.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "bidorch".to_owned())
}
