//! bidorch's own headers on a message — the retry envelope: the attempt count, why it waits or
//! was parked, when bidorch first took it and when it may be worked on again — and the rule that
//! a publisher's copy of them is never trusted. Shared by the sources, the AMQP copies and `dlq`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Header carrying the attempt number: 1 + the posting's own failures so far.
pub const ATTEMPT_HEADER: &str = "x-bidorch-attempt";
/// Header carrying the reason a message was parked or retried.
pub const REASON_HEADER: &str = "x-bidorch-reason";
/// Header carrying the human-readable detail of that reason.
pub const DETAIL_HEADER: &str = "x-bidorch-detail";
/// Header carrying when bidorch first took the message (Unix milliseconds): the start of its
/// `amqp.retry_budget`.
pub const FIRST_SEEN_HEADER: &str = "x-bidorch-first-seen";
/// Header carrying the earliest time the message should be worked on again (Unix
/// milliseconds): a wait longer than the largest retry tier hops through the wait queues until
/// then, without counting an attempt.
pub const NOT_BEFORE_HEADER: &str = "x-bidorch-not-before";

/// Whether `name` is one of the headers bidorch owns (`x-bidorch-*`, any case). A publisher's
/// copy of them is never trusted: sources drop them unless the message came back through our
/// own wait queues.
pub fn is_own_header(name: &str) -> bool {
    // Compared as bytes: a header name is publisher input, and byte 10 need not be a character
    // boundary (`x-bidorché`).
    const PREFIX: &[u8] = b"x-bidorch-";
    name.as_bytes()
        .get(..PREFIX.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(PREFIX))
}

/// Milliseconds since the Unix epoch (0 before it; saturating far in the future).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time `ms` milliseconds after the Unix epoch, if representable.
pub fn from_unix_ms(ms: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_headers_are_recognised_in_any_case_and_odd_names_never_panic() {
        assert!(is_own_header("x-bidorch-attempt"));
        assert!(is_own_header("X-BidOrch-Reason"));
        assert!(!is_own_header("x-bidorch"));
        assert!(!is_own_header("traceparent"));
        // A multi-byte character across byte 10 once panicked every worker of the fleet.
        for name in [
            "x-bidorché",
            "éééééx",
            "x-bidorc\u{e9}-",
            "ééééé",
            "",
            "€€€€",
        ] {
            assert!(!is_own_header(name), "{name}");
        }
        assert!(is_own_header("x-bidorch-é"));
    }
}
