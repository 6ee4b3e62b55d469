//! Property tests over what a publisher controls — the AMQP headers table (any names, any value
//! types, nested tables and arrays, byte arrays, many entries) and the body — through delivery
//! conversion, the header copies of retries and dead letters, and event parsing: never a panic,
//! a publisher's envelope never trusted, a valid posting always parsed, a bad one poison with a
//! reason. `PROPTEST_CASES` overrides the case count (CI runs the default).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, DecimalValue, FieldTable, LongString, ShortString};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

use super::consumer::inbound;
use crate::amqp::headers::{Route, copy_headers, copy_properties, is_broker_header};
use crate::posting::{MAX_EVENT_BYTES, Posting};
use crate::source::{Requeue, is_own_header};

const QUEUE: &str = "bidorch.postings";

/// Header names as a publisher may write them: any text a short string holds, ours and the
/// broker's in any case, multi-byte characters anywhere (byte 10 included).
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,24}",
        "[xX]-[bB][iI][dD][oO][rR][cC][hH]-?\\PC{0,8}",
        "x-bidorc\\PC{1,4}",
        "\\PC{1,5}x-bidorch-",
        Just("x-death".to_owned()),
        Just("x-delivery-count".to_owned()),
        "x-(first|last)-death-\\PC{0,6}",
        Just("traceparent".to_owned()),
        Just("TraceParent".to_owned()),
        "é{1,12}x?",
        ".{200,255}",
    ]
    .prop_filter("a short string holds at most 255 bytes", |n| n.len() <= 255)
}

fn table_of(entries: BTreeMap<String, AMQPValue>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in entries {
        table.insert(ShortString::from(k), v);
    }
    table
}

/// Any AMQP field value, nested up to three levels.
fn value() -> impl Strategy<Value = AMQPValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<f32>().prop_map(AMQPValue::Float),
        any::<f64>().prop_map(AMQPValue::Double),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
        name().prop_map(|s| AMQPValue::ShortString(s.into())),
        vec(any::<u8>(), 0..48).prop_map(|b| AMQPValue::LongString(LongString::from(b))),
        "\\PC{0,24}".prop_map(|s| AMQPValue::LongString(s.into())),
        "[0-9]{1,25}".prop_map(|s| AMQPValue::LongString(s.into())),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        vec(any::<u8>(), 0..48).prop_map(|b| AMQPValue::ByteArray(b.into())),
        Just(AMQPValue::Void),
    ];
    leaf.prop_recursive(3, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(|v| AMQPValue::FieldArray(v.into())),
            btree_map(name(), inner, 0..6).prop_map(|m| AMQPValue::FieldTable(table_of(m))),
        ]
    })
}

/// An `x-death` as the broker writes it after a hop through one of our wait queues.
fn wait_queue_death() -> AMQPValue {
    let mut death = FieldTable::default();
    death.insert(
        "queue".into(),
        AMQPValue::LongString(format!("{QUEUE}.retry.1s").into()),
    );
    death.insert("reason".into(), AMQPValue::LongString("expired".into()));
    death.insert("count".into(), AMQPValue::LongLongInt(1));
    AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into())
}

/// A headers table: random entries, sometimes a plausible `x-death` naming our wait queue, and
/// sometimes many entries.
fn headers() -> impl Strategy<Value = FieldTable> {
    (
        btree_map(name(), value(), 0..12),
        any::<bool>(),
        prop_oneof![Just(0usize), 0usize..400],
    )
        .prop_map(|(entries, forge_death, many)| {
            let mut table = table_of(entries);
            if forge_death {
                table.insert("x-death".into(), wait_queue_death());
            }
            for i in 0..many {
                table.insert(format!("h{i}").into(), AMQPValue::LongLongInt(i as i64));
            }
            table
        })
}

/// Where the delivery came from: the topic exchange (every publisher), or the default exchange
/// with the work queue's name (what our wait queues do).
fn route() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        Just(("postings".to_owned(), "posting.upwork".to_owned())),
        Just((String::new(), QUEUE.to_owned())),
        ("\\PC{0,8}", "\\PC{0,12}"),
    ]
}

fn valid_body(posting_id: &str) -> Vec<u8> {
    serde_json::json!({
        "event_id": "e-1", "marketplace": "upwork", "posting_id": posting_id, "title": "t",
        "budget": {"min": 10, "max": "1200.00", "currency": "USD"},
    })
    .to_string()
    .into_bytes()
}

fn cases() -> ProptestConfig {
    ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(512),
    )
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn any_headers_convert_without_panic_and_a_publishers_envelope_is_never_trusted(
        table in headers(),
        (exchange, routing_key) in route(),
    ) {
        let route = Route { exchange: &exchange, routing_key: &routing_key };
        let got = inbound(&table, route, QUEUE);
        let from_wait_queue = exchange.is_empty() && routing_key == QUEUE
            && table.inner().get("x-death") == Some(&wait_queue_death());
        if !from_wait_queue {
            prop_assert_eq!(got.attempt, 1);
            prop_assert!(got.first_seen.is_none() && got.not_before.is_none());
            prop_assert!(!got.headers.keys().any(|k| is_own_header(k)), "{:?}", got.headers);
        }
        // Every other string header rides along (lower-cased), however odd its name.
        for (k, v) in table.inner() {
            let string = matches!(v, AMQPValue::LongString(_) | AMQPValue::ShortString(_));
            if string && !is_own_header(k.as_str()) {
                prop_assert!(got.headers.contains_key(&k.as_str().to_ascii_lowercase()), "{}", k);
            }
        }
    }

    #[test]
    fn copies_for_retries_and_dead_letters_take_any_headers_and_keep_none_of_the_brokers(
        table in headers(),
        (exchange, routing_key) in route(),
        attempt in 1u32..1000,
    ) {
        let original = BasicProperties::default()
            .with_headers(table.clone())
            .with_message_id("ev-1".into());
        let route = Route { exchange: &exchange, routing_key: &routing_key };
        let got = inbound(&table, route, QUEUE);
        let requeue = Requeue {
            body: b"{}".to_vec(),
            next_attempt: attempt,
            headers: got.headers.clone(),
            delay: Duration::from_secs(1),
            reason: "marketplace_transient".to_owned(),
            first_seen: SystemTime::now(),
            not_before: SystemTime::now().checked_add(Duration::from_secs(1)),
        };
        for strings in [requeue.envelope_headers(), got.headers] {
            let copy = copy_headers(&original, &strings);
            prop_assert!(!copy.inner().keys().any(|k| is_broker_header(k.as_str())));
            let props = copy_properties(&original, copy);
            prop_assert_eq!(props.delivery_mode(), &Some(2));
        }
    }

    #[test]
    fn any_body_parses_or_is_poison_with_a_reason(body in vec(any::<u8>(), 0..512)) {
        match Posting::parse(&body, |m| m == "upwork") {
            Ok(posting) => prop_assert_eq!(posting.key.marketplace(), "upwork"),
            Err(e) => prop_assert!(!e.reason().is_empty()),
        }
    }

    #[test]
    fn any_json_event_parses_or_is_poison_with_a_reason(
        event in btree_map(
            prop_oneof![
                Just("event_id".to_owned()), Just("marketplace".to_owned()),
                Just("posting_id".to_owned()), Just("title".to_owned()),
                Just("budget".to_owned()), Just("skills".to_owned()),
                Just("client".to_owned()), Just("posted_at".to_owned()), "\\PC{0,8}",
            ],
            json(),
            0..10,
        ),
    ) {
        let body = serde_json::to_vec(&event).expect("a JSON object serialises");
        if let Err(e) = Posting::parse(&body, |_| true) {
            prop_assert!(!e.reason().is_empty());
        }
    }

    #[test]
    fn a_valid_posting_parses_with_any_id_the_contract_allows(id in "[!-~]{1,128}") {
        let parsed = Posting::parse(&valid_body(&id), |m| m == "upwork");
        if id == "." || id == ".." {
            prop_assert_eq!(parsed.expect_err("dot ids are poison").reason(), "invalid_field");
        } else {
            let posting = parsed.expect("a valid posting");
            prop_assert_eq!(posting.key.posting_id(), id.as_str());
        }
    }
}

/// Any JSON value, nested a little.
fn json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::from),
        "[!-~]{0,130}".prop_map(Value::from),
        "-?[0-9]{1,30}(\\.[0-9]{1,30})?".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Value::Array),
            btree_map("\\PC{0,8}|min|max|currency|kind|rating", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn an_oversized_body_is_poison_whatever_it_holds() {
    let mut body = valid_body("job_1");
    body.resize(MAX_EVENT_BYTES + 1, b' ');
    assert_eq!(
        Posting::parse(&body, |_| true).unwrap_err().reason(),
        "too_large"
    );
}
