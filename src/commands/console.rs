//! `bidorch console [--addr ADDR]`: the operators' web console ([`bidorch::console`]), until
//! SIGTERM/SIGINT. Refuses any address but loopback without a token (`console.token_env`).

use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;

use bidorch::config::Settings;

use super::shutdown_signal;

/// `bidorch console` flags.
#[derive(Args, Debug)]
pub struct ConsoleArgs {
    /// Address to listen on (default: `console.addr`, loopback).
    #[arg(long)]
    addr: Option<SocketAddr>,
}

/// Serves the console.
pub async fn console(settings: &Settings, args: ConsoleArgs) -> anyhow::Result<()> {
    let addr = args.addr.unwrap_or(settings.console.addr);
    // Before anything connects: a refusal is about the configuration.
    let tokens = bidorch::console::tokens_for(settings, addr, |var| std::env::var(var).ok())?;
    let ledger = bidorch::app::ledger(&settings.database)
        .await
        .with_context(|| format!("opening the ledger at {}", settings.database.url))?;
    let locks = bidorch::app::locks(settings.lock.kind, &settings.redis, "console")
        .context("opening the lock store")?
        .locks;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %bound, tokens = !tokens.is_empty(), "Console listening");
    eprintln!("bidorch console: http://{bound}/");
    bidorch::console::serve(
        listener,
        settings.clone(),
        tokens,
        ledger,
        locks,
        shutdown_signal(),
    )
    .await
    .context("console")
}
