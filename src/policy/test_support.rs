//! Fixtures shared by the policy's unit tests: one eligible posting and a time parser.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::posting::{Budget, BudgetKind, ClientInfo, Posting, PostingKey};

/// `2026-11-26T12:00:00Z` and the like.
pub fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("tests pass valid times")
        .with_timezone(&Utc)
}

/// The spec's example posting: upwork, 500–1500 USD fixed, rust/redis/rabbitmq, a verified US
/// client rated 4.8, posted at 10:00 on 2026-11-26.
pub fn posting() -> Posting {
    Posting {
        event_id: "e1".into(),
        key: PostingKey::new("upwork", "job_123").expect("valid key"),
        title: "Build a Rust worker".into(),
        description: "Consume events from RabbitMQ".into(),
        budget: Some(Budget {
            min: Some(Decimal::new(500, 0)),
            max: Some(Decimal::new(1500, 0)),
            currency: "USD".into(),
            kind: BudgetKind::Fixed,
        }),
        skills: vec!["rust".into(), "redis".into(), "rabbitmq".into()],
        client: ClientInfo {
            rating: Some(4.8),
            payment_verified: Some(true),
            country: Some("US".into()),
        },
        posted_at: Some(at("2026-11-26T10:00:00Z")),
        url: Some("https://example.invalid/jobs/123".into()),
        bid_cost: None,
    }
}
