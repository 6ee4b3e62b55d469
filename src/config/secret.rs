//! [`SecretUrl`]: a connection URL whose secrets never reach `Debug`, `Display`, logs or errors.
//!
//! The URL is held in a [`secrecy::SecretString`] (zeroed on drop, no accidental `Debug`), and
//! shown only redacted: the userinfo password and any query parameter that carries a secret
//! (`?password=`, `sslpassword=`, `token=`, …) become `***`.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// A connection URL whose password is redacted whenever it is shown.
#[derive(Clone, Deserialize)]
#[serde(from = "String")]
pub struct SecretUrl(SecretString);

/// Serialised redacted: a serialised configuration (`bidorch config check`) shows no secret.
impl serde::Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

impl From<String> for SecretUrl {
    fn from(url: String) -> Self {
        Self(SecretString::from(url))
    }
}

impl PartialEq for SecretUrl {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for SecretUrl {}

impl SecretUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(SecretString::from(url.into()))
    }

    /// The full URL, password included: pass it to a client, never to a log.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The URL with its secrets replaced by `***` (safe to log).
    pub fn redacted(&self) -> String {
        redact(self.expose())
    }
}

/// Whether a query parameter's value is a secret (matched case-insensitively).
fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "pass",
        "pwd",
        "secret",
        "token",
        "auth",
        "credential",
        "apikey",
        "api_key",
    ]
    .iter()
    .any(|needle| name.contains(needle))
}

/// `url` with its userinfo password and secret query parameters replaced by `***`.
pub fn redact(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        // Unparseable: show only the scheme, the rest may hold a secret.
        return match url.split_once(':') {
            Some((scheme, _)) if !scheme.contains('@') => format!("{scheme}:<unparseable>"),
            _ => "<unparseable url>".to_owned(),
        };
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let value = if is_secret_param(&k) {
                    "***".to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_userinfo_and_query_are_redacted() {
        let shown = redact("postgres://app:hunter2@db/x?password=hunter2&sslmode=require");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("sslmode=require"), "{shown}");
        let shown = redact("postgres://app@db/x?sslpassword=hunter2&PassWord=hunter2");
        assert!(!shown.contains("hunter2"), "{shown}");
        let shown = redact("amqp://u:hunter2@broker:5672/%2f");
        assert_eq!(shown, "amqp://u:***@broker:5672/%2f");
    }

    #[test]
    fn unparseable_urls_show_only_the_scheme() {
        assert_eq!(redact("redis://:pw@[bad"), "redis:<unparseable>");
        assert_eq!(redact("pw@host"), "<unparseable url>");
    }

    #[test]
    fn debug_and_display_are_redacted() {
        let url = SecretUrl::new("redis://:hunter2@cache:6379/0");
        assert!(!format!("{url:?} {url}").contains("hunter2"));
        assert_eq!(url.expose(), "redis://:hunter2@cache:6379/0");
    }
}
