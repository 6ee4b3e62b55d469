//! `bidorch console`: the operators' web console — plain server-rendered HTML (minijinja
//! templates in `templates/`, compiled in) that reads without JavaScript, served from the ledger,
//! the broker and the lock store.
//!
//! Pages (`pages.rs`): the status (refreshing itself), postings searched by key prefix, state,
//! reason and time, one posting's timeline, the dead-letter queue with a replay that first says
//! how many messages it would replay, and pause and resume with a reason. Who may use it and how
//! a form proves it came from the console: `auth.rs`. Every action is a POST carrying the
//! session's CSRF token and writes an audit row (who, what, when, why).

mod auth;
mod dead_letters;
mod pages;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use minijinja::Environment;

use crate::app::LedgerPorts;
use crate::config::Settings;
use crate::lock::LockStore;

pub use self::auth::Tokens;
use self::auth::{COOKIE, Session, Sessions};

/// Why the console cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error(
        "refusing to serve the console on {addr} without a token: any address but loopback \
         requires one (set console.token_env to a variable holding it)"
    )]
    NoToken { addr: SocketAddr },
    #[error("console.token_env: the variable `{var}` {problem}")]
    BadToken { var: String, problem: String },
    #[error("listening on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What every page needs.
pub(crate) struct Console {
    settings: Settings,
    ledger: LedgerPorts,
    locks: Arc<dyn LockStore>,
    tokens: Tokens,
    sessions: Sessions,
    templates: Environment<'static>,
}

/// The tokens `settings` names, and whether `addr` may go without one.
pub fn tokens_for(
    settings: &Settings,
    addr: SocketAddr,
    var_of: impl Fn(&str) -> Option<String>,
) -> Result<Tokens, ConsoleError> {
    let var = &settings.console.token_env;
    let tokens = if var.is_empty() {
        Tokens::none()
    } else {
        let value = var_of(var).unwrap_or_default();
        if value.trim().is_empty() {
            return Err(ConsoleError::BadToken {
                var: var.clone(),
                problem: "is not set or empty".to_owned(),
            });
        }
        Tokens::parse(&value).map_err(|problem| ConsoleError::BadToken {
            var: var.clone(),
            problem,
        })?
    };
    if tokens.is_empty() && !addr.ip().is_loopback() {
        return Err(ConsoleError::NoToken { addr });
    }
    Ok(tokens)
}

fn templates() -> Environment<'static> {
    let mut env = Environment::new();
    for (name, text) in [
        ("base.html", include_str!("templates/base.html")),
        ("login.html", include_str!("templates/login.html")),
        ("status.html", include_str!("templates/status.html")),
        ("postings.html", include_str!("templates/postings.html")),
        ("posting.html", include_str!("templates/posting.html")),
        ("dlq.html", include_str!("templates/dlq.html")),
        ("replay.html", include_str!("templates/replay.html")),
    ] {
        // Compiled in: a template that does not parse fails the tests, never a user.
        env.add_template(name, text)
            .unwrap_or_else(|e| panic!("template {name}: {e}"));
    }
    env
}

/// Serves the console on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    settings: Settings,
    tokens: Tokens,
    ledger: LedgerPorts,
    locks: Arc<dyn LockStore>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let console = Arc::new(Console {
        settings,
        ledger,
        locks,
        tokens,
        sessions: Sessions::default(),
        templates: templates(),
    });
    axum::serve(listener, router(console))
        .with_graceful_shutdown(shutdown)
        .await
}

fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(pages::status))
        .route("/postings", get(pages::postings))
        .route("/postings/{marketplace}/{posting_id}", get(pages::posting))
        .route("/dlq", get(dead_letters::dlq))
        .route(
            "/dlq/replay",
            get(dead_letters::replay_preview).post(dead_letters::replay),
        )
        .route("/pause", post(pages::pause))
        .route("/resume", post(pages::resume))
        .route("/logout", post(pages::logout))
        .layer(axum::middleware::from_fn_with_state(
            console.clone(),
            authenticate,
        ))
        .route("/login", get(pages::login_form).post(pages::login))
        .with_state(console)
}

/// Who is asking, and how they proved it.
#[derive(Clone, Debug)]
pub(crate) struct Visitor {
    pub who: String,
    /// The session's CSRF token; `None` for a bearer request (which needs none).
    pub csrf: Option<String>,
    /// Signed in with a token (so there is something to sign out of).
    pub signed_in: bool,
}

/// Finds the visitor: a bearer token, a live session, or — with no token configured, which
/// only loopback allows — a new `loopback` session. Anyone else goes to `/login`.
async fn authenticate(
    State(console): State<Arc<Console>>,
    mut request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    if let Some(presented) = bearer(headers) {
        return match console.tokens.who(presented) {
            Some(who) => {
                request.extensions_mut().insert(Visitor {
                    who,
                    csrf: None,
                    signed_in: false,
                });
                next.run(request).await
            }
            None => (StatusCode::UNAUTHORIZED, "unknown token").into_response(),
        };
    }
    let session = session_of(&console, headers);
    let (session, new_cookie) = match session {
        Some(session) => (session, None),
        None if console.tokens.is_empty() => {
            let (id, session) = console.sessions.start("loopback");
            (session, Some(id))
        }
        None => return Redirect::to("/login").into_response(),
    };
    request.extensions_mut().insert(Visitor {
        signed_in: !console.tokens.is_empty(),
        who: session.who.clone(),
        csrf: Some(session.csrf.clone()),
    });
    let mut response = next.run(request).await;
    if let Some(id) = new_cookie
        && let Ok(value) = HeaderValue::from_str(&auth::set_cookie(&id))
    {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn session_of(console: &Console, headers: &HeaderMap) -> Option<Session> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(auth::cookie_of)
        .and_then(|id| console.sessions.get(id))
}

/// The session id in the request's cookie, if any.
fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(auth::cookie_of)
        .map(str::to_owned)
}

/// Whether a form's `csrf` field is the visitor's own (always, for a bearer request).
pub(crate) fn csrf_ok(visitor: &Visitor, presented: Option<&str>) -> bool {
    match &visitor.csrf {
        None => true,
        Some(expected) => presented.is_some_and(|p| auth::same(expected.as_bytes(), p.as_bytes())),
    }
}

/// The cookie that ends a session in the browser.
fn cleared_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}
