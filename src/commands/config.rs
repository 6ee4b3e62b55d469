//! `bidorch config check [--live]`: the effective configuration — every layer applied —
//! validated and printed as TOML with secrets redacted, plus whether each marketplace's token
//! variable is set; `--live` also asks each dependency and each marketplace's API (without
//! bidding), and exits 1 if any does not answer as it should. A bad configuration never gets
//! here: loading it failed already, naming the key (exit 1).

use clap::Subcommand;

use bidorch::config::Settings;

/// `bidorch config` actions.
#[derive(Subcommand, Debug)]
pub enum ConfigAction {
    /// Validate the effective configuration and print it, secrets redacted.
    Check {
        /// Also check that each dependency answers and each marketplace accepts its
        /// credentials (Freelancer: `GET /api/users/0.1/self/`), without bidding.
        #[arg(long)]
        live: bool,
    },
}

/// Prints the effective configuration (it has been validated by loading it), and with `--live`
/// what each dependency answered.
pub async fn config(settings: &Settings, action: ConfigAction) -> anyhow::Result<()> {
    match action {
        ConfigAction::Check { live } => {
            out!("# bidorch: the effective configuration is valid (secrets redacted)")?;
            out_raw!("{}", toml::to_string(settings)?)?;
            if settings.marketplaces.is_empty() {
                out!("\n# no marketplace configured: `bidorch worker` would refuse to start")?;
            }
            for (name, m) in &settings.marketplaces {
                let set = std::env::var(&m.token_env).is_ok_and(|t| !t.trim().is_empty());
                let (request, connect) = m.timeouts(settings.lock.ttl);
                out!(
                    "# marketplace {name}: token variable {} is {}; timeout {}, connect {}",
                    m.token_env,
                    if set { "set" } else { "NOT SET" },
                    humantime::format_duration(request),
                    humantime::format_duration(connect),
                )?;
            }
            if live {
                let results =
                    bidorch::app::live_checks(settings, |var| std::env::var(var).ok()).await;
                let failed = results.iter().filter(|r| !r.ok).count();
                for r in &results {
                    let verdict = if r.ok { "ok" } else { "FAILED" };
                    out!(
                        "# live: {} {verdict}: {}",
                        r.what,
                        bidorch::text::escape_controls(&r.detail)
                    )?;
                }
                if failed > 0 {
                    anyhow::bail!("{failed} of {} live checks failed", results.len());
                }
            }
        }
    }
    Ok(())
}
