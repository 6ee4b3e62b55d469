//! `bidorch demo`: the whole system on one machine, checked.

use anyhow::bail;
use clap::{Args, ValueEnum};

use bidorch::config::Settings;
use bidorch::demo::{DemoBackend, DemoOptions};

/// `--backend` of `bidorch demo`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BackendArg {
    /// In-process queue, in-memory locks, SQLite ledger.
    Embedded,
    /// The configured RabbitMQ, Redis and PostgreSQL.
    Real,
}

/// `bidorch demo` flags.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Concurrent workers.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Distinct postings to generate.
    #[arg(long, default_value_t = 10_000)]
    postings: usize,
    /// How many times each posting is published.
    #[arg(long, default_value_t = 3)]
    duplication: usize,
    /// Poison messages mixed in.
    #[arg(long, default_value_t = 10)]
    poison: usize,
    /// Seed of the generator (same seed, same postings).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Which backends to run on.
    #[arg(long, value_enum, default_value = "embedded")]
    backend: BackendArg,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
    /// Make the sandbox ignore idempotency keys: a duplicate that slipped past the ledger and
    /// the lease would then show as a second bid.
    #[arg(long)]
    naive_marketplace: bool,
}

/// Runs the demo, prints its report, and fails if any posting got two bids (or one was lost).
pub async fn demo(settings: &Settings, args: DemoArgs) -> anyhow::Result<()> {
    if args.workers == 0 || args.postings == 0 || args.duplication == 0 {
        bail!("--workers, --postings and --duplication must be at least 1");
    }
    let options = DemoOptions {
        workers: args.workers,
        postings: args.postings,
        duplication: args.duplication,
        poison: args.poison,
        seed: args.seed,
        backend: match args.backend {
            BackendArg::Embedded => DemoBackend::Embedded,
            BackendArg::Real => DemoBackend::Real,
        },
        progress: !args.quiet,
        naive_marketplace: args.naive_marketplace,
    };
    let report = bidorch::demo::run(settings, &options).await?;
    out!("{report}")?;
    if !report.is_correct() {
        bail!("the demo broke the promise (see FAILED above)");
    }
    Ok(())
}
