//! The sandbox's Freelancer.com dialect, under `/{marketplace}/api/…` for every marketplace:
//! `GET users/0.1/self/`, `POST projects/0.1/bids/` and `GET projects/0.1/bids/?projects[]=…`,
//! with the `Freelancer-OAuth-V1` header and the API's `{"status": …}` envelopes.
//!
//! Like the real API it has no idempotency keys. A second bid by the same bidder on a project is
//! refused (`400`, as Freelancer refuses it) unless [`SandboxOptions::refuse_second_bid`] is off —
//! then it is created, and `duplicates` in the stats shows it. The faults are the contract's:
//! injected `503`/`429` (on lookups too), lost answers after a bid was created, a latency after
//! recording, a revoked token. A project can be closed ([`Sandbox::close_project`]): `404`.
//! Projects may carry other bidders' bids ([`SandboxOptions::rival_bids`]) and a lookup's list
//! may change between its pages ([`SandboxOptions::lookup_churn`]).

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::routes::{constant_time_eq, fault_response, header_str, traced};
use super::{Bid, Sandbox};
use crate::posting::PostingKey;

/// The user id the sandbox's tokens belong to (`/self`), the bidder every bid must name.
pub const SANDBOX_BIDDER_ID: u64 = 4242;

/// The first bid id handed out (ids are integers, as Freelancer's).
const FIRST_BID_ID: u64 = 50_000_001;

/// Longest description accepted.
const MAX_DESCRIPTION_CHARS: usize = 20_000;

/// Most bids a lookup page returns, whatever `limit` asks.
const MAX_LIMIT: usize = 100;

pub(super) fn routes() -> Router<Sandbox> {
    Router::new()
        .route("/{marketplace}/api/users/0.1/self/", get(whoami))
        .route(
            "/{marketplace}/api/projects/0.1/bids/",
            get(list_bids).post(place_bid),
        )
}

/// One bid on a project, as the list shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Listed {
    pub id: u64,
    pub bidder_id: u64,
    pub retracted: bool,
}

/// The projects' bid lists (ours and rivals'), the closed projects, the id counter.
#[derive(Debug)]
pub(super) struct Projects {
    lists: HashMap<String, Vec<Listed>>,
    closed: std::collections::HashSet<String>,
    next_id: u64,
}

impl Default for Projects {
    fn default() -> Self {
        Self {
            lists: HashMap::new(),
            closed: Default::default(),
            next_id: FIRST_BID_ID,
        }
    }
}

impl Projects {
    /// The project's list, seeded with `rivals` other bidders' bids on first sight.
    fn list(&mut self, posting: &str, rivals: u32) -> &mut Vec<Listed> {
        if !self.lists.contains_key(posting) {
            let mut list = Vec::with_capacity(rivals as usize);
            for n in 0..rivals {
                list.push(Listed {
                    id: self.next_id,
                    bidder_id: 7_000_000 + u64::from(n),
                    // Every seventh rival withdrew: retracted bids stay listed.
                    retracted: n % 7 == 6,
                });
                self.next_id += 1;
            }
            self.lists.insert(posting.to_owned(), list);
        }
        self.lists
            .get_mut(posting)
            .expect("the list was inserted just above")
    }

    /// Marks `posting` closed: its bids and lookups answer `404` from now on.
    pub(super) fn close(&mut self, posting: &str) {
        self.closed.insert(posting.to_owned());
    }

    fn is_closed(&self, posting: &str) -> bool {
        self.closed.contains(posting)
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}

/// An error answer, in Freelancer's envelope.
struct Failure {
    status: StatusCode,
    message: String,
    code: &'static str,
}

fn failure(status: StatusCode, message: &str, code: &'static str) -> Failure {
    Failure {
        status,
        message: message.to_owned(),
        code,
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({
                "status": "error",
                "message": self.message,
                "error_code": self.code,
                "request_id": uuid::Uuid::new_v4().simple().to_string(),
            })),
        )
            .into_response()
    }
}

fn success(result: serde_json::Value) -> Response {
    axum::Json(json!({
        "status": "success",
        "result": result,
        "request_id": uuid::Uuid::new_v4().simple().to_string(),
    }))
    .into_response()
}

/// The token check of every call: the header present, and the sandbox's token if it has one.
fn check_token(sandbox: &Sandbox, headers: &HeaderMap) -> Result<(), Failure> {
    let presented = header_str(headers, "freelancer-oauth-v1")
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(presented) = presented else {
        return Err(failure(
            StatusCode::UNAUTHORIZED,
            "You must be logged in to perform this request",
            "AuthExceptionCodes.NOT_AUTHENTICATED",
        ));
    };
    match &sandbox.state().token {
        Some(expected) if !constant_time_eq(expected.as_bytes(), presented.as_bytes()) => {
            Err(failure(
                StatusCode::UNAUTHORIZED,
                "The access token is invalid or expired",
                "AuthExceptionCodes.INVALID_ACCESS_TOKEN",
            ))
        }
        _ => Ok(()),
    }
}

/// `GET /{marketplace}/api/users/0.1/self/`.
async fn whoami(State(sandbox): State<Sandbox>, headers: HeaderMap) -> Response {
    if let Err(refused) = check_token(&sandbox, &headers) {
        return refused.into_response();
    }
    success(json!({ "id": SANDBOX_BIDDER_ID, "username": "bidorch-sandbox", "role": "freelancer" }))
}

#[derive(Deserialize)]
struct PlaceBid<'a> {
    project_id: u64,
    bidder_id: u64,
    #[serde(borrow)]
    amount: &'a RawValue,
    period: u32,
    milestone_percentage: u32,
    description: String,
}

/// Only the project, to count a request before anything else is checked.
#[derive(Deserialize)]
struct ProjectOnly {
    project_id: u64,
}

/// `POST /{marketplace}/api/projects/0.1/bids/`.
async fn place_bid(
    State(sandbox): State<Sandbox>,
    Path(marketplace): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let route = "/{marketplace}/api/projects/0.1/bids/";
    traced(&sandbox, "POST", route, &marketplace, &headers, async {
        place(&sandbox, &marketplace, &headers, &body)
    })
    .await
}

fn place(sandbox: &Sandbox, marketplace: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let project = serde_json::from_slice::<ProjectOnly>(body)
        .ok()
        .and_then(|p| PostingKey::new(marketplace, &p.project_id.to_string()).ok());
    let Some(key) = project else {
        return failure(
            StatusCode::BAD_REQUEST,
            "project_id is missing or not a project id",
            "ProjectExceptionCodes.INVALID_PROJECT_ID",
        )
        .into_response();
    };
    let posting = key.to_string();
    let traceparent = header_str(headers, "traceparent");
    if let Some(fault) = sandbox.take_fault(&posting, traceparent, true) {
        return fault_response(&fault);
    }
    if let Err(refused) = check_token(sandbox, headers) {
        sandbox.state().book.count_rejected();
        return refused.into_response();
    }
    let checked = check_body(headers, body);
    let mut state = sandbox.state();
    let bid = match checked {
        Ok(bid) => bid,
        Err(refused) => {
            state.book.count_rejected();
            return refused.into_response();
        }
    };
    if bid.bidder_id != SANDBOX_BIDDER_ID {
        state.book.count_rejected();
        return failure(
            StatusCode::FORBIDDEN,
            "You can only place bids as yourself",
            "ProjectExceptionCodes.INVALID_BIDDER",
        )
        .into_response();
    }
    if state.projects.is_closed(&posting) {
        state.book.count_rejected();
        return failure(
            StatusCode::NOT_FOUND,
            "Project not found or closed for bidding",
            "ProjectExceptionCodes.PROJECT_NOT_FOUND",
        )
        .into_response();
    }
    let rivals = sandbox.options().rival_bids;
    let ours_before = state
        .projects
        .list(&posting, rivals)
        .iter()
        .any(|b| b.bidder_id == bid.bidder_id && !b.retracted);
    if ours_before && sandbox.options().refuse_second_bid {
        state.book.count_conflict(&posting);
        return failure(
            StatusCode::BAD_REQUEST,
            "You have already bid on this project",
            "ProjectExceptionCodes.DUPLICATE_BID",
        )
        .into_response();
    }
    let id = state.projects.take_id();
    state.projects.list(&posting, rivals).push(Listed {
        id,
        bidder_id: bid.bidder_id,
        retracted: false,
    });
    let recorded = Bid {
        bid_id: id.to_string(),
        marketplace: key.marketplace().to_owned(),
        posting_id: key.posting_id().to_owned(),
        idempotency_key: String::new(),
        amount: bid.amount.get().to_owned(),
        currency: String::new(),
        cover_letter: bid.description,
        traceparent: traceparent.map(str::to_owned),
        tracestate: header_str(headers, "tracestate").map(str::to_owned),
        request_sha256: crate::ledger::sha256_hex(body),
        created_at: chrono::Utc::now(),
    };
    state.book.record(recorded);
    if state.lose_answer(sandbox.options().lose_rate) {
        state.book.count_lost();
        return failure(
            StatusCode::BAD_GATEWAY,
            "upstream answer lost",
            "SandboxExceptionCodes.LOST_ANSWER",
        )
        .into_response();
    }
    success(json!({
        "id": id,
        "project_id": bid.project_id,
        "bidder_id": bid.bidder_id,
        "amount": bid.amount,
        "period": bid.period,
        "milestone_percentage": bid.milestone_percentage,
        "retracted": false,
    }))
}

/// The body as the API would validate it.
fn check_body<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<PlaceBid<'a>, Failure> {
    let invalid = |message: String| {
        failure(
            StatusCode::BAD_REQUEST,
            &message,
            "ProjectExceptionCodes.INVALID_BID",
        )
    };
    let json_content = header_str(headers, header::CONTENT_TYPE.as_str())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !json_content {
        return Err(invalid("Content-Type must be application/json".to_owned()));
    }
    let bid: PlaceBid<'a> =
        serde_json::from_slice(body).map_err(|e| invalid(format!("invalid bid: {e}")))?;
    let amount = bid.amount.get();
    let number = amount.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && rust_decimal::Decimal::from_str_exact(amount)
            .is_ok_and(|d| d > rust_decimal::Decimal::ZERO);
    if !number {
        return Err(invalid(format!(
            "amount {amount} must be a positive number"
        )));
    }
    if bid.period == 0 || !(1..=100).contains(&bid.milestone_percentage) {
        return Err(invalid(
            "period must be at least 1 and milestone_percentage 1 to 100".to_owned(),
        ));
    }
    if bid.description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(invalid(format!(
            "description is longer than {MAX_DESCRIPTION_CHARS} characters"
        )));
    }
    Ok(bid)
}

/// The query of a lookup: `projects[]`, `limit`, `offset`.
struct ListQuery {
    project: u64,
    limit: usize,
    offset: usize,
}

fn list_query(raw: Option<&str>) -> Option<ListQuery> {
    let mut project = None;
    let mut limit = 10;
    let mut offset = 0;
    for (name, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "projects[]" => project = Some(value.parse().ok()?),
            "limit" => limit = value.parse().ok()?,
            "offset" => offset = value.parse().ok()?,
            _ => {}
        }
    }
    Some(ListQuery {
        project: project?,
        limit: limit.min(MAX_LIMIT),
        offset,
    })
}

/// `GET /{marketplace}/api/projects/0.1/bids/?projects[]=…&limit=…&offset=…`.
async fn list_bids(
    State(sandbox): State<Sandbox>,
    Path(marketplace): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let route = "/{marketplace}/api/projects/0.1/bids/";
    traced(&sandbox, "GET", route, &marketplace, &headers, async {
        list(&sandbox, &marketplace, query.as_deref(), &headers)
    })
    .await
}

fn list(
    sandbox: &Sandbox,
    marketplace: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response {
    let Some(query) = list_query(query) else {
        return failure(
            StatusCode::BAD_REQUEST,
            "projects[] must name one project; limit and offset must be numbers",
            "ProjectExceptionCodes.INVALID_QUERY",
        )
        .into_response();
    };
    let Ok(key) = PostingKey::new(marketplace, &query.project.to_string()) else {
        return failure(
            StatusCode::NOT_FOUND,
            "no such marketplace",
            "ProjectExceptionCodes.PROJECT_NOT_FOUND",
        )
        .into_response();
    };
    let posting = key.to_string();
    sandbox
        .state()
        .book
        .count_lookup(&posting, header_str(headers, "traceparent"));
    if let Some(fault) = sandbox.take_fault(&posting, None, false) {
        return fault_response(&fault);
    }
    if let Err(refused) = check_token(sandbox, headers) {
        return refused.into_response();
    }
    let mut state = sandbox.state();
    if state.projects.is_closed(&posting) {
        return failure(
            StatusCode::NOT_FOUND,
            "Project not found",
            "ProjectExceptionCodes.PROJECT_NOT_FOUND",
        )
        .into_response();
    }
    let options = sandbox.options();
    let list = state.projects.list(&posting, options.rival_bids);
    if query.offset > 0 && options.lookup_churn > 0 {
        // Rivals' bids delisted while the client pages: everything after them moves forward.
        let mut gone = 0;
        list.retain(|b| {
            let drop = gone < options.lookup_churn && b.bidder_id != SANDBOX_BIDDER_ID;
            gone += u32::from(drop);
            !drop
        });
    }
    let page: Vec<serde_json::Value> = list
        .iter()
        .skip(query.offset)
        .take(query.limit)
        .map(|b| {
            json!({
                "id": b.id,
                "project_id": query.project,
                "bidder_id": b.bidder_id,
                "retracted": b.retracted,
            })
        })
        .collect();
    success(json!({ "bids": page, "total_bid_count": list.len() }))
}
