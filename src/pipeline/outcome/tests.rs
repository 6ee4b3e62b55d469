//! Tests of the parent module.

use super::*;

const RULES: RetryRules = RetryRules {
    lock_held: Duration::from_secs(1),
    unavailable: Duration::from_secs(10),
    transient: Duration::from_secs(5),
    max_attempts: 3,
    retry_budget: Duration::from_secs(24 * 3600),
};

fn first() -> Envelope {
    Envelope {
        attempt: 1,
        age: Duration::ZERO,
    }
}

fn at(attempt: u32, age: Duration) -> Envelope {
    Envelope { attempt, age }
}

#[test]
fn final_outcomes_ack() {
    for o in [
        Outcome::Duplicate(LedgerState::Placed),
        Outcome::Skipped { reasons: vec![] },
        Outcome::Placed {
            bid_id: None,
            via: PlacedVia::Conflict,
        },
        Outcome::Rejected { status: 422 },
    ] {
        assert_eq!(o.action(&first(), &RULES), Action::Ack, "{o:?}");
    }
}

#[test]
fn a_held_lease_waits_for_its_holder_without_counting() {
    let o = Outcome::LockHeld {
        retry_in: Duration::from_secs(31),
    };
    assert_eq!(
        o.action(&first(), &RULES),
        Action::Retry {
            delay: Duration::from_secs(31),
            reason: "lock_held",
            counts: false
        }
    );
    // However many times: waiting is not failing.
    assert!(matches!(
        o.action(&at(100, Duration::from_secs(3600)), &RULES),
        Action::Retry { counts: false, .. }
    ));
}

#[test]
fn outages_and_pauses_wait_without_counting_however_long() {
    let outcomes = [
        Outcome::Unavailable {
            component: Component::LockStore,
            error: "down".into(),
        },
        Outcome::Deferred {
            dependency: Dependency::Ledger,
        },
        Outcome::MarketplacePaused {
            reason: PauseReason::Credentials,
            retry_in: Duration::from_secs(2),
        },
        Outcome::NotYet {
            remaining: Duration::from_secs(40),
        },
        Outcome::LookupWait {
            retry_in: Duration::from_secs(10),
        },
        Outcome::LeaseLost,
        Outcome::Superseded,
    ];
    for o in outcomes {
        let action = o.action(
            &at(RULES.max_attempts + 5, Duration::from_secs(7200)),
            &RULES,
        );
        assert!(
            matches!(action, Action::Retry { counts: false, .. }),
            "{o:?} -> {action:?}"
        );
    }
}

#[test]
fn transient_answers_count_only_without_retry_after_and_while_healthy() {
    let transient = |retry_after, counts| Outcome::Transient {
        reason: "503".into(),
        retry_after,
        counts,
    };
    assert_eq!(
        transient(None, true).action(&first(), &RULES),
        Action::Retry {
            delay: RULES.transient,
            reason: "marketplace_transient",
            counts: true
        }
    );
    assert!(matches!(
        transient(Some(Duration::from_secs(3600)), true).action(&first(), &RULES),
        Action::Retry { delay, counts: false, .. } if delay == Duration::from_secs(3600)
    ));
    assert!(matches!(
        transient(None, false).action(&first(), &RULES),
        Action::Retry { counts: false, .. }
    ));
}

#[test]
fn the_posting_own_failures_park_it_at_max_attempts() {
    let o = Outcome::Transient {
        reason: "HTTP 500".into(),
        retry_after: None,
        counts: true,
    };
    assert_eq!(
        o.action(&at(RULES.max_attempts, Duration::ZERO), &RULES),
        Action::DeadLetter {
            reason: "max_attempts",
            detail: "3 attempts; last: marketplace_transient".to_owned()
        }
    );
}

#[test]
fn any_wait_past_the_retry_budget_is_parked() {
    let o = Outcome::LockHeld {
        retry_in: Duration::from_secs(1),
    };
    let old = at(1, RULES.retry_budget + Duration::from_secs(1));
    assert!(matches!(
        o.action(&old, &RULES),
        Action::DeadLetter {
            reason: "retry_budget_exhausted",
            ..
        }
    ));
    // A final outcome is still acked, however old.
    assert_eq!(
        Outcome::Rejected { status: 422 }.action(&old, &RULES),
        Action::Ack
    );
}

#[test]
fn poison_dead_letters_with_its_reason() {
    let o = Outcome::Poison(PostingError::MissingField("title"));
    assert!(matches!(
        o.action(&first(), &RULES),
        Action::DeadLetter {
            reason: "missing_field",
            ..
        }
    ));
}

/// One outcome of each kind — every variant, every failing component — and its position in
/// the declaration: the match below has no wildcard, so a new variant must be added here.
fn one_of_each() -> Vec<Outcome> {
    let all = vec![
        Outcome::Poison(PostingError::MissingField("title")),
        Outcome::Duplicate(LedgerState::Placed),
        Outcome::LockHeld {
            retry_in: Duration::from_secs(1),
        },
        Outcome::Unavailable {
            component: Component::LockStore,
            error: String::new(),
        },
        Outcome::Unavailable {
            component: Component::Ledger,
            error: String::new(),
        },
        Outcome::Unavailable {
            component: Component::Marketplace,
            error: String::new(),
        },
        Outcome::Unavailable {
            component: Component::Scoring,
            error: String::new(),
        },
        Outcome::Deferred {
            dependency: Dependency::Ledger,
        },
        Outcome::NotYet {
            remaining: Duration::from_secs(1),
        },
        Outcome::MarketplacePaused {
            reason: PauseReason::Unavailable,
            retry_in: Duration::from_secs(1),
        },
        Outcome::RateLimited {
            retry_in: Duration::from_secs(1),
        },
        Outcome::LookupWait {
            retry_in: Duration::from_secs(1),
        },
        Outcome::Skipped { reasons: vec![] },
        Outcome::Placed {
            bid_id: None,
            via: PlacedVia::New,
        },
        Outcome::Transient {
            reason: String::new(),
            retry_after: None,
            counts: true,
        },
        Outcome::Rejected { status: 422 },
        Outcome::LeaseLost,
        Outcome::Superseded,
    ];
    for o in &all {
        match o {
            Outcome::Poison(_)
            | Outcome::Duplicate(_)
            | Outcome::LockHeld { .. }
            | Outcome::Unavailable { .. }
            | Outcome::Deferred { .. }
            | Outcome::NotYet { .. }
            | Outcome::MarketplacePaused { .. }
            | Outcome::RateLimited { .. }
            | Outcome::LookupWait { .. }
            | Outcome::Skipped { .. }
            | Outcome::Placed { .. }
            | Outcome::Transient { .. }
            | Outcome::Rejected { .. }
            | Outcome::LeaseLost
            | Outcome::Superseded => {}
        }
    }
    all
}

#[test]
fn every_outcome_label_is_listed_once_and_each_listed_one_exists() {
    let labels: Vec<&str> = one_of_each().iter().map(Outcome::label).collect();
    let mut listed = Outcome::LABELS.to_vec();
    listed.sort_unstable();
    let mut seen = labels.clone();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, listed);
    assert_eq!(seen.len(), labels.len(), "two outcomes share a label");
}
