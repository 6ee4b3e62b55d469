//! `bidorch config check`: the effective configuration — every layer applied — validated and
//! printed as TOML with secrets redacted, plus whether each marketplace's token variable is set.
//! A bad configuration never gets here: loading it failed already, naming the key (exit 1).

use clap::Subcommand;

use bidorch::config::Settings;

/// `bidorch config` actions.
#[derive(Subcommand, Debug)]
pub enum ConfigAction {
    /// Validate the effective configuration and print it, secrets redacted.
    Check,
}

/// Prints the effective configuration (it has been validated by loading it).
pub fn config(settings: &Settings, action: ConfigAction) -> anyhow::Result<()> {
    match action {
        ConfigAction::Check => {
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
        }
    }
    Ok(())
}
