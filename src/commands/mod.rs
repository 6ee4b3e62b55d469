//! The subcommands: thin wrappers that turn library results into output and exit codes. This
//! is the binary's edge, so errors are `anyhow` with context. One file per subcommand.
//!
//! Output goes through [`out!`]: a write to a closed pipe (`bidorch config check | head -c1`) is
//! an error that ends the command quietly (see `main`), where `println!` would panic.

/// `println!` to standard output that returns the write's error instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// [`out!`] without the newline.
macro_rules! out_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)
    }};
}

mod bench;
mod config;
mod console;
mod demo;
mod dlq;
mod healthcheck;
mod inspect;
mod ledger;
mod marketplace;
mod migrate;
mod pause;
mod policy;
mod publish;
mod reconcile;
mod status;

pub use self::bench::{BenchArgs, bench};
pub use self::config::{ConfigAction, config};
pub use self::console::{ConsoleArgs, console};
pub use self::demo::{DemoArgs, demo};
pub use self::dlq::{DlqAction, dlq};
pub use self::healthcheck::{HealthcheckArgs, healthcheck};
pub use self::inspect::{InspectArgs, inspect};
pub use self::ledger::{LedgerAction, ledger};
pub use self::marketplace::{MarketplaceArgs, marketplace};
pub use self::migrate::migrate;
pub use self::pause::{PauseArgs, ResumeArgs, pause, resume};
pub use self::policy::{PolicyArgs, policy};
pub use self::publish::publish;
pub use self::reconcile::{ReconcileArgs, reconcile};
pub use self::status::{StatusArgs, status};

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %bidorch::error::Chain(&e), "Cannot listen for Ctrl-C; stop with SIGTERM");
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
                tracing::error!(error = %bidorch::error::Chain(&e), "Cannot listen for SIGTERM; stop with Ctrl-C");
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
