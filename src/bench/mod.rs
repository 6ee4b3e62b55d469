//! `bidorch bench`: what the pipeline costs, measured in one run on one machine and reported as
//! ratios to the limit — the broker's own consume+ack rate on a fresh quorum queue.
//!
//! The runs, in order: the bare consume+ack rate; a warm-up; the full pipeline (the `--backend real` demo:
//! RabbitMQ, Redis, PostgreSQL and the in-process sandbox, each posting once) at each worker
//! count, and once more with a daily cap set; then publish→bid latency at a steady rate with the
//! cap set. Every pipeline run also checks the promise (one bid per eligible posting). The report
//! goes to standard output and, as JSON, to `{out}/report.json`.

mod bare;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::config::Settings;
use crate::demo::{DemoBackend, DemoOptions, DemoReport};

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("broker: {0}")]
    Broker(String),
    #[error("pipeline run with {workers} worker(s)")]
    Run {
        workers: usize,
        #[source]
        source: crate::demo::DemoError,
    },
    #[error("run with {workers} worker(s) broke the promise: {problem}")]
    Incorrect { workers: usize, problem: String },
    #[error("writing {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Postings per throughput run.
    pub postings: usize,
    /// Worker counts to run the pipeline at.
    pub workers: Vec<usize>,
    /// Messages for the bare consume+ack run.
    pub bare_messages: usize,
    /// Steady publish rate of the latency run (postings per second), and for how long.
    pub rate: u32,
    pub rate_seconds: u32,
    /// Where `report.json` goes.
    pub out: PathBuf,
}

/// One throughput run.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub workers: usize,
    pub daily_cap: bool,
    pub postings: usize,
    pub seconds: f64,
    pub postings_per_s: f64,
    /// `postings_per_s` ÷ the bare consume+ack rate.
    pub ratio: f64,
    pub pipeline_p50_ms: f64,
    pub pipeline_p99_ms: f64,
}

/// Publish→bid latency at a steady rate.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub rate: u32,
    pub postings: usize,
    pub daily_cap: bool,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The whole report (`report.json`).
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub cores: usize,
    pub bare_consume_ack_per_s: f64,
    pub runs: Vec<Run>,
    pub latency: Latency,
    /// Throughput with the cap ÷ without, at one worker.
    pub cap_ratio: f64,
}

fn quantile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[idx] as f64 / 1000.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn pipeline(
    settings: &Settings,
    workers: usize,
    postings: usize,
    rate: Option<u32>,
    daily_cap: Option<u64>,
) -> Result<DemoReport, BenchError> {
    let options = DemoOptions {
        workers,
        postings,
        duplication: 1,
        poison: 0,
        seed: 7,
        backend: DemoBackend::Real,
        progress: false,
        naive_marketplace: false,
        rate,
        daily_cap,
    };
    let report = crate::demo::run(settings, &options)
        .await
        .map_err(|source| BenchError::Run { workers, source })?;
    if !report.is_correct() {
        return Err(BenchError::Incorrect {
            workers,
            problem: format!(
                "{} double, {} missing, {} wrong bids",
                report.double_bids, report.missing_bids, report.wrong_bids
            ),
        });
    }
    Ok(report)
}

/// Runs every measurement; `progress` hears what is being measured.
pub async fn run(
    settings: &Settings,
    options: &BenchOptions,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport, BenchError> {
    // Big enough never to bind: the runs measure what reserving a slot costs, not skipping.
    const CAP: u64 = 10_000_000;
    let queue = format!(
        "bidorch.bench.{}.bare",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    progress("bare consume+ack on a fresh quorum queue");
    let prefetch = settings.amqp.prefetch;
    let bare =
        bare::consume_ack_rate(&settings.amqp, &queue, options.bare_messages, prefetch).await?;
    // A short run first: the schema, the prepared statements and the broker's queues warm up
    // here, so the first measured run is not penalised against the later ones.
    progress("warm-up");
    pipeline(settings, 1, options.postings.min(1000), None, None).await?;
    let mut runs = Vec::new();
    let plan: Vec<(usize, bool)> = options
        .workers
        .iter()
        .map(|w| (*w, false))
        .chain(std::iter::once((1, true)))
        .collect();
    for (workers, cap) in plan {
        progress(&format!(
            "pipeline, {workers} worker(s){}",
            if cap { ", daily cap set" } else { "" }
        ));
        let report = pipeline(
            settings,
            workers,
            options.postings,
            None,
            cap.then_some(CAP),
        )
        .await?;
        let seconds = report.elapsed.as_secs_f64().max(f64::EPSILON);
        let rate = report.postings as f64 / seconds;
        runs.push(Run {
            workers,
            daily_cap: cap,
            postings: report.postings,
            seconds,
            postings_per_s: rate,
            ratio: rate / bare,
            pipeline_p50_ms: ms(report.counts.latency_quantile(0.5)),
            pipeline_p99_ms: ms(report.counts.latency_quantile(0.99)),
        });
    }
    progress(&format!("publish→bid at a steady {}/s", options.rate));
    let steady = (options.rate * options.rate_seconds) as usize;
    let report = pipeline(settings, 1, steady, Some(options.rate), Some(CAP)).await?;
    let mut lat = report.publish_to_bid_us.clone();
    lat.sort_unstable();
    let latency = Latency {
        rate: options.rate,
        postings: steady,
        daily_cap: true,
        p50_ms: quantile(&lat, 0.5),
        p99_ms: quantile(&lat, 0.99),
        max_ms: lat.last().map_or(0.0, |m| *m as f64 / 1000.0),
    };
    let one = |cap: bool| {
        runs.iter()
            .find(|r| r.workers == 1 && r.daily_cap == cap)
            .map_or(0.0, |r| r.postings_per_s)
    };
    let cap_ratio = one(true) / one(false).max(f64::EPSILON);
    let report = BenchReport {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        bare_consume_ack_per_s: bare,
        runs,
        latency,
        cap_ratio,
    };
    write(&options.out, &report)?;
    Ok(report)
}

fn write(dir: &std::path::Path, report: &BenchReport) -> Result<(), BenchError> {
    let path = dir.join("report.json");
    let failed = |source| BenchError::Write {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    let json = serde_json::to_vec_pretty(report).map_err(|e| failed(std::io::Error::other(e)))?;
    std::fs::write(&path, json).map_err(failed)
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "bidorch bench — {} cores", self.cores)?;
        writeln!(
            f,
            "  bare consume+ack (quorum queue)   {:>8.0} msg/s   1.000",
            self.bare_consume_ack_per_s
        )?;
        for r in &self.runs {
            writeln!(
                f,
                "  pipeline, {} worker(s){:<12} {:>8.0} postings/s  {:.3}   (pipeline p50 {:.1} ms, p99 {:.1} ms)",
                r.workers,
                if r.daily_cap { ", cap set" } else { "" },
                r.postings_per_s,
                r.ratio,
                r.pipeline_p50_ms,
                r.pipeline_p99_ms
            )?;
        }
        writeln!(
            f,
            "  with a daily cap ÷ without (1 worker): {:.3}",
            self.cap_ratio
        )?;
        write!(
            f,
            "  publish→bid at a steady {}/s ({} postings, cap set): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.latency.rate,
            self.latency.postings,
            self.latency.p50_ms,
            self.latency.p99_ms,
            self.latency.max_ms
        )
    }
}
