//! The Freelancer.com API (`api = "freelancer"`): bids placed with `POST /api/projects/0.1/bids/`
//! under the `Freelancer-OAuth-V1` header, and looked up by project with
//! `GET /api/projects/0.1/bids/?projects[]=…` — the API has no idempotency keys, so a send whose
//! answer was lost is settled by that lookup before anything is sent again.
//!
//! The bidder is `bidder_id` from the configuration, or our own user id, read once from
//! `GET /api/users/0.1/self/` and kept for the life of the process. A project id is a positive
//! integer: any other `posting_id` cannot be bid on here (`posting_id_unsupported`).

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::OnceCell;

use super::classify::{classify_error, excerpt, unknown_success};
use super::client::{Api, Endpoint, Exchange, secret_header};
use super::{
    BidRequest, BidResult, BidTerms, Capabilities, LiveCheck, Lookup, LookupRequest, RequestRefusal,
};
use crate::config::{MarketplaceApi, MarketplaceSettings};
use crate::ledger::{StoredRequest, sha256_hex};
use crate::policy::format_amount;
use crate::posting::PostingKey;

/// The header carrying the OAuth token.
const AUTH_HEADER: &str = "freelancer-oauth-v1";

/// Bids asked for per page of a lookup (the API's own maximum).
const PAGE: usize = 100;

/// Each page of a lookup starts this many bids before the previous one ended, so a bid that
/// moves towards the front between two pages (fewer than this many bids removed before it) is
/// still read; a bid moving back (bids added before it) is read twice, which is harmless.
const PAGE_OVERLAP: usize = 50;

/// Most pages one pass of a lookup reads (about 2,500 bids on one project) before it gives up as
/// unanswered: a lookup that cannot finish must not pass for "no bid of ours".
const MAX_PAGES: usize = 50;

/// Passes a lookup makes when the list moved more than [`PAGE_OVERLAP`] between two pages.
const MAX_PASSES: usize = 3;

/// The skip reason for a posting id that is not a Freelancer project id.
pub const POSTING_ID_UNSUPPORTED: &str = "posting_id_unsupported";

/// The project id a posting id names, if it is one (`^[1-9][0-9]{0,17}$`).
pub fn project_id(posting_id: &str) -> Option<u64> {
    let digits = posting_id.as_bytes();
    let shaped = (1..=18).contains(&digits.len())
        && digits[0] != b'0'
        && digits.iter().all(u8::is_ascii_digit);
    shaped.then(|| posting_id.parse().ok()).flatten()
}

/// The request body, in the API's field names. `amount` is the decimal's own digits as a JSON
/// number: no binary float ever holds it.
#[derive(Serialize)]
struct PlaceBid<'a> {
    project_id: u64,
    bidder_id: u64,
    amount: &'a RawValue,
    period: u32,
    milestone_percentage: u32,
    description: &'a str,
}

/// `{"status": "success", "result": …}`.
#[derive(Deserialize)]
struct Success<T> {
    status: String,
    result: T,
}

#[derive(Deserialize)]
struct WithId {
    id: u64,
}

#[derive(Deserialize)]
struct BidPage {
    bids: Vec<ListedBid>,
}

#[derive(Deserialize)]
struct ListedBid {
    id: u64,
    bidder_id: u64,
    #[serde(default)]
    retracted: Option<bool>,
}

/// How one pass over a project's bid list ended.
enum Pass {
    Done(Lookup),
    /// The list moved too far between two pages: read it again.
    Moved,
}

/// The body's result, if the answer is a success envelope holding a `T`.
fn success<T: serde::de::DeserializeOwned>(body: &[u8]) -> Option<T> {
    serde_json::from_slice::<Success<T>>(body)
        .ok()
        .filter(|s| s.status == "success")
        .map(|s| s.result)
}

/// A marketplace speaking the Freelancer.com API.
pub(crate) struct FreelancerApi {
    endpoint: Endpoint,
    /// Ours: configured, or learnt from `/self` on first need.
    bidder: OnceCell<u64>,
    period: u32,
    milestone_percentage: u32,
    lookup_delay: Duration,
}

impl FreelancerApi {
    pub(crate) fn new(
        endpoint: Endpoint,
        settings: &MarketplaceSettings,
        lookup_delay: Duration,
    ) -> Self {
        Self {
            endpoint,
            bidder: OnceCell::new_with(settings.bidder_id),
            period: settings.bid_period_days,
            milestone_percentage: settings.milestone_percentage,
            lookup_delay,
        }
    }

    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static(AUTH_HEADER),
            secret_header(self.endpoint.token()),
        );
        headers
    }

    fn bids_url(&self) -> url::Url {
        self.endpoint.url(&["api", "projects", "0.1", "bids", ""])
    }

    /// Our bidder id: configured, or asked of `/self` once (a failure is asked again next time).
    async fn bidder(&self) -> Result<u64, String> {
        self.bidder
            .get_or_try_init(|| async { self.whoami().await })
            .await
            .copied()
    }

    /// The user id the token belongs to (`GET /api/users/0.1/self/`).
    async fn whoami(&self) -> Result<u64, String> {
        let url = self.endpoint.url(&["api", "users", "0.1", "self", ""]);
        let exchanged = self
            .endpoint
            .get(url, self.headers(), &Default::default())
            .await;
        match exchanged {
            Exchange::Failed { reason, .. } => Err(format!("/self did not answer: {reason}")),
            Exchange::Answered {
                status: 200, body, ..
            } => success::<WithId>(&body)
                .filter(|me| me.id > 0)
                .map(|me| me.id)
                .ok_or_else(|| "/self answered without a user id".to_owned()),
            Exchange::Answered {
                status: status @ (401 | 403),
                ..
            } => Err(format!(
                "the token in `{}` was refused by /self (HTTP {status})",
                self.endpoint.token_env
            )),
            Exchange::Answered { status, body, .. } => Err(format!(
                "/self answered HTTP {status}: {}",
                excerpt(&body, self.endpoint.token())
            )),
        }
    }

    /// One pass over the project's bids, first page to last.
    async fn pass(&self, project: u64, bidder: u64, lookup: &LookupRequest) -> Pass {
        let mut seen = std::collections::HashSet::new();
        let mut offset = 0;
        for _ in 0..MAX_PAGES {
            let bids = match self.page(project, offset, lookup).await {
                Ok(bids) => bids,
                Err(unanswered) => return Pass::Done(unanswered),
            };
            if let Some(ours) = bids
                .iter()
                .find(|b| b.bidder_id == bidder && b.retracted != Some(true))
            {
                return Pass::Done(Lookup::Found {
                    bid_id: ours.id.to_string(),
                });
            }
            if offset > 0 && bids.first().is_some_and(|first| !seen.contains(&first.id)) {
                return Pass::Moved;
            }
            if bids.len() < PAGE {
                return Pass::Done(Lookup::NotFound);
            }
            seen.extend(bids.iter().map(|b| b.id));
            offset += PAGE - PAGE_OVERLAP;
        }
        Pass::Done(Lookup::Unanswered {
            reason: format!("more than {MAX_PAGES} pages of bids on project {project}"),
            status: None,
        })
    }

    /// One page of the project's bids, from `offset`.
    async fn page(
        &self,
        project: u64,
        offset: usize,
        lookup: &LookupRequest,
    ) -> Result<Vec<ListedBid>, Lookup> {
        let mut url = self.bids_url();
        url.query_pairs_mut()
            .append_pair("projects[]", &project.to_string())
            .append_pair("limit", &PAGE.to_string())
            .append_pair("offset", &offset.to_string());
        let exchanged = self
            .endpoint
            .get(url, self.headers(), &lookup.trace_headers)
            .await;
        match exchanged {
            Exchange::Failed { reason, .. } => Err(Lookup::Unanswered {
                reason,
                status: None,
            }),
            Exchange::Answered {
                status: 200, body, ..
            } => success::<BidPage>(&body)
                .map(|page| page.bids)
                .ok_or_else(|| Lookup::Unanswered {
                    reason: "the bid list was not understood".to_owned(),
                    status: Some(200),
                }),
            Exchange::Answered { status: 404, .. } => Err(Lookup::Gone),
            Exchange::Answered { status, body, .. } => Err(Lookup::Unanswered {
                reason: format!("HTTP {status}: {}", excerpt(&body, self.endpoint.token())),
                status: Some(status),
            }),
        }
    }
}

#[async_trait]
impl Api for FreelancerApi {
    fn kind(&self) -> MarketplaceApi {
        MarketplaceApi::Freelancer
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            idempotency_keys: false,
            lookup: true,
            lookup_delay: self.lookup_delay,
        }
    }

    async fn request_for(
        &self,
        key: &PostingKey,
        terms: &BidTerms,
    ) -> Result<StoredRequest, RequestRefusal> {
        let Some(project_id) = project_id(key.posting_id()) else {
            return Err(RequestRefusal::Unsupported(POSTING_ID_UNSUPPORTED));
        };
        let bidder_id = self.bidder().await.map_err(RequestRefusal::Unavailable)?;
        let amount = format_amount(terms.amount, &terms.currency);
        // A plain decimal is always a JSON number; anything else is no amount to bid.
        let number = RawValue::from_string(amount.clone())
            .map_err(|_| RequestRefusal::Unsupported("amount_unsupported"))?;
        let body = serde_json::to_string(&PlaceBid {
            project_id,
            bidder_id,
            amount: &number,
            period: self.period,
            milestone_percentage: self.milestone_percentage,
            description: &terms.cover_letter,
        })
        .map_err(|_| RequestRefusal::Unsupported("amount_unsupported"))?;
        Ok(StoredRequest {
            api: MarketplaceApi::Freelancer.as_str().to_owned(),
            sha256: sha256_hex(body.as_bytes()),
            body,
            amount,
            currency: terms.currency.clone(),
        })
    }

    async fn place(&self, bid: &BidRequest) -> BidResult {
        let token = self.endpoint.token();
        self.endpoint
            .send_bid(self.bids_url(), self.headers(), bid, |answer| {
                match (answer.status, success::<WithId>(answer.body)) {
                    (200 | 201, Some(bid)) => BidResult::Placed {
                        bid_id: bid.id.to_string(),
                        replay: false,
                    },
                    (status @ (200 | 201), None) => unknown_success(status),
                    _ => classify_error(answer, token, chrono::Utc::now()),
                }
            })
            .await
    }

    /// Reads the project's bids page by page until ours or the end: ours is by our bidder id and
    /// not retracted. Pages overlap (see [`PAGE_OVERLAP`]); a page whose first bid was never
    /// seen means more bids were removed between two pages than the overlap covers, so a bid
    /// may have slipped between them: the pass starts again (at most [`MAX_PASSES`]).
    async fn find(&self, lookup: &LookupRequest) -> Lookup {
        let Some(project) = project_id(lookup.key.posting_id()) else {
            // No bid can have been sent for it.
            return Lookup::NotFound;
        };
        let bidder = match self.bidder().await {
            Ok(bidder) => bidder,
            Err(reason) => {
                return Lookup::Unanswered {
                    reason,
                    status: None,
                };
            }
        };
        for _ in 0..MAX_PASSES {
            match self.pass(project, bidder, lookup).await {
                Pass::Done(found) => return found,
                Pass::Moved => {}
            }
        }
        Lookup::Unanswered {
            reason: format!("the bid list of project {project} kept changing while it was read"),
            status: None,
        }
    }

    async fn check(&self) -> LiveCheck {
        match self.whoami().await {
            Ok(user) => match self.bidder.get() {
                Some(&bidder) if bidder != user => LiveCheck {
                    ok: false,
                    detail: format!(
                        "the token belongs to user {user}, but bidder_id is {bidder}: bids \
                         would be placed as another user than the lookups look for"
                    ),
                },
                _ => LiveCheck {
                    ok: true,
                    detail: format!("the token is accepted: user {user}"),
                },
            },
            Err(problem) => LiveCheck {
                ok: false,
                detail: problem,
            },
        }
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_positive_integers_of_up_to_18_digits_are_project_ids() {
        assert_eq!(project_id("1"), Some(1));
        assert_eq!(project_id("38011245"), Some(38_011_245));
        assert_eq!(
            project_id("999999999999999999"),
            Some(999_999_999_999_999_999)
        );
        for not in [
            "",
            "0",
            "01",
            "-1",
            "+1",
            "1.0",
            "1e3",
            " 1",
            "1 ",
            "job_1",
            "１",
            "1000000000000000000",
        ] {
            assert_eq!(project_id(not), None, "{not:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn every_project_id_reads_back_as_itself(id in 1u64..=999_999_999_999_999_999) {
            proptest::prop_assert_eq!(project_id(&id.to_string()), Some(id));
        }
    }

    #[test]
    fn the_amount_goes_out_as_the_decimals_own_digits() {
        let number = RawValue::from_string("450.10".to_owned()).unwrap();
        let body = serde_json::to_string(&PlaceBid {
            project_id: 7,
            bidder_id: 9,
            amount: &number,
            period: 7,
            milestone_percentage: 100,
            description: "Hi \"there\"",
        })
        .unwrap();
        assert_eq!(
            body,
            r#"{"project_id":7,"bidder_id":9,"amount":450.10,"period":7,"milestone_percentage":100,"description":"Hi \"there\""}"#
        );
    }

    #[test]
    fn answers_are_read_only_from_a_success_envelope() {
        assert_eq!(
            success::<WithId>(br#"{"status":"success","result":{"id":5,"x":1}}"#).map(|r| r.id),
            Some(5)
        );
        assert!(success::<WithId>(br#"{"status":"error","result":{"id":5}}"#).is_none());
        assert!(success::<WithId>(br#"{"status":"success","result":{}}"#).is_none());
        let page = success::<BidPage>(
            br#"{"status":"success","result":{"bids":[
                {"id":1,"project_id":3,"bidder_id":10,"retracted":false},
                {"id":2,"project_id":3,"bidder_id":11,"retracted":null},
                {"id":3,"project_id":3,"bidder_id":12}]}}"#,
        )
        .unwrap();
        assert_eq!(page.bids.len(), 3);
        assert_eq!(page.bids[1].retracted, None);
    }
}
