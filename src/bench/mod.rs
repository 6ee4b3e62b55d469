//! `bidorch bench`: what the pipeline costs, measured in one run on one machine and reported as
//! ratios to the limit — the broker's own consume+ack rate on a fresh quorum queue.
//!
//! The product is measured as it is run: separate `bidorch worker` processes with the default
//! configuration (INFO logs, to files), the configured RabbitMQ, Redis and PostgreSQL under names
//! of the run's own, and the sandbox marketplace served over HTTP by the bench itself. The runs,
//! in order:
//!
//! 1. a short warm-up run (not reported);
//! 2. in each of a few rounds: the bare consume+ack rate, acks one at a time and acks pipelined
//!    ([`bare`]); then throughput at each worker count and at one worker with a daily cap set:
//!    the postings are published first, then the workers start, and the rate is taken over the
//!    middle 80% of the run by the ledger's own clock ([`steady_rate`]), as the bare rate is over
//!    its acks ([`throughput`]). Each figure reported is the median of its rounds: on a shared
//!    machine one run of a few seconds moves by a tenth or more, and rounds interleave the runs
//!    so that a slow minute does not fall on one of them only;
//! 3. publish→bid latency at a steady rate, with a cap set, at each worker count: from the
//!    publish to the sandbox's own creation time of the bid ([`latency`]).
//!
//! Every run also checks the promise (one bid per eligible posting, none twice, none for an
//! ineligible one, nothing parked), so a fast wrong answer fails the bench; and says where the
//! CPU went ([`cpu`]). The report goes to standard output, `{out}/report.json` and
//! `{out}/report.svg`; worker logs to `{out}/logs/`.

mod bare;
mod cpu;
mod fleet;
mod latency;
mod plot;
mod report;
mod rounds;
mod throughput;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use self::cpu::CpuSplit;
use self::fleet::Space;
use crate::config::Settings;
use crate::demo::{DemoInput, generate};
use crate::marketplace::sandbox::{SandboxOptions, SandboxServer};
use crate::publish::{OutgoingEvent, Publisher};

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("broker: {0}")]
    Broker(String),
    #[error("ledger: {0}")]
    Ledger(String),
    #[error("starting the sandbox marketplace or a worker process")]
    Spawn(#[source] std::io::Error),
    #[error("{0}")]
    Worker(String),
    #[error("publishing: {0}")]
    Publish(String),
    #[error("run `{run}` did not finish within {limit:?}: {state}")]
    Stalled {
        run: String,
        limit: Duration,
        state: String,
    },
    #[error("run `{run}` broke the promise: {problem}")]
    Incorrect { run: String, problem: String },
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
    /// Rounds of the bare and throughput runs; each figure is the median of its rounds.
    pub rounds: usize,
    /// Messages for each bare consume+ack run.
    pub bare_messages: usize,
    /// Steady publish rates of the latency runs (postings per second), and for how long each.
    pub rates: Vec<u32>,
    pub rate_seconds: u32,
    /// Where `report.json`, `report.svg` and `logs/` go.
    pub out: PathBuf,
    /// The `bidorch` executable the workers run.
    pub exe: PathBuf,
}

/// The broker's own consume+ack rates (messages per second).
#[derive(Clone, Debug, Serialize)]
pub struct Bare {
    pub prefetch: u16,
    pub messages: usize,
    /// Each ack awaited before the next delivery is taken.
    pub one_at_a_time_per_s: f64,
    /// Each ack sent from a task of its own, as a worker settles.
    pub pipelined_per_s: f64,
    /// Every round's one-at-a-time rate, in round order (the figure above is their median).
    pub one_at_a_time_rounds: Vec<f64>,
    /// Every round's pipelined rate, in round order.
    pub pipelined_rounds: Vec<f64>,
}

/// One throughput run.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub workers: usize,
    pub daily_cap: bool,
    pub postings: usize,
    /// Postings per second over the middle 80% of the run: the median round.
    pub postings_per_s: f64,
    /// Every round's postings/s, in round order.
    pub rounds: Vec<f64>,
    /// `postings_per_s` ÷ the bare rate with acks one at a time.
    pub ratio_one_at_a_time: f64,
    /// `postings_per_s` ÷ the bare rate with acks pipelined.
    pub ratio_pipelined: f64,
    /// From the workers' start until every posting was final and every queue empty.
    pub seconds: f64,
    /// Where the CPU went, per posting, in the median round.
    pub cpu: CpuSplit,
    /// Postings/s the machine's cores could give if the workers cost nothing: the cores over
    /// the CPU per posting of everything else on this machine (servers, publisher, sandbox).
    /// `None` when nothing else was seen using CPU here (servers on other machines).
    pub ceiling_free_worker_per_s: Option<f64>,
}

/// Publish→bid latency at a steady rate.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub workers: usize,
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
    /// Rounds each bare and throughput figure is the median of.
    pub rounds: usize,
    pub bare: Bare,
    pub runs: Vec<Run>,
    pub latency: Vec<Latency>,
    /// Throughput with the cap ÷ without, at one worker.
    pub cap_ratio: f64,
}

/// Large enough never to bind: the capped runs measure what reserving a slot costs.
const CAP: u64 = 10_000_000;
/// The longest one run may take before the bench gives up on it.
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// The rate of events at the given times (any order): over the middle 80% — from the 10th to the
/// 90th percentile — so that starting and draining do not count. Falls back to first-to-last for
/// runs too short to have a middle.
pub fn steady_rate(times: &mut [Duration]) -> f64 {
    times.sort_unstable();
    let n = times.len();
    if n < 2 {
        return 0.0;
    }
    let at = |q: f64| times[((n - 1) as f64 * q).round() as usize].as_secs_f64();
    let (from, to, q) = match at(0.9) - at(0.1) {
        span if span > 0.0 => (at(0.1), at(0.9), 0.8),
        _ => (at(0.0), at(1.0), 1.0),
    };
    let span = (to - from).max(f64::EPSILON);
    q * (n - 1) as f64 / span
}

/// Runs every measurement; `progress` hears what is being measured and each result.
pub async fn run(
    settings: &Settings,
    options: &BenchOptions,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport, BenchError> {
    progress("warm-up");
    throughput::throughput(
        settings,
        options,
        "warmup",
        1,
        options.postings.min(2000),
        None,
    )
    .await?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rounds = options.rounds.max(1);
    let (bare, runs) = rounds::measure(settings, options, rounds, cores, &mut progress).await?;
    let mut latency = Vec::new();
    for &rate in &options.rates {
        for &workers in &options.workers {
            progress(&format!(
                "publish→bid at a steady {rate}/s for {} s, {workers} worker(s), daily cap set",
                options.rate_seconds
            ));
            let measured = latency::steady(settings, options, workers, rate).await?;
            progress(&format!(
                "  p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                measured.p50_ms, measured.p99_ms, measured.max_ms
            ));
            latency.push(measured);
        }
    }
    let one_worker = |cap: bool| {
        runs.iter()
            .find(|r| r.workers == 1 && r.daily_cap == cap)
            .map_or(0.0, |r| r.postings_per_s)
    };
    let cap_ratio = one_worker(true) / one_worker(false).max(f64::EPSILON);
    let report = BenchReport {
        cores,
        rounds,
        bare,
        runs,
        latency,
        cap_ratio,
    };
    report::write(&options.out, &report)?;
    Ok(report)
}

/// A run's sandbox, checked against what the input says must have happened.
fn check(
    run: &str,
    sandbox: &SandboxServer,
    input: &DemoInput,
    dead: u32,
) -> Result<(), BenchError> {
    let stats = sandbox.sandbox().stats();
    let bids = |key: &String| stats.postings.get(key).map_or(0, |p| p.bids);
    let eligible: BTreeSet<&String> = input.eligible.iter().collect();
    let double = stats.postings.values().filter(|p| p.bids > 1).count();
    let missing = eligible.iter().filter(|k| bids(k) == 0).count();
    let wrong = input.ineligible.iter().filter(|k| bids(k) > 0).count();
    if double + missing + wrong > 0 || dead > 0 {
        return Err(BenchError::Incorrect {
            run: run.to_owned(),
            problem: format!(
                "{double} postings bid twice, {missing} eligible without a bid, {wrong} ineligible with one, {dead} messages parked"
            ),
        });
    }
    Ok(())
}

async fn publisher(space: &Space) -> Result<Publisher, BenchError> {
    Publisher::connect(&space.settings.amqp)
        .await
        .map_err(|e| BenchError::Publish(crate::error::chain(&e)))
}

fn events(input: &DemoInput) -> Result<Vec<OutgoingEvent>, BenchError> {
    input
        .messages
        .iter()
        .map(|body| {
            OutgoingEvent::parse(body.clone()).map_err(|e| BenchError::Publish(e.to_string()))
        })
        .collect()
}

/// Waits until `postings` rows are final and nothing waits in the run's queues.
async fn drained(space: &Space, run: &str, postings: usize) -> Result<u32, BenchError> {
    let conn = lapin::Connection::connect(
        space.settings.amqp.url.expose(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .map_err(|e| BenchError::Broker(e.to_string()))?;
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| BenchError::Broker(e.to_string()))?;
    let mut ledger = space.ledger().await?;
    let deadline = Instant::now() + RUN_LIMIT;
    loop {
        let (finished, _) = space.finished(&mut ledger).await?;
        let waiting = space.waiting(&channel).await?;
        if finished as usize >= postings && waiting == 0 {
            let dead = space.parked(&channel).await?;
            let _ = conn.close(200, "bench drained".into()).await;
            return Ok(dead);
        }
        if Instant::now() > deadline {
            return Err(BenchError::Stalled {
                run: run.to_owned(),
                limit: RUN_LIMIT,
                state: format!("{finished} of {postings} final, {waiting} messages waiting"),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A run's world made ready: its names prepared on the servers, a sandbox serving, `postings`
/// generated (fresh ids: a sandbox or ledger of an earlier run never sees them).
async fn setup(space: &Space, postings: usize) -> Result<(SandboxServer, DemoInput), BenchError> {
    space.prepare().await?;
    let sandbox = SandboxServer::start(SandboxOptions::default())
        .await
        .map_err(BenchError::Spawn)?;
    Ok((sandbox, generate(postings, 1, 0, fastrand::u64(..))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steady_rate_leaves_out_the_start_and_the_tail() {
        // 100 events one millisecond apart, then a straggler a second later.
        let mut times: Vec<Duration> = (0..100).map(Duration::from_millis).collect();
        times.push(Duration::from_secs(2));
        let rate = steady_rate(&mut times);
        assert!((rate - 1000.0).abs() < 20.0, "{rate}");
    }

    #[test]
    fn a_run_too_short_for_a_middle_uses_first_to_last() {
        let mut times = vec![Duration::from_millis(5), Duration::from_millis(5)];
        assert!(steady_rate(&mut times) > 0.0);
        assert_eq!(steady_rate(&mut []), 0.0);
    }
}
