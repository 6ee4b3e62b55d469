//! A dependency that cannot answer fails closed: no call, nothing recorded wrongly, and the
//! redelivery finishes the job (real backend: a TCP proxy cut in front of Redis or PostgreSQL).
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bidorch::app::LedgerPorts;
use bidorch::marketplace::sandbox::SandboxOptions;
use bidorch::pipeline::{Component, Outcome};

use super::*;
use crate::support::host_port;
use crate::support::system::{Backend, with_system};

#[tokio::test]
async fn an_unreachable_lock_store_fails_closed_without_a_call() {
    with_system(
        Backend::Real,
        SandboxOptions::default(),
        |stack| async move {
            let mut proxy = TcpProxy::start(&host_port(&support::redis_url(), 6379)).await;
            let settings = stack.settings(&[
                ("REDIS_URL", proxy.url_for(&support::redis_url())),
                ("BIDORCH__BIDDING__MIN_BUDGET", "200".to_owned()),
            ]);
            let system = stack.system(&settings, None, None).await;
            proxy.cut().await;
            let k = key("no-redis");
            let outcome = process(&system, &event("no-redis", "Rust service", "500")).await;
            assert!(
                matches!(
                    outcome,
                    Outcome::Unavailable {
                        component: Component::LockStore,
                        ..
                    }
                ),
                "{outcome:?}"
            );
            assert_eq!(stack.requests(&k), 0, "no call without a lease");
            proxy.restore().await;
        },
    )
    .await;
}

#[tokio::test]
async fn an_unreachable_ledger_fails_closed_before_and_after_the_call() {
    with_system(
        Backend::Real,
        SandboxOptions::default(),
        |stack| async move {
            let upstream = host_port(&support::database_url(), 5432);
            // Before anything: the lookup cannot answer, nothing is called.
            let mut proxy = TcpProxy::start(&upstream).await;
            let via_proxy = |proxy: &TcpProxy| {
                let mut o = rules();
                o.push(("DATABASE_URL", proxy.url_for(&support::database_url())));
                o
            };
            let settings = stack.settings(&via_proxy(&proxy));
            let system = stack.system(&settings, None, None).await;
            proxy.cut().await;
            let k = key("no-pg");
            let outcome = process(&system, &event("no-pg", "Rust service", "500")).await;
            assert!(
                matches!(
                    outcome,
                    Outcome::Unavailable {
                        component: Component::Ledger,
                        ..
                    }
                ),
                "{outcome:?}"
            );
            assert_eq!(stack.requests(&k), 0);
            drop(system);

            // Between the call and the record: the bid exists, the row stays pending, and the
            // redelivery records the same bid.
            let proxy = TcpProxy::start(&upstream).await;
            let settings = stack.settings(&via_proxy(&proxy));
            let (ledger, _) = stack.ports(&settings).await;
            let hooked = LedgerPorts {
                ledger: Arc::new(Hooked {
                    inner: ledger.ledger,
                    hook: BeforeFinish::Cut(tokio::sync::Mutex::new(proxy)),
                    armed: AtomicBool::new(true),
                }),
                reports: ledger.reports,
                controls: ledger.controls,
            };
            let system = stack.system(&settings, Some(hooked), None).await;
            let k = key("pg-lost-after-call");
            let outcome =
                process(&system, &event("pg-lost-after-call", "Rust service", "500")).await;
            assert!(
                matches!(
                    outcome,
                    Outcome::Unavailable {
                        component: Component::Ledger,
                        ..
                    }
                ),
                "{outcome:?}"
            );
            let first = stack.bids(&k);
            assert_eq!(first.len(), 1);
            let direct = stack.settings(&rules());
            let system = stack.system(&direct, None, None).await;
            let outcome =
                process(&system, &event("pg-lost-after-call", "Rust service", "500")).await;
            assert!(
                matches!(&outcome, Outcome::Placed { bid_id: Some(id), .. } if *id == first[0]),
                "{outcome:?}"
            );
            assert_eq!(stack.bids(&k), first);
        },
    )
    .await;
}
