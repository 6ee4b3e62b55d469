//! The bid request as it goes over the wire: built once from the policy's decision, stored by
//! the claim, and re-sent byte for byte by every later attempt under the same idempotency key.

use rust_decimal::Decimal;

use crate::ledger::{StoredRequest, sha256_hex};
use crate::policy::format_amount;
use crate::posting::PostingKey;

/// The request body for bidding `amount` `currency` on `key` with `cover_letter`, and its hash.
pub fn stored_request(
    key: &PostingKey,
    amount: Decimal,
    currency: &str,
    cover_letter: &str,
) -> StoredRequest {
    // In the currency's minor unit (`450.00` USD, `60000` JPY): the policy's amount already is.
    let amount = format_amount(amount, currency);
    // serde_json's maps are sorted: the same decision always gives the same bytes.
    let body = serde_json::json!({
        "posting_id": key.posting_id(),
        "amount": { "value": amount, "currency": currency },
        "cover_letter": cover_letter,
    })
    .to_string();
    StoredRequest {
        sha256: sha256_hex(body.as_bytes()),
        body,
        amount,
        currency: currency.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_decision_gives_the_same_bytes_and_hash() {
        let key = PostingKey::new("upwork", "job_1").unwrap();
        let a = stored_request(&key, Decimal::new(450, 0), "USD", "Hello");
        let b = stored_request(&key, Decimal::new(45000, 2), "USD", "Hello");
        assert_eq!(a, b);
        assert_eq!(
            a.body,
            r#"{"amount":{"currency":"USD","value":"450.00"},"cover_letter":"Hello","posting_id":"job_1"}"#
        );
        assert_eq!(a.sha256.len(), 64);
        assert_ne!(
            a.sha256,
            stored_request(&key, Decimal::new(451, 0), "USD", "Hello").sha256
        );
    }
}
