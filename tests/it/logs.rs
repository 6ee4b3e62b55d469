//! Log lines join traces: every line a worker writes inside a posting's span carries that
//! posting's `trace_id`, in both log formats and with OpenTelemetry export off, so a log
//! pipeline (Loki and the like) can go from a line to its trace and to `bidorch inspect`.

use std::time::Duration;

use bidorch::marketplace::sandbox::SandboxOptions;
use serde_json::Value;

use crate::support;
use support::scenario::{Scenario, load};

fn is_trace_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) && s.bytes().any(|b| b != b'0')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_inside_a_postings_span_carries_its_trace_id_in_text_and_json() {
    let Some(mut scenario) = Scenario::start("logs", SandboxOptions::default(), &[]).await else {
        return; // skipped, said by the check
    };
    // One worker at a time, each with a load of its own: two workers sharing one queue split
    // it as the broker pleases, and one of them may see only duplicates and place no bid.
    let quiet_export = ("OTEL_EXPORTER_OTLP_ENDPOINT", String::new());
    let json_worker = scenario.spawn_worker_with("json", std::slice::from_ref(&quiet_export));
    scenario.wait_ready().await;
    let json_load = load("logs_json", 30, 2);
    scenario.publish(&json_load.events).await;
    scenario
        .wait_settled(&json_load, Duration::from_secs(120))
        .await;
    let json_worker = &mut scenario.workers[json_worker];
    json_worker.terminate();
    let status = json_worker.exit_status(Duration::from_secs(30)).await;
    assert!(status.success(), "the JSON worker exited {status}");

    scenario.spawn_worker_with(
        "text",
        &[
            quiet_export,
            ("BIDORCH__TELEMETRY__LOG_FORMAT", "text".to_owned()),
        ],
    );
    scenario.wait_ready().await;
    let text_load = load("logs_text", 30, 2);
    scenario.publish(&text_load.events).await;
    let both = json_load.join(text_load);
    scenario.wait_settled(&both, Duration::from_secs(120)).await;
    scenario.assert_promise(&both).await;

    let json = scenario.workers[0].log_text();
    let records: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let in_posting: Vec<&Value> = records
        .iter()
        .filter(|r| r.get("posting_id").is_some())
        .collect();
    assert!(
        in_posting.iter().any(|r| r["message"] == "Bid placed"),
        "the JSON worker placed bids"
    );
    for r in &in_posting {
        let id = r["trace_id"].as_str().unwrap_or("");
        assert!(is_trace_id(id), "a JSON line without its trace_id: {r}");
    }

    let text = scenario.workers[1].log_text();
    assert!(
        !text.contains('\u{1b}'),
        "no colour codes when not on a terminal"
    );
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("posting_id=")).collect();
    assert!(
        lines.iter().any(|l| l.contains("Bid placed")),
        "the text worker placed bids"
    );
    for line in lines {
        let id = line
            .split("trace_id=")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_hexdigit()).next())
            .unwrap_or("");
        assert!(is_trace_id(id), "a text line without its trace_id: {line}");
    }
    scenario.stop().await;
}

/// The ways a secret can show in a log: as text, and as the bytes of a protocol frame printed
/// with `Debug` (`[112, 119, 45, …]`).
fn shows(log: &str, secret: &str) -> bool {
    let bytes = secret
        .bytes()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    log.contains(secret) || log.contains(&bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_trace_never_logs_the_brokers_password() {
    let Some(user) = support::rabbitmqctl::User::create("tracelog").await else {
        return;
    };
    let overrides = [
        ("AMQP_URL", user.amqp_url()),
        ("RUST_LOG", "trace".to_owned()),
        ("BIDORCH__TELEMETRY__LOG_FORMAT", "text".to_owned()),
    ];
    let Some(mut scenario) =
        Scenario::start("tracelog", SandboxOptions::default(), &overrides).await
    else {
        return;
    };
    scenario.spawn_worker("w");
    scenario.wait_ready().await;
    let work = load("tracelog", 4, 1);
    scenario.publish(&work.events).await;
    scenario.wait_settled(&work, Duration::from_secs(60)).await;
    scenario.stop().await;

    let log = scenario.workers[0].log_text();
    assert!(log.contains("TRACE"), "the worker logged at TRACE");
    assert!(
        !shows(&log, &user.password),
        "the AMQP password is in the TRACE log"
    );
}
