//! The `bidorch` binary: parse the command line, load configuration, start telemetry, and hand
//! over to the library. Errors end here, printed with their cause chain, exit code 1.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use bidorch::config::Settings;

// mimalloc: a posting allocates and frees many small strings on two threads, which glibc's
// allocator handled at about a tenth of the worker's CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod commands;

#[derive(Parser, Debug)]
#[command(
    name = "bidorch",
    version,
    about = "Event-driven bid orchestrator: exactly one bid per eligible posting"
)]
struct Cli {
    /// A TOML file layered over the built-in defaults and config/{BIDORCH_ENV}.toml.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Consume postings from RabbitMQ and bid (Redis leases, PostgreSQL ledger).
    Worker,
    /// Publish JSON-lines posting events with publisher confirms.
    Publish {
        /// File of JSON lines, or `-` for standard input.
        #[arg(default_value = "-")]
        input: String,
        /// Hide the progress display.
        #[arg(long)]
        quiet: bool,
        /// Validate every line before sending anything (nothing is sent if one is bad);
        /// otherwise lines are published as they arrive and bad ones reported and skipped.
        #[arg(long)]
        all_or_nothing: bool,
    },
    /// Run the sandbox marketplace server.
    Marketplace(commands::MarketplaceArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Run the whole system on embedded backends (or `--backend real`) and report.
    Demo(commands::DemoArgs),
    /// Inspect and replay the dead-letter queue.
    Dlq {
        #[command(subcommand)]
        action: commands::DlqAction,
    },
    /// Show one posting's story: ledger row, stored request, attempts, lease holder.
    Inspect(commands::InspectArgs),
    /// Settle postings whose bid was sent but never recorded.
    Reconcile(commands::ReconcileArgs),
    /// The ledger's lifecycle: `ledger prune [--dry-run]`.
    Ledger {
        #[command(subcommand)]
        action: commands::LedgerAction,
    },
    /// Measure throughput and latency as ratios to the broker's own consume+ack rate.
    Bench(commands::BenchArgs),
    /// Ask a running worker's /readyz: exit 0 when ready, 1 otherwise (container healthchecks).
    Healthcheck(commands::HealthcheckArgs),
    /// Check the effective configuration.
    Config {
        #[command(subcommand)]
        action: commands::ConfigAction,
    },
    /// Try the should-bid policy on posting events (`policy check`).
    Policy(commands::PolicyArgs),
    /// Stop the whole fleet bidding on marketplaces (or all), with a reason, until resumed.
    Pause(commands::PauseArgs),
    /// End a manual pause.
    Resume(commands::ResumeArgs),
    /// The fleet at a glance: marketplaces, queues, workers, unresolved sends.
    Status(commands::StatusArgs),
    /// The operators' web console: status, postings, dead letters, pause and resume.
    Console(commands::ConsoleArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bidorch: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): nothing more to say to anyone.
        Err(e) if closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // One line on stderr, with the cause chain; the log (if any) already has the details.
            eprintln!("bidorch: {}", render(&e));
            ExitCode::FAILURE
        }
    }
}

/// Whether writing the output failed because its reader closed the pipe.
fn closed_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The error and its causes joined by ": ", each cause once ([`bidorch::error::Chain`]).
fn render(error: &anyhow::Error) -> String {
    bidorch::error::chain(error.as_ref())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Healthcheck(args) = cli.command {
        // With --url nothing else is needed: a probe must not fail on unrelated configuration.
        let addr = if args.needs_settings() {
            Some(Settings::load(cli.config.as_deref())?.http.addr)
        } else {
            None
        };
        return commands::healthcheck(addr, args).await;
    }
    let mut settings = bidorch::app::load_settings(cli.config.as_deref())?;
    if matches!(
        cli.command,
        Command::Demo(_) | Command::Policy(_) | Command::Bench(_)
    ) && std::env::var_os("RUST_LOG").is_none()
    {
        // These print their own report; per-posting logs (on stderr) would drown it.
        settings.telemetry.log_filter = "error".to_owned();
    }
    let _telemetry = bidorch::telemetry::init(&settings.telemetry, &settings.instance_id())?;
    match cli.command {
        Command::Worker => {
            // A consumer that cannot be resumed is an error from `app::worker` (exit non-zero, so
            // an orchestrator restarts the worker).
            // On a runtime thread, not this one: a delivery then wakes a runtime thread, which
            // runs the posting's task from its own queue, instead of waking the main thread only
            // to hand the task over to a runtime thread (one thread hop less per posting).
            tokio::spawn(async move {
                bidorch::app::worker(&settings, commands::shutdown_signal()).await
            })
            .await
            .context("worker task")?
            .context("worker")?;
        }
        Command::Publish {
            input,
            quiet,
            all_or_nothing,
        } => {
            let options = bidorch::publish::PublishOptions {
                progress: !quiet,
                all_or_nothing,
            };
            commands::publish(&settings, &input, options).await?;
        }
        Command::Marketplace(args) => commands::marketplace(args).await?,
        Command::Migrate => commands::migrate(&settings).await?,
        Command::Demo(args) => commands::demo(&settings, args).await?,
        Command::Dlq { action } => commands::dlq(&settings, action).await?,
        Command::Config { action } => commands::config(&settings, action).await?,
        Command::Policy(args) => commands::policy(&settings, args)?,
        Command::Inspect(args) => commands::inspect(&settings, args).await?,
        Command::Reconcile(args) => commands::reconcile(&settings, args).await?,
        Command::Ledger { action } => commands::ledger(&settings, action).await?,
        Command::Bench(args) => commands::bench(&settings, args).await?,
        Command::Pause(args) => commands::pause(&settings, args).await?,
        Command::Resume(args) => commands::resume(&settings, args).await?,
        Command::Status(args) => commands::status(&settings, args).await?,
        Command::Console(args) => commands::console(&settings, args).await?,
        // Answered above, before the settings are loaded.
        Command::Healthcheck(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::render;

    #[derive(Debug, thiserror::Error)]
    #[error("broker")]
    struct Wraps(#[source] std::io::Error);

    #[test]
    fn each_cause_is_shown_once() {
        let io = std::io::Error::other("connection refused");
        let e = anyhow::Error::new(Wraps(io)).context("worker");
        assert_eq!(render(&e), "worker: broker: connection refused");
    }
}
