//! The original system's environment variables, honoured so its deployments move over unchanged:
//! `ENV` (the profile, when `BIDORCH_ENV` is unset), `REDIS_HOST`/`REDIS_PORT`/`REDIS_DB`/
//! `REDIS_PASSWORD` (a Redis URL, when `REDIS_URL` is unset) and `USE_REDIS_LOCKS`. Bad values are
//! errors naming the variable; `USE_REDIS_LOCKS=false` selects the in-process store, which the
//! composition root then refuses for a worker on RabbitMQ (fail closed, never a silent fallback).

use std::collections::HashMap;

use super::{ConfigError, invalid};

/// The configuration profile: `BIDORCH_ENV`, else `ENV` (empty means none).
pub(super) fn profile(env: &HashMap<String, String>) -> Option<&str> {
    env.get("BIDORCH_ENV")
        .or_else(|| env.get("ENV"))
        .map(String::as_str)
        .filter(|p| !p.is_empty())
}

/// `REDIS_URL`, else a URL built from `REDIS_HOST`/`REDIS_PORT`/`REDIS_DB`/`REDIS_PASSWORD`.
pub(super) fn redis_url(env: &HashMap<String, String>) -> Result<Option<String>, ConfigError> {
    if let Some(url) = env.get("REDIS_URL").filter(|u| !u.is_empty()) {
        return Ok(Some(url.clone()));
    }
    let Some(host) = env.get("REDIS_HOST").filter(|h| !h.is_empty()) else {
        return Ok(None);
    };
    let port: u16 =
        match env.get("REDIS_PORT").map(|p| p.trim()) {
            None | Some("") => 6379,
            Some(p) => p.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                invalid("REDIS_PORT", format!("{p:?} is not a TCP port (1-65535)"))
            })?,
        };
    let db: u32 = match env.get("REDIS_DB").map(|d| d.trim()) {
        None | Some("") => 0,
        Some(d) => d.parse().map_err(|_| {
            invalid(
                "REDIS_DB",
                format!("{d:?} is not a database number (0, 1, …)"),
            )
        })?,
    };
    let mut url = url::Url::parse(&format!("redis://{host}:{port}/{db}"))
        .map_err(|e| invalid("REDIS_HOST", format!("{host:?} is not a host name: {e}")))?;
    if let Some(password) = env.get("REDIS_PASSWORD").filter(|p| !p.is_empty()) {
        url.set_password(Some(password))
            .map_err(|()| invalid("REDIS_PASSWORD", "cannot be set on this URL"))?;
    }
    Ok(Some(url.to_string()))
}

/// `lock.kind` from `USE_REDIS_LOCKS`, if set.
pub(super) fn lock_kind(
    env: &HashMap<String, String>,
) -> Result<Option<&'static str>, ConfigError> {
    let Some(flag) = env.get("USE_REDIS_LOCKS") else {
        return Ok(None);
    };
    match flag.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(Some("redis")),
        "0" | "false" | "no" | "off" => Ok(Some("memory")),
        other => Err(invalid(
            "USE_REDIS_LOCKS",
            format!("{other:?} is not a boolean (true/false)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn original_redis_variables_build_the_url() {
        let url = redis_url(&env(&[
            ("REDIS_HOST", "cache"),
            ("REDIS_PORT", "6380"),
            ("REDIS_DB", "2"),
            ("REDIS_PASSWORD", "s3cret"),
        ]))
        .unwrap();
        assert_eq!(url.as_deref(), Some("redis://:s3cret@cache:6380/2"));
        assert_eq!(redis_url(&env(&[])).unwrap(), None);
    }

    #[test]
    fn bad_redis_values_name_their_variable() {
        for (var, value) in [
            ("REDIS_PORT", "sixty"),
            ("REDIS_PORT", "70000"),
            ("REDIS_DB", "-1"),
        ] {
            let err = redis_url(&env(&[("REDIS_HOST", "cache"), (var, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(var), "{err}");
        }
    }

    #[test]
    fn use_redis_locks_is_a_boolean() {
        assert_eq!(
            lock_kind(&env(&[("USE_REDIS_LOCKS", "TRUE")])).unwrap(),
            Some("redis")
        );
        assert_eq!(
            lock_kind(&env(&[("USE_REDIS_LOCKS", "0")])).unwrap(),
            Some("memory")
        );
        let err = lock_kind(&env(&[("USE_REDIS_LOCKS", "maybe")])).unwrap_err();
        assert!(err.to_string().contains("USE_REDIS_LOCKS"), "{err}");
    }
}
