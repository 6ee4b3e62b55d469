//! The subcommands other than `worker`: thin wrappers that turn library results into output and
//! exit codes. This is the binary's edge, so errors are `anyhow` with context.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};

use bidorch::config::Settings;
use bidorch::demo::{DemoBackend, DemoOptions};
use bidorch::marketplace::sandbox::{self, Sandbox, SandboxOptions};

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "Cannot listen for Ctrl-C; stop with SIGTERM");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "Cannot listen for SIGTERM; stop with Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

/// `bidorch marketplace` flags.
#[derive(Args, Debug)]
pub struct MarketplaceArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    addr: std::net::SocketAddr,
    /// Environment variable holding the bearer token to require (any non-empty token if unset).
    #[arg(long, value_name = "VAR")]
    token_env: Option<String>,
    /// Share of bid requests (0.0–1.0) answered 503 or 429, to exercise retries.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Delay before each answer, e.g. "50ms".
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Seed for the fault dice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Runs the sandbox marketplace until SIGTERM/SIGINT.
pub async fn marketplace(args: MarketplaceArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.fail_rate) {
        bail!(
            "--fail-rate must be between 0.0 and 1.0, got {}",
            args.fail_rate
        );
    }
    let token = match &args.token_env {
        Some(var) => Some(
            std::env::var(var)
                .ok()
                .filter(|t| !t.is_empty())
                .with_context(|| format!("--token-env {var}: the variable is unset or empty"))?,
        ),
        None => None,
    };
    let sandbox = Sandbox::new(SandboxOptions {
        token,
        fail_rate: args.fail_rate,
        latency: args.latency,
        seed: args.seed,
        ..SandboxOptions::default()
    });
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("listening on {}", args.addr))?;
    sandbox::serve(listener, sandbox, shutdown_signal())
        .await
        .context("sandbox marketplace")
}

/// Applies the ledger migrations.
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    bidorch::ledger::from_settings(&settings.database)
        .await
        .with_context(|| format!("migrating the ledger at {}", settings.database.url))?;
    tracing::info!(database = %settings.database.url, "Ledger migrations applied");
    Ok(())
}

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
    println!("{report}");
    if !report.is_correct() {
        bail!("the demo broke the promise (see FAILED above)");
    }
    Ok(())
}

/// `bidorch dlq` actions.
#[derive(Subcommand, Debug)]
pub enum DlqAction {
    /// Show parked messages with their reason and attempts (nothing is removed or reordered).
    List {
        /// At most this many messages.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Send parked messages back to the work exchange with attempts reset.
    Replay {
        /// Replay every parked message.
        #[arg(long, conflicts_with = "event_id")]
        all: bool,
        /// Replay only the message with this event id.
        #[arg(long)]
        event_id: Option<String>,
    },
}

/// Publishes JSON lines from a file or standard input; fails unless every event was confirmed.
pub async fn publish(settings: &Settings, input: &str, progress: bool) -> anyhow::Result<()> {
    let summary = if input == "-" {
        let stdin = tokio::io::BufReader::new(tokio::io::stdin());
        bidorch::publish::run_publish_command(&settings.amqp, stdin, progress).await
    } else {
        let file = tokio::fs::File::open(input)
            .await
            .with_context(|| format!("opening {input}"))?;
        let reader = tokio::io::BufReader::new(file);
        bidorch::publish::run_publish_command(&settings.amqp, reader, progress).await
    }
    .with_context(|| {
        format!(
            "publishing {input} to exchange `{}`",
            settings.amqp.exchange
        )
    })?;
    println!("{summary}");
    if !summary.is_complete() {
        bail!(
            "{} of {} events were not published (see above); re-publishing them is safe",
            summary.failed,
            summary.failed + summary.published
        );
    }
    Ok(())
}

/// Lists or replays dead letters.
pub async fn dlq(settings: &Settings, action: DlqAction) -> anyhow::Result<()> {
    let queue = settings.amqp.dead_letter_queue();
    match action {
        DlqAction::List { limit } => {
            let listing = bidorch::dlq::list(&settings.amqp, limit)
                .await
                .with_context(|| format!("listing {queue}"))?;
            println!(
                "{} message(s) in {queue}{}",
                listing.total,
                if (listing.total as usize) > listing.messages.len() {
                    format!(", showing the first {}", listing.messages.len())
                } else {
                    String::new()
                }
            );
            for m in &listing.messages {
                let excerpt: String = String::from_utf8_lossy(&m.body).chars().take(120).collect();
                println!(
                    "- event {}  attempt {}  reason {}{}\n    {}",
                    m.event_id.as_deref().unwrap_or("?"),
                    m.attempt,
                    m.reason,
                    m.detail
                        .as_deref()
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default(),
                    excerpt
                );
            }
        }
        DlqAction::Replay { all, event_id } => {
            let filter = match (all, event_id) {
                (true, _) => bidorch::dlq::ReplayFilter::All,
                (false, Some(id)) => bidorch::dlq::ReplayFilter::EventId(id),
                (false, None) => bail!("say which messages to replay: --all or --event-id ID"),
            };
            let summary = bidorch::dlq::replay(&settings.amqp, &filter)
                .await
                .with_context(|| format!("replaying from {queue}"))?;
            println!(
                "replayed {} message(s) to exchange `{}`, {} left in {queue}",
                summary.replayed.len(),
                settings.amqp.exchange,
                summary.kept
            );
            for id in &summary.replayed {
                println!("- {id}");
            }
        }
    }
    Ok(())
}
