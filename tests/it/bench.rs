//! `bidorch bench`, small, as an operator runs it: worker processes on the real RabbitMQ, Redis
//! and PostgreSQL, the promise checked in every run, the report printed and written (JSON and
//! SVG).

use std::process::Command;

use crate::support;

#[tokio::test]
async fn a_small_bench_checks_every_run_and_writes_its_report_and_plot() {
    if !(support::amqp_available().await
        && support::redis_available().await
        && support::postgres_available().await)
    {
        return;
    }
    let out = std::env::temp_dir().join(support::unique("bidorch-bench"));
    let output = Command::new(env!("CARGO_BIN_EXE_bidorch"))
        .args([
            "bench",
            "--postings",
            "300",
            "--workers",
            "1,2",
            "--rounds",
            "2",
            "--bare-messages",
            "300",
            "--rate",
            "100",
            "--rate-seconds",
            "1",
            "--out",
        ])
        .arg(&out)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AMQP_URL", support::amqp_url())
        .env("REDIS_URL", support::redis_url())
        .env("DATABASE_URL", support::database_url())
        .output()
        .expect("bidorch bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");

    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("report.json")).expect("report.json written"),
    )
    .expect("report.json is JSON");
    assert!(report["bare"]["one_at_a_time_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["bare"]["pipelined_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(report["rounds"], 2);
    assert_eq!(
        report["bare"]["one_at_a_time_rounds"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let runs = report["runs"].as_array().expect("runs");
    let shape: Vec<(u64, bool)> = runs
        .iter()
        .map(|r| {
            (
                r["workers"].as_u64().unwrap(),
                r["daily_cap"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(shape, [(1, false), (2, false), (1, true)]);
    for run in runs {
        assert!(run["postings_per_s"].as_f64().unwrap() > 0.0, "{run}");
        let rounds: Vec<f64> = run["rounds"]
            .as_array()
            .expect("every round's rate")
            .iter()
            .map(|r| r.as_f64().unwrap())
            .collect();
        assert_eq!(rounds.len(), 2, "{run}");
        assert!(
            rounds.contains(&run["postings_per_s"].as_f64().unwrap()),
            "the figure is one of its rounds: {run}"
        );
        assert!(run["cpu"]["workers_us"].as_f64().unwrap() > 0.0, "{run}");
        // The bench itself (publisher, sandbox) always runs here, so there is a ceiling.
        assert!(
            run["ceiling_free_worker_per_s"].as_f64().unwrap() > 0.0,
            "{run}"
        );
    }
    let latency = report["latency"].as_array().expect("latency");
    assert_eq!(latency.len(), 2);
    for l in latency {
        assert!(
            l["p99_ms"].as_f64().unwrap() >= l["p50_ms"].as_f64().unwrap(),
            "{l}"
        );
    }
    let svg = std::fs::read_to_string(out.join("report.svg")).expect("report.svg written");
    assert!(
        svg.starts_with("<svg") && svg.contains("Throughput"),
        "{svg:.200}"
    );
    assert!(stdout.contains("postings/s"), "{stdout}");
    assert!(
        stderr.contains("bench: throughput, 2 worker(s)"),
        "{stderr}"
    );

    let _ = std::fs::remove_dir_all(&out);
}
