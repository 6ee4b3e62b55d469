//! Loading [`Settings`] in layers, later wins: the compiled-in `config/default.toml` → the
//! profile file `config/{BIDORCH_ENV or ENV}.toml` if present → `--config FILE` →
//! `BIDORCH__SECTION__KEY` environment variables (lists comma-separated) → `AMQP_URL`,
//! `REDIS_URL` (or the original `REDIS_*` variables), `DATABASE_URL`, `USE_REDIS_LOCKS`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{ConfigError, DEFAULT_TOML, Settings, compat};

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &[
    "amqp.retry_tiers",
    "bidding.blocked_keywords",
    "bidding.allowed_currencies",
    "bidding.required_skills",
    "bidding.allowed_client_countries",
    "bidding.blocked_client_countries",
];

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
        if let Some(profile) = compat::profile(env) {
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
            .set_override_option("redis.url", compat::redis_url(env)?)?
            .set_override_option("lock.kind", compat::lock_kind(env)?)?;
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LockKind;
    use rust_decimal::Decimal;
    use std::time::Duration;

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
        assert!(
            s.marketplaces.is_empty(),
            "a deployment bids on exactly the marketplaces it configures"
        );
    }

    #[test]
    fn a_marketplace_needs_only_base_url_and_token_env_whatever_the_lease() {
        for ttl in ["100ms", "1s", "30s", "1h"] {
            let s = Settings::load_from(
                None,
                &env(&[
                    (
                        "BIDORCH__MARKETPLACES__GURU__BASE_URL",
                        "https://api.guru.example",
                    ),
                    ("BIDORCH__MARKETPLACES__GURU__TOKEN_ENV", "GURU_TOKEN"),
                    ("BIDORCH__LOCK__TTL", ttl),
                ]),
            )
            .unwrap_or_else(|e| panic!("ttl {ttl}: {}", crate::error::chain(&e)));
            let (request, connect) = s.marketplaces["guru"].timeouts(s.lock.ttl);
            assert!(request + connect <= s.lock.ttl / 2, "ttl {ttl}");
            assert!(request <= Duration::from_secs(5) && connect <= Duration::from_secs(2));
        }
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
                ("BIDORCH__MARKETPLACES__UPWORK__TOKEN_ENV", "UPWORK_TOKEN"),
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
        assert_eq!(
            s.bidding.min_budget,
            crate::config::Money::Any(Decimal::new(25050, 2))
        );
        assert_eq!(s.lock.ttl, Duration::from_secs(45));
        assert_eq!(s.amqp.url.expose(), "amqp://u:p@broker:5672/%2f");
    }

    #[test]
    fn original_redis_variables_select_the_lock_store() {
        let s = Settings::load_from(
            None,
            &env(&[("REDIS_HOST", "cache"), ("USE_REDIS_LOCKS", "false")]),
        )
        .unwrap();
        assert_eq!(s.redis.url.expose(), "redis://cache:6379/0");
        assert_eq!(s.lock.kind, LockKind::Memory);
    }

    #[test]
    fn bad_values_name_the_key() {
        let err =
            Settings::load_from(None, &env(&[("BIDORCH__AMQP__PREFETCH", "lots")])).unwrap_err();
        let err = crate::error::chain(&err);
        assert!(err.contains("amqp.prefetch"), "{err}");
        let err =
            Settings::load_from(None, &env(&[("BIDORCH__LOCK__TTL", "forever")])).unwrap_err();
        let err = crate::error::chain(&err);
        assert!(err.contains("lock.ttl"), "{err}");
        let too_slow = env(&[
            ("BIDORCH__LOCK__TTL", "1s"),
            (
                "BIDORCH__MARKETPLACES__UPWORK__BASE_URL",
                "http://mk.test/u",
            ),
            ("BIDORCH__MARKETPLACES__UPWORK__TOKEN_ENV", "UPWORK_TOKEN"),
            ("BIDORCH__MARKETPLACES__UPWORK__TIMEOUT", "5s"),
        ]);
        let err = crate::error::chain(&Settings::load_from(None, &too_slow).unwrap_err());
        assert!(err.contains("marketplaces.upwork.timeout"), "{err}");
        let huge = env(&[("BIDORCH__LOCK__TTL", "100000000y")]);
        let err = crate::error::chain(&Settings::load_from(None, &huge).unwrap_err());
        assert!(err.contains("lock.ttl"), "{err}");
        let err = Settings::load_from(None, &env(&[("USE_REDIS_LOCKS", "maybe")])).unwrap_err();
        let err = crate::error::chain(&err);
        assert!(err.contains("USE_REDIS_LOCKS"), "{err}");
    }

    /// The key the first failure names, for a marketplace `upwork` plus `pairs`.
    fn refused(pairs: &[(&str, &str)]) -> String {
        let mut all = vec![
            (
                "BIDORCH__MARKETPLACES__UPWORK__BASE_URL",
                "http://mk.test/u",
            ),
            ("BIDORCH__MARKETPLACES__UPWORK__TOKEN_ENV", "UPWORK_TOKEN"),
        ];
        all.extend_from_slice(pairs);
        crate::error::chain(&Settings::load_from(None, &env(&all)).expect_err("refused"))
    }

    #[test]
    fn zero_timeouts_and_zero_or_overlong_retry_delays_stop_start_naming_the_key() {
        for (var, value, key) in [
            (
                "BIDORCH__MARKETPLACES__UPWORK__TIMEOUT",
                "0s",
                "marketplaces.upwork.timeout",
            ),
            (
                "BIDORCH__MARKETPLACES__UPWORK__CONNECT_TIMEOUT",
                "0ms",
                "marketplaces.upwork.connect_timeout",
            ),
            (
                "BIDORCH__WORKER__RETRY_LOCK_HELD",
                "0s",
                "worker.retry_lock_held",
            ),
            (
                "BIDORCH__WORKER__RETRY_UNAVAILABLE",
                "0s",
                "worker.retry_unavailable",
            ),
            (
                "BIDORCH__WORKER__RETRY_TRANSIENT",
                "0s",
                "worker.retry_transient",
            ),
            (
                "BIDORCH__WORKER__RETRY_TRANSIENT",
                "25h",
                "worker.retry_transient",
            ),
        ] {
            let err = refused(&[(var, value)]);
            assert!(err.contains(key), "{var}={value}: {err}");
        }
        let err = refused(&[("BIDORCH__WORKER__RETRY_TRANSIENT", "25h")]);
        assert!(err.contains("amqp.retry_budget"), "{err}");
    }

    #[test]
    fn long_schema_names_and_token_env_that_names_no_variable_are_refused() {
        let err = refused(&[("BIDORCH__DATABASE__SCHEMA", &"s".repeat(64))]);
        assert!(
            err.contains("database.schema") && err.contains("63"),
            "{err}"
        );
        assert!(
            Settings::load_from(
                None,
                &env(&[("BIDORCH__DATABASE__SCHEMA", &"s".repeat(63))])
            )
            .is_ok()
        );
        for name in ["1TOKEN", "MY-TOKEN", "A B", "$TOKEN", ""] {
            let err = refused(&[("BIDORCH__MARKETPLACES__UPWORK__TOKEN_ENV", name)]);
            assert!(
                err.contains("marketplaces.upwork.token_env"),
                "{name:?}: {err}"
            );
        }
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
            .unwrap_err();
        let err = crate::error::chain(&err);
        assert!(err.contains("/nonexistent/bidorch.toml"), "{err}");
    }
}
