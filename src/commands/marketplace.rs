//! `bidorch marketplace`: the sandbox marketplace server, speaking the contract under
//! `/{name}/v1/…` and the Freelancer API under `/{name}/api/…` for every marketplace.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use bidorch::marketplace::sandbox::{self, Sandbox, SandboxOptions};

use super::shutdown_signal;

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
    /// Share of placed bids (0.0–1.0) whose answer is lost (the bid exists; the client sees
    /// 502), to exercise idempotent replays.
    #[arg(long, default_value_t = 0.0)]
    lose_rate: f64,
    /// Seed for the fault dice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Freelancer dialect: create a second bid by the same bidder on a project instead of
    /// refusing it as Freelancer does, so a blind resend shows as a duplicate in the stats.
    #[arg(long)]
    create_second_bids: bool,
    /// Freelancer dialect: other bidders' bids listed on each project, so lookups filter and
    /// page.
    #[arg(long, default_value_t = 0)]
    rival_bids: u32,
}

/// Runs the sandbox marketplace until SIGTERM/SIGINT.
pub async fn marketplace(args: MarketplaceArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.fail_rate) {
        bail!(
            "--fail-rate must be between 0.0 and 1.0, got {}",
            args.fail_rate
        );
    }
    if !(0.0..=1.0).contains(&args.lose_rate) {
        bail!(
            "--lose-rate must be between 0.0 and 1.0, got {}",
            args.lose_rate
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
        lose_rate: args.lose_rate,
        refuse_second_bid: !args.create_second_bids,
        rival_bids: args.rival_bids,
        ..SandboxOptions::default()
    });
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("listening on {}", args.addr))?;
    sandbox::serve(listener, sandbox, shutdown_signal())
        .await
        .context("sandbox marketplace")
}
