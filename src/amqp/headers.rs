//! The headers bidorch reads from and writes on RabbitMQ messages: which ones the broker owns,
//! the attempt counter in any integer encoding, string headers with `x-death` rendered, and the
//! headers and properties of a copy (retry, dead letter, replay).

use std::collections::BTreeMap;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};

use super::connection::short;
use crate::envelope::{ATTEMPT_HEADER, is_own_header};

/// Header names the broker owns; a copy we publish must not carry the original's values.
pub(crate) fn is_broker_header(name: &str) -> bool {
    name == "x-death"
        || name == "x-delivery-count"
        || name.starts_with("x-first-death-")
        || name.starts_with("x-last-death-")
}

/// Header `name` (any case) as a non-negative integer of any AMQP integer type or a decimal
/// string.
pub(crate) fn read_number(headers: &FieldTable, name: &str) -> Option<u64> {
    let value = headers
        .inner()
        .iter()
        .find(|(k, _)| k.as_str().eq_ignore_ascii_case(name))
        .map(|(_, v)| v)?;
    let n: i128 = match value {
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => (*v).into(),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).trim().parse().ok()?,
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok()?,
        _ => return None,
    };
    u64::try_from(n).ok()
}

/// `x-bidorch-attempt` as any integer type or a decimal string; 1 when absent or nonsense.
pub(crate) fn read_attempt(headers: &FieldTable) -> u32 {
    read_number(headers, ATTEMPT_HEADER)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1)
}

/// Where a delivery came from: the exchange it was published (or dead-lettered) to and its
/// routing key.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Route<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
}

/// Whether the broker dead-lettered this message back to us from one of `queue`'s wait queues:
/// only then are its `x-bidorch-*` headers ours.
///
/// A publisher can write any header, `x-death` included, so the header alone proves nothing.
/// What a wait queue writes, a publisher following the contract cannot: the wait queues
/// dead-letter through the default exchange with the work queue's name as routing key, while
/// publishers publish to the topic exchange. So the delivery must have come that way, and the
/// most recent hop `x-death` records (the first entry) must be an expiry in one of our wait queues.
pub(crate) fn came_back_from_wait_queue(
    headers: &FieldTable,
    route: Route<'_>,
    queue: &str,
) -> bool {
    if !route.exchange.is_empty() || route.routing_key != queue {
        return false;
    }
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        return false;
    };
    let text = |t: &FieldTable, k: &str| match t.inner().get(k) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        _ => String::new(),
    };
    match deaths.as_slice().first() {
        Some(AMQPValue::FieldTable(latest)) => {
            text(latest, "queue")
                .strip_prefix(queue)
                .is_some_and(|rest| rest.starts_with(".retry."))
                && text(latest, "reason") == "expired"
        }
        _ => false,
    }
}

/// String-valued headers with lower-cased names, plus `x-death` rendered as
/// `queue/reason/count` entries (most recent first), so callers can see where a message has been.
pub(crate) fn string_headers(headers: &FieldTable) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, value) in headers.inner() {
        let text = match value {
            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            AMQPValue::ShortString(s) => s.as_str().to_owned(),
            AMQPValue::FieldArray(entries) if name.as_str() == "x-death" => {
                render_x_death(entries.as_slice())
            }
            _ => continue,
        };
        out.insert(name.as_str().to_ascii_lowercase(), text);
    }
    out
}

fn render_x_death(entries: &[AMQPValue]) -> String {
    let field = |t: &FieldTable, k: &str| -> String {
        match t.inner().get(k) {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
            Some(AMQPValue::LongLongInt(n)) => n.to_string(),
            Some(AMQPValue::LongInt(n)) => n.to_string(),
            _ => String::new(),
        }
    };
    entries
        .iter()
        .filter_map(|e| match e {
            AMQPValue::FieldTable(t) => Some(format!(
                "{}/{}/{}",
                field(t, "queue"),
                field(t, "reason"),
                field(t, "count")
            )),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A header value holding text.
pub(crate) fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Headers for a copy: the original's non-string headers minus broker-owned ones (the copy starts
/// a new journey) and minus bidorch's own (the caller's strings carry the current ones), and the
/// caller's string headers (trace context, envelope, reason) as given.
pub(crate) fn copy_headers(
    original: &BasicProperties,
    strings: &std::collections::BTreeMap<String, String>,
) -> FieldTable {
    let mut out = FieldTable::default();
    if let Some(table) = original.headers() {
        for (name, value) in table.inner() {
            let keep = !is_broker_header(name.as_str())
                && !is_own_header(name.as_str())
                && !matches!(value, AMQPValue::LongString(_) | AMQPValue::ShortString(_));
            if keep {
                out.insert(name.clone(), value.clone());
            }
        }
    }
    for (name, value) in strings {
        if is_broker_header(name) {
            continue;
        }
        if let Ok(key) = short(name) {
            out.insert(key, text(value));
        }
    }
    out
}

/// Properties for a copy: the original's identity and content metadata, persistent, with the
/// given headers. No expiration (a per-message TTL would fight the wait queue's), no user id (the
/// broker checks it against the publishing user).
pub(crate) fn copy_properties(original: &BasicProperties, headers: FieldTable) -> BasicProperties {
    let mut p = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(v) = original.content_type() {
        p = p.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        p = p.with_content_encoding(v.clone());
    }
    if let Some(v) = original.message_id() {
        p = p.with_message_id(v.clone());
    }
    if let Some(v) = original.correlation_id() {
        p = p.with_correlation_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        p = p.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        p = p.with_type(v.clone());
    }
    if let Some(v) = original.app_id() {
        p = p.with_app_id(v.clone());
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, ShortString};

    fn table(entries: Vec<(&str, AMQPValue)>) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert(ShortString::from(k), v);
        }
        t
    }

    #[test]
    fn attempt_reads_any_integer_or_text_and_defaults_to_one() {
        assert_eq!(read_attempt(&FieldTable::default()), 1);
        assert_eq!(
            read_attempt(&table(vec![(ATTEMPT_HEADER, AMQPValue::LongLongInt(3))])),
            3
        );
        assert_eq!(
            read_attempt(&table(vec![(ATTEMPT_HEADER, AMQPValue::ShortUInt(7))])),
            7
        );
        assert_eq!(
            read_attempt(&table(vec![(
                ATTEMPT_HEADER,
                AMQPValue::LongString(LongString::from("4"))
            )])),
            4
        );
        assert_eq!(
            read_attempt(&table(vec![(ATTEMPT_HEADER, AMQPValue::LongInt(-2))])),
            1
        );
    }

    #[test]
    fn string_headers_are_lower_cased_and_x_death_is_rendered() {
        let death = table(vec![
            ("queue", AMQPValue::LongString("q.retry.1s".into())),
            ("reason", AMQPValue::LongString("expired".into())),
            ("count", AMQPValue::LongLongInt(1)),
        ]);
        let headers = table(vec![
            ("TraceParent", AMQPValue::LongString("00-abc-def-01".into())),
            (
                "x-death",
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
            ),
            ("x-bidorch-attempt", AMQPValue::LongLongInt(2)),
        ]);
        let out = string_headers(&headers);
        assert_eq!(out["traceparent"], "00-abc-def-01");
        assert_eq!(out["x-death"], "q.retry.1s/expired/1");
        assert!(!out.contains_key("x-bidorch-attempt"));
    }

    #[test]
    fn copies_drop_broker_headers_and_take_the_callers_strings() {
        let mut original = FieldTable::default();
        original.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        original.insert("x-delivery-count".into(), AMQPValue::LongLongInt(3));
        original.insert("x-first-death-queue".into(), text("q"));
        original.insert("traceparent".into(), text("old"));
        original.insert("x-custom-number".into(), AMQPValue::LongInt(9));
        let props = BasicProperties::default()
            .with_headers(original)
            .with_message_id("ev-1".into());
        let strings = BTreeMap::from([
            ("traceparent".to_owned(), "new".to_owned()),
            ("x-death".to_owned(), "q/expired/1".to_owned()),
        ]);
        let headers = copy_headers(&props, &strings);
        let copied = copy_properties(&props, headers.clone());
        assert_eq!(
            copied.message_id().as_ref().map(|s| s.as_str()),
            Some("ev-1")
        );
        assert_eq!(copied.delivery_mode(), &Some(2));
        let names: Vec<&str> = headers.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["traceparent", "x-custom-number"]);
        assert_eq!(headers.inner()["traceparent"], text("new"));
    }
}
