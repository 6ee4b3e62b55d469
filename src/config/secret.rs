//! URLs whose secrets never reach `Debug`, `Display`, logs, errors or `config check`.
//!
//! [`SecretUrl`] is a connection URL (or a comma-separated list of them, as a Redis Cluster's)
//! held in a [`secrecy::SecretString`] (zeroed on drop, no accidental `Debug`); [`EndpointUrl`]
//! is a parsed HTTP endpoint. Both are shown only through [`redact`]: in every URL of a list, the
//! userinfo password (and an http(s) URL's user name, often a token), every query value whose
//! name or shape says credential (`?password=`, `api_key=`, `sig=`, a long random string), and
//! any fragment become `***`.

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

/// Empty: no URL (an optional service left unset).
impl Default for SecretUrl {
    fn default() -> Self {
        Self::new("")
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

/// Whether a query parameter's value is a secret by its name (matched case-insensitively).
fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "pass",
        "pwd",
        "secret",
        "token",
        "auth",
        "credential",
        "key",
        "sig",
        "session",
        "jwt",
        "bearer",
        "private",
        "code",
    ]
    .iter()
    .any(|needle| name.contains(needle))
}

/// Whether a query value looks like a credential whatever its name: a long run of token
/// characters mixing letters and digits (an API key, a signature, a JWT).
fn looks_like_credential(value: &str) -> bool {
    value.len() >= 16
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~+/=".contains(&b))
        && value.bytes().any(|b| b.is_ascii_digit())
        && value.bytes().any(|b| b.is_ascii_alphabetic())
}

/// `text` — one URL or a comma-separated list of them — with every secret replaced by `***`.
pub fn redact(text: &str) -> String {
    if text.trim().is_empty() {
        return String::new();
    }
    split_list(text)
        .into_iter()
        .map(redact_one)
        .collect::<Vec<_>>()
        .join(",")
}

/// The URLs of a comma-separated list: a comma starts a new URL only when a scheme (`x://`)
/// follows it, so a comma inside one URL's query stays in that URL.
fn split_list(text: &str) -> Vec<&str> {
    let starts_url = |rest: &str| {
        let rest = rest.trim_start();
        rest.split_once("://").is_some_and(|(scheme, _)| {
            !scheme.is_empty()
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        })
    };
    let mut pieces = Vec::new();
    let mut start = 0;
    for (at, _) in text.match_indices(',') {
        if starts_url(&text[at + 1..]) {
            pieces.push(text[start..at].trim());
            start = at + 1;
        }
    }
    pieces.push(text[start..].trim());
    pieces
}

fn redact_one(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        // Unparseable: show only the scheme, the rest may hold a secret.
        return match url.split_once(':') {
            Some((scheme, _))
                if !scheme.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
            {
                format!("{scheme}:<unparseable>")
            }
            _ => "<unparseable url>".to_owned(),
        };
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    // In an HTTP URL a bare user name is usually a token (`https://TOKEN@host`).
    if matches!(parsed.scheme(), "http" | "https") && !parsed.username().is_empty() {
        let _ = parsed.set_username("***");
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let value = if is_secret_param(&k) || looks_like_credential(&v) {
                    "***".to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    if parsed.fragment().is_some() {
        parsed.set_fragment(Some("***"));
    }
    parsed.to_string()
}

/// A parsed http(s) endpoint URL (a marketplace's `base_url`): what clients are built from, shown
/// — in `Debug`, `Display`, a serialised configuration — only [`redact`]ed.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct EndpointUrl(url::Url);

impl EndpointUrl {
    /// The URL itself, credentials included: for building requests, never for showing.
    pub fn url(&self) -> &url::Url {
        &self.0
    }

    /// The URL with its secrets replaced by `***` (safe to show).
    pub fn redacted(&self) -> String {
        redact(self.0.as_str())
    }
}

impl std::ops::Deref for EndpointUrl {
    type Target = url::Url;
    fn deref(&self) -> &url::Url {
        &self.0
    }
}

impl From<url::Url> for EndpointUrl {
    fn from(url: url::Url) -> Self {
        Self(url)
    }
}

impl serde::Serialize for EndpointUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

impl fmt::Debug for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EndpointUrl({})", self.redacted())
    }
}

impl fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
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
    fn every_url_of_a_list_is_redacted_and_commas_inside_a_url_stay() {
        let shown = redact("redis://:pw1@a:7000,redis://:pw2@b:7001, rediss://u:pw3@c:7002/0");
        assert_eq!(
            shown,
            "redis://:***@a:7000,redis://:***@b:7001,rediss://u:***@c:7002/0"
        );
        // A host without a port once let the second node through as the first one's path.
        let shown = redact("redis://:pw1@a,redis://:pw2@b");
        assert!(!shown.contains("pw"), "{shown}");
        let shown = redact("postgres://u:pw@h/db?options=-c%20a%3Db,c&sslmode=require");
        assert!(
            !shown.contains("pw") && shown.contains("sslmode=require"),
            "{shown}"
        );
    }

    #[test]
    fn http_userinfo_credential_queries_and_fragments_are_redacted() {
        let shown = redact(
            "https://tok3n@api.example/v1?api_key=abc&X-Amz-Signature=abc&page=2&k=9f8e7d6c5b4a39281706#access_token=x",
        );
        assert_eq!(
            shown,
            "https://***@api.example/v1?api_key=***&X-Amz-Signature=***&page=2&k=***#***"
        );
        let shown = redact("https://user:hunter2@api.example/");
        assert_eq!(shown, "https://***:***@api.example/");
    }

    #[test]
    fn endpoint_urls_show_only_redacted() {
        let url =
            EndpointUrl::from(url::Url::parse("https://u:hunter2@m.example/?token=t0k").unwrap());
        let shown = format!(
            "{url:?} {url} {}",
            toml::to_string(
                &[("u", &url)]
                    .into_iter()
                    .collect::<std::collections::BTreeMap<_, _>>()
            )
            .unwrap()
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("t0k"),
            "{shown}"
        );
        assert_eq!(url.url().password(), Some("hunter2"));
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
