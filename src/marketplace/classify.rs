//! Classifying a marketplace's HTTP answer: placed, replay, conflict, transient or rejected — by
//! the contract ([`classify`]), and the error statuses every API shares ([`classify_error`]).
//! Pure (no I/O, the clock is a parameter) so every branch has a unit test.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::BidResult;

/// Longest body excerpt kept in a [`BidResult`], in characters.
pub(crate) const EXCERPT_CHARS: usize = 200;

/// Longest `bid_id` accepted; anything longer is not a well-formed answer.
const MAX_BID_ID_CHARS: usize = 256;

/// A response as far as classification cares.
pub(crate) struct Answer<'a> {
    pub status: u16,
    pub retry_after: Option<&'a str>,
    pub body: &'a [u8],
}

/// Maps a response to a [`BidResult`]. `secret` (the bearer token) is masked in any excerpt, in
/// case a marketplace echoes the request back.
///
/// Statuses the contract does not name (1xx, 3xx — redirects are not followed —, a 2xx other
/// than 200/201, or a 200/201 without a `bid_id`) leave the outcome unknown, so they are
/// transient: a retry carries the same idempotency key and cannot create a second bid, and a
/// persistent problem ends in the dead-letter queue where an operator sees it, instead of a
/// false final outcome in the ledger.
pub(crate) fn classify(answer: &Answer<'_>, secret: &str, now: DateTime<Utc>) -> BidResult {
    let status = answer.status;
    match status {
        200 | 201 => match bid_id(answer.body) {
            Some(bid_id) => BidResult::Placed {
                bid_id,
                replay: status == 200,
            },
            None => unknown_success(status),
        },
        409 => BidResult::AlreadyPlaced {
            bid_id: bid_id(answer.body),
            detail: excerpt(answer.body, secret),
        },
        _ => classify_error(answer, secret, now),
    }
}

/// A success status whose body does not say which bid: what happened is unknown.
pub(crate) fn unknown_success(status: u16) -> BidResult {
    BidResult::Transient {
        reason: format!("HTTP {status} without a bid id; outcome unknown"),
        retry_after: None,
        status: Some(status),
        reached: true,
    }
}

/// The statuses every API means the same by: `429` slow down, `408`/`5xx` transient, `401`,
/// `403`, `407` our credentials, any other `4xx` a refusal, anything else unknown (transient).
pub(crate) fn classify_error(answer: &Answer<'_>, secret: &str, now: DateTime<Utc>) -> BidResult {
    let status = answer.status;
    match status {
        429 => BidResult::RateLimited {
            retry_after: answer
                .retry_after
                .and_then(|value| parse_retry_after(value, now)),
        },
        // 408 is the server timing out on us: a timeout, hence transient like ours.
        408 | 500..=599 => BidResult::Transient {
            reason: format!("HTTP {status}"),
            retry_after: answer
                .retry_after
                .and_then(|value| parse_retry_after(value, now)),
            status: Some(status),
            reached: true,
        },
        401 | 403 | 407 => BidResult::Unauthorized { status },
        400..=499 => BidResult::Rejected {
            status,
            body_excerpt: excerpt(answer.body, secret),
        },
        _ => BidResult::Transient {
            reason: format!("unexpected HTTP {status}; outcome unknown"),
            retry_after: None,
            status: Some(status),
            reached: true,
        },
    }
}

/// The `bid_id` of a `{"bid_id": "..."}` body, if well formed.
fn bid_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Placed {
        bid_id: String,
    }
    let placed: Placed = serde_json::from_slice(body).ok()?;
    let id = placed.bid_id;
    let well_formed = !id.is_empty()
        && id.chars().count() <= MAX_BID_ID_CHARS
        && !id.chars().any(char::is_control);
    well_formed.then_some(id)
}

/// The longest `Retry-After` taken at its word; a larger one (or a date further away) is read as
/// this much: the posting keeps waiting, bounded by `amqp.retry_budget` anyway, and no clock
/// arithmetic overflows on a marketplace's nonsense.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// `Retry-After` as delta-seconds or an HTTP-date (past dates mean "now"), at most
/// [`MAX_RETRY_AFTER`].
pub(crate) fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    parse_retry_after_unbounded(value, now).map(|d| d.min(MAX_RETRY_AFTER))
}

fn parse_retry_after_unbounded(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Digits beyond u64 are still "a very long time".
        return Some(
            value
                .parse::<u64>()
                .map_or(Duration::MAX, Duration::from_secs),
        );
    }
    // IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") is a valid RFC 2822 date.
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// The first [`EXCERPT_CHARS`] characters of a body, safe to store and log: lossy UTF-8, control
/// characters as spaces, `secret` masked (before truncating, so no part of it survives).
pub(crate) fn excerpt(body: &[u8], secret: &str) -> String {
    let mut text = String::from_utf8_lossy(body).into_owned();
    if !secret.is_empty() {
        text = text.replace(secret, "***");
    }
    let mut out: String = text
        .chars()
        .take(EXCERPT_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(EXCERPT_CHARS).is_some() {
        out.push('…');
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn answer(status: u16, retry_after: Option<&str>, body: &str) -> BidResult {
        let a = Answer {
            status,
            retry_after,
            body: body.as_bytes(),
        };
        classify(&a, "tok3n", now())
    }

    #[test]
    fn created_and_replayed_are_placed() {
        assert_eq!(
            answer(201, None, r#"{"bid_id":"b1"}"#),
            BidResult::Placed {
                bid_id: "b1".into(),
                replay: false
            }
        );
        assert_eq!(
            answer(200, None, r#"{"bid_id":"b1","extra":1}"#),
            BidResult::Placed {
                bid_id: "b1".into(),
                replay: true
            }
        );
    }

    #[test]
    fn success_without_bid_id_is_transient() {
        for body in ["", "{}", r#"{"bid_id":""}"#, r#"{"bid_id":7}"#, "<html>"] {
            assert_eq!(answer(201, None, body).label(), "transient", "{body}");
        }
    }

    #[test]
    fn conflict_is_already_placed_with_detail() {
        assert_eq!(
            answer(409, None, "bid exists"),
            BidResult::AlreadyPlaced {
                bid_id: None,
                detail: "bid exists".into()
            }
        );
        assert_eq!(
            answer(409, None, r#"{"bid_id":"b_7"}"#),
            BidResult::AlreadyPlaced {
                bid_id: Some("b_7".into()),
                detail: r#"{"bid_id":"b_7"}"#.into()
            }
        );
    }

    #[test]
    fn throttling_server_errors_and_timeouts_are_transient() {
        for status in [408, 500, 502, 503, 504] {
            assert_eq!(answer(status, None, "").label(), "transient", "{status}");
        }
        let BidResult::RateLimited { retry_after } = answer(429, Some(" 7 "), "") else {
            panic!("429 is a rate limit");
        };
        assert_eq!(retry_after, Some(Duration::from_secs(7)));
        let BidResult::Transient { retry_after, .. } = answer(503, Some("120"), "") else {
            panic!("503 is transient");
        };
        assert_eq!(retry_after, Some(Duration::from_secs(120)));
    }

    #[test]
    fn other_client_errors_are_rejected_with_excerpt() {
        assert_eq!(
            answer(422, None, "bad\namount"),
            BidResult::Rejected {
                status: 422,
                body_excerpt: "bad amount".into()
            }
        );
        assert_eq!(answer(404, None, "").label(), "rejected");
    }

    #[test]
    fn credential_refusals_are_not_a_verdict_on_the_posting() {
        for status in [401, 403, 407] {
            assert_eq!(answer(status, None, "").label(), "unauthorized", "{status}");
        }
    }

    #[test]
    fn unexpected_statuses_are_transient() {
        for status in [202, 204, 301, 302, 307] {
            assert_eq!(answer(status, None, "").label(), "transient", "{status}");
        }
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        assert_eq!(
            parse_retry_after("120", now()),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Thu, 26 Nov 2026 10:00:30 GMT", now()),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Thu, 26 Nov 2026 09:00:00 GMT", now()),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now()), None);
        assert_eq!(
            parse_retry_after("99999999999999999999999", now()),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            parse_retry_after("Fri, 01 Jan 9999 00:00:00 GMT", now()),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("-5", now()), None);
        assert_eq!(parse_retry_after("", now()), None);
    }

    #[test]
    fn excerpt_is_bounded_sanitised_and_masks_the_secret() {
        let long = "x".repeat(500);
        let e = excerpt(long.as_bytes(), "");
        assert_eq!(e.chars().count(), EXCERPT_CHARS + 1);
        assert!(e.ends_with('…'));
        let e = excerpt(b"token tok3n\r\nechoed\x1b[31m", "tok3n");
        assert!(!e.contains("tok3n"), "{e}");
        assert!(!e.chars().any(char::is_control), "{e}");
        // A secret straddling the cut is masked before truncation, so no prefix of it remains.
        let body = format!("{}tok3n", "y".repeat(EXCERPT_CHARS - 2));
        assert!(!excerpt(body.as_bytes(), "tok3n").contains("to"));
        assert_eq!(excerpt(&[0xff, 0xfe, b'o', b'k'], ""), "\u{fffd}\u{fffd}ok");
    }
}
