//! The console's pages and actions. Each page renders one template from what the ports say;
//! each action checks the visitor's CSRF token, does one thing, records who did it, and sends
//! the browser back to a page that shows the result.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use minijinja::context;
use minijinja::value::{Serde, Value};
use serde::{Deserialize, Serialize};

use super::{Console, Visitor, cleared_cookie, csrf_ok, session_id};
use crate::ledger::{AuditEntry, LedgerState, Scope, Search};
use crate::posting::PostingKey;

/// Postings per page of a search.
const PAGE: u32 = 50;

/// The status page refreshes itself this often (seconds).
const REFRESH_SECS: u32 = 5;

/// A serialisable value for a template.
pub(super) fn val<T: Serialize>(x: T) -> Value {
    Value::from(Serde(x))
}

/// A page or an error page.
pub(super) fn render(console: &Console, name: &str, ctx: Value) -> Response {
    match console
        .templates
        .get_template(name)
        .and_then(|t| t.render(ctx))
    {
        Ok(html) => Html(html).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering {name}: {e}"),
        )
            .into_response(),
    }
}

/// A plain refusal.
pub(super) fn refuse(status: StatusCode, why: &str) -> Response {
    (status, why.to_owned()).into_response()
}

pub(super) fn csrf_refused() -> Response {
    refuse(
        StatusCode::FORBIDDEN,
        "refused: this form did not carry the console's CSRF token (reload the page and retry)",
    )
}

/// A time as operators read it: to the second, UTC.
fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// `?notice=` on a page: what the last action did.
#[derive(Deserialize, Default)]
pub(super) struct Notice {
    pub(super) notice: Option<String>,
}

#[derive(Serialize)]
struct AuditView {
    at: String,
    who: String,
    action: String,
    scope: Option<String>,
    reason: Option<String>,
    until: Option<String>,
    detail: Option<String>,
}

impl From<AuditEntry> for AuditView {
    fn from(a: AuditEntry) -> Self {
        Self {
            at: when(a.at),
            who: a.who,
            action: a.action,
            scope: a.scope,
            reason: a.reason,
            until: a.until.map(when),
            detail: a.detail,
        }
    }
}

pub(super) async fn status(
    State(console): State<Arc<Console>>,
    Extension(visitor): Extension<Visitor>,
    Query(notice): Query<Notice>,
) -> Response {
    let ledger = &console.ledger;
    let gathered =
        crate::status::gather(&console.settings, &*ledger.reports, &*ledger.controls).await;
    let status = match gathered {
        Ok(status) => status,
        Err(e) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("the ledger does not answer: {}", crate::error::Chain(&e)),
            );
        }
    };
    let history: Vec<AuditView> = ledger
        .controls
        .history(20)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(AuditView::from)
        .collect();
    let all_paused = status
        .marketplaces
        .iter()
        .any(|m| m.pause.as_ref().is_some_and(|p| p.scope == "*"));
    let mut shown = serde_json::to_value(&status).unwrap_or_default();
    // Times to the second, as people read them.
    shown["at"] = when(status.at).into();
    for (i, m) in status.marketplaces.iter().enumerate() {
        if let Some(p) = &m.pause {
            shown["marketplaces"][i]["pause"]["since"] = when(p.since).into();
            if let Some(until) = p.until {
                shown["marketplaces"][i]["pause"]["until"] = when(until).into();
            }
        }
    }
    render(
        &console,
        "status.html",
        context! {
            title => "Status", page => "status", who => visitor.who, csrf => visitor.csrf,
            signed_in => visitor.signed_in, refresh => REFRESH_SECS, s => val(&shown),
            history => val(&history), all_paused => all_paused, notice => notice.notice,
        },
    )
}

#[derive(Deserialize)]
pub(super) struct PauseForm {
    csrf: Option<String>,
    scope: String,
    reason: Option<String>,
    #[serde(rename = "for")]
    for_: Option<String>,
}

/// The scope a form names: `*` or a configured marketplace.
fn scope_of(console: &Console, scope: &str) -> Option<Scope> {
    match scope {
        "*" => Some(Scope::All),
        name if console.settings.marketplaces.contains_key(name) => {
            Some(Scope::Marketplace(name.to_owned()))
        }
        _ => None,
    }
}

/// Back to the status page, saying what happened.
fn back(notice: &str) -> Response {
    let encoded: String = url::form_urlencoded::byte_serialize(notice.as_bytes()).collect();
    Redirect::to(&format!("/?notice={encoded}")).into_response()
}

pub(super) async fn pause(
    State(console): State<Arc<Console>>,
    Extension(visitor): Extension<Visitor>,
    Form(form): Form<PauseForm>,
) -> Response {
    if !csrf_ok(&visitor, form.csrf.as_deref()) {
        return csrf_refused();
    }
    let Some(scope) = scope_of(&console, &form.scope) else {
        return refuse(StatusCode::BAD_REQUEST, "no such marketplace");
    };
    let reason = form.reason.as_deref().unwrap_or_default().trim();
    if reason.is_empty() {
        return refuse(StatusCode::BAD_REQUEST, "a pause needs a reason");
    }
    let until = match form
        .for_
        .as_deref()
        .map(str::trim)
        .filter(|f| !f.is_empty())
    {
        None => None,
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) => {
                Some(Utc::now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX))
            }
            Err(e) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    &format!("`for` is not a duration like 30m or 2h: {e}"),
                );
            }
        },
    };
    match console
        .ledger
        .controls
        .pause(std::slice::from_ref(&scope), reason, &visitor.who, until)
        .await
    {
        Ok(generation) => back(&format!(
            "Paused {scope} (generation {generation}); every worker applies it within 2 s."
        )),
        Err(e) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("the pause was not recorded: {}", crate::error::Chain(&e)),
        ),
    }
}

#[derive(Deserialize)]
pub(super) struct ResumeForm {
    csrf: Option<String>,
    scope: String,
}

pub(super) async fn resume(
    State(console): State<Arc<Console>>,
    Extension(visitor): Extension<Visitor>,
    Form(form): Form<ResumeForm>,
) -> Response {
    if !csrf_ok(&visitor, form.csrf.as_deref()) {
        return csrf_refused();
    }
    let Some(scope) = scope_of(&console, &form.scope) else {
        return refuse(StatusCode::BAD_REQUEST, "no such marketplace");
    };
    match console
        .ledger
        .controls
        .resume(std::slice::from_ref(&scope), &visitor.who)
        .await
    {
        Ok((_, ended)) if ended.is_empty() => back(&format!("{scope} was not paused by hand.")),
        Ok((generation, _)) => back(&format!("Resumed {scope} (generation {generation}).")),
        Err(e) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("the resume was not recorded: {}", crate::error::Chain(&e)),
        ),
    }
}

/// The search form, as sent and shown again.
#[derive(Deserialize, Serialize, Default, Clone)]
pub(super) struct SearchForm {
    #[serde(default)]
    marketplace: String,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    page: u32,
}

/// A time a person typed: RFC 3339, or a date and time without zone read as UTC.
fn typed_time(text: &str) -> Result<Option<DateTime<Utc>>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    let bare = text.trim_end_matches(['Z', 'z']);
    for format in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(bare, format) {
            return Ok(Some(t.and_utc()));
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(bare, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).map(|t| t.and_utc()));
    }
    Err(format!(
        "`{text}` is not a time like 2026-12-07T10:00Z or 2026-12-07"
    ))
}

#[derive(Serialize)]
struct Row {
    key: String,
    href: String,
    state: &'static str,
    detail: Option<String>,
    sends: u32,
    bid_id: Option<String>,
    updated_at: String,
}

fn segment(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

pub(super) async fn postings(
    State(console): State<Arc<Console>>,
    Extension(visitor): Extension<Visitor>,
    Query(form): Query<SearchForm>,
) -> Response {
    let mut error = None;
    let (since, until) = match (typed_time(&form.since), typed_time(&form.until)) {
        (Ok(since), Ok(until)) => (since, until),
        (Err(e), _) | (_, Err(e)) => {
            error = Some(e);
            (None, None)
        }
    };
    let nonempty = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
    let search = Search {
        marketplace: nonempty(&form.marketplace),
        id_prefix: nonempty(&form.prefix),
        state: LedgerState::parse(form.state.trim()),
        reason: nonempty(&form.reason),
        since,
        until,
        offset: form.page.saturating_mul(PAGE),
        limit: PAGE + 1,
    };
    let mut rows: Vec<Row> = Vec::new();
    if error.is_none() {
        match console.ledger.reports.search(&search).await {
            Ok(found) => {
                rows = found
                    .into_iter()
                    .map(|e| Row {
                        href: format!(
                            "/postings/{}/{}",
                            segment(e.key.marketplace()),
                            segment(e.key.posting_id())
                        ),
                        key: e.key.to_string(),
                        state: e.state.as_str(),
                        detail: e.detail,
                        sends: e.sends,
                        bid_id: e.bid_id,
                        updated_at: when(e.updated_at),
                    })
                    .collect();
            }
            Err(e) => {
                error = Some(format!(
                    "the ledger does not answer: {}",
                    crate::error::Chain(&e)
                ))
            }
        }
    }
    let more = rows.len() > PAGE as usize;
    rows.truncate(PAGE as usize);
    let link = |page: u32| {
        let mut f = form.clone();
        f.page = page;
        format!("/postings?{}", serde_urlencoded_form(&f))
    };
    render(
        &console,
        "postings.html",
        context! {
            title => "Postings", page => "postings", pageno => form.page, who => visitor.who,
            csrf => visitor.csrf, signed_in => visitor.signed_in, rows => val(&rows), q => val(&form),
            marketplaces => val(console.settings.marketplaces.keys().collect::<Vec<_>>()),
            more => more, next => link(form.page + 1), prev => link(form.page.saturating_sub(1)),
            error => error,
        },
    )
}

/// The search form as a query string.
fn serde_urlencoded_form(form: &SearchForm) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in [
        ("marketplace", form.marketplace.as_str()),
        ("prefix", form.prefix.as_str()),
        ("state", form.state.as_str()),
        ("reason", form.reason.as_str()),
        ("since", form.since.as_str()),
        ("until", form.until.as_str()),
    ] {
        if !v.is_empty() {
            out.append_pair(k, v);
        }
    }
    out.append_pair("page", &form.page.to_string());
    out.finish()
}

pub(super) async fn posting(
    State(console): State<Arc<Console>>,
    Extension(visitor): Extension<Visitor>,
    Path((marketplace, posting_id)): Path<(String, String)>,
) -> Response {
    let Ok(key) = PostingKey::new(&marketplace, &posting_id) else {
        return refuse(StatusCode::NOT_FOUND, "not a posting key");
    };
    let ledger = &console.ledger;
    let story =
        crate::inspect::story(&*ledger.ledger, &*ledger.reports, &*console.locks, &key).await;
    match story {
        Ok(story) => render(
            &console,
            "posting.html",
            context! {
                title => key.to_string(), page => "postings", who => visitor.who,
                csrf => visitor.csrf, signed_in => visitor.signed_in, s => val(&story),
                trace_url => console.settings.console.trace_url.clone(),
            },
        ),
        Err(crate::inspect::InspectError::NotFound(_)) => refuse(
            StatusCode::NOT_FOUND,
            "no such posting: it was never claimed",
        ),
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, &crate::error::chain(&e)),
    }
}

pub(super) async fn login_form(State(console): State<Arc<Console>>) -> Response {
    render(
        &console,
        "login.html",
        context! { title => "Sign in", page => "", failed => false },
    )
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
}

pub(super) async fn login(
    State(console): State<Arc<Console>>,
    Form(form): Form<LoginForm>,
) -> Response {
    let Some(who) = console.tokens.who(form.token.trim()) else {
        let mut page = render(
            &console,
            "login.html",
            context! { title => "Sign in", page => "", failed => true },
        );
        *page.status_mut() = StatusCode::UNAUTHORIZED;
        return page;
    };
    let (id, _) = console.sessions.start(&who);
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&super::auth::set_cookie(&id)) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[derive(Deserialize)]
pub(super) struct LogoutForm {
    csrf: Option<String>,
}

pub(super) async fn logout(
    State(console): State<Arc<Console>>,
    Extension(visitor): Extension<Visitor>,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Response {
    if !csrf_ok(&visitor, form.csrf.as_deref()) {
        return csrf_refused();
    }
    if let Some(id) = session_id(&headers) {
        console.sessions.end(&id);
    }
    let mut response = Redirect::to("/login").into_response();
    if let Ok(value) = HeaderValue::from_str(&cleared_cookie()) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}
