//! The bid request as it goes over the wire: built once from the policy's decision, stored by
//! the claim, and re-sent byte for byte by every later attempt under the same idempotency key.

use rust_decimal::Decimal;
use serde::Serialize;

use crate::ledger::{StoredRequest, sha256_hex};

/// The body as sent. Its fields, and those of [`Amount`], are in alphabetical order: the bytes
/// are what the first version wrote from a sorted JSON map, and a re-sent request must be
/// byte for byte the stored one.
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
    let body = serde_json::to_string(&Body {
        amount: Amount {
            currency,
            value: &amount,
        },
        cover_letter,
        posting_id: key.posting_id(),
    })
    .expect("a struct of strings always serialises");
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

    #[test]
    fn the_bytes_are_those_of_a_sorted_json_map_whatever_the_letter_holds() {
        let key = PostingKey::new("upwork", "job_\"1").unwrap();
        let letter = "Line 1\n\"quoted\" <b>é€</b>\t\u{1}";
        let sent = stored_request(&key, Decimal::new(45000, 2), "EUR", letter);
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
