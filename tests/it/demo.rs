//! The demo at small scale, as a user runs it: the embedded backends need no services; the real
//! backends run on the local RabbitMQ, Redis and PostgreSQL under names unique to the run.

use crate::support;

use std::collections::HashMap;

use bidorch::config::Settings;
use bidorch::demo::{self, DemoBackend, DemoOptions};

fn options(backend: DemoBackend) -> DemoOptions {
    DemoOptions {
        workers: 3,
        postings: 300,
        duplication: 3,
        poison: 5,
        seed: 7,
        backend,
        progress: false,
        // Every request creates a bid: duplicates must be stopped before the marketplace.
        naive_marketplace: true,
    }
}

fn assert_kept_the_promise(report: &demo::DemoReport) {
    assert_eq!(report.double_bids, 0, "{report}");
    assert_eq!(report.missing_bids, 0, "{report}");
    assert_eq!(report.wrong_bids, 0, "{report}");
    assert_eq!(report.bids, report.eligible as u64, "{report}");
    assert_eq!(report.dead_letters.values().sum::<u64>(), 5, "{report}");
    assert_eq!(report.ledger["placed"], report.eligible as u64, "{report}");
    assert_eq!(report.ledger["pending"], 0, "{report}");
    assert!(report.is_correct());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_demo_bids_once_per_eligible_posting_and_parks_poison() {
    let settings = Settings::load_from(None, &HashMap::new()).unwrap();
    let report = demo::run(&settings, &options(DemoBackend::Embedded))
        .await
        .expect("the embedded demo runs without services");
    assert_kept_the_promise(&report);
    for reason in [
        "invalid_json",
        "missing_field",
        "unknown_marketplace",
        "invalid_field",
        "too_large",
    ] {
        assert_eq!(
            report.dead_letters.get(reason),
            Some(&1),
            "{reason}: {report}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_demo_bids_once_per_eligible_posting_and_parks_poison() {
    if !(support::amqp_available().await
        && support::redis_available().await
        && support::postgres_available().await)
    {
        return;
    }
    let env: HashMap<String, String> = [
        ("AMQP_URL".to_owned(), support::amqp_url()),
        ("REDIS_URL".to_owned(), support::redis_url()),
        ("DATABASE_URL".to_owned(), support::database_url()),
    ]
    .into();
    let settings = Settings::load_from(None, &env).unwrap();
    let report = demo::run(&settings, &options(DemoBackend::Real))
        .await
        .expect("the real demo runs on the local services");
    assert_kept_the_promise(&report);
}
