//! Tests of the parent module.

use super::*;

fn breakers() -> Breakers {
    Breakers::new(BreakerSettings {
        trip_after: 3,
        min_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(8),
    })
}

fn is_go(p: &Permit) -> bool {
    matches!(p, Permit::Go)
}

#[test]
fn transient_answers_count_until_the_streak_trips_the_breaker() {
    let (b, t0) = (breakers(), Instant::now());
    assert!(b.record("m", Signal::Transient, t0).counts);
    assert!(b.record("m", Signal::Transient, t0).counts);
    let third = b.record("m", Signal::Transient, t0);
    assert!(
        !third.counts,
        "the answer that trips it is the marketplace's, not the posting's"
    );
    assert!(matches!(
        b.permit("m", t0),
        Permit::Wait {
            reason: PauseReason::Unavailable,
            ..
        }
    ));
    assert_eq!(b.paused().len(), 1);
    // Other marketplaces are unaffected.
    assert!(is_go(&b.permit("other", t0)));
}

#[test]
fn a_success_in_between_resets_the_streak() {
    let (b, t0) = (breakers(), Instant::now());
    b.record("m", Signal::Transient, t0);
    b.record("m", Signal::Transient, t0);
    b.record("m", Signal::Answered, t0);
    assert!(b.record("m", Signal::Transient, t0).counts);
    assert!(is_go(&b.permit("m", t0)));
}

#[test]
fn after_the_pause_one_probe_goes_and_the_others_wait() {
    let (b, t0) = (breakers(), Instant::now());
    b.record("m", Signal::Unauthorized, t0);
    let later = t0 + Duration::from_secs(2);
    let Permit::Probe(probe) = b.permit("m", later) else {
        panic!("the pause is over: one probe");
    };
    assert!(matches!(b.permit("m", later), Permit::Wait { .. }));
    // The probe is refused again: paused for longer (backoff doubles).
    b.record_probe(probe, Signal::Unauthorized, later);
    let Permit::Wait { retry_in, reason } = b.permit("m", later) else {
        panic!("paused again");
    };
    assert_eq!(reason, PauseReason::Credentials);
    assert_eq!(retry_in, Duration::from_secs(2));
    // It answers: closed, nothing paused.
    let Permit::Probe(probe) = b.permit("m", later + retry_in) else {
        panic!("probe");
    };
    b.record_probe(probe, Signal::Answered, later + retry_in);
    assert!(is_go(&b.permit("m", later + retry_in)));
    assert!(b.paused().is_empty());
}

#[test]
fn answers_to_calls_made_before_the_pause_do_not_lengthen_it() {
    let (b, t0) = (breakers(), Instant::now());
    for _ in 0..3 {
        b.record("m", Signal::Transient, t0);
    }
    // Thirty calls that were in flight come back failed after the trip.
    for _ in 0..30 {
        assert!(!b.record("m", Signal::Transient, t0).counts);
    }
    let Permit::Wait { retry_in, .. } = b.permit("m", t0) else {
        panic!("paused");
    };
    assert_eq!(
        retry_in,
        Duration::from_secs(1),
        "still the first, shortest pause"
    );
}

#[test]
fn a_pause_nobody_needs_to_probe_expires() {
    let (b, t0) = (breakers(), Instant::now());
    b.record("m", Signal::Unauthorized, t0);
    // Due for a probe at +1s; still paused at +8s (the longest backoff after that).
    assert!(matches!(
        b.permit("m", t0 + Duration::from_millis(500)),
        Permit::Wait { .. }
    ));
    // Long after, with no posting having probed: over, the next call tells.
    assert!(is_go(&b.permit("m", t0 + Duration::from_secs(10))));
}

#[test]
fn an_unanswered_probe_hands_the_slot_back() {
    let (b, t0) = (breakers(), Instant::now());
    b.record("m", Signal::Unauthorized, t0);
    let later = t0 + Duration::from_secs(5);
    let probe = b.permit("m", later);
    drop(probe);
    assert!(matches!(b.permit("m", later), Permit::Probe(_)));
}

#[test]
fn rate_limits_pause_for_their_retry_after_and_never_count() {
    let (b, t0) = (breakers(), Instant::now());
    let v = b.record(
        "m",
        Signal::RateLimited {
            retry_after: Some(Duration::from_secs(30)),
        },
        t0,
    );
    assert!(!v.counts);
    let Permit::Wait { retry_in, reason } = b.permit("m", t0) else {
        panic!("paused");
    };
    assert_eq!(
        (retry_in, reason),
        (Duration::from_secs(30), PauseReason::RateLimited)
    );
}

#[test]
fn not_found_is_final_only_from_a_marketplace_that_answered_before() {
    let (b, t0) = (breakers(), Instant::now());
    // Never answered: suspect, not final; three in a row pause it as misconfigured.
    assert!(!b.record("m", Signal::NotFound, t0).not_found_is_final);
    assert!(!b.record("m", Signal::NotFound, t0).not_found_is_final);
    assert!(is_go(&b.permit("m", t0)));
    b.record("m", Signal::NotFound, t0);
    assert!(matches!(
        b.permit("m", t0),
        Permit::Wait {
            reason: PauseReason::NotFound,
            ..
        }
    ));
    // A marketplace that has answered: a 404 is about the posting.
    b.record("ok", Signal::Answered, t0);
    assert!(b.record("ok", Signal::NotFound, t0).not_found_is_final);
    assert!(is_go(&b.permit("ok", t0)));
}
