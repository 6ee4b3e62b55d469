//! `bidorch bench`: the pipeline's throughput and latency as ratios to the broker's own
//! consume+ack rate, on the configured RabbitMQ, Redis and PostgreSQL (names of its own).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;

use bidorch::bench::BenchOptions;
use bidorch::config::Settings;

/// `bidorch bench` flags.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Postings per throughput run (runs of a few seconds at least, or the figures are noise).
    #[arg(long, default_value_t = 20_000)]
    postings: usize,
    /// Worker counts to run the pipeline at, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    workers: Vec<usize>,
    /// Rounds of the bare and throughput runs; each figure reported is the median of its rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Messages for the bare consume+ack run.
    #[arg(long, default_value_t = 20_000)]
    bare_messages: usize,
    /// Steady publish rates (postings/s) of the latency runs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "200,1000")]
    rate: Vec<u32>,
    /// Length of each latency run, in seconds.
    #[arg(long, default_value_t = 10)]
    rate_seconds: u32,
    /// Directory for report.json, report.svg and the workers' logs.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

/// Runs the bench and prints its report.
pub async fn bench(settings: &Settings, args: BenchArgs) -> anyhow::Result<()> {
    if args.postings == 0 || args.workers.contains(&0) || args.rate.contains(&0) || args.rounds == 0
    {
        bail!("--postings, --workers, --rounds and --rate must be at least 1");
    }
    let options = BenchOptions {
        postings: args.postings,
        workers: args.workers,
        rounds: args.rounds,
        bare_messages: args.bare_messages.max(1),
        rates: args.rate,
        rate_seconds: args.rate_seconds.max(1),
        out: args.out,
        exe: std::env::current_exe().context("finding the bidorch executable to run workers")?,
    };
    let report = bidorch::bench::run(settings, &options, |step| {
        if step.starts_with(' ') {
            eprintln!("bench: {step}");
        } else {
            eprintln!("bench: {step}…");
        }
    })
    .await
    .context("bench")?;
    out!("{report}")?;
    out!(
        "report: {} and {}; worker logs in {}",
        options.out.join("report.json").display(),
        options.out.join("report.svg").display(),
        options.out.join("logs").display()
    )?;
    Ok(())
}
