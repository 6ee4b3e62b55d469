//! Who is at the console, and whether a form really came from it.
//!
//! Tokens come from the variable `console.token_env` names: `TOKEN`, or `name=TOKEN` pairs
//! separated by commas; the name is who the audit history records (`token` for a bare one).
//! Without a token (loopback only) everyone is `loopback`. A browser signs in once with a token
//! (`/login`) and gets a session cookie (HttpOnly, SameSite=Strict); a script may send
//! `Authorization: Bearer TOKEN` instead. Every session has its own CSRF token, which every form
//! carries and every POST must present; a bearer request needs none (no browser adds that header
//! on its own, so another site cannot forge one).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};

/// The session cookie's name.
pub const COOKIE: &str = "bidorch_console";

/// Sessions kept at most; the oldest goes first.
const MAX_SESSIONS: usize = 1_000;

/// How long a session lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// The console's tokens, by the name each acts as.
pub struct Tokens(Vec<(String, SecretString)>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_tuple("Tokens").field(&names).finish()
    }
}

impl Tokens {
    /// Reads `value` (the variable's contents): `TOKEN` or `name=TOKEN,name=TOKEN`.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut tokens = Vec::new();
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, token) = match part.split_once('=') {
                Some((name, token)) => (name.trim(), token.trim()),
                None => ("token", part),
            };
            if name.is_empty() || token.is_empty() {
                return Err("a `name=TOKEN` pair has an empty name or token".to_owned());
            }
            if token.len() < 16 {
                return Err(format!(
                    "the token of `{name}` is shorter than 16 characters"
                ));
            }
            tokens.push((name.to_owned(), SecretString::from(token.to_owned())));
        }
        Ok(Self(tokens))
    }

    /// No token at all.
    pub fn none() -> Self {
        Self(Vec::new())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Who `presented` belongs to.
    pub fn who(&self, presented: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(_, token)| same(token.expose_secret().as_bytes(), presented.as_bytes()))
            .map(|(name, _)| name.clone())
    }
}

/// Constant-time equality of two byte strings.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One signed-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    pub who: String,
    pub csrf: String,
    created: Instant,
}

/// The sessions of this console process.
#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
}

/// 32 random bytes, hex.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    // The system RNG failing is a broken machine; an unguessable id is not optional.
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random number generator works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Sessions {
    /// Starts a session for `who`; its id (the cookie's value).
    pub fn start(&self, who: &str) -> (String, Session) {
        let id = random_hex();
        let session = Session {
            who: who.to_owned(),
            csrf: random_hex(),
            created: Instant::now(),
        };
        let mut all = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|_, s| s.created.elapsed() < SESSION_TTL);
        if all.len() >= MAX_SESSIONS
            && let Some(oldest) = all
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(id, _)| id.clone())
        {
            all.remove(&oldest);
        }
        all.insert(id.clone(), session.clone());
        (id, session)
    }

    /// The session `id` names, if it is live.
    pub fn get(&self, id: &str) -> Option<Session> {
        let all = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        all.get(id)
            .filter(|s| s.created.elapsed() < SESSION_TTL)
            .cloned()
    }

    /// Ends the session `id`.
    pub fn end(&self, id: &str) {
        self.by_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// The session cookie's value in a `Cookie` header.
pub fn cookie_of(header: &str) -> Option<&str> {
    header
        .split(';')
        .map(str::trim)
        .find_map(|c| c.strip_prefix(COOKIE)?.strip_prefix('='))
}

/// The `Set-Cookie` value that keeps session `id`.
pub fn set_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bare_or_named_and_never_shown() {
        let bare = Tokens::parse("0123456789abcdef").unwrap();
        assert_eq!(bare.who("0123456789abcdef").as_deref(), Some("token"));
        assert_eq!(bare.who("0123456789abcdeF"), None);
        let named = Tokens::parse("ana=aaaaaaaaaaaaaaaa, bo = bbbbbbbbbbbbbbbb").unwrap();
        assert_eq!(named.who("bbbbbbbbbbbbbbbb").as_deref(), Some("bo"));
        assert!(!format!("{named:?}").contains("aaaa"));
        assert!(Tokens::parse("ana=short").is_err());
        assert!(Tokens::parse("=aaaaaaaaaaaaaaaa").is_err());
        assert!(Tokens::parse("").unwrap().is_empty());
    }

    #[test]
    fn sessions_hold_who_and_a_csrf_token_of_their_own() {
        let sessions = Sessions::default();
        let (a, sa) = sessions.start("ana");
        let (b, sb) = sessions.start("bo");
        assert_ne!(a, b);
        assert_ne!(sa.csrf, sb.csrf);
        assert_eq!(sessions.get(&a).map(|s| s.who), Some("ana".to_owned()));
        sessions.end(&a);
        assert!(sessions.get(&a).is_none());
        assert_eq!(
            cookie_of(&format!("x=1; {COOKIE}={b}; y=2")),
            Some(b.as_str())
        );
    }
}
