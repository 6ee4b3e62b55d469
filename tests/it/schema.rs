//! The published JSON Schema (`schemas/posting-event.v1.json`) against the worker's validator
//! (`Posting::parse`): the documented examples are valid for both, and every poison case of
//! `posting::tests::poison_cases_name_their_reason` (plus a few more) is rejected by both.
//!
//! The schema is run by Python's `jsonschema` (a validator that is not ours) through
//! `tests/interop/validate_schema.py`. Without `python3` + `jsonschema` that test is skipped with
//! a printed reason, or fails when `BIDORCH_REQUIRE_SERVICES` is set (CI installs them).
//!
//! Two poison cases of the unit test are not schema matters and are listed as [`WorkerOnly`]:
//! an unknown marketplace (which marketplaces exist is deployment configuration, not the event's
//! shape) and an oversized body (JSON Schema cannot see byte sizes). The other checks the schema
//! cannot express are listed the same way, and the few inputs the worker tolerates beyond what
//! the schema promises are [`LenientWorker`], so any drift between the two shows up here.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use bidorch::posting::{MAX_EVENT_BYTES, Posting};
use serde_json::Value;

use Verdict::{LenientWorker, Poison, Valid, WorkerOnly};

/// What the schema and the worker must say about a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Both accept.
    Valid,
    /// Both reject; the worker with this poison reason.
    Poison(&'static str),
    /// The schema accepts (it cannot express the check); the worker rejects with this reason.
    WorkerOnly(&'static str),
    /// The worker accepts; the schema, which promises only the canonical form, rejects.
    LenientWorker,
}

/// The example in the spec (`/work/shared/spec.md`, "Posting event"), verbatim.
const SPEC_EXAMPLE: &str = r#"{
  "event_id": "0b9f6a9e-0c1b-4bb8-9d2a-3c5f1f0e9a11",
  "marketplace": "upwork",
  "posting_id": "job_123",
  "title": "Build a Rust worker",
  "description": "Consume events from RabbitMQ …",
  "budget": { "min": 500, "max": 1500, "currency": "USD", "kind": "fixed" },
  "skills": ["rust", "redis", "rabbitmq"],
  "client": { "rating": 4.8, "payment_verified": true, "country": "US" },
  "posted_at": "2026-11-26T10:00:00Z",
  "url": "https://example.invalid/jobs/123"
}"#;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The ```json block of the README's "The posting event" section.
fn readme_example() -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let section = readme
        .split("### The posting event")
        .nth(1)
        .expect("README has a 'The posting event' section");
    let block = section
        .split("```json")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the section has a json block");
    block.trim().to_owned()
}

/// A valid minimal event with `overrides` set on top (built as a map, so no duplicate keys).
fn event(overrides: Value) -> String {
    let mut base = serde_json::json!({
        "event_id": "e1", "marketplace": "upwork", "posting_id": "p1", "title": "t"
    });
    let map = base.as_object_mut().expect("object");
    for (k, v) in overrides.as_object().expect("overrides are an object") {
        map.insert(k.clone(), v.clone());
    }
    base.to_string()
}

fn with_budget(budget: &str) -> String {
    format!(
        r#"{{"event_id":"e","marketplace":"upwork","posting_id":"p","title":"t","budget":{budget}}}"#
    )
}

/// Every case, named. The first block is the unit test's list, in its order.
fn cases() -> Vec<(&'static str, String, Verdict)> {
    let s = |x: &str| x.to_owned();
    let oversized = event(serde_json::json!({ "description": "x".repeat(MAX_EVENT_BYTES) }));
    vec![
        // posting::tests::poison_cases_name_their_reason
        ("not json", s("not json"), Poison("invalid_json")),
        ("an array", s("[1,2]"), Poison("invalid_json")),
        (
            "no event_id",
            s(r#"{"marketplace":"upwork","posting_id":"p","title":"t"}"#),
            Poison("missing_field"),
        ),
        (
            "no marketplace",
            s(r#"{"event_id":"e","posting_id":"p","title":"t"}"#),
            Poison("missing_field"),
        ),
        (
            "no posting_id",
            s(r#"{"event_id":"e","marketplace":"upwork","title":"t"}"#),
            Poison("missing_field"),
        ),
        (
            "no title",
            s(r#"{"event_id":"e","marketplace":"upwork","posting_id":"p"}"#),
            Poison("missing_field"),
        ),
        (
            "upper-case marketplace",
            s(r#"{"event_id":"e","marketplace":"UpWork","posting_id":"p","title":"t"}"#),
            Poison("invalid_field"),
        ),
        (
            "posting_id with a space",
            s(r#"{"event_id":"e","marketplace":"upwork","posting_id":"a b","title":"t"}"#),
            Poison("invalid_field"),
        ),
        (
            "empty posting_id",
            s(r#"{"event_id":"e","marketplace":"upwork","posting_id":"","title":"t"}"#),
            Poison("invalid_field"),
        ),
        (
            "posting_id `.`",
            s(r#"{"event_id":"e","marketplace":"upwork","posting_id":".","title":"t"}"#),
            Poison("invalid_field"),
        ),
        (
            "posting_id `..`",
            s(r#"{"event_id":"e","marketplace":"upwork","posting_id":"..","title":"t"}"#),
            Poison("invalid_field"),
        ),
        (
            "posting_id `...` is valid",
            s(r#"{"event_id":"e","marketplace":"upwork","posting_id":"...","title":"t"}"#),
            Valid,
        ),
        (
            "numeric event_id",
            s(r#"{"event_id":5,"marketplace":"upwork","posting_id":"p","title":"t"}"#),
            Poison("invalid_field"),
        ),
        (
            "non-decimal amount",
            with_budget(r#"{"min":"abc"}"#),
            Poison("invalid_field"),
        ),
        (
            "negative amount",
            with_budget(r#"{"min":-5}"#),
            Poison("invalid_field"),
        ),
        (
            "negative bid_cost",
            event(serde_json::json!({"bid_cost": -1})),
            Poison("invalid_field"),
        ),
        (
            "bid_cost not a decimal",
            event(serde_json::json!({"bid_cost": "two"})),
            Poison("invalid_field"),
        ),
        // The unit test's two cases that are not schema matters.
        (
            "unknown marketplace",
            event(serde_json::json!({"marketplace": "fiverr"})),
            WorkerOnly("unknown_marketplace"),
        ),
        ("body over 256 KiB", oversized, WorkerOnly("too_large")),
        // More poison, each field's rule once.
        (
            "blank title",
            event(serde_json::json!({"title": " \t "})),
            Poison("invalid_field"),
        ),
        (
            "null title",
            event(serde_json::json!({"title": null})),
            Poison("missing_field"),
        ),
        (
            "marketplace of 33 characters",
            event(serde_json::json!({"marketplace": "m".repeat(33)})),
            Poison("invalid_field"),
        ),
        (
            "marketplace starting with '-'",
            event(serde_json::json!({"marketplace": "-upwork"})),
            Poison("invalid_field"),
        ),
        (
            "marketplace with a trailing newline",
            event(serde_json::json!({"marketplace": "upwork\n"})),
            Poison("invalid_field"),
        ),
        (
            "posting_id of 129 characters",
            event(serde_json::json!({"posting_id": "x".repeat(129)})),
            Poison("invalid_field"),
        ),
        (
            "posting_id with a trailing newline",
            event(serde_json::json!({"posting_id": "p1\n"})),
            Poison("invalid_field"),
        ),
        (
            "posting_id with non-ASCII",
            event(serde_json::json!({"posting_id": "jöb"})),
            Poison("invalid_field"),
        ),
        (
            "event_id with a space",
            event(serde_json::json!({"event_id": "e 1"})),
            Poison("invalid_field"),
        ),
        (
            "lower-case currency",
            with_budget(r#"{"min":1,"currency":"usd"}"#),
            Poison("invalid_field"),
        ),
        (
            "currency with a trailing newline",
            with_budget(r#"{"min":1,"currency":"USD\n"}"#),
            Poison("invalid_field"),
        ),
        (
            "unknown budget kind",
            with_budget(r#"{"min":1,"kind":"monthly"}"#),
            Poison("invalid_field"),
        ),
        (
            "budget as an array",
            with_budget("[500]"),
            Poison("invalid_field"),
        ),
        (
            "amount as a boolean",
            with_budget(r#"{"max":true}"#),
            Poison("invalid_field"),
        ),
        (
            "negative decimal string",
            with_budget(r#"{"max":"-1.50"}"#),
            Poison("invalid_field"),
        ),
        (
            "skills with a number",
            event(serde_json::json!({"skills": ["rust", 1]})),
            Poison("invalid_field"),
        ),
        (
            "client rating as a string",
            event(serde_json::json!({"client": {"rating": "4.8"}})),
            Poison("invalid_field"),
        ),
        (
            "posted_at without an offset",
            event(serde_json::json!({"posted_at": "2026-11-26T10:00:00"})),
            Poison("invalid_field"),
        ),
        (
            "posted_at in words",
            event(serde_json::json!({"posted_at": "yesterday"})),
            Poison("invalid_field"),
        ),
        // Valid shapes.
        ("the spec's example", s(SPEC_EXAMPLE), Valid),
        (
            "a bid_cost",
            event(serde_json::json!({"bid_cost": "4.5"})),
            Valid,
        ),
        ("the README's example", readme_example(), Valid),
        ("required fields only", event(serde_json::json!({})), Valid),
        (
            "optional fields null",
            event(serde_json::json!({
                "description": null, "budget": null, "skills": null, "client": null,
                "posted_at": null, "url": null
            })),
            Valid,
        ),
        (
            "budget fields null",
            with_budget(r#"{"min":null,"max":null,"currency":null,"kind":null}"#),
            Valid,
        ),
        (
            "decimal strings and numbers",
            with_budget(r#"{"min":"0.10","max":1500.50,"currency":"EUR","kind":"hourly"}"#),
            Valid,
        ),
        (
            "unknown fields anywhere",
            event(serde_json::json!({
                "future": {"x": 1}, "budget": {"min": 1, "tax": "incl"},
                "client": {"rating": 5, "since": 2019}
            })),
            Valid,
        ),
        (
            "longest ids",
            event(serde_json::json!({
                "marketplace": longest_marketplace(),
                "posting_id": "~".repeat(128), "event_id": "!".repeat(128)
            })),
            Valid,
        ),
        (
            "posted_at with fraction and offset",
            event(serde_json::json!({"posted_at": "2026-11-26T10:00:00.123+01:00"})),
            Valid,
        ),
        // Checks only the worker can make.
        (
            "min above max",
            with_budget(r#"{"min":5,"max":1}"#),
            WorkerOnly("invalid_field"),
        ),
        (
            "amount with an exponent",
            with_budget(r#"{"max":1e3}"#),
            WorkerOnly("invalid_field"),
        ),
        (
            "amount with more precision than a decimal holds",
            with_budget(r#"{"max":0.00000000000000000000000000001}"#),
            WorkerOnly("invalid_field"),
        ),
        (
            "posted_at in month 13",
            event(serde_json::json!({"posted_at": "2026-13-26T10:00:00Z"})),
            WorkerOnly("invalid_field"),
        ),
        // Decimal strings the worker tolerates but the contract does not promise.
        (
            "amount string with a plus sign",
            with_budget(r#"{"max":"+5"}"#),
            LenientWorker,
        ),
        (
            "amount string ending in a point",
            with_budget(r#"{"max":"5."}"#),
            LenientWorker,
        ),
        (
            "amount string with spaces",
            with_budget(r#"{"max":" 5 "}"#),
            LenientWorker,
        ),
        (
            "amount string with a digit separator",
            with_budget(r#"{"max":"1_000"}"#),
            LenientWorker,
        ),
    ]
}

/// The longest marketplace name the charset allows (32 characters).
fn longest_marketplace() -> String {
    format!("a{}", "-".repeat(31))
}

/// The worker's verdict in a deployment that bids on `upwork` and the longest-named marketplace.
fn worker_verdict(body: &str) -> Result<(), &'static str> {
    Posting::parse(body.as_bytes(), |m| {
        m == "upwork" || m == longest_marketplace()
    })
    .map(|_| ())
    .map_err(|e| e.reason())
}

#[test]
fn the_worker_gives_every_case_its_documented_verdict() {
    for (name, body, verdict) in cases() {
        let got = worker_verdict(&body);
        match verdict {
            Valid | LenientWorker => assert_eq!(got, Ok(()), "{name}: the worker rejects it"),
            Poison(reason) | WorkerOnly(reason) => {
                assert_eq!(got, Err(reason), "{name}: the worker's verdict")
            }
        }
    }
}

#[test]
fn the_schema_file_is_a_draft_2020_12_object_schema_with_the_required_fields() {
    let schema: Value = serde_json::from_slice(
        &std::fs::read(root().join("schemas/posting-event.v1.json")).expect("schema file"),
    )
    .expect("the schema is JSON");
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(schema["type"], "object");
    assert_eq!(
        schema["required"],
        serde_json::json!(["event_id", "marketplace", "posting_id", "title"])
    );
    assert_eq!(
        schema["properties"]["marketplace"]["pattern"],
        "^[a-z0-9][a-z0-9_-]{0,31}$"
    );
    assert_eq!(schema["$defs"]["printable_id"]["pattern"], "^[!-~]{1,128}$");
    assert!(
        schema.get("additionalProperties").is_none(),
        "unknown fields must stay allowed"
    );
}

/// Whether `python3` can import `modules`; otherwise skips (false) or, under
/// `BIDORCH_REQUIRE_SERVICES`, fails.
fn python_with(modules: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    let why = format!(
        "python3 with `{modules}` is unavailable (python3 -m pip install {})",
        modules.replace(',', "")
    );
    crate::support::skip(&why)
}

#[derive(serde::Deserialize, Debug)]
struct SchemaVerdict {
    json: bool,
    valid: bool,
    error: Option<String>,
}

fn schema_verdicts(bodies: &[&str]) -> Vec<SchemaVerdict> {
    let mut child = Command::new("python3")
        .arg(root().join("tests/interop/validate_schema.py"))
        .arg(root().join("schemas/posting-event.v1.json"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 starts");
    let input = serde_json::to_vec(bodies).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "validate_schema.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("verdicts are JSON")
}

#[test]
fn python_jsonschema_agrees_with_the_worker_on_every_case() {
    if !python_with("jsonschema") {
        return;
    }
    let cases = cases();
    let bodies: Vec<&str> = cases.iter().map(|(_, b, _)| b.as_str()).collect();
    let verdicts = schema_verdicts(&bodies);
    assert_eq!(verdicts.len(), cases.len());
    for ((name, body, verdict), schema) in cases.iter().zip(&verdicts) {
        let worker = worker_verdict(body);
        let detail = schema.error.as_deref().unwrap_or("-");
        match verdict {
            Valid | WorkerOnly(_) => {
                assert!(schema.valid, "{name}: the schema rejects it: {detail}")
            }
            Poison(_) | LenientWorker => {
                assert!(!schema.valid, "{name}: the schema accepts it")
            }
        }
        // Bodies that are not JSON at all are the same for both.
        assert_eq!(
            !schema.json,
            worker == Err("invalid_json") && *name != "an array",
            "{name}: JSON-ness"
        );
    }
    eprintln!(
        "schema: {} cases, {} valid for both, {} poison for both, {} worker-only checks, {} tolerated by the worker only",
        cases.len(),
        cases.iter().filter(|c| c.2 == Valid).count(),
        cases.iter().filter(|c| matches!(c.2, Poison(_))).count(),
        cases
            .iter()
            .filter(|c| matches!(c.2, WorkerOnly(_)))
            .count(),
        cases.iter().filter(|c| c.2 == LenientWorker).count(),
    );
}
