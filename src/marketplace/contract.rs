//! The contract API (`api = "contract"`): bidorch's own bid contract, spoken by a team's bid
//! gateway and the sandbox — `POST {base_url}/v1/postings/{posting_id}/bids` with a bearer
//! token and `Idempotency-Key: {marketplace}:{posting_id}`, `201`/`200` placed or replayed,
//! `409` already placed. A send whose answer was lost is simply sent again under the same key: it
//! can only replay the bid, so this API needs no lookup.

use async_trait::async_trait;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;

use super::classify::classify;
use super::client::{Api, Endpoint, Exchange, secret_header};
use super::{
    BidRequest, BidResult, BidTerms, Capabilities, LiveCheck, Lookup, LookupRequest, RequestRefusal,
};
use crate::config::MarketplaceApi;
use crate::ledger::{StoredRequest, sha256_hex};
use crate::policy::format_amount;
use crate::posting::PostingKey;

/// The request body. Its fields, and those of [`Amount`], are in alphabetical order: the bytes
/// are what the first version wrote from a sorted JSON map, and a re-sent request must be byte
/// for byte the stored one.
#[derive(Serialize)]
struct Body<'a> {
    amount: Amount<'a>,
    cover_letter: &'a str,
    posting_id: &'a str,
}

#[derive(Serialize)]
struct Amount<'a> {
    currency: &'a str,
    value: &'a str,
}

/// The request body for bidding `terms` on `key`, and its hash.
pub fn stored_request(key: &PostingKey, terms: &BidTerms) -> StoredRequest {
    // In the currency's minor unit (`450.00` USD, `60000` JPY): the policy's amount already is.
    let amount = format_amount(terms.amount, &terms.currency);
    let body = serde_json::to_string(&Body {
        amount: Amount {
            currency: &terms.currency,
            value: &amount,
        },
        cover_letter: &terms.cover_letter,
        posting_id: key.posting_id(),
    })
    .expect("a struct of strings always serialises");
    StoredRequest {
        api: MarketplaceApi::Contract.as_str().to_owned(),
        sha256: sha256_hex(body.as_bytes()),
        body,
        amount,
        currency: terms.currency.clone(),
    }
}

/// A marketplace speaking the contract.
pub(crate) struct ContractApi {
    endpoint: Endpoint,
}

impl ContractApi {
    pub(crate) fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
    }
}

#[async_trait]
impl Api for ContractApi {
    fn kind(&self) -> MarketplaceApi {
        MarketplaceApi::Contract
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            idempotency_keys: true,
            lookup: false,
            lookup_delay: self.endpoint.timeout,
        }
    }

    async fn request_for(
        &self,
        key: &PostingKey,
        terms: &BidTerms,
    ) -> Result<StoredRequest, RequestRefusal> {
        Ok(stored_request(key, terms))
    }

    async fn place(&self, bid: &BidRequest) -> BidResult {
        let token = self.endpoint.token();
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, secret_header(&format!("Bearer {token}")));
        if let Ok(key) = HeaderValue::from_str(&bid.key.idempotency_key()) {
            // Always valid: a PostingKey is printable ASCII.
            headers.insert(HeaderName::from_static("idempotency-key"), key);
        }
        let url = self
            .endpoint
            .url(&["v1", "postings", bid.key.posting_id(), "bids"]);
        self.endpoint
            .send_bid(url, headers, bid, |answer| {
                classify(answer, token, chrono::Utc::now())
            })
            .await
    }

    /// The contract has no lookup: nothing can be known this way.
    async fn find(&self, _lookup: &LookupRequest) -> Lookup {
        Lookup::Unanswered {
            reason: "the contract API has no lookup".to_owned(),
            status: None,
        }
    }

    /// Without placing a bid the contract offers nothing that proves the token: the check is
    /// whether `base_url` answers HTTP at all (any status).
    async fn check(&self) -> LiveCheck {
        let url = self.endpoint.url(&[]);
        match self
            .endpoint
            .get(url, HeaderMap::new(), &Default::default())
            .await
        {
            Exchange::Answered { status, .. } => LiveCheck {
                ok: true,
                detail: format!(
                    "base_url answers (HTTP {status}); the token is not checked: the contract \
                     has no call that proves it without placing a bid"
                ),
            },
            Exchange::Failed { reason, .. } => LiveCheck {
                ok: false,
                detail: format!("base_url does not answer: {reason}"),
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
    use rust_decimal::Decimal;

    fn terms(amount: Decimal, currency: &str, letter: &str) -> BidTerms {
        BidTerms {
            amount,
            currency: currency.to_owned(),
            cover_letter: letter.to_owned(),
        }
    }

    #[test]
    fn the_same_decision_gives_the_same_bytes_and_hash() {
        let key = PostingKey::new("upwork", "job_1").unwrap();
        let a = stored_request(&key, &terms(Decimal::new(450, 0), "USD", "Hello"));
        let b = stored_request(&key, &terms(Decimal::new(45000, 2), "USD", "Hello"));
        assert_eq!(a, b);
        assert_eq!(a.api, "contract");
        assert_eq!(
            a.body,
            r#"{"amount":{"currency":"USD","value":"450.00"},"cover_letter":"Hello","posting_id":"job_1"}"#
        );
        assert_eq!(a.sha256.len(), 64);
        assert_ne!(
            a.sha256,
            stored_request(&key, &terms(Decimal::new(451, 0), "USD", "Hello")).sha256
        );
    }

    #[test]
    fn the_bytes_are_those_of_a_sorted_json_map_whatever_the_letter_holds() {
        let key = PostingKey::new("upwork", "job_\"1").unwrap();
        let letter = "Line 1\n\"quoted\" <b>é€</b>\t\u{1}";
        let sent = stored_request(&key, &terms(Decimal::new(45000, 2), "EUR", letter));
        // How requests stored before this code were written: a map serialised in key order.
        let stored_earlier = serde_json::json!({
            "posting_id": key.posting_id(),
            "amount": { "value": "450.00", "currency": "EUR" },
            "cover_letter": letter,
        })
        .to_string();
        assert_eq!(sent.body, stored_earlier);
    }
}
