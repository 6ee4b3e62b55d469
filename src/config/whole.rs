//! Whole-number keys (`amqp.prefetch`, `bidding.daily_bid_cap`, …) read strictly: `12.7` or
//! `"12.7"` is an error naming the key, never silently rounded as the `config` crate would.

use serde::{Deserialize, Deserializer};

/// What a whole-number key may arrive as: an integer (TOML), text (environment variables) or a
/// float (TOML `12.7`, refused).
#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Text(String),
}

fn parse<E: serde::de::Error>(raw: Raw) -> Result<u64, E> {
    match raw {
        Raw::Unsigned(n) => Ok(n),
        Raw::Signed(n) => {
            u64::try_from(n).map_err(|_| E::custom(format!("must not be negative, got {n}")))
        }
        Raw::Float(f) => Err(E::custom(format!("must be a whole number, got {f}"))),
        Raw::Text(s) => {
            let t = s.trim();
            if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
                t.parse()
                    .map_err(|_| E::custom(format!("{t} is too large")))
            } else {
                Err(E::custom(format!("must be a whole number, got {s:?}")))
            }
        }
    }
}

fn fit<T: TryFrom<u64>, E: serde::de::Error>(n: u64) -> Result<T, E> {
    T::try_from(n).map_err(|_| E::custom(format!("{n} is too large")))
}

/// A whole number of type `T`.
pub(super) fn whole<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    fit(parse(Raw::deserialize(d)?)?)
}

/// An optional whole number of type `T`.
pub(super) fn whole_option<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(raw) => fit(parse(raw)?).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;
    use std::collections::HashMap;

    fn load(var: &str, value: &str) -> Result<Settings, String> {
        let env: HashMap<String, String> = [(var.to_owned(), value.to_owned())].into();
        Settings::load_from(None, &env).map_err(|e| crate::error::chain(&e))
    }

    #[test]
    fn fractions_and_words_in_whole_number_keys_name_the_key() {
        for (var, key) in [
            ("BIDORCH__AMQP__PREFETCH", "prefetch"),
            ("BIDORCH__AMQP__MAX_ATTEMPTS", "max_attempts"),
            ("BIDORCH__DATABASE__MAX_CONNECTIONS", "max_connections"),
            ("BIDORCH__BIDDING__DAILY_BID_CAP", "daily_bid_cap"),
        ] {
            for value in ["12.7", "1e3", "ten", "-3"] {
                let err = load(var, value).expect_err(value);
                assert!(err.contains(key), "{var}={value}: {err}");
            }
            assert!(load(var, "12").is_ok(), "{var}=12");
        }
    }

    #[test]
    fn a_toml_float_in_a_whole_number_key_is_refused() {
        let dir = std::env::temp_dir().join(format!("bidorch-whole-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[amqp]\nprefetch = 12.7\n").unwrap();
        let err = Settings::load_from(Some(&file), &HashMap::new())
            .map(|_| ())
            .map_err(|e| crate::error::chain(&e))
            .expect_err("a float prefetch");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("prefetch") && err.contains("12.7"), "{err}");
    }
}
